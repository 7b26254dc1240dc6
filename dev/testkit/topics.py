"""Kafka topics for tests: create them, publish to them, read everything back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from adapters.kafka.metadata import topic_partitions


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    partition: int
    offset: int

    def json(self) -> Any:
        return orjson.loads(self.value)

    def exact(self) -> dict[str, Any]:
        """The message with its numbers parsed as decimals, as a careful consumer reads it."""
        parsed: dict[str, Any] = json.loads(self.value, parse_float=Decimal)
        return parsed


@dataclass(frozen=True)
class TopicSet:
    """The three topics of one test run, with unique names."""

    data: str
    events: str
    control: str

    @classmethod
    def fresh(cls, label: str = "test") -> TopicSet:
        stem = f"wf-{label}-{uuid.uuid4().hex[:10]}"
        return cls(data=f"{stem}-data", events=f"{stem}-events", control=f"{stem}-control")

    @classmethod
    async def created(cls, bootstrap: str, label: str = "test") -> TopicSet:
        """Fresh topics, created on the broker at ``bootstrap``."""
        names = cls.fresh(label)
        await create_topics(bootstrap, names.data, names.events, names.control)
        return names


CONTRACT_EVENT_FIELDS = frozenset(
    {
        "queue_id",
        "symbol",
        "type",
        "status",
        "message",
        "records_written",
        "finished",
        "producer",
        "timestamp",
    }
)
"""The nine fields of every telemetry event, as the contract lists them."""


async def create_topics(
    bootstrap: str, *names: str, partitions: int = 1, configs: dict[str, str] | None = None
) -> None:
    """Create the topics (those that exist already are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=configs or {},
                )
                for name in names
            ]
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, *names: str) -> None:
    """Delete the topics; raises ``KafkaError`` when the broker refuses."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def publish(bootstrap: str, topic: str, *values: bytes, key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool] | None = None,
    timeout: float = 60.0,
) -> list[Record]:
    """Every record of ``topic`` from the start: up to the current end, or until ``until`` holds.

    With ``until``, keeps reading new records as they arrive and fails after ``timeout``.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while partitions is None:
            try:
                partitions = await topic_partitions(consumer, topic)
            except KafkaError:  # a broker just resumed or restarted answers late
                partitions = None
            if partitions is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} never appeared")
                await asyncio.sleep(0.2)
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        ends = await consumer.end_offsets(assignment)
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for tp, batch in batches.items():
                records.extend(Record(r.key, r.value, tp.partition, r.offset) for r in batch)
            if until is None:
                positions = {tp: await consumer.position(tp) for tp in assignment}
                if all(positions[tp] >= ends[tp] for tp in assignment):
                    return records
            elif until(records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: condition not met after {timeout:g} s with {len(records)} records"
                )
    finally:
        await consumer.stop()


def trade_ids(records: list[Record], symbol: str | None = None) -> list[int]:
    ids = []
    for record in records:
        message = record.json()
        if symbol is None or message["symbol"] == symbol:
            ids.append(message["trade_id"])
    return ids
