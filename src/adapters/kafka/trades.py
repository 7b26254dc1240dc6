"""The trade topic: record batches built by hand, shipped in order, many in flight."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

from aiokafka import errors as kafka_errors
from aiokafka.producer.message_accumulator import BatchBuilder
from loguru import logger

from adapters.kafka.codec import (
    encode_trade,
)
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error
from adapters.kafka.health import BrokerHealth
from adapters.kafka.metadata import partition_for
from adapters.kafka.producer import ProducerTuning
from adapters.metrics import RunStats
from application.ports import (
    Clock,
    TradePublisher,
)
from domain.errors import (
    BrokerUnavailableError,
    LoaderError,
)
from domain.sequence import Gap
from domain.trade import Trade


class BatchProducer(Protocol):
    """What the trade publisher uses of ``AIOKafkaProducer``."""

    async def partitions_for(self, topic: str) -> set[int]:
        """The topic's partitions (creating the topic where the broker does that)."""
        ...

    def create_batch(self) -> BatchBuilder:
        """An empty record batch."""
        ...

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        """Queue a closed batch; the future completes with the broker's answer."""
        ...


class _OpenBatch:
    """A record batch of one partition being filled: which trades of which symbols it holds,
    and when each of them arrived."""

    __slots__ = ("builder", "linger", "partition", "received", "runs", "sealed")

    def __init__(self, builder: BatchBuilder, partition: int) -> None:
        self.builder = builder
        self.partition = partition
        self.linger: asyncio.TimerHandle | None = None
        self.received: list[float] = []
        self.sealed = False
        self.runs: dict[str, list[int]] = {}
        """Per symbol, in order of first appearance: [first trade id, last trade id, count]."""

    def add(self, symbol: str, trade_id: int, received_at: float) -> None:
        run = self.runs.get(symbol)
        if run is None:
            self.runs[symbol] = [trade_id, trade_id, 1]
        else:
            run[1] = trade_id
            run[2] += 1
        self.received.append(received_at)

    @property
    def trades(self) -> list[Gap]:
        return [Gap(symbol, first, last) for symbol, (first, last, _) in self.runs.items()]

    def describe(self) -> str:
        return ", ".join(
            f"{symbol} trades {first}..{last} ({count})"
            for symbol, (first, last, count) in self.runs.items()
        )


