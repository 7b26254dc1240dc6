"""The loader use case driven through in-memory adapters: outcomes, not calls."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace

import pytest

from adapters.metrics import RunStats
from application.backfill import QUIET_AFTER_RECONNECT
from application.config import LoaderConfig
from application.loader import TERMINAL_EVENT_SECONDS, Outcome, TradeLoader
from application.ports import DroppedRange, LastPublished
from domain.errors import (
    BrokerAuthorizationError,
    BrokerUnavailableError,
    ExchangeUnavailableError,
)
from domain.messages import ControlCommand
from domain.state import Status
from testkit.factories import make_trade, make_trades
from testkit.fakes import (
    InMemoryControlChannel,
    InMemoryEventPublisher,
    InMemoryExchange,
    InMemoryTopicTail,
    InMemoryTradeFeed,
    InMemoryTradePublisher,
    ManualClock,
)
from testkit.settings import settings

QUEUE = "wf-ws-trades-20240801-a1b2c3"


@dataclass
class World:
    """Every port's fake, and the config of the run."""

    config: LoaderConfig = field(
        default_factory=lambda: settings(
            QUEUE_ID=QUEUE, TELEMETRY_PRODUCER_ID="loader-ws-trades__a1b2c3"
        ).loader_config()
    )
    clock: ManualClock = field(default_factory=ManualClock)
    feed: InMemoryTradeFeed = field(init=False)
    exchange: InMemoryExchange = field(
        default_factory=lambda: InMemoryExchange({"BTCUSDT": "TRADING", "ETHUSDT": "TRADING"})
    )
    publisher: InMemoryTradePublisher = field(default_factory=InMemoryTradePublisher)
    tail: InMemoryTopicTail = field(default_factory=InMemoryTopicTail)
    events: InMemoryEventPublisher = field(default_factory=InMemoryEventPublisher)
    control: InMemoryControlChannel = field(default_factory=InMemoryControlChannel)
    stats: RunStats = field(default_factory=RunStats)

    def __post_init__(self) -> None:
        self.feed = InMemoryTradeFeed(self.clock)

    async def streaming(self, **config: object) -> tuple[TradeLoader, asyncio.Task[Outcome]]:
        """A loader with ``config``, running, once it streams."""
        sut = self.loader(**config)
        run = asyncio.create_task(sut.run())
        await wait_until_streaming(self)
        return sut, run

    def loader(self, **config: object) -> TradeLoader:
        self.config = replace(self.config, **config)  # type: ignore[arg-type]
        self.feed.symbols = list(self.config.symbols)
        return TradeLoader(
            self.config,
            feed=self.feed,
            directory=self.exchange,
            history=self.exchange,
            publisher=self.publisher,
            tail=self.tail,
            events=self.events,
            control=self.control,
            clock=self.clock,
            metrics=self.stats,
        )

    @property
    def published_ids(self) -> list[int]:
        return [trade.trade_id for trade in self.publisher.published]


@pytest.fixture
def world() -> World:
    return World()


async def wait_until_streaming(world: World) -> None:
    """Until the run streams: its telemetry and silence timers are asleep on the clock."""
    timers = 2 + (world.config.stop_after_seconds is not None)
    await world.clock.wait_for_sleepers(timers)
    assert world.feed.opened


async def past_the_quiet_check(world: World) -> None:
    """Once the pump waits to look at a symbol quiet since its reconnect, move the clock past
    that moment."""
    timers = 2 + (world.config.stop_after_seconds is not None)
    await world.clock.wait_for_sleepers(timers + 1)
    await world.clock.advance(QUIET_AFTER_RECONNECT)


async def run_clock_until_done(
    world: World, run: asyncio.Task[Outcome], step: float = 0.05, limit: float = 60.0
) -> Outcome:
    """Move the clock on in small steps until the run ends (at most ``limit`` seconds)."""
    elapsed = 0.0
    while not run.done() and elapsed < limit:
        await world.clock.advance(step)
        elapsed += step
        await asyncio.sleep(0)  # the clock yields only when it wakes a sleeper
    assert run.done(), f"the run still goes on after {limit:g} s of its clock"
    return await run


def assert_contract_sequence(world: World, outcome: Outcome) -> None:
    statuses = world.events.statuses
    assert statuses[0] == "started"
    assert statuses[-1] == outcome.status.value
    assert all(s == "loading" for s in statuses[1:-1])
    assert [e.finished for e in world.events.events] == [False] * (len(statuses) - 1) + [True]
    counts = [e.records_written for e in world.events.events]
    assert counts == sorted(counts)
    for event in world.events.events:
        assert event.queue_id == QUEUE
        assert event.producer == "loader-ws-trades__a1b2c3"
        assert event.type == "ws_trade"
        assert event.symbol == ",".join(world.config.symbols)


