"""One simulated world: the exchange, the broker and the runs of the loader a schedule asks for.

The loader runs as in production, use case and adapters alike (the Binance feed and REST
client, the Kafka trade and event publishers, the topic-tail scan), with only the sockets
replaced: WebSocket connections, HTTP requests and the Kafka client's network side are
simulated on a virtual clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import math
import random
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from loguru import logger

from adapters.binance.feed import BinanceTradeFeed
from adapters.binance.rest import BinanceRestClient
from adapters.kafka.codec import decode_event
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.health import BrokerHealth
from adapters.kafka.telemetry import KafkaEventPublisher
from adapters.kafka.trades import KafkaTradePublisher
from adapters.metrics import RunStats
from application.config import LoaderConfig
from application.loader import Outcome, TradeLoader
from domain.backoff import Backoff
from domain.messages import ControlCommand, TelemetryEvent
from simulation.broker import SimBroker, SimControlChannel, SimControlTopic, SimTopicTail
from simulation.exchange import SimExchange, Window
from simulation.loop import VirtualClock, VirtualTimeLoop
from simulation.schedule import DEFAULTS, Event, RunPlan, Schedule

QUEUE = "wf-ws-trades-sim"
TOPIC = "wf-ws-trades-sim-data"
EVENTS_TOPIC = "queue-events"
HANG_AFTER = 3600.0
"""Virtual seconds after a run's last scheduled event by which it must have ended."""

_RUN: contextvars.ContextVar[int | None] = contextvars.ContextVar("run", default=None)


@dataclass
class Trigger:
    """Something that should end the run: when, and by when nothing newer may be published."""

    at: float
    kind: str
    newest_allowed: float


@dataclass
class RunResult:
    number: int
    plan: RunPlan
    config: LoaderConfig
    began: float
    stats: RunStats
    ended: float | None = None
    outcome: Outcome | None = None
    killed: bool = False
    hung: bool = False
    triggers: list[Trigger] = field(default_factory=list)
    streaming_from: float | None = None
    bound_breaches: list[str] = field(default_factory=list)
    acknowledged: int = 0
    events: list[TelemetryEvent] = field(default_factory=list)
    tail_read_at: float | None = None
    left_in_buffer: int = 0
    """Frames the feed still held when the run ended."""

    @property
    def first_trigger(self) -> Trigger | None:
        due = [t for t in self.triggers if self.ended is None or t.at <= self.ended]
        return min(due, key=lambda t: t.at) if due else None


@dataclass
class LogLine:
    at: float
    run: int | None
    level: str
    message: str


@dataclass
class WorldResult:
    schedule: Schedule
    runs: list[RunResult]
    exchange: SimExchange
    broker: SimBroker
    unhandled: list[str]
    logs: list[LogLine]
    digest: str = ""


