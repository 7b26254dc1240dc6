"""Fault schedules: what happens in a simulated world and when, generated from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Final

from testkit.settings import settings

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
HALTED = "HALTUSDT"

MALFORMED = (
    "invalid_json",
    "not_object",
    "missing_field",
    "bad_type",
    "nan",
    "huge_exponent",
    "negative",
    "zero",
    "unsubscribed",
    "binary",
    "oversized",
    "other_event",
    "reply",
)


DEFAULTS: Final = settings()
"""The loader's defaults: a world whose knobs are below them is harsh on purpose."""


@dataclass(frozen=True)
class Event:
    """One thing that happens ``at`` seconds after its run started (before it, when negative)."""

    run: int
    at: float
    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"run {self.run} +{self.at:8.3f}s {self.kind}({args})"


@dataclass(frozen=True)
class RunPlan:
    """One run of the loader: its bounds, and how long after the previous run it starts."""

    pause_before: float = 0.0
    stop_after_records: int | None = None
    stop_after_seconds: float | None = None
    grow_partitions: int = 0
    """Partitions added to the trade topic before this run starts."""


@dataclass(frozen=True)
class Setup:
    """The world and the loader's settings, fixed for the whole schedule."""

    symbols: tuple[str, ...]
    halted: tuple[str, ...]
    partitions: int
    rates: tuple[float, ...]
    """Trades a second of each symbol (halted symbols do not trade)."""
    loader: tuple[tuple[str, Any], ...]
    feed: tuple[tuple[str, Any], ...]
    producer: tuple[tuple[str, Any], ...]
    rest: tuple[tuple[str, Any], ...]
    world: tuple[tuple[str, Any], ...]

    def knob(self, group: str, name: str, default: Any = None) -> Any:
        return dict(getattr(self, group)).get(name, default)


@dataclass(frozen=True)
class Schedule:
    seed: int
    setup: Setup
    runs: tuple[RunPlan, ...]
    events: tuple[Event, ...] = field(default=())

    def describe(self) -> str:
        lines = [f"seed {self.seed}", f"  setup: {self.setup}"]
        for number, plan in enumerate(self.runs):
            lines.append(f"  run {number}: {plan}")
        lines.extend(f"  {event}" for event in sorted(self.events, key=_order))
        return "\n".join(lines)

    @property
    def faulty(self) -> bool:
        """Whether anything goes wrong on purpose, or the world is harsh by its settings.

        A run without either must log no ERROR line.
        """
        benign = {"stop", "sigterm", "quiet"}
        if any(e.kind not in benign for e in self.events) or self.setup.halted:
            return True
        knob = self.setup.knob
        return bool(
            knob("world", "lifetime") < 86_400
            or knob("world", "history_lag") > 0
            or knob("world", "socket_frames") < 5000
            or knob("rest", "weight_budget") < DEFAULTS.rest_weight_budget
            or knob("loader", "backfill_max_trades") < DEFAULTS.backfill_max_trades
            or knob("loader", "backfill_max_age") < 3600
            or knob("feed", "rotate_after") < 3600
        )

    def without(self, drop: set[int]) -> Schedule:
        return replace(self, events=tuple(e for i, e in enumerate(self.events) if i not in drop))


def _order(event: Event) -> tuple[int, float]:
    return event.run, event.at


def _pick(rng: random.Random, weighted: dict[str, float]) -> str:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


FAULTS: dict[str, float] = {
    "drop": 10,
    "shutdown": 4,
    "refuse": 4,
    "accept_close": 2,
    "silence": 4,
    "half_open": 3,
    "duplicate": 4,
    "stale": 3,
    "reorder": 4,
    "malformed": 6,
    "rest": 6,
    "broker_outage": 5,
    "broker_slow": 3,
    "batch": 2,
    "stop": 4,
    "sigterm": 2,
    "quiet": 4,
    "burst": 4,
}