async def test_a_bound_on_records_publishes_exactly_that_many_and_finishes(world: World) -> None:
    sut = world.loader(stop_after_records=3)
    world.feed.push(*make_trades(100, 105))
    outcome = await sut.run()
    assert outcome.status is Status.FINISHED
    assert outcome.exit_code == 0
    assert world.published_ids == [100, 101, 102]
    assert world.events.statuses == ["started", "finished"]
    assert world.events.events[-1].records_written == 3
    assert "STOP_AFTER_RECORDS=3" in world.events.events[-1].message
    assert world.publisher.flushed
    assert world.publisher.closed
    assert_contract_sequence(world, outcome)


async def test_a_stop_command_for_this_queue_interrupts_after_publishing_what_came(
    world: World,
) -> None:
    _sut, run = await world.streaming()
    world.feed.push(*make_trades(1, 50))
    await world.publisher.wait_for_count(50)
    world.control.send(ControlCommand("stop", "another-queue"))
    world.control.send(ControlCommand("pause", QUEUE))
    world.control.send(ControlCommand("stop", QUEUE))
    outcome = await run
    assert outcome.status is Status.INTERRUPTED
    assert outcome.exit_code == 0
    assert world.published_ids == list(range(1, 51))
    assert world.events.events[-1].records_written == 50
    assert world.feed.closed
    assert_contract_sequence(world, outcome)


async def test_commands_for_other_queues_do_not_stop_the_run(world: World) -> None:
    sut = world.loader(stop_after_records=2)
    world.control.send(ControlCommand("stop", "another-queue"))
    world.control.send(ControlCommand("STOP", QUEUE))
    run = asyncio.create_task(sut.run())
    await wait_until_streaming(world)
    world.feed.push(*make_trades(1, 2))
    outcome = await run
    assert outcome.status is Status.FINISHED


async def test_a_stop_already_in_the_control_topic_ends_the_run_at_once(world: World) -> None:
    world.control.send(ControlCommand("stop", QUEUE))
    outcome = await world.loader().run()
    assert outcome.status is Status.INTERRUPTED
    assert world.events.statuses == ["started", "interrupted"]


async def test_a_signal_interrupts_after_the_received_trades_are_published(world: World) -> None:
    sut, run = await world.streaming()
    world.feed.push(*make_trades(7, 9))
    sut.request_stop("SIGTERM received")
    outcome = await run
    assert outcome.status is Status.INTERRUPTED
    assert "SIGTERM received" in outcome.message
    assert world.published_ids == [7, 8, 9]


async def test_a_time_bound_finishes_the_run(world: World) -> None:
    _sut, run = await world.streaming(stop_after_seconds=30, telemetry_interval=100)
    world.feed.push(*make_trades(1, 4))
    await world.publisher.wait_for_count(4)
    await world.clock.advance(29)
    assert not run.done()
    await world.clock.advance(1)
    outcome = await run
    assert outcome.status is Status.FINISHED
    assert "STOP_AFTER_SECONDS=30" in outcome.message
    assert outcome.records_written == 4


async def test_loading_events_come_every_interval_also_without_trades(world: World) -> None:
    sut, run = await world.streaming(telemetry_interval=5)
    await world.clock.advance(5)
    await world.events.wait_for_count(2)
    assert world.events.events[1].status is Status.LOADING
    assert world.events.events[1].records_written == 0
    assert world.events.events[1].message == "Loaded and published 0 trade records"
    world.feed.push(*make_trades(1, 3))
    await world.publisher.wait_for_count(3)
    await world.clock.advance(5)
    await world.events.wait_for_count(3)
    assert world.events.events[2].records_written == 3
    assert world.events.events[2].timestamp == world.clock.time()
    await world.clock.advance(4.9)
    assert len(world.events.events) == 3
    sut.request_stop("test over")
    outcome = await run
    assert_contract_sequence(world, outcome)


async def test_records_written_counts_only_acknowledged_trades(world: World) -> None:
    world.publisher.auto_ack = False
    sut, run = await world.streaming(telemetry_interval=5)
    world.feed.push(*make_trades(1, 10))
    await world.publisher.wait_for_count(10)
    await world.clock.advance(5)
    await world.events.wait_for_count(2)
    assert world.events.events[-1].records_written == 0
    world.publisher.ack_all()
    sut.request_stop("done")
    outcome = await run
    assert outcome.records_written == 10


async def test_an_unknown_symbol_ends_with_exit_2_and_an_error_naming_it(world: World) -> None:
    outcome = await world.loader(symbols=("BTCUSDT", "NOSUCHCOIN")).run()
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 2
    assert world.events.statuses == ["started", "error"]
    assert "NOSUCHCOIN" in world.events.events[-1].message
    assert not world.feed.opened


