"""The simulated Kafka broker: partitioned topics, a producer with aiokafka's batch API, control."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from adapters.kafka.tail import PartitionLog, StoredRecord, newest_trades
from adapters.kafka.telemetry import EventProducer
from adapters.kafka.trades import BatchProducer
from application.ports import Clock, ControlChannel, LastPublished, TopicTail
from domain.messages import ControlCommand


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float
    """Virtual wall-clock seconds when the broker appended it."""
    run: int


@dataclass
class Topic:
    partitions: list[list[Record]]

    def append(self, partition: int, key: bytes | None, value: bytes, at: float, run: int) -> None:
        log = self.partitions[partition]
        log.append(Record(len(log), key, value, at, run))


@dataclass
class BrokerFaults:
    """What the broker does wrong, and when."""

    outages: list[tuple[float, float]] = field(default_factory=list)
    slow: list[tuple[float, float, float]] = field(default_factory=list)
    next_batch: list[str] = field(default_factory=list)
    """Faults of the next batches sent, in order: ``fail``, ``cancel``, ``crash``."""

    def down(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.outages)

    def up_at(self, now: float) -> float:
        ends = [end for start, end in self.outages if start <= now < end]
        return max(ends) if ends else now

    def latency(self, now: float, rng: random.Random) -> float:
        extra = max((value for start, end, value in self.slow if start <= now < end), default=0.0)
        return rng.uniform(0.001, 0.02) + extra


class SimBroker:
    """Topics on virtual time; each run of the loader gets a producer of its own."""

    def __init__(self, clock: Clock, rng: random.Random, partitions: int) -> None:
        self.clock = clock
        self.rng = rng
        self.default_partitions = partitions
        self.topics: dict[str, Topic] = {}
        self.faults = BrokerFaults()
        self.producers: list[SimProducer] = []

    def topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic([[] for _ in range(self.default_partitions)])
        return topic

    def grow(self, name: str, partitions: int) -> None:
        topic = self.topic(name)
        while len(topic.partitions) < partitions:
            topic.partitions.append([])

    async def until_up(self) -> None:
        # An outage is a window of virtual time: sleeping to its end is exact, not a poll.
        while self.faults.down(self.clock.monotonic()):  # noqa: ASYNC110
            await asyncio.sleep(self.faults.up_at(self.clock.monotonic()) - self.clock.monotonic())

    def producer(self, run: int, batch_bytes: int, request_timeout: float) -> SimProducer:
        producer = SimProducer(self, run, batch_bytes, request_timeout)
        self.producers.append(producer)
        return producer


@dataclass
class _Batch:
    builder: BatchBuilder
    topic: str
    partition: int
    future: asyncio.Future[Any]


class _PartitionQueue:
    """aiokafka's accumulator for one partition: one batch in flight, one waiting to be taken."""

    def __init__(self) -> None:
        self.in_flight: _Batch | None = None
        self.waiting: _Batch | None = None
        self.changed = asyncio.Event()


