"""The benchmark's topics: created with the partitions asked for, and scanned for loss,
duplicates and order."""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from adapters.kafka.metadata import topic_partitions
from bench.config import BenchError, Context, log
from testkit.topics import TopicSet, create_topics, delete_topics


async def create_bench_topics(bootstrap: str, topics: TopicSet, partitions: int) -> None:
    """The trade topic stamps each record with the broker's append time; the others as usual."""
    await create_topics(
        bootstrap,
        topics.data,
        partitions=partitions,
        configs={"message.timestamp.type": "LogAppendTime"},
    )
    await create_topics(bootstrap, topics.events, topics.control)


async def delete_bench_topics(bootstrap: str, topics: TopicSet) -> None:
    """Delete the run's topics; a failure is logged, never fatal."""
    names = (topics.data, topics.events, topics.control)
    try:
        await delete_topics(bootstrap, *names)
    except Exception as error:
        log(f"could not delete topics {', '.join(names)}: {error!r}")


@dataclass
class SymbolRun:
    count: int = 0
    first: int | None = None
    last: int | None = None
    breaks: int = 0
    """Places where the next id is not the previous plus one (gaps, duplicates, reordering)."""


@dataclass
class TopicScan:
    """What a trade topic holds: per-symbol id runs and the broker's append times."""

    records: int = 0
    symbols: dict[str, SymbolRun] = field(default_factory=dict)
    bad_keys: int = 0
    not_trades: int = 0
    stamps: Counter[int] = field(default_factory=Counter)
    """Records per broker append time (ms)."""
    log_append_time: bool = True
    appended_ms: array[int] = field(default_factory=lambda: array("q"))
    """Each record's broker append time, in topic order per partition."""
    traded_ms: array[int] = field(default_factory=lambda: array("q"))
    """Each record's trade time (the exchange's), alongside ``appended_ms``."""
    symbol_of: list[str] = field(default_factory=list)
    """Each record's symbol, alongside ``appended_ms``."""

    def lag_quantile(
        self, q: float, *, after_ms: float = 0.0, symbols: Collection[str] | None = None
    ) -> float | None:
        """The ``q`` quantile of append time minus trade time (ms) over the records traded
        ``after_ms`` after the first append (of ``symbols`` only, when given)."""
        first = self.first_ms
        if first is None:
            return None
        since = first + after_ms
        lags = sorted(
            appended - traded
            for appended, traded, symbol in zip(
                self.appended_ms, self.traded_ms, self.symbol_of, strict=True
            )
            if traded >= since and (symbols is None or symbol in symbols)
        )
        if not lags:
            return None
        return float(lags[min(len(lags) - 1, max(0, math.ceil(q * len(lags)) - 1))])

    def caught_up_after(self, moment: float, window: float = 2.0) -> float | None:
        """Seconds from ``moment`` (epoch) until every trade made in the ``window`` seconds
        after it was in the topic: how long a connection drop at ``moment`` held trades up."""
        start, end = moment * 1000, (moment + window) * 1000
        last = max(
            (
                appended
                for appended, traded in zip(self.appended_ms, self.traded_ms, strict=True)
                if start <= traded <= end
            ),
            default=None,
        )
        return None if last is None else last / 1000 - moment

    @property
    def first_ms(self) -> int | None:
        return min(self.stamps) if self.stamps else None

    @property
    def last_ms(self) -> int | None:
        return max(self.stamps) if self.stamps else None

    @property
    def span_seconds(self) -> float | None:
        if self.first_ms is None or self.last_ms is None:
            return None
        return (self.last_ms - self.first_ms) / 1000

    def rate(self) -> float | None:
        """Records appended after the first append time, per second up to the last one.

        The records of the first append time are left out: they were sent before the span
        began, and counting them would flatter a sender that sends few large batches.
        """
        span = self.span_seconds
        first = self.first_ms
        if span is None or first is None or span <= 0:
            return None
        return (self.records - self.stamps[first]) / span

    def problems(self, expected: dict[str, int] | None, first_id: int = 1) -> list[str]:
        """Everything that shows a lost, duplicated or misordered trade."""
        found: list[str] = []
        if self.bad_keys:
            found.append(f"{self.bad_keys} records keyed other than by their symbol")
        if self.not_trades:
            found.append(f"{self.not_trades} records that are not trade messages")
        for symbol, run in sorted(self.symbols.items()):
            if run.breaks:
                found.append(f"{symbol}: {run.breaks} breaks in the trade-id sequence")
            if run.first is not None and run.first != first_id:
                found.append(f"{symbol}: first trade id {run.first}, expected {first_id}")
        if expected is not None:
            for symbol, count in sorted(expected.items()):
                got = self.symbols.get(symbol, SymbolRun()).count
                if got != count:
                    found.append(f"{symbol}: {got} trades in the topic, expected {count}")
            extra = set(self.symbols) - set(expected)
            if extra:
                found.append(f"unexpected symbols in the topic: {sorted(extra)}")
        return found


async def scan_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> TopicScan:
    """Read the whole topic once, up to the end offsets it has now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    scan = TopicScan()
    keys: dict[bytes, str] = {}
    try:
        partitions = await topic_partitions(consumer, topic)
        if not partitions:
            raise BenchError(f"topic {topic} does not exist")
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        ends: dict[Any, int] = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if ends[tp] > 0}
        deadline = time.monotonic() + timeout
        loads = orjson.loads
        while remaining:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic} took more than {timeout:g} s")
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=100_000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    scan.records += 1
                    if record.timestamp_type != 1:
                        scan.log_append_time = False
                    scan.stamps[record.timestamp] += 1
                    try:
                        message = loads(record.value)
                        symbol = message["symbol"]
                        trade_id = message["trade_id"]
                        traded = message["timestamp"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        scan.not_trades += 1
                        continue
                    scan.appended_ms.append(record.timestamp)
                    scan.traded_ms.append(traded)
                    scan.symbol_of.append(symbol)
                    if keys.get(record.key) != symbol:
                        if record.key != symbol.encode():
                            scan.bad_keys += 1
                        else:
                            keys[record.key] = symbol
                    run = scan.symbols.get(symbol)
                    if run is None:
                        run = scan.symbols[symbol] = SymbolRun()
                    if run.last is not None and trade_id != run.last + 1:
                        run.breaks += 1
                    if run.first is None:
                        run.first = trade_id
                    run.last = trade_id
                    run.count += 1
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return scan


def verify_topic(
    ctx: Context, label: str, topic: str, expected: dict[str, int] | None
) -> TopicScan:
    scan = asyncio.run(scan_topic(ctx.bootstrap, topic))
    problems = scan.problems(expected)
    if not scan.log_append_time:
        problems.append("records without the broker's append time (timestamps not comparable)")
    for problem in problems:
        ctx.problems.append(f"{label}: {problem}")
        log(f"PROBLEM {label}: {problem}")
    if not problems:
        per = ", ".join(f"{s} {r.first}..{r.last}" for s, r in sorted(scan.symbols.items()))
        log(f"{label}: topic verified, {scan.records} trades, contiguous ({per})")
    return scan