async def test_a_symbol_not_trading_is_reported_and_the_run_goes_on(world: World) -> None:
    world.exchange.symbols["BTCUSDT"] = "BREAK"
    sut = world.loader(stop_after_records=1)
    world.feed.push(make_trade(1))
    outcome = await sut.run()
    assert outcome.status is Status.FINISHED
    assert world.events.statuses == ["started", "loading", "finished"]
    assert "not trading" in world.events.events[1].message


async def test_a_feed_that_gives_up_ends_with_exit_1(world: World) -> None:
    sut = world.loader()
    world.feed.push(*make_trades(1, 5))
    world.feed.fail(ExchangeUnavailableError("exchange unreachable for 300 s"))
    outcome = await sut.run()
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 1
    assert "unreachable" in outcome.message
    assert world.published_ids == [1, 2, 3, 4, 5]
    assert_contract_sequence(world, outcome)


async def test_a_refused_topic_ends_with_exit_2(world: World) -> None:
    world.publisher.failure = BrokerAuthorizationError("Kafka authorisation refused on topic")
    world.feed.push(make_trade(1))
    outcome = await world.loader().run()
    assert outcome.exit_code == 2
    assert "authorisation refused" in world.events.events[-1].message


async def test_duplicates_are_dropped_and_order_kept(world: World) -> None:
    sut = world.loader(stop_after_records=5)
    world.feed.push(*make_trades(1, 3), *make_trades(2, 4), *make_trades(4, 5))
    await sut.run()
    assert world.published_ids == [1, 2, 3, 4, 5]
    assert world.stats.duplicates["BTCUSDT"] == 3


def published(world: World, symbol: str) -> list[int]:
    return [t.trade_id for t in world.publisher.published if t.symbol == symbol]


async def test_a_gap_holds_only_its_symbol_while_history_is_fetched(world: World) -> None:
    """The pump never waits for history: other symbols flow on, and the held symbol's live
    trades follow its gap, in order, once history answers."""
    world.exchange.record(*make_trades(1, 20))
    world.exchange.hold = asyncio.Event()
    _sut, run = await world.streaming(
        symbols=("BTCUSDT", "ETHUSDT"),
        stop_after_records=30,
        telemetry_interval=1000,
        silence_timeout=1000,
    )
    world.feed.push(*make_trades(1, 3), *make_trades(9, 12))
    await world.exchange.wait_for_requests(1)
    world.feed.push(*make_trades(1, 10, symbol="ETHUSDT"), *make_trades(13, 15))
    await world.publisher.wait_for_count(13)
    assert published(world, "ETHUSDT") == list(range(1, 11))
    assert published(world, "BTCUSDT") == [1, 2, 3]
    assert (world.stats.held_symbols, world.stats.held_trades) == (1, 7)
    world.exchange.hold.set()
    world.feed.push(*make_trades(16, 20))
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.FINISHED
    assert published(world, "BTCUSDT") == list(range(1, 21))
    assert (world.stats.held_symbols, world.stats.held_trades) == (0, 0)


async def test_gaps_are_served_oldest_first(world: World) -> None:
    world.exchange.record(*make_trades(1, 10), *make_trades(1, 10, symbol="ETHUSDT"))
    world.exchange.hold = asyncio.Event()
    _sut, run = await world.streaming(
        symbols=("BTCUSDT", "ETHUSDT"),
        stop_after_records=20,
        telemetry_interval=1000,
        silence_timeout=1000,
    )
    eth = make_trades(1, 10, symbol="ETHUSDT")
    btc = make_trades(1, 10)
    world.feed.push(eth[0], btc[0], btc[-1])
    await world.exchange.wait_for_requests(1)
    world.feed.push(eth[-1])
    world.exchange.hold.set()
    await asyncio.wait_for(run, 5)
    assert [r[0] for r in world.exchange.history_requests] == ["BTCUSDT", "ETHUSDT"]


async def test_past_the_hold_bound_only_ids_are_kept_and_history_brings_the_trades(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 30))
    world.exchange.hold = asyncio.Event()
    _sut, run = await world.streaming(
        stop_after_records=30, backfill_hold_trades=2, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 3), *make_trades(9, 10))
    await world.exchange.wait_for_requests(1)
    world.feed.push(*make_trades(11, 25))
    await world.feed.drained()
    assert world.stats.held_trades == 2
    world.exchange.hold.set()
    world.feed.push(*make_trades(26, 30))
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.FINISHED
    assert world.published_ids == list(range(1, 31))
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 0
    # What was not held came from history: one request for the gap, one for the ids kept.
    assert [r[:2] for r in world.exchange.history_requests] == [("BTCUSDT", 4), ("BTCUSDT", 11)]


