"""The operator's commands: send a control command, follow a queue's telemetry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from adapters.kafka.codec import (
    decode_event,
    encode_command,
)
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error, diagnose
from adapters.kafka.producer import stop_quietly
from adapters.kafka.reader import read_from_start
from domain.messages import ControlCommand, TelemetryEvent


async def send_command(
    connection: KafkaConnection, topic: str, command: ControlCommand, timeout: float
) -> None:
    """Publish one control command and wait for the broker's acknowledgement."""
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **connection.options())
    try:
        async with asyncio.timeout(timeout):
            await producer.start()
        async with asyncio.timeout(timeout):
            await producer.send_and_wait(
                topic, encode_command(command), key=command.queue_id.encode()
            )
    except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
        failure = (
            await diagnose(connection)
            if isinstance(error, kafka_errors.KafkaConnectionError)
            else None
        )
        raise (failure or classify_kafka_error(error, connection)) from None
    finally:
        await stop_quietly(producer)


async def follow_events(
    connection: KafkaConnection, topic: str, queue_id: str, timeout: float
) -> AsyncIterator[TelemetryEvent]:
    """The telemetry events of one queue, oldest first, then live as they come."""
    async for record in read_from_start(connection, topic, timeout):
        event = decode_event(record.value)
        if event is not None and event.queue_id == queue_id:
            yield event