class SimProducer(BatchProducer, EventProducer):
    """What the loader uses of ``AIOKafkaProducer``, against the simulated broker."""

    def __init__(self, broker: SimBroker, run: int, batch_bytes: int, request_timeout: float):
        self._broker = broker
        self._run = run
        self._batch_bytes = batch_bytes
        self._request_timeout = request_timeout
        self._queues: dict[tuple[str, int], _PartitionQueue] = {}
        self._senders: list[asyncio.Task[None]] = []
        self._events: list[tuple[str, bytes, bytes, asyncio.Future[None]]] = []
        self._events_ready = asyncio.Event()
        self.dead = False
        self.acknowledged = 0
        self.events_acknowledged = 0

    async def partitions_for(self, topic: str) -> set[int]:
        await self._wait_up()
        await asyncio.sleep(self._broker.rng.uniform(0.001, 0.01))
        return set(range(len(self._broker.topic(topic).partitions)))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self._batch_bytes, 0)

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        if self.dead:
            raise kafka_errors.ProducerClosed()
        faults = self._broker.faults.next_batch
        if faults and faults[0] == "crash":
            faults.pop(0)
            raise RuntimeError("simulated failure inside the Kafka client")
        queue = self._queue(topic, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        while queue.waiting is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise kafka_errors.KafkaTimeoutError()
            queue.changed.clear()
            try:
                await asyncio.wait_for(queue.changed.wait(), remaining)
            except TimeoutError:
                raise kafka_errors.KafkaTimeoutError() from None
        entry = _Batch(batch, topic, partition, loop.create_future())
        if queue.in_flight is None:
            queue.in_flight = entry
        else:
            queue.waiting = entry
        queue.changed.set()
        return asyncio.shield(entry.future)

    def _queue(self, topic: str, partition: int) -> _PartitionQueue:
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = self._queues[(topic, partition)] = _PartitionQueue()
            self._senders.append(
                asyncio.create_task(self._send_forever(queue), name=f"sim-sender-{partition}")
            )
        return queue

    async def _send_forever(self, queue: _PartitionQueue) -> None:
        broker = self._broker
        while True:
            while queue.in_flight is None:
                queue.changed.clear()
                await queue.changed.wait()
            batch = queue.in_flight
            await self._wait_up()
            await asyncio.sleep(broker.faults.latency(broker.clock.monotonic(), broker.rng))
            if broker.faults.down(broker.clock.monotonic()):
                continue  # the request failed; the idempotent producer sends it again
            self._complete(batch)
            queue.in_flight, queue.waiting = queue.waiting, None
            queue.changed.set()

    def _complete(self, batch: _Batch) -> None:
        faults = self._broker.faults.next_batch
        fault = faults.pop(0) if faults and faults[0] in ("fail", "cancel") else None
        if batch.future.done():
            return
        if fault == "cancel":
            batch.future.cancel()
            return
        if fault == "fail":
            batch.future.set_exception(kafka_errors.RequestTimedOutError())
            return
        records = list(DefaultRecordBatch(bytes(batch.builder._build())))
        topic = self._broker.topic(batch.topic)
        now = self._broker.clock.time()
        for record in records:
            topic.append(batch.partition, record.key, record.value, now, self._run)
        self.acknowledged += len(records)
        batch.future.set_result(None)

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes) -> Any:
        if self.dead:
            raise kafka_errors.ProducerClosed()
        # As in aiokafka, the record is queued at once and stays queued if the wait is cancelled.
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._events.append((topic, key, value, future))
        self._events_ready.set()
        if not any(task.get_name() == "sim-event-sender" for task in self._senders):
            self._senders.append(asyncio.create_task(self._send_events(), name="sim-event-sender"))
        return await asyncio.shield(future)

    async def _send_events(self) -> None:
        broker = self._broker
        while True:
            while not self._events:
                self._events_ready.clear()
                await self._events_ready.wait()
            await self._wait_up()
            await asyncio.sleep(broker.faults.latency(broker.clock.monotonic(), broker.rng))
            if broker.faults.down(broker.clock.monotonic()):
                continue
            topic, key, value, future = self._events.pop(0)
            partitions = list(range(len(broker.topic(topic).partitions)))
            partition = DefaultPartitioner()(key, partitions, partitions)
            broker.topic(topic).append(partition, key, value, broker.clock.time(), self._run)
            self.events_acknowledged += 1
            if not future.done():
                future.set_result(None)

    async def _wait_up(self) -> None:
        await self._broker.until_up()

    def kill(self) -> None:
        """The process died: what was in flight lands or not, the rest is gone."""
        self.dead = True
        for queue in self._queues.values():
            if queue.in_flight is not None and self._broker.rng.random() < 0.5:
                self._complete(queue.in_flight)
            queue.in_flight = queue.waiting = None
        self._events.clear()
        self.close()

    def close(self) -> None:
        for task in self._senders:
            task.cancel()


class SimPartitionLog(PartitionLog):
    """A topic of the simulated broker read back, each read taking ``latency`` seconds."""

    def __init__(self, broker: SimBroker, topic: str, latency: float) -> None:
        self._broker = broker
        self._topic = topic
        self._latency = latency

    async def partitions(self) -> set[int] | None:
        await asyncio.sleep(self._latency)
        topic = self._broker.topics.get(self._topic)
        return None if topic is None else set(range(len(topic.partitions)))

    async def offsets(self, partition: int) -> tuple[int, int]:
        await asyncio.sleep(self._latency)
        return 0, len(self._broker.topic(self._topic).partitions[partition])

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        await asyncio.sleep(self._latency * (1 + (stop - start) / 1000))
        log = self._broker.topic(self._topic).partitions[partition]
        return [StoredRecord(r.value, round(r.timestamp * 1000)) for r in log[start:stop]]


class SimTopicTail(TopicTail):
    """The loader's topic-tail scan over the simulated topic."""

    def __init__(self, broker: SimBroker, topic: str, latency: float) -> None:
        self._log = SimPartitionLog(broker, topic, latency)
        self._clock = broker.clock
        self.read_at: float | None = None
        """When the scan answered (virtual seconds), for judging the resume decision."""

    async def last_published(self, symbols: Any) -> list[LastPublished]:
        found = await newest_trades(self._log, symbols)
        self.read_at = self._clock.monotonic()
        return found


@dataclass
class ControlMessage:
    at: float
    command: ControlCommand


class SimControlTopic:
    """The retained control topic."""

    def __init__(self) -> None:
        self.messages: list[ControlMessage] = []

    def publish(self, at: float, command: ControlCommand) -> None:
        self.messages.append(ControlMessage(at, command))


class SimControlChannel(ControlChannel):
    """Reads the control topic from its start, after a consumer's start-up time, then polls."""

    def __init__(self, topic: SimControlTopic, clock: Clock, start: float, poll: float) -> None:
        self._topic = topic
        self._clock = clock
        self._start = start
        self._poll = poll
        self._caught_up = asyncio.Event()

    async def commands(self) -> AsyncGenerator[ControlCommand, None]:
        await asyncio.sleep(self._start)
        index = 0
        messages = self._topic.messages
        while True:
            now = self._clock.monotonic()
            while index < len(messages) and messages[index].at <= now:
                yield messages[index].command
                index += 1
            self._caught_up.set()
            await asyncio.sleep(self._poll)

    async def caught_up(self) -> None:
        await self._caught_up.wait()