async def test_a_stop_publishes_the_trades_held_behind_a_gap(world: World) -> None:
    world.exchange.record(*make_trades(1, 20))
    world.exchange.hold = asyncio.Event()
    sut, run = await world.streaming(telemetry_interval=1000, silence_timeout=1000)
    world.feed.push(*make_trades(1, 3), *make_trades(9, 15))
    await world.exchange.wait_for_requests(1)
    sut.request_stop("SIGTERM received")
    world.exchange.hold.set()
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.INTERRUPTED
    assert world.published_ids == list(range(1, 16))


async def test_a_jump_in_trade_ids_is_filled_from_history_in_order(world: World) -> None:
    world.exchange.record(*make_trades(1, 20))
    sut = world.loader(stop_after_records=12)
    world.feed.push(*make_trades(1, 3), *make_trades(9, 12))
    await sut.run()
    assert world.published_ids == list(range(1, 13))
    assert world.stats.gaps["BTCUSDT"] == 1
    assert world.stats.backfilled_trades["BTCUSDT"] == 5
    assert world.publisher.published[4] == make_trades(1, 20)[4]


@pytest.mark.parametrize(
    ("next_live", "requests"),
    [(25, [("BTCUSDT", 11)]), (11, [])],
    ids=["missed-some", "missed-none"],
)
async def test_the_trade_after_a_reconnect_reveals_what_was_missed_and_only_that_is_fetched(
    world: World, next_live: int, requests: list[tuple[str, int]]
) -> None:
    world.exchange.record(*make_trades(1, 30))
    sut = world.loader(stop_after_records=30)
    world.feed.push(*make_trades(1, 10))
    world.feed.push_reconnected("dropped without a close frame")
    world.feed.push(*make_trades(next_live, 30))
    await sut.run()
    assert world.published_ids == list(range(1, 31))
    assert [r[:2] for r in world.exchange.history_requests] == requests
    assert world.exchange.latest_requests == []


async def test_a_symbol_quiet_after_a_reconnect_is_probed_by_its_newest_trade_id(
    world: World,
) -> None:
    """No live trade reveals the gap of a quiet symbol: its newest id does, cheaply, and
    only then is its history fetched."""
    world.exchange.record(*make_trades(1, 14))
    world.exchange.record(*make_trades(1, 5, symbol="ETHUSDT"))
    _sut, run = await world.streaming(
        symbols=("ETHUSDT", "BTCUSDT"),
        stop_after_records=19,
        telemetry_interval=1000,
        silence_timeout=1000,
    )
    world.feed.push(*make_trades(1, 10), *make_trades(1, 5, symbol="ETHUSDT"))
    world.feed.push_reconnected("dropped without a close frame")
    await past_the_quiet_check(world)
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.FINISHED
    assert [t.trade_id for t in world.publisher.published if t.symbol == "BTCUSDT"] == list(
        range(1, 15)
    )
    assert world.exchange.latest_requests == ["ETHUSDT", "BTCUSDT"]
    assert [r[:2] for r in world.exchange.history_requests] == [("BTCUSDT", 11)]


async def test_a_failed_probe_of_a_quiet_symbol_is_logged_and_the_run_goes_on(
    world: World,
) -> None:
    world.exchange.refuse_history = "aggTrades answered HTTP 403"
    _sut, run = await world.streaming(
        stop_after_records=12, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 10))
    world.feed.push_reconnected("dropped without a close frame")
    await past_the_quiet_check(world)
    world.feed.push(*make_trades(11, 12))
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.FINISHED
    assert world.exchange.latest_requests == ["BTCUSDT"]
    assert world.published_ids == list(range(1, 13))


async def test_an_unfillable_gap_is_reported_and_the_run_goes_on(world: World) -> None:
    world.exchange.refuse_history = "historicalTrades answered HTTP 403"
    sut = world.loader(stop_after_records=6)
    world.feed.push(*make_trades(1, 3), *make_trades(10, 12))
    outcome = await sut.run()
    assert outcome.status is Status.FINISHED
    assert world.published_ids == [1, 2, 3, 10, 11, 12]
    messages = [e.message for e in world.events.events if e.status is Status.LOADING]
    assert any("4..9 (6) could not be recovered" in m and "HTTP 403" in m for m in messages)
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 6


async def test_a_gap_larger_than_allowed_is_not_fetched(world: World) -> None:
    world.exchange.record(*make_trades(1, 200))
    sut = world.loader(stop_after_records=2, backfill_max_trades=50)
    world.feed.push(make_trade(1), make_trade(200))
    await sut.run()
    assert world.published_ids == [1, 200]
    assert world.exchange.history_requests == []
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 198


async def test_a_restart_resumes_after_the_last_trade_in_the_topic(world: World) -> None:
    now_ms = int(world.clock.time() * 1000)
    world.exchange.record(*make_trades(1, 40, timestamp=now_ms - 60_000))
    world.tail.in_topic = [LastPublished("BTCUSDT", 20, now_ms - 59_000)]
    sut = world.loader(stop_after_records=15)
    world.feed.push(*make_trades(31, 35, timestamp=now_ms - 60_000))
    await sut.run()
    assert world.published_ids == list(range(21, 36))


