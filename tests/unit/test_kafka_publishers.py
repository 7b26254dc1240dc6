"""The Kafka publishers driven without a broker: a producer that answers as the test says."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from loguru import logger

from adapters.clock import SystemClock
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.health import BrokerHealth
from adapters.kafka.metadata import partition_for
from adapters.kafka.telemetry import EventProducer, KafkaEventPublisher
from adapters.kafka.trades import BatchProducer, KafkaTradePublisher
from adapters.metrics import RunStats
from domain.errors import BrokerUnavailableError, LoaderError
from domain.messages import TelemetryEvent
from domain.state import Status
from domain.trade import Trade
from testkit.factories import make_trades
from testkit.settings import settings

CONNECTION = KafkaConnection("broker.test:9092")


@pytest.fixture
def caplog_loguru() -> Iterator[list[str]]:
    """The messages the code under test logs, as loguru writes them."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


TOPIC = "trades"


class FakeProducer(BatchProducer, EventProducer):
    """Hands out real record batches; each sent batch's future is settled by the test."""

    def __init__(self, partitions: int = 1, *, acks_at_once: bool = False) -> None:
        self.partitions = partitions
        self.acks_at_once = acks_at_once
        self.sent: list[tuple[BatchBuilder, int, asyncio.Future[Any]]] = []
        self.raise_on_send: BaseException | None = None
        self.events_hang = False
        self._sent = asyncio.Event()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16 * 1024, 0)

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        if self.raise_on_send is not None:
            raise self.raise_on_send
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.acks_at_once:
            future.set_result(None)
        self.sent.append((batch, partition, future))
        self._sent.set()
        return future

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes) -> Any:
        if self.events_hang:
            await asyncio.Event().wait()
        return None

    async def wait_sent(self, count: int) -> None:
        while len(self.sent) < count:
            self._sent.clear()
            await self._sent.wait()

    @staticmethod
    def values(batch: BatchBuilder) -> list[bytes]:
        return [bytes(record.value) for record in DefaultRecordBatch(bytes(batch._build()))]


def publisher(producer: FakeProducer, **tuning: Any) -> KafkaTradePublisher:
    return KafkaTradePublisher(
        producer,
        TOPIC,
        CONNECTION,
        replace(settings().producer_tuning(), linger_ms=0, **tuning),
        BrokerHealth(),
        RunStats(),
        SystemClock(),
    )


async def one_batch_sent(producer: FakeProducer, first: int, last: int) -> KafkaTradePublisher:
    """A started publisher that sent BTCUSDT trades ``first..last`` as one batch, unanswered."""
    sut = publisher(producer)
    await sut.start(["BTCUSDT"])
    for trade in make_trades(first, last):
        await sut.publish(trade, 0.0)
    await producer.wait_sent(1)
    return sut


def event(status: Status = Status.LOADING) -> TelemetryEvent:
    return TelemetryEvent("q", "BTCUSDT", "ws_trade", status, "m", 0, status.terminal, "p", 1.0)


async def test_an_acknowledged_batch_is_counted_and_flushes() -> None:
    producer = FakeProducer()
    sut = await one_batch_sent(producer, 1, 3)
    producer.sent[0][2].set_result(None)
    await sut.flush(1.0)
    assert sut.acknowledged() == 3
    assert len(FakeProducer.values(producer.sent[0][0])) == 3


async def test_a_cancelled_send_is_a_failure_not_a_success() -> None:
    producer = FakeProducer()
    sut = await one_batch_sent(producer, 1, 3)
    producer.sent[0][2].cancel()
    with pytest.raises(BrokerUnavailableError, match=r"BTCUSDT trades 1\.\.3"):
        await sut.flush(1.0)
    assert sut.acknowledged() == 0


async def test_a_refused_batch_names_the_trades_it_held() -> None:
    producer = FakeProducer()
    sut = await one_batch_sent(producer, 7, 9)
    producer.sent[0][2].set_exception(RuntimeError("request timed out"))
    with pytest.raises(LoaderError, match=r"BTCUSDT trades 7\.\.9"):
        await sut.flush(1.0)


async def test_an_unexpected_error_in_the_client_fails_the_publisher_at_once() -> None:
    producer = FakeProducer()
    producer.raise_on_send = AssertionError("a bug inside the Kafka client")
    sut = publisher(producer, outage_timeout=3600.0)
    await sut.start(["BTCUSDT"])
    for trade in make_trades(1, 3):
        await sut.publish(trade, 0.0)
    with pytest.raises(LoaderError, match="a bug inside the Kafka client"):
        await asyncio.wait_for(sut.flush(3600.0), 5.0)


async def test_no_batch_is_sent_after_one_failed() -> None:
    producer = FakeProducer(partitions=1)
    sut = publisher(producer)
    await sut.start(["BTCUSDT"])
    await sut.publish(make_trades(1, 1)[0], 0.0)
    await producer.wait_sent(1)
    producer.sent[0][2].set_exception(RuntimeError("request timed out"))
    await asyncio.sleep(0)
    with pytest.raises(LoaderError):
        await sut.publish(make_trades(2, 2)[0], 0.0)
    assert len(producer.sent) == 1


