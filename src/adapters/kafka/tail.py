"""What the trade topic already holds: the newest trade of each symbol, read from the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kafka_errors

from adapters.kafka.codec import (
    decode_trade_position,
)
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error
from adapters.kafka.metadata import partition_for, topic_partitions
from adapters.kafka.producer import stop_quietly
from application.ports import (
    LastPublished,
    TopicTail,
)


class StoredRecord(NamedTuple):
    """A message value as the topic holds it, with the record's timestamp."""

    value: bytes | None
    timestamp_ms: int
    """When it was published (the producer's clock, as Kafka's ``CreateTime``)."""


class PartitionLog(Protocol):
    """Read access to the partitions of one topic."""

    async def partitions(self) -> set[int] | None:
        """The topic's partitions, or None when the topic does not exist."""
        ...

    async def offsets(self, partition: int) -> tuple[int, int]:
        """The partition's first retained offset and its end (the next offset to be written)."""
        ...

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        """The records at offsets ``start`` up to ``stop`` (exclusive), oldest first."""
        ...


CLOCK_SKEW_MS = 10_000
"""How far apart the clocks of two producers of the topic may be: record times are theirs."""


@dataclass(frozen=True, slots=True)
class _Newest:
    last: LastPublished
    published_ms: int

    @property
    def horizon_ms(self) -> int:
        """Records published before this cannot hold a newer trade of the symbol."""
        return self.published_ms - CLOCK_SKEW_MS


async def newest_trades(
    log: PartitionLog, symbols: Sequence[str], max_scan: int = 1_000_000
) -> list[LastPublished]:
    """The newest trade of each symbol in the log, read backwards from the partitions' ends.

    A symbol's trades go to the partition its key maps to, so that partition is read first,
    until the symbol is found. After the topic grew, a symbol's key mapped elsewhere for a while,
    and may map back to where its older trades are: unless the newest partition already held
    records when the trade found was published (the topic has not grown since), every other
    partition is read back to that moment (less the producers' clock skew), and for a symbol not
    found at all, as far as ``max_scan``. The highest trade id wins.
    """
    partitions = await log.partitions()
    if not partitions:
        return []
    ordered = sorted(partitions)
    everyone = set(symbols)
    home = {symbol: partition_for(symbol, ordered) for symbol in symbols}
    found: dict[str, _Newest] = {}
    done: dict[int, set[str]] = {}
    for partition in ordered:
        wanted = {symbol for symbol, p in home.items() if p == partition}
        if wanted:
            done[partition] = wanted & await _scan_back(
                log, partition, wanted, everyone, found, lambda _: None, max_scan
            )
    grown_after = await _first_record_time(log, ordered[-1])

    def horizon(symbol: str) -> int | None:
        newest = found.get(symbol)
        return None if newest is None else newest.horizon_ms

    # The newest partition held records before then: the topic has not grown since.
    settled = {
        symbol
        for symbol, newest in found.items()
        if grown_after is not None and grown_after < newest.horizon_ms
    }
    for partition in ordered:
        wanted = everyone - settled - done.get(partition, set())
        if wanted:
            await _scan_back(log, partition, wanted, everyone, found, horizon, max_scan)
    return [newest.last for newest in found.values()]


async def _first_record_time(log: PartitionLog, partition: int) -> int | None:
    begin, end = await log.offsets(partition)
    if end <= begin:
        return None
    records = await log.read(partition, begin, begin + 1)
    return records[0].timestamp_ms if records else None


async def _scan_back(
    log: PartitionLog,
    partition: int,
    wanted: set[str],
    everyone: set[str],
    found: dict[str, _Newest],
    horizon: Callable[[str], int | None],
    max_scan: int,
) -> set[str]:
    """Read ``partition`` backwards, in doubling spans, until every ``wanted`` symbol is seen
    or the records are older than its ``horizon``.

    The newest trade of any of ``everyone`` seen on the way is kept in ``found`` when it is
    newer than what is there. Returns the symbols seen.
    """
    begin, end = await log.offsets(partition)
    seen: set[str] = set()
    span = 1000
    stop = end
    while stop > begin and end - stop < max_scan:
        start = max(begin, stop - span)
        records = await log.read(partition, start, stop)
        for symbol, newest in _newest_in(records, everyone).items():
            seen.add(symbol)
            current = found.get(symbol)
            if current is None or newest.last.trade_id > current.last.trade_id:
                found[symbol] = newest
        stop = start
        span *= 2
        oldest = records[0].timestamp_ms if records else None
        if all(
            symbol in seen
            or (oldest is not None and (limit := horizon(symbol)) is not None and oldest < limit)
            for symbol in wanted
        ):
            break
    return seen


def _newest_in(records: list[StoredRecord], wanted: set[str]) -> dict[str, _Newest]:
    newest: dict[str, _Newest] = {}
    for record in records:
        decoded = decode_trade_position(record.value)
        if decoded is None or decoded[0] not in wanted:
            continue
        symbol, trade_id, timestamp = decoded
        current = newest.get(symbol)
        if current is None or trade_id > current.last.trade_id:
            newest[symbol] = _Newest(
                LastPublished(symbol, trade_id, timestamp), record.timestamp_ms
            )
    return newest


class _ConsumerLog(PartitionLog):
    """A topic's partitions read through an assigned consumer without a group."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._assigned: TopicPartition | None = None

    def _assign(self, partition: int) -> TopicPartition:
        tp = TopicPartition(self._topic, partition)
        if tp != self._assigned:
            self._consumer.assign([tp])
            self._assigned = tp
        return tp

    async def partitions(self) -> set[int] | None:
        return await topic_partitions(self._consumer, self._topic)

    async def offsets(self, partition: int) -> tuple[int, int]:
        tp = self._assign(partition)
        begin = (await self._consumer.beginning_offsets([tp]))[tp]
        end = (await self._consumer.end_offsets([tp]))[tp]
        return begin, end

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        consumer = self._consumer
        tp = self._assign(partition)
        consumer.seek(tp, start)
        records: list[StoredRecord] = []
        while True:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            for record in batches.get(tp, []):
                if record.offset >= stop:
                    return records
                records.append(StoredRecord(record.value, record.timestamp))
            if await consumer.position(tp) >= stop:
                return records


class KafkaTopicTail(TopicTail):
    """Finds the newest trade of each symbol at the end of the trade topic."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        timeout: float,
        max_scan: int = 1_000_000,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._timeout = timeout
        self._max_scan = max_scan

    async def last_published(self, symbols: Sequence[str]) -> Sequence[LastPublished]:
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._connection.options(),
        )
        try:
            async with asyncio.timeout(self._timeout):
                await consumer.start()
            log = _ConsumerLog(consumer, self._topic)
            async with asyncio.timeout(self._timeout * 5):
                return await newest_trades(log, symbols, self._max_scan)
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            raise classify_kafka_error(error, self._connection) from None
        finally:
            await stop_quietly(consumer)