async def test_a_topic_tail_older_than_the_window_is_not_resumed(world: World) -> None:
    now_ms = int(world.clock.time() * 1000)
    world.exchange.record(*make_trades(1, 40))
    world.tail.in_topic = [LastPublished("BTCUSDT", 20, now_ms - 10 * 3600 * 1000)]
    sut = world.loader(stop_after_records=3, resume_window=3600)
    world.feed.push(*make_trades(31, 33))
    await sut.run()
    assert world.published_ids == [31, 32, 33]


async def test_several_symbols_are_sequenced_independently(world: World) -> None:
    world.exchange.record(*make_trades(1, 10, symbol="ETHUSDT"))
    sut = world.loader(symbols=("BTCUSDT", "ETHUSDT"), stop_after_records=7)
    eth = make_trades(1, 10, symbol="ETHUSDT")
    world.feed.push(
        make_trade(500, symbol="BTCUSDT"), eth[0], make_trade(501, symbol="BTCUSDT"), eth[4]
    )
    await sut.run()
    by_symbol = {
        s: [t.trade_id for t in world.publisher.published if t.symbol == s]
        for s in ("BTCUSDT", "ETHUSDT")
    }
    assert by_symbol == {"BTCUSDT": [500, 501], "ETHUSDT": [1, 2, 3, 4, 5]}
    assert world.events.events[0].symbol == "BTCUSDT,ETHUSDT"


async def test_a_silent_stream_with_newer_trades_in_history_is_reconnected(world: World) -> None:
    world.exchange.record(*make_trades(1, 10))
    sut, run = await world.streaming(silence_timeout=60, telemetry_interval=1000)
    world.feed.push(*make_trades(1, 5))
    await world.publisher.wait_for_count(5)
    await world.clock.advance(59)
    assert world.feed.reconnect_requests == []
    await world.clock.advance(31)
    assert world.feed.reconnect_requests == ["silent stream"]
    sut.request_stop("done")
    await run


async def test_a_quiet_market_is_not_mistaken_for_a_silent_stream(world: World) -> None:
    world.exchange.record(*make_trades(1, 5))
    sut, run = await world.streaming(silence_timeout=60, telemetry_interval=1000)
    world.feed.push(*make_trades(1, 5))
    await world.publisher.wait_for_count(5)
    await world.clock.advance(200)
    assert world.feed.reconnect_requests == []
    sut.request_stop("done")
    await run


async def test_unacknowledged_trades_at_shutdown_end_with_exit_1(world: World) -> None:
    world.publisher.auto_ack = False
    sut, run = await world.streaming()
    world.feed.push(*make_trades(1, 3))
    await world.publisher.wait_for_count(3)
    sut.request_stop("SIGTERM received")
    outcome = await run
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 1
    assert "not acknowledged" in outcome.message