class KafkaTradePublisher(TradePublisher):
    """Publishes trades keyed by symbol, building record batches itself, many in flight.

    Appending to a batch costs a fraction of a per-message ``send()``. Every trade bound for a
    partition goes into that partition's open batch, whatever its symbol: the client sends one
    batch per partition per request, so batches of one symbol each would carry a trade or two
    when many symbols share a partition. A batch is sealed when full or ``linger_ms`` after its
    first trade, then shipped by one task in sealing order, so each symbol's trades (a symbol
    has one partition) reach it in order; the idempotent producer keeps them free of
    duplicates across retries. Acknowledgements are counted per batch.
    """

    def __init__(
        self,
        producer: BatchProducer,
        topic: str,
        connection: KafkaConnection,
        tuning: ProducerTuning,
        health: BrokerHealth,
        stats: RunStats,
        clock: Clock,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._connection = connection
        self._tuning = tuning
        self._health = health
        self._stats = stats
        self._clock = clock
        self._linger = tuning.linger_ms / 1000
        self._partitions: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}
        self._open: dict[int, _OpenBatch] = {}
        """The batch being filled, per partition."""
        self._sealed: deque[_OpenBatch] = deque()
        self._has_sealed = asyncio.Event()
        self._shipper: asyncio.Task[None] | None = None
        self._closed = False
        self._pending = 0
        self._acked = 0
        self._failure: LoaderError | None = None
        self._unwritten: list[Gap] = []
        self._last_progress = clock.monotonic()
        self._window_open = asyncio.Event()
        self._window_open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Trades handed to the producer and not yet acknowledged or failed."""
        return self._pending

    async def start(self, symbols: Sequence[str]) -> None:
        """Look up the topic's partitions: fails early on a missing permission."""
        if self._closed:
            raise RuntimeError("the trade publisher is closed")
        try:
            async with asyncio.timeout(self._tuning.connect_timeout):
                partitions = await self._producer.partitions_for(self._topic)
        except (kafka_errors.KafkaError, TimeoutError) as error:
            raise classify_kafka_error(error, self._connection) from None
        ordered = sorted(partitions)
        for symbol in symbols:
            self._keys[symbol] = symbol.encode()
            # The key decides the partition as in every Kafka client; computed once per symbol.
            self._partitions[symbol] = partition_for(symbol, ordered)
        if self._shipper is None:
            self._shipper = asyncio.create_task(self._ship_forever(), name="kafka-shipper")

    async def publish(self, trade: Trade, received_at: float) -> None:
        if self._failure is not None:
            raise self._failure
        if self._pending:
            self._check_outage()
            if self._pending >= self._tuning.max_in_flight_trades:
                await self._wait(self._window_open, "in-flight window to free up")
        symbol = trade.symbol
        partition = self._partitions.get(symbol)
        if partition is None:
            await self.start([symbol])
            partition = self._partitions[symbol]
        batch = self._open.get(partition)
        if batch is None:
            batch = self._start(partition)
        key = self._keys[symbol]
        value = encode_trade(trade)
        if batch.builder.append(timestamp=None, key=key, value=value) is None:
            self._seal(batch)
            batch = self._start(partition)
            if batch.builder.append(timestamp=None, key=key, value=value) is None:
                raise BrokerUnavailableError(f"a trade message of {len(value)} bytes fits no batch")
        batch.add(symbol, trade.trade_id, received_at)
        if self._pending == 0:
            self._last_progress = self._clock.monotonic()
            self._idle.clear()
        self._pending += 1
        if self._pending >= self._tuning.max_in_flight_trades:
            self._window_open.clear()

    def _start(self, partition: int) -> _OpenBatch:
        if self._closed:
            raise RuntimeError("the trade publisher is closed")
        batch = _OpenBatch(self._producer.create_batch(), partition)
        self._open[partition] = batch
        batch.linger = asyncio.get_running_loop().call_later(self._linger, self._seal, batch)
        return batch

    def _seal(self, batch: _OpenBatch) -> None:
        if batch.sealed:
            return
        batch.sealed = True
        if batch.linger is not None:
            batch.linger.cancel()
        if self._open.get(batch.partition) is batch:
            del self._open[batch.partition]
        if batch.received:
            # Closed, the accumulator sends it as soon as the partition is free.
            batch.builder.close()
            self._sealed.append(batch)
            self._has_sealed.set()

    async def _ship_forever(self) -> None:
        try:
            # After a failure nothing more is sent: a later batch landing would leave a hole.
            while self._failure is None:
                while not self._sealed:
                    self._has_sealed.clear()
                    await self._has_sealed.wait()
                batch = self._sealed.popleft()
                future = await self._send(batch)
                future.add_done_callback(partial(self._on_done, batch))
        except LoaderError as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001 - a bug in the client must end the run, not hang it
            logger.opt(exception=error).error("The Kafka client failed unexpectedly")
            self._fail(BrokerUnavailableError(f"the Kafka client failed unexpectedly: {error!r}"))

    async def _send(self, batch: _OpenBatch) -> asyncio.Future[Any]:
        while True:
            try:
                future: asyncio.Future[Any] = await self._producer.send_batch(
                    batch.builder, self._topic, partition=batch.partition
                )
            except kafka_errors.KafkaTimeoutError:
                # Nothing was queued: the broker is slow or away. Retrying keeps the order.
                self._check_outage()
            except kafka_errors.KafkaError as error:
                raise classify_kafka_error(error, self._connection) from None
            else:
                return future

    def _on_done(self, batch: _OpenBatch, future: asyncio.Future[Any]) -> None:
        count = len(batch.received)
        self._pending -= count
        if self._pending < self._tuning.max_in_flight_trades:
            self._window_open.set()
        if self._pending == 0:
            self._idle.set()
        if future.cancelled():
            self._refused(batch, BrokerUnavailableError("Kafka dropped a batch of trades unsent"))
            return
        error = future.exception()
        if error is not None:
            self._refused(batch, classify_kafka_error(error, self._connection))
            return
        now = self._clock.monotonic()
        self._acked += count
        self._last_progress = now
        self._health.reachable = True
        published = self._stats.published
        for symbol, (_, _, in_batch) in batch.runs.items():
            published[symbol] += in_batch
        observe = self._stats.latency.observe
        for received_at in batch.received:
            observe(now - received_at)

    def _refused(self, batch: _OpenBatch, error: LoaderError) -> None:
        self._unwritten.extend(batch.trades)
        failure = type(error)(f"{error}; {batch.describe()} were not written")
        if self._failure is not None:
            # The run is failing already; each batch lost is still told, by its trades.
            logger.error("Kafka refused trades: {error}", error=str(failure))
        self._fail(failure)

    def _fail(self, error: LoaderError) -> None:
        if self._failure is None:
            self._failure = error
            logger.error("Kafka refused trades: {error}", error=str(error))
        self._window_open.set()
        self._idle.set()

    def acknowledged(self) -> int:
        return self._acked

    def unwritten(self) -> Sequence[Gap]:
        return list(self._unwritten)

    async def close(self) -> None:
        """Stop the shipper and the linger timers; batches already handed to the producer are
        the producer's, trades not yet sealed are abandoned, and nothing can be published after.
        """
        self._closed = True
        for batch in self._open.values():
            if batch.linger is not None:
                batch.linger.cancel()
        self._open.clear()
        shipper, self._shipper = self._shipper, None
        if shipper is None:
            return
        shipper.cancel()
        try:
            await shipper
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller itself is being cancelled

    async def flush(self, timeout: float) -> None:
        for batch in list(self._open.values()):
            self._seal(batch)
        if self._pending and self._failure is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                raise BrokerUnavailableError(
                    f"{self._pending} trades were not acknowledged by Kafka within {timeout:g} s"
                ) from None
        if self._failure is not None:
            raise self._failure

    def _check_outage(self) -> None:
        silent = self._clock.monotonic() - self._last_progress
        if silent > self._tuning.outage_timeout:
            self._health.reachable = False
            raise BrokerUnavailableError(
                f"Kafka has not acknowledged trades for {silent:.0f} s "
                f"(KAFKA_OUTAGE_TIMEOUT_SEC={self._tuning.outage_timeout:g}) "
                f"at {self._connection.who}"
            )

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        while not event.is_set():
            if self._failure is not None:
                raise self._failure
            silent = self._clock.monotonic() - self._last_progress
            remaining = self._tuning.outage_timeout - silent
            try:
                async with asyncio.timeout(max(0.05, min(remaining, 1.0))):
                    await event.wait()
            except TimeoutError:
                self._health.reachable = False
                self._check_outage()
                logger.warning(
                    "Waiting for Kafka: {what} ({n} pending)", what=what, n=self._pending
                )
            else:
                self._health.reachable = True
        if self._failure is not None:
            raise self._failure