def generate(seed: int) -> Schedule:
    """A random schedule: the same seed always gives the same one."""
    rng = random.Random(seed)
    count = rng.choice((1, 1, 2, 2, 3, 4))
    symbols = SYMBOLS[:count]
    halted: tuple[str, ...] = ()
    if rng.random() < 0.12:
        symbols = (*symbols, HALTED)
        halted = (HALTED,)
    run_count = 1 if rng.random() < 0.6 else rng.choice((2, 2, 3))
    durations = [rng.uniform(10, 150) for _ in range(run_count)]
    budget = min(40.0, 3000 / sum(durations))
    rates = tuple(
        0.0 if symbol in halted else rng.uniform(0.05, 1) * budget / count for symbol in symbols
    )
    drain = rng.choice((2.0, 5.0, 20.0))
    outage = rng.choice((5.0, 15.0, 60.0))
    loader: dict[str, Any] = {
        "telemetry_interval": rng.choice((0.5, 2.0, 5.0)),
        "drain_timeout": drain,
        "silence_timeout": rng.choice((3.0, 10.0, 60.0)),
        "backfill_page_size": rng.choice((50, 200, 1000)),
        "backfill_max_trades": rng.choice((30, 1000, 100_000)),
        "backfill_max_age": rng.choice((20.0, 6 * 3600.0)),
        "resume_window": rng.choice((30.0, 6 * 3600.0, 6 * 3600.0)),
        "backfill_hold_trades": rng.choice((0, 3, 50_000)),
    }
    feed: dict[str, Any] = {
        "buffer_frames": rng.choice((20, 200, 5000)),
        "batch_size": rng.choice((7, 64, 4096)),
        "rotate_after": rng.choice((8.0, 40.0, 23 * 3600.0)),
        "backoff_initial": rng.choice((0.05, 0.5)),
        "backoff_cap": rng.choice((1.0, 5.0)),
        "attempts_limit": rng.choice((5, 50, 250)),
        "unavailable_timeout": rng.choice((5.0, 30.0, 300.0)),
        "streams_per_connection": rng.choice((1, 2, 200)),
        "redundant": rng.random() < 0.4,
    }
    producer: dict[str, Any] = {
        "linger_ms": rng.choice((0, 5, 50)),
        "max_batch_bytes": rng.choice((1024, 16 * 1024, 256 * 1024)),
        "max_in_flight_trades": rng.choice((10, 500, 20_000)),
        "outage_timeout": outage,
        "request_timeout_ms": rng.choice((1000, 5000, 30_000)),
    }
    rest: dict[str, Any] = {
        "unavailable_timeout": rng.choice((5.0, 30.0)),
        "max_retry_wait": rng.choice((10.0, 120.0)),
        "weight_budget": rng.choice((200, 4800)),
    }
    world: dict[str, Any] = {
        "socket_frames": rng.choice((50, 500, 5000)),
        "lifetime": rng.choice((15.0, 60.0, 86_400.0)),
        "history_lag": rng.choice((0.0, 0.0, 0.05, 1.0)),
        "keepalive": rng.choice((5.0, 40.0)),
        "startup": rng.choice((0.05, 0.5, 3.0)),
        "control_start": rng.choice((0.01, 0.3, 2.0)),
        "control_poll": rng.choice((0.1, 0.5)),
        "tail_latency": rng.choice((0.001, 0.01, 2.0)),
        "prehistory": rng.choice((0, 50, 2000)),
        "legacy_frames": rng.random() < 0.2,
    }
    partitions = rng.choice((1, 1, 2, 3, 4))
    setup = Setup(
        symbols,
        halted,
        partitions,
        rates,
        tuple(loader.items()),
        tuple(feed.items()),
        tuple(producer.items()),
        tuple(rest.items()),
        tuple(world.items()),
    )
    runs: list[RunPlan] = []
    events: list[Event] = []
    trading = [s for s in symbols if s not in halted] or list(symbols)
    clean = rng.random() < 0.12
    for number, duration in enumerate(durations):
        last = number == run_count - 1
        plan = RunPlan(
            pause_before=0.0 if number == 0 else rng.choice((0.5, 5.0, 60.0)),
            grow_partitions=rng.choice((0, 0, 0, 1, 2)) if number else 0,
        )
        ending = _pick(
            rng,
            {"sigterm": 3, "stop": 3, "records": 2, "seconds": 2, "kill": 0 if last else 2},
        )
        if ending == "records":
            plan = replace(plan, stop_after_records=rng.randint(1, max(2, int(duration * 5))))
        elif ending == "seconds":
            plan = replace(plan, stop_after_seconds=round(duration, 3))
        elif ending == "kill":
            events.append(Event(number, duration, "kill"))
        else:
            events.append(Event(number, duration, ending, (("queue", "this"),)))
        # Whatever else happens, the run is asked to stop in the end.
        events.append(Event(number, duration + 30, "sigterm"))
        runs.append(plan)
        if clean:
            continue
        for _ in range(rng.randint(0, 12)):
            events.append(_fault(rng, number, duration, trading, setup))
    return Schedule(seed, setup, tuple(runs), tuple(events))


