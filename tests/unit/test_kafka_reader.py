"""Reading a topic from its start: a reader that is told to end, ends, whenever that comes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from adapters.kafka import reader
from adapters.kafka.connection import KafkaConnection


class GatedConsumer:
    """A consumer whose start completes when the test says; it then reads nothing, forever."""

    def __init__(self, starting: asyncio.Event) -> None:
        self.starting = starting
        self.started = asyncio.Event()
        self.polls = 0
        self.stopped = False

    async def start(self) -> None:
        self.starting.set()
        await self.started.wait()

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        return None

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def position(self, partition: TopicPartition) -> int:
        return 0

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        await asyncio.sleep(0)
        return {}

    async def stop(self) -> None:
        self.stopped = True


class Consumers:
    """The consumers the reader creates, and an event set when one of them starts."""

    def __init__(self) -> None:
        self.created: list[GatedConsumer] = []
        self.starting = asyncio.Event()

    def __call__(self, **options: Any) -> GatedConsumer:
        consumer = GatedConsumer(self.starting)
        self.created.append(consumer)
        return consumer

    async def first_starting(self) -> GatedConsumer:
        await self.starting.wait()
        return self.created[0]


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> Consumers:
    async def one_partition(consumer: GatedConsumer, topic: str) -> set[int]:
        return {0}

    made = Consumers()
    monkeypatch.setattr(reader, "AIOKafkaConsumer", made)
    monkeypatch.setattr(reader, "topic_partitions", one_partition)
    return made


async def read_forever() -> None:
    connection = KafkaConnection("localhost:9")
    async for _ in reader.read_from_start(connection, "control", timeout=60):
        pass


async def test_a_reader_cancelled_as_its_consumer_finishes_starting_ends(
    consumers: Consumers,
) -> None:
    task = asyncio.create_task(read_forever())
    consumer = await consumers.first_starting()
    # The start completes in the same turn of the loop as the cancellation (a run ending
    # while its control reader connects): the cancellation must not be lost.
    consumer.started.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}, f"the reader went on after its cancellation ({consumer.polls} polls)"
    assert task.cancelled()
    assert consumer.stopped


async def test_a_reader_cancelled_while_its_consumer_starts_ends(
    consumers: Consumers,
) -> None:
    task = asyncio.create_task(read_forever())
    consumer = await consumers.first_starting()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}
    assert task.cancelled()
    assert consumer.polls == 0
    assert consumer.stopped