def simulate(schedule: Schedule) -> WorldResult:
    """Run the schedule's world to its end on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    world = _World(schedule, loop)
    sink = logger.add(world.log_sink, level="WARNING", format="{message}", catch=False)
    try:
        result = loop.run_until_complete(world.run())
        loop.run_until_complete(world.close())
        # Tasks that failed unseen are reported when collected: collect them now, every time.
        gc.collect()
    finally:
        logger.remove(sink)
        _close_loop(loop)
    result.unhandled.extend(loop.unhandled)
    result.digest = _digest(result)
    return result


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


class _World:
    def __init__(self, schedule: Schedule, loop: VirtualTimeLoop) -> None:
        self.schedule = schedule
        self.setup = setup = schedule.setup
        self.loop = loop
        self.clock = VirtualClock(loop)
        seed = schedule.seed
        statuses = {s: ("BREAK" if s in setup.halted else "TRADING") for s in setup.symbols}
        self.exchange = SimExchange(
            self.clock,
            random.Random(f"{seed}:exchange"),
            statuses,
            socket_frames=setup.knob("world", "socket_frames", 5000),
            lifetime=setup.knob("world", "lifetime", 86_400.0),
            history_lag=setup.knob("world", "history_lag", 0.0),
            keepalive=setup.knob("world", "keepalive", 40.0),
            first_ids={s: 1_000_000 * (i + 1) for i, s in enumerate(setup.symbols)},
        )
        self.broker = SimBroker(
            self.clock, random.Random(f"{seed}:broker"), max(1, setup.partitions)
        )
        self.control = SimControlTopic()
        self.rng = random.Random(f"{seed}:world")
        self.runs: list[RunResult] = []
        self.logs: list[LogLine] = []
        self.quiet_until: dict[str, float] = {}
        self._tasks: dict[int, list[asyncio.Task[Any]]] = {}
        self._market: list[asyncio.Task[None]] = []
        loop.set_task_factory(self._task_factory)

    def _task_factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        run = _RUN.get()
        if run is not None:
            self._tasks.setdefault(run, []).append(task)
        return task

    def log_sink(self, message: Any) -> None:
        record = message.record
        self.logs.append(
            LogLine(self.loop.time(), _RUN.get(), record["level"].name, record["message"])
        )

    # The world.

    async def run(self) -> WorldResult:
        self._prehistory()
        for symbol, rate in zip(self.setup.symbols, self.setup.rates, strict=True):
            if rate > 0:
                self._market.append(asyncio.create_task(self._trade_forever(symbol, rate)))
        for number, plan in enumerate(self.schedule.runs):
            if plan.pause_before:
                await asyncio.sleep(plan.pause_before)
            if plan.grow_partitions:
                topic = self.broker.topic(TOPIC)
                self.broker.grow(TOPIC, len(topic.partitions) + plan.grow_partitions)
            result = await self._run(number, plan)
            if result.hung:
                break
        return WorldResult(self.schedule, self.runs, self.exchange, self.broker, [], self.logs)

    async def close(self) -> None:
        for task in self._market:
            task.cancel()
        await asyncio.gather(*self._market, return_exceptions=True)
        for producer in self.broker.producers:
            producer.close()

    def _prehistory(self) -> None:
        count = self.setup.knob("world", "prehistory", 0)
        for symbol in self.setup.symbols:
            wanted = max(count, 5) if symbol in self.setup.halted else count
            for _ in range(wanted):
                self.exchange.trade(symbol, backdate=3600.0)

    async def _trade_forever(self, symbol: str, rate: float) -> None:
        rng = random.Random(f"{self.schedule.seed}:market:{symbol}")
        legacy = self.setup.knob("world", "legacy_frames", False)
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            if self.quiet_until.get(symbol, -1.0) > self.loop.time():
                continue
            self.exchange.trade(symbol, legacy=legacy)

    async def _burst(self, symbol: str, count: int, seconds: float) -> None:
        for _ in range(count):
            self.exchange.trade(symbol)
            await asyncio.sleep(seconds / count)

    # One run.

    def _config(self, plan: RunPlan) -> LoaderConfig:
        return replace(
            DEFAULTS.loader_config(),
            queue_id=QUEUE,
            symbols=self.setup.symbols,
            producer_id="loader-ws-trades__sim",
            stop_after_records=plan.stop_after_records,
            stop_after_seconds=plan.stop_after_seconds,
            **dict(self.setup.loader),
        )

    async def _run(self, number: int, plan: RunPlan) -> RunResult:
        setup = self.setup
        config = self._config(plan)
        stats = RunStats()
        result = RunResult(number, plan, config, self.loop.time(), stats)
        self.runs.append(result)
        feed_tuning = replace(
            DEFAULTS.feed_tuning(),
            buffer_frames=setup.knob("feed", "buffer_frames"),
            batch_size=setup.knob("feed", "batch_size"),
            rotate_after=setup.knob("feed", "rotate_after"),
            backoff=Backoff(
                initial=setup.knob("feed", "backoff_initial"), cap=setup.knob("feed", "backoff_cap")
            ),
            attempts_limit=setup.knob("feed", "attempts_limit"),
            unavailable_timeout=setup.knob("feed", "unavailable_timeout"),
            streams_per_connection=setup.knob("feed", "streams_per_connection", 200),
            redundant=setup.knob("feed", "redundant", False),
        )
        producer_tuning = replace(DEFAULTS.producer_tuning(), **dict(setup.producer))
        rest_tuning = replace(DEFAULTS.rest_tuning(), **dict(setup.rest))
        connection = KafkaConnection("kafka.sim:9092")
        producer = self.broker.producer(
            number, producer_tuning.max_batch_bytes, producer_tuning.request_timeout_ms / 1000
        )
        feed = BinanceTradeFeed(
            "wss://stream.sim:9443/ws",
            setup.symbols,
            feed_tuning,
            stats,
            self.clock,
            connect=self._connector(number, result),
            rand=random.Random(f"{self.schedule.seed}:backoff:{number}").random,
        )
        health = BrokerHealth()
        publisher = KafkaTradePublisher(
            producer, TOPIC, connection, producer_tuning, health, stats, self.clock
        )
        tail = SimTopicTail(self.broker, TOPIC, setup.knob("world", "tail_latency", 0.001))
        # One client for both ports, as the container builds it: they share the rate limits.
        rest = BinanceRestClient("https://api.sim", rest_tuning, self.clock, self.exchange.rest())
        loader = TradeLoader(
            config,
            feed=feed,
            directory=rest,
            history=rest,
            publisher=publisher,
            tail=tail,
            events=KafkaEventPublisher(
                producer, EVENTS_TOPIC, connection, producer_tuning.outage_timeout, health
            ),
            control=SimControlChannel(
                self.control,
                self.clock,
                setup.knob("world", "control_start", 0.01),
                setup.knob("world", "control_poll", 0.1),
            ),
            clock=self.clock,
            metrics=stats,
        )
        events = sorted((e for e in self.schedule.events if e.run == number), key=lambda e: e.at)
        for event in events:
            if event.at <= 0 and event.kind == "stop":
                self._apply(event, result, loader)
        process = asyncio.create_task(self._process(number, loader, result, health))
        driver = asyncio.create_task(self._drive(events, result, loader, process))
        monitor = asyncio.create_task(self._monitor(result, feed, publisher))
        last = max((e.at for e in events), default=0.0)
        done, _ = await asyncio.wait({process}, timeout=last + HANG_AFTER)
        if process not in done:
            result.hung = True
            await self._kill(result)
        driver.cancel()
        monitor.cancel()
        await asyncio.gather(driver, monitor, return_exceptions=True)
        result.ended = result.ended or self.loop.time()
        result.acknowledged = producer.acknowledged
        result.tail_read_at = tail.read_at
        result.left_in_buffer = feed.backlog()
        # Whatever the run left running stops with its process.
        await self._end_tasks(number)
        producer.close()
        result.events = self._events_of(number)
        return result

    def _connector(self, number: int, result: RunResult) -> Any:
        connect = self.exchange.connector(number)

        async def first_noted(url: str) -> Any:
            if result.streaming_from is None:
                result.streaming_from = self.loop.time()
                seconds = result.plan.stop_after_seconds
                if seconds is not None:
                    at = self.loop.time() + seconds
                    result.triggers.append(Trigger(at, "STOP_AFTER_SECONDS", at + 0.01))
            return await connect(url)

        return first_noted

    async def _process(
        self, number: int, loader: TradeLoader, result: RunResult, health: BrokerHealth
    ) -> None:
        _RUN.set(number)
        # Start-up: the producer and the other clients connect before the use case runs.
        await asyncio.sleep(self.setup.knob("world", "startup", 0.05))
        health.reachable = True  # as the producer's start reports it
        result.outcome = await loader.run()
        result.ended = self.loop.time()

    async def _drive(
        self,
        events: list[Event],
        result: RunResult,
        loader: TradeLoader,
        process: asyncio.Task[None],
    ) -> None:
        for event in events:
            if event.at <= 0 and event.kind == "stop":
                continue
            delay = result.began + event.at - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if process.done():
                return
            if event.kind == "kill":
                await self._kill(result)
                process.cancel()
                return
            self._apply(event, result, loader)

    async def _kill(self, result: RunResult) -> None:
        result.killed = True
        result.ended = self.loop.time()
        for producer in self.broker.producers:
            if producer is not None and getattr(producer, "_run", None) == result.number:
                producer.kill()
        self.exchange.kill_run(result.number)
        await self._end_tasks(result.number)

    async def _end_tasks(self, number: int) -> None:
        tasks = [t for t in self._tasks.pop(number, []) if not t.done()]
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _monitor(
        self, result: RunResult, feed: BinanceTradeFeed, publisher: KafkaTradePublisher
    ) -> None:
        flight_limit = publisher._tuning.max_in_flight_trades
        while True:
            await asyncio.sleep(0.05)
            # Each reader pauses after the frame that filled its shard's buffer, and while one
            # connection replaces another two read; a reconnection mark and the mark before
            # frames dropped after a long pause may wait besides.
            for shard in feed.shards:
                if len(shard.buffer) > shard.limit + 3:
                    result.bound_breaches.append(
                        f"{self.loop.time():.3f} s: {len(shard.buffer)} frames buffered in "
                        f"{shard.name}, bound {shard.limit}"
                    )
            # Past the hold bound only ids are kept; a symbol's first held trade always is.
            hold_limit = result.config.backfill_hold_trades + len(result.config.symbols)
            if result.stats.held_trades > hold_limit:
                result.bound_breaches.append(
                    f"{self.loop.time():.3f} s: {result.stats.held_trades} trades held behind "
                    f"gaps, bound {hold_limit}"
                )
            if publisher.in_flight > flight_limit:
                result.bound_breaches.append(
                    f"{self.loop.time():.3f} s: {publisher.in_flight} trades in flight, "
                    f"bound {flight_limit}"
                )

    def _apply(self, event: Event, result: RunResult, loader: TradeLoader) -> None:
        exchange = self.exchange
        now = self.loop.time()
        kind = event.kind
        if kind == "drop":
            exchange.drop_all(
                clean=event.get("clean", False),
                symbol=event.get("symbol"),
                one=event.get("one", False),
            )
        elif kind == "shutdown":
            exchange.server_shutdown(event.get("grace", 1.0))
        elif kind == "refuse":
            exchange.windows.append(Window("refuse", now, now + event.get("duration")))
        elif kind == "accept_close":
            exchange.accept_then_close += event.get("count", 1)
        elif kind == "silence":
            for connection in exchange.connections:
                connection.silent.add(event.get("symbol"))
        elif kind == "half_open":
            exchange.half_open()
        elif kind in ("duplicate", "stale"):
            exchange.duplicate(event.get("symbol"), event.get("back"))
        elif kind == "reorder":
            exchange.reorder_next(event.get("symbol"))
        elif kind == "malformed":
            frame = malformed_frame(event.get("what"), event.get("name"), self.setup.symbols[0])
            exchange.raw_frame(frame, wrap=event.get("what") not in ("reply", "binary"))
        elif kind == "rest":
            exchange.windows.append(
                Window(event.get("what"), now, now + event.get("duration"), event.get("value"))
            )
        elif kind == "broker_outage":
            self.broker.faults.outages.append((now, now + event.get("duration")))
        elif kind == "broker_slow":
            self.broker.faults.slow.append((now, now + event.get("duration"), event.get("latency")))
        elif kind == "batch":
            self.broker.faults.next_batch.append(event.get("fault"))
        elif kind == "quiet":
            self.quiet_until[event.get("symbol")] = now + event.get("duration")
        elif kind == "burst":
            self._market.append(
                asyncio.create_task(
                    self._burst(event.get("symbol"), event.get("count"), event.get("seconds"))
                )
            )
        elif kind == "stop":
            queue = QUEUE if event.get("queue") == "this" else "wf-ws-trades-other"
            command = ControlCommand(event.get("command", "stop"), queue)
            self.control.publish(now, command)
            if command.is_stop_for(QUEUE):
                # The loader can act on a command only once its consumer has read it.
                knob = self.setup.knob
                started_reading = (
                    result.began + knob("world", "startup") + knob("world", "control_start")
                )
                seen = max(now, started_reading) + knob("world", "control_poll")
                if event.at <= 0:
                    # Read before streaming: nothing of this run may be published.
                    result.triggers.append(Trigger(seen, "stop before start", -math.inf))
                else:
                    result.triggers.append(Trigger(seen, "stop command", seen + 0.01))
        elif kind == "sigterm":
            loader.request_stop("SIGTERM received")
            result.triggers.append(Trigger(now, "SIGTERM", now))
        else:  # pragma: no cover - a schedule names only known events
            raise ValueError(f"unknown event {kind}")

    def _events_of(self, number: int) -> list[TelemetryEvent]:
        topic = self.broker.topics.get(EVENTS_TOPIC)
        if topic is None:
            return []
        events = []
        for partition in topic.partitions:
            for record in partition:
                if record.run == number:
                    event = decode_event(record.value)
                    if event is not None:
                        events.append(event)
        return events


def malformed_frame(what: str, name: str, symbol: str) -> str | bytes:
    """A frame that is not a valid trade of a subscribed symbol."""
    good: dict[str, Any] = {
        "e": "trade",
        "E": 1,
        "s": symbol,
        "t": 42,
        "p": "1.00000000",
        "q": "1.00000000",
        "T": 1,
        "m": True,
        "M": True,
    }
    if what == "invalid_json":
        return '{"e":"trade","s":"' + symbol
    if what == "not_object":
        return "[1,2,3]"
    if what == "missing_field":
        good.pop("p")
    elif what == "bad_type":
        good["t"] = "42"
    elif what == "nan":
        good["p"] = "NaN"
    elif what == "huge_exponent":
        return orjson.dumps(good).decode().replace('"1.00000000"', "1e400", 1)
    elif what == "negative":
        good["q"] = "-1.00000000"
    elif what == "zero":
        good["p"] = "0.00000000"
    elif what == "unsubscribed":
        good["s"] = "XRPUSDT"
    elif what == "binary":
        return b"\x00\x01\x02"
    elif what == "oversized":
        good["pad"] = "x" * 70_000
    elif what == "other_event":
        good = {"e": name, "E": 1, "s": symbol}
    elif what == "reply":
        return orjson.dumps({"result": None, "id": 7}).decode()
    return orjson.dumps(good).decode()


def _digest(result: WorldResult) -> str:
    """A fingerprint of everything that happened: the same seed must give the same one."""
    hasher = hashlib.sha256()
    for name in sorted(result.broker.topics):
        for number, partition in enumerate(result.broker.topics[name].partitions):
            for record in partition:
                hasher.update(f"{name}/{number}/{record.offset}@{record.timestamp:.6f}".encode())
                hasher.update(record.value if name == TOPIC else b"")
    for run in result.runs:
        outcome = run.outcome
        hasher.update(f"{run.number}:{run.ended}:{run.killed}".encode())
        if outcome is not None:
            hasher.update(f"{outcome.status}:{outcome.exit_code}:{outcome.message}".encode())
        for event in run.events:
            hasher.update(f"{event.status}:{event.records_written}:{event.message}".encode())
    for received in result.exchange.log.received:
        hasher.update(
            f"{received.run}:{received.symbol}:{received.trade_id}:{received.at}".encode()
        )
    hasher.update(repr(result.exchange.log.attempts).encode())
    return hasher.hexdigest()[:16]
