"""Reading a whole topic from its earliest retained record, without a consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from loguru import logger

from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error
from adapters.kafka.metadata import topic_partitions
from adapters.kafka.producer import stop_quietly
from domain.errors import (
    BrokerUnavailableError,
)


async def read_from_start(
    connection: KafkaConnection,
    topic: str,
    timeout: float,
    poll_interval: float = 2.0,
    caught_up: asyncio.Event | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of every partition of ``topic`` from the earliest retained one, then live.

    No consumer group: nothing is committed and no other reader can take records away. A topic
    that does not exist yet is waited for. ``caught_up`` is set once every record retained
    when reading began has been yielded (at once when the topic does not exist).
    """
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **connection.options(),
    )
    backlog_read = caught_up or asyncio.Event()
    try:
        try:
            async with asyncio.timeout(timeout):
                await consumer.start()
            ends = await _assign_from_start(consumer, topic, poll_interval, backlog_read)
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            raise classify_kafka_error(error, connection) from None
        while True:
            if not backlog_read.is_set() and await _reached(consumer, ends):
                backlog_read.set()
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except kafka_errors.KafkaError as error:
                failure = classify_kafka_error(error, connection)
                if isinstance(failure, BrokerUnavailableError):
                    logger.warning("Reading {topic} failed: {e}", topic=topic, e=str(failure))
                    await asyncio.sleep(poll_interval)
                    continue
                raise failure from None
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        await stop_quietly(consumer)


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _assign_from_start(
    consumer: AIOKafkaConsumer, topic: str, poll_interval: float, backlog_read: asyncio.Event
) -> dict[TopicPartition, int]:
    """Assign every partition from its start; the end offsets are the backlog's end."""
    waited = False
    while True:
        partitions = await topic_partitions(consumer, topic)
        if partitions:
            break
        if not waited:
            logger.warning("Topic {topic} does not exist yet; waiting for it", topic=topic)
            waited = True
            backlog_read.set()  # nothing was retained
        await asyncio.sleep(poll_interval)
    assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assignment)
    await consumer.seek_to_beginning(*assignment)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(assignment)
    logger.info(
        "Reading {topic} ({n} partitions) from the earliest offset", topic=topic, n=len(assignment)
    )
    return ends