async def test_an_event_waits_no_longer_than_it_is_told() -> None:
    producer = FakeProducer()
    producer.events_hang = True
    health = BrokerHealth()
    health.reachable = True
    sut = KafkaEventPublisher(producer, "events", CONNECTION, 120.0, health)
    with pytest.raises(BrokerUnavailableError, match=r"within 0\.05 s"):
        await asyncio.wait_for(sut.publish(event(Status.INTERRUPTED), 0.05), 5.0)


async def test_every_batch_lost_is_told_by_its_trades_even_after_the_first(
    caplog_loguru: list[str],
) -> None:
    producer = FakeProducer()
    sut = publisher(producer)
    await sut.start(["BTCUSDT"])
    await sut.publish(make_trades(1, 1)[0], 0.0)
    await producer.wait_sent(1)
    await sut.publish(make_trades(2, 2)[0], 0.0)
    await producer.wait_sent(2)
    producer.sent[0][2].set_exception(RuntimeError("request timed out"))
    producer.sent[1][2].cancel()
    await asyncio.sleep(0)
    assert [(g.first_id, g.last_id) for g in sut.unwritten()] == [(1, 1), (2, 2)]
    assert any("BTCUSDT trades 2..2 (1) were not written" in line for line in caplog_loguru)


async def test_close_ends_the_shipper_it_started_and_leaves_no_task_behind() -> None:
    producer = FakeProducer()
    sut = publisher(producer)
    await sut.start(["BTCUSDT"])
    shippers = [task for task in asyncio.all_tasks() if task.get_name() == "kafka-shipper"]
    assert len(shippers) == 1
    await sut.publish(make_trades(1, 1)[0], 0.0)  # an open batch, its linger timer running
    await sut.close()
    assert shippers[0].done()
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "kafka-shipper"]
    await sut.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        await sut.publish(make_trades(2, 2)[0], 0.0)
    with pytest.raises(RuntimeError, match="closed"):
        await sut.start(["BTCUSDT"])


def interleaved(symbols: list[str], first: int, last: int) -> list[Trade]:
    """Trades ``first..last`` of each symbol, in turn, as a combined stream mixes them."""
    per_symbol = [make_trades(first, last, symbol=symbol) for symbol in symbols]
    return [trade for round_ in zip(*per_symbol, strict=True) for trade in round_]


def keys_and_ids(batch: BatchBuilder) -> list[tuple[str, int]]:
    return [
        (bytes(record.key).decode(), orjson.loads(bytes(record.value))["trade_id"])
        for record in DefaultRecordBatch(bytes(batch._build()))
    ]


async def test_the_trades_of_every_symbol_bound_for_a_partition_share_its_batch() -> None:
    producer = FakeProducer(partitions=1, acks_at_once=True)
    sut = publisher(producer)
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    await sut.start(symbols)
    trades = interleaved(symbols, 1, 4)
    for trade in trades:
        await sut.publish(trade, 0.0)
    await sut.flush(1.0)
    # One request carries one batch per partition: a batch per symbol would hold one trade each.
    assert len(producer.sent) == 1
    assert keys_and_ids(producer.sent[0][0]) == [(t.symbol, t.trade_id) for t in trades]
    assert sut.acknowledged() == len(trades)


async def test_symbols_of_other_partitions_go_in_their_own_partitions_batch() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    producer = FakeProducer(partitions=2)
    sut = publisher(producer)
    await sut.start(symbols)
    home = {symbol: partition_for(symbol, [0, 1]) for symbol in symbols}
    assert set(home.values()) == {0, 1}, "the test needs symbols in both partitions"
    trades = interleaved(symbols, 1, 3)
    for trade in trades:
        await sut.publish(trade, 0.0)
    await producer.wait_sent(2)
    assert sorted(partition for _, partition, _ in producer.sent) == [0, 1]
    for batch, partition, _ in producer.sent:
        expected = [(t.symbol, t.trade_id) for t in trades if home[t.symbol] == partition]
        assert keys_and_ids(batch) == expected


async def test_a_refused_batch_of_several_symbols_names_each_symbols_trades() -> None:
    producer = FakeProducer(partitions=1)
    sut = publisher(producer)
    await sut.start(["BTCUSDT", "ETHUSDT"])
    for trade in interleaved(["BTCUSDT", "ETHUSDT"], 5, 7):
        await sut.publish(trade, 0.0)
    await producer.wait_sent(1)
    producer.sent[0][2].set_exception(RuntimeError("request timed out"))
    with pytest.raises(LoaderError, match=r"BTCUSDT trades 5\.\.7 \(3\), ETHUSDT trades 5\.\.7"):
        await sut.flush(1.0)
    assert sorted((g.symbol, g.first_id, g.last_id) for g in sut.unwritten()) == [
        ("BTCUSDT", 5, 7),
        ("ETHUSDT", 5, 7),
    ]