async def test_one_silent_symbol_among_busy_ones_is_noticed(world: World) -> None:
    world.exchange.record(*make_trades(1, 10, symbol="ETHUSDT"))
    sut, run = await world.streaming(
        symbols=("BTCUSDT", "ETHUSDT"), silence_timeout=60, telemetry_interval=1000
    )
    world.feed.push(*make_trades(1, 2, symbol="ETHUSDT"))
    for second in range(0, 120, 10):
        world.feed.push(make_trade(100 + second // 10, symbol="BTCUSDT"))
        await world.publisher.wait_for_count(3 + second // 10)
        await world.clock.advance(10)
    # ETHUSDT is looked at once per silence bound while BTCUSDT keeps trading.
    assert world.feed.reconnect_requests == ["silent stream", "silent stream"]
    sut.request_stop("done")
    await run


async def test_missing_trades_older_than_the_age_bound_are_reported_not_published(
    world: World,
) -> None:
    hour = 3600 * 1000
    trades = make_trades(1, 6)
    old = [replace(t, timestamp=t.timestamp - 3 * hour) for t in trades[1:4]]
    world.exchange.record(trades[0], *old, *trades[4:])
    sut = world.loader(stop_after_records=3, backfill_max_age=2 * 3600)
    world.feed.push(trades[0], trades[5])
    await sut.run()
    assert world.published_ids == [1, 5, 6]
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 3
    messages = [e.message for e in world.events.events]
    assert any("2..4 (3) could not be recovered: older than" in m for m in messages)


async def test_a_stop_whose_drain_bound_runs_out_ends_in_error_saying_what_was_lost(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 20))
    world.exchange.hold = asyncio.Event()
    sut, run = await world.streaming(drain_timeout=5, telemetry_interval=1000, silence_timeout=1000)
    world.feed.push(*make_trades(1, 3), *make_trades(10, 12))
    await world.exchange.wait_for_requests(1)
    sut.request_stop("SIGTERM received")
    # The telemetry and silence timers, and now the drain bound.
    await world.clock.wait_for_sleepers(3)
    await world.clock.advance(5)
    outcome = await run
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 1
    assert "DRAIN_TIMEOUT_SEC=5" in outcome.message
    assert "3 held behind gaps being filled and 0 frames not yet processed" in outcome.message
    assert world.events.statuses[-1] == "error"
    assert_contract_sequence(world, outcome)


async def test_a_time_bound_whose_drain_runs_out_ends_in_error_not_finished(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 20))
    world.exchange.hold = asyncio.Event()
    sut = world.loader(
        drain_timeout=5, stop_after_seconds=30, telemetry_interval=1000, silence_timeout=1000
    )
    run = asyncio.create_task(sut.run())
    await wait_until_streaming(world)
    world.feed.push(*make_trades(1, 3), *make_trades(10, 12))
    await world.exchange.wait_for_requests(1)
    await world.clock.advance(30)
    # The telemetry and silence timers, and now the drain bound.
    await world.clock.wait_for_sleepers(3)
    await world.clock.advance(5)
    outcome = await run
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 1
    assert "DRAIN_TIMEOUT_SEC=5" in outcome.message


async def test_a_publisher_failing_while_draining_a_stop_ends_in_error(world: World) -> None:
    sut, run = await world.streaming(telemetry_interval=1000, silence_timeout=1000)
    world.publisher.failure = BrokerUnavailableError("Kafka has not acknowledged trades for 120 s")
    world.feed.push(*make_trades(1, 3))
    sut.request_stop("SIGTERM received")
    outcome = await run
    assert outcome.status is Status.ERROR
    assert outcome.exit_code == 1
    assert "not acknowledged trades" in outcome.message


async def test_a_listed_symbol_that_does_not_trade_is_not_reconnected_for_silence(
    world: World,
) -> None:
    world.exchange.symbols["HALTUSDT"] = "BREAK"
    world.exchange.record(*make_trades(1, 5, symbol="HALTUSDT"))
    sut, run = await world.streaming(
        symbols=("BTCUSDT", "HALTUSDT"), silence_timeout=60, telemetry_interval=1000
    )
    for second in range(0, 600, 10):
        world.feed.push(make_trade(100 + second // 10, symbol="BTCUSDT"))
        await world.publisher.wait_for_count(1 + second // 10)
        await world.clock.advance(10)
    assert world.feed.reconnect_requests == []
    sut.request_stop("done")
    await run


async def test_a_symbol_that_never_sends_while_the_exchange_trades_it_is_reconnected(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 5, symbol="ETHUSDT"))
    sut, run = await world.streaming(
        symbols=("BTCUSDT", "ETHUSDT"), silence_timeout=60, telemetry_interval=1000
    )
    await world.clock.advance(90)
    assert world.feed.reconnect_requests == []
    world.exchange.record(*make_trades(6, 8, symbol="ETHUSDT"))
    await world.clock.advance(60)
    assert world.feed.reconnect_requests == ["silent stream"]
    sut.request_stop("done")
    await run


async def test_a_backlog_behind_a_slow_broker_is_not_mistaken_for_silence(world: World) -> None:
    world.exchange.record(*make_trades(1, 50))
    world.publisher.hold = asyncio.Event()
    sut, run = await world.streaming(silence_timeout=60, telemetry_interval=1000)
    world.feed.push(*make_trades(1, 50))
    await world.publisher.wait_for_count(1)
    await world.clock.advance(200)
    assert world.feed.reconnect_requests == []
    world.publisher.hold.set()
    sut.request_stop("done")
    outcome = await run
    assert world.published_ids == list(range(1, 51))
    assert outcome.status is Status.INTERRUPTED


async def test_trades_unread_in_the_socket_while_reading_is_paused_are_not_silence(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 10))
    sut, run = await world.streaming(silence_timeout=60, telemetry_interval=1000)
    world.feed.push(*make_trades(1, 5))
    await world.publisher.wait_for_count(5)
    world.feed.paused_at = math.inf  # the buffer is full: trades 6..10 wait in the socket
    await world.clock.advance(90)
    assert world.feed.reconnect_requests == []
    world.feed.paused_at = world.clock.monotonic()  # reading again, and still silent
    await world.clock.advance(90)
    assert world.feed.reconnect_requests[:1] == ["silent stream"]
    sut.request_stop("done")
    await run


async def test_a_stop_in_the_backlog_is_read_before_anything_streams(world: World) -> None:
    ready = asyncio.Event()
    world.control = InMemoryControlChannel(ControlCommand("stop", QUEUE), ready=ready)
    world.feed.push(*make_trades(1, 5))
    sut = world.loader()
    run = asyncio.create_task(sut.run())
    await world.control.wait_subscribed()
    streaming_before_the_backlog_was_read = world.feed.opened
    ready.set()
    outcome = await run
    assert not streaming_before_the_backlog_was_read
    assert not world.feed.opened
    assert world.published_ids == []
    assert outcome.status is Status.INTERRUPTED
    assert world.events.statuses == ["started", "interrupted"]


@pytest.mark.parametrize(
    ("phase", "stop"),
    [("symbols", "SIGTERM"), ("topic tail", "SIGTERM"), ("topic tail", "stop command")],
)
async def test_a_stop_while_the_run_prepares_interrupts_it_at_once_before_streaming(
    world: World, phase: str, stop: str
) -> None:
    if phase == "symbols":
        world.exchange.hold_describe = asyncio.Event()
        reached = world.exchange.wait_described
    else:  # a long scan of the topic's tail
        world.tail.hold = asyncio.Event()
        reached = world.tail.wait_asked
    sut = world.loader()
    run = asyncio.create_task(sut.run())
    await reached()
    if stop == "SIGTERM":
        sut.request_stop("SIGTERM received")
    else:
        world.control.send(ControlCommand("stop", QUEUE))
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.status is Status.INTERRUPTED
    assert outcome.exit_code == 0
    assert world.events.statuses == ["started", "interrupted"]
    assert not world.feed.opened


async def test_the_last_event_of_a_stop_waits_no_longer_than_the_drain_bound_allows(
    world: World,
) -> None:
    world.publisher.auto_ack = False
    sut, run = await world.streaming(
        drain_timeout=20, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 3))
    await world.publisher.wait_for_count(3)
    sut.request_stop("SIGTERM received")
    outcome = await run
    assert outcome.status is Status.ERROR
    terminal = world.events.timeouts[-1]
    assert terminal is not None
    assert terminal <= 20 + TERMINAL_EVENT_SECONDS


@pytest.mark.parametrize(
    ("lost", "published"),
    [("reconnected", 60), ("dropped", 150)],
    ids=["missed-on-reconnect", "dropped-by-the-feed"],
)
async def test_a_stop_during_recovery_ends_it_unless_the_trades_were_received(
    world: World, lost: str, published: int
) -> None:
    """Missed on the wire, they need not be fetched after a stop; dropped by a full buffer,
    they were received, and a stop does not excuse them."""
    now_ms = int(world.clock.time() * 1000)
    world.exchange.record(*make_trades(1, 3000, timestamp=now_ms - 60_000))
    world.exchange.hold = asyncio.Event()
    sut, run = await world.streaming(
        backfill_page_size=50, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 10))
    if lost == "reconnected":
        world.feed.push_reconnected("dropped without a close frame")
        await past_the_quiet_check(world)
    else:
        newest = make_trades(150, 150, timestamp=now_ms - 60_000)[0]
        world.feed.push_dropped(DroppedRange("BTCUSDT", 11, 150, newest.timestamp))
    await world.exchange.wait_for_requests(1)
    sut.request_stop("SIGTERM received")
    world.exchange.hold.set()
    outcome = await run
    assert outcome.status is Status.INTERRUPTED
    assert world.published_ids == list(range(1, published + 1))
    if lost == "reconnected":
        assert len(world.exchange.history_requests) == 1