def _fault(
    rng: random.Random, run: int, duration: float, trading: list[str], setup: Setup
) -> Event:
    kind = _pick(rng, FAULTS)
    at = round(rng.uniform(0, duration), 3)
    symbol = rng.choice(trading)
    params: dict[str, Any] = {}
    if kind == "drop":
        # Of every connection, or of the one carrying a symbol (one shard, when sharded).
        params = {"clean": rng.random() < 0.3}
        if rng.random() < 0.4:
            params["symbol"] = symbol
            # Only the oldest connection carrying it: one of two redundant ones, say.
            params["one"] = rng.random() < 0.5
    elif kind == "shutdown":
        params = {"grace": rng.choice((0.5, 5.0))}
    elif kind == "refuse":
        params = {"duration": rng.choice((1.0, 8.0, 40.0, 400.0))}
    elif kind == "accept_close":
        params = {"count": rng.randint(1, 6)}
    elif kind in ("silence", "quiet"):
        params = {"symbol": symbol, "duration": rng.choice((5.0, 30.0, 120.0))}
    elif kind == "duplicate":
        params = {"symbol": symbol, "back": rng.randint(0, 5)}
    elif kind == "stale":
        params = {"symbol": symbol, "back": rng.randint(10, 500)}
    elif kind == "reorder":
        params = {"symbol": symbol}
    elif kind == "malformed":
        params = {"what": rng.choice(MALFORMED), "name": f"ev{rng.randint(0, 10**6)}"}
    elif kind == "rest":
        what = rng.choice(("429", "500", "unreachable", "slow"))
        params = {
            "what": what,
            "duration": rng.choice((1.0, 10.0, 90.0)),
            "value": rng.choice((1.0, 5.0, 30.0)) if what in ("429", "slow") else 0.0,
        }
    elif kind == "broker_outage":
        outage = setup.knob("producer", "outage_timeout")
        params = {"duration": round(rng.choice((0.3, 0.5, 1.5)) * outage, 3)}
    elif kind == "broker_slow":
        params = {"duration": rng.choice((2.0, 20.0)), "latency": rng.choice((0.2, 2.0))}
    elif kind == "batch":
        params = {"fault": rng.choice(("fail", "cancel", "crash"))}
    elif kind == "stop":
        at = round(rng.uniform(-5, duration), 3)
        params = {"queue": rng.choice(("this", "other", "other")), "command": "stop"}
        if rng.random() < 0.2:
            params["command"] = "pause"
    elif kind == "sigterm":
        at = round(rng.choice((rng.uniform(0, 0.5), rng.uniform(0, duration))), 3)
    elif kind == "burst":
        params = {"symbol": symbol, "count": rng.choice((100, 1000)), "seconds": 1.0}
    return Event(run, at, kind, tuple(params.items()))
