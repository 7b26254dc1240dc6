"""The idempotent producer's life: started within a bound, stopped even when the broker is away."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors
from loguru import logger

from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error, diagnose
from adapters.kafka.health import BrokerHealth
from domain.errors import (
    BrokerUnavailableError,
)


@dataclass(frozen=True, slots=True)
class ProducerTuning:
    """Producer settings users tune; acks=all and idempotence are not among them.

    Every value comes from the settings (``Settings.producer_tuning``), the one place that
    holds their defaults.
    """

    linger_ms: int
    max_batch_bytes: int
    compression: str | None
    request_timeout_ms: int
    max_in_flight_trades: int
    outage_timeout: float
    connect_timeout: float


async def start_producer(
    connection: KafkaConnection, tuning: ProducerTuning, health: BrokerHealth
) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer, started within ``tuning.connect_timeout``."""
    deadline = time.monotonic() + tuning.connect_timeout
    delay = 0.5
    while True:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=tuning.linger_ms,
            max_batch_size=tuning.max_batch_bytes,
            max_request_size=max(tuning.max_batch_bytes, 1024 * 1024),
            compression_type=tuning.compression,
            request_timeout_ms=tuning.request_timeout_ms,
            **connection.options(),
        )
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                await producer.start()
        except asyncio.CancelledError:
            await stop_quietly(producer)  # a stop during start-up
            raise
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            await stop_quietly(producer)
            failure = await diagnose(connection) or classify_kafka_error(error, connection)
            if not isinstance(failure, BrokerUnavailableError) or time.monotonic() >= deadline:
                raise failure from None
            logger.warning(
                "Kafka not reachable yet at {who}: {error}; retrying",
                who=connection.who,
                error=str(failure),
            )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
            continue
        health.reachable = True
        logger.info("Connected to Kafka at {who}", who=connection.who)
        return producer


async def stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop the producer; its own ``stop()`` can wait forever on an unreachable broker."""
    try:
        async with asyncio.timeout(timeout):
            await producer.stop()
    except TimeoutError:
        logger.error(
            "Kafka producer did not stop within {timeout:g} s; abandoning it", timeout=timeout
        )
    except kafka_errors.KafkaError as error:
        logger.warning("Kafka producer stopped with an error: {error}", error=str(error))


async def stop_quietly(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await client.stop()