async def test_a_stop_still_closes_a_gap_up_to_the_last_trade_received(world: World) -> None:
    world.exchange.record(*make_trades(1, 3000))
    world.exchange.hold = asyncio.Event()
    sut, run = await world.streaming(
        backfill_page_size=50, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 10), *make_trades(200, 201))
    await world.exchange.wait_for_requests(1)
    sut.request_stop("SIGTERM received")
    world.exchange.hold.set()
    outcome = await run
    assert outcome.status is Status.INTERRUPTED
    assert world.published_ids == list(range(1, 202))


async def test_history_answered_after_a_stop_brings_no_trade_made_after_it(world: World) -> None:
    now_ms = int(world.clock.time() * 1000)
    world.exchange.record(*make_trades(1, 10, timestamp=now_ms - 60_000))
    world.exchange.record(*make_trades(11, 100, timestamp=now_ms + 5_000))
    world.exchange.hold = asyncio.Event()
    sut, run = await world.streaming(telemetry_interval=1000, silence_timeout=1000)
    world.feed.push(*make_trades(1, 5, timestamp=now_ms - 60_000))
    world.feed.push_reconnected("dropped without a close frame")
    await past_the_quiet_check(world)
    await world.exchange.wait_for_requests(1)
    sut.request_stop("SIGTERM received")
    world.exchange.hold.set()
    await run
    assert world.published_ids == list(range(1, 11))


async def test_dropped_trades_that_cannot_be_had_are_reported_and_never_fetched_again(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 320))
    _sut, run = await world.streaming(
        stop_after_records=12, backfill_max_trades=50, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 10))
    world.feed.push_dropped(DroppedRange("BTCUSDT", 11, 300, make_trades(300, 300)[0].timestamp))
    world.feed.push_reconnected("dropped without a close frame")
    await past_the_quiet_check(world)
    await asyncio.wait_for(run, 5)
    # The range is reported whole; the catch-up after the reconnect starts after it.
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 290
    assert world.published_ids == [*range(1, 11), 301, 302]
    assert [r[:2] for r in world.exchange.history_requests] == [("BTCUSDT", 301)]


async def test_dropped_trades_of_a_symbol_not_seen_yet_are_recovered_from_the_first(
    world: World,
) -> None:
    world.exchange.record(*make_trades(1, 20))
    sut = world.loader(stop_after_records=16)
    world.feed.push_dropped(DroppedRange("BTCUSDT", 5, 12, make_trades(12, 12)[0].timestamp))
    world.feed.push(*make_trades(13, 20))
    await sut.run()
    assert world.published_ids == list(range(5, 21))


async def test_a_gap_is_filled_when_history_catches_up_with_the_stream(world: World) -> None:
    trades = make_trades(1, 12)
    world.exchange.record(*trades[:3])
    _sut, run = await world.streaming(
        stop_after_records=12, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*trades[:3], *trades[9:])
    await world.exchange.wait_for_requests(1)
    # History lags the stream: the missing trades show up there a moment later.
    world.exchange.record(*trades[3:])
    outcome = await run_clock_until_done(world, run)
    assert world.published_ids == list(range(1, 13))
    assert outcome.status is Status.FINISHED
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 0


async def test_a_gap_history_never_reaches_is_reported_after_a_bounded_wait(world: World) -> None:
    world.exchange.record(*make_trades(1, 3))
    _sut, run = await world.streaming(
        stop_after_records=6, telemetry_interval=1000, silence_timeout=1000
    )
    world.feed.push(*make_trades(1, 3), *make_trades(10, 12))
    outcome = await run_clock_until_done(world, run)
    assert world.published_ids == [1, 2, 3, 10, 11, 12]
    assert outcome.status is Status.FINISHED
    messages = [e.message for e in world.events.events]
    lost = "4..9 (6) could not be recovered: history does not reach them"
    assert any(lost in m for m in messages)


async def test_a_trade_arriving_just_after_a_later_one_is_taken_from_the_batch_not_history(
    world: World,
) -> None:
    world.exchange.refuse_history = "historicalTrades answered HTTP 429"
    trades = make_trades(1, 6)
    sut = world.loader(stop_after_records=6)
    # Two connections overlap while one replaces the other: their frames interleave.
    world.feed.push(*trades[:3], trades[4], trades[3], trades[5])
    outcome = await sut.run()
    assert outcome.status is Status.FINISHED
    assert world.published_ids == [1, 2, 3, 4, 5, 6]
    assert world.exchange.history_requests == []
    assert world.stats.unrecoverable_trades["BTCUSDT"] == 0


async def test_a_signal_before_the_start_bounds_every_event_by_the_drain_bound(
    world: World,
) -> None:
    sut = world.loader(drain_timeout=5)
    sut.request_stop("SIGTERM received")
    outcome = await sut.run()
    assert outcome.status is Status.INTERRUPTED
    assert world.events.statuses == ["started", "interrupted"]
    assert all(t is not None and t <= 5 + TERMINAL_EVENT_SECONDS for t in world.events.timeouts)


async def test_telemetry_that_cannot_be_sent_during_a_stop_loses_no_trade(world: World) -> None:
    world.events.failure = BrokerUnavailableError("Kafka did not acknowledge a telemetry event")
    sut = world.loader()
    sut.request_stop("SIGTERM received")
    outcome = await sut.run()
    assert outcome.status is Status.INTERRUPTED
    assert outcome.exit_code == 0


async def test_a_tail_too_old_to_resume_from_is_still_never_published_again(
    world: World,
) -> None:
    now_ms = int(world.clock.time() * 1000)
    world.tail.in_topic = [LastPublished("BTCUSDT", 20, now_ms - 10 * 3600 * 1000)]
    sut = world.loader(stop_after_records=2, resume_window=3600)
    world.feed.push(make_trade(20), make_trade(31), make_trade(32))
    await sut.run()
    assert world.published_ids == [31, 32]


async def test_a_signal_before_the_start_still_sends_started_first(world: World) -> None:
    world.events.hold = asyncio.Event()
    sut = world.loader()
    sut.request_stop("SIGTERM received")
    run = asyncio.create_task(sut.run())
    await world.events.wait_for_attempts(1)
    world.events.hold.set()
    outcome = await run
    assert outcome.status is Status.INTERRUPTED
    assert world.events.statuses == ["started", "interrupted"]
