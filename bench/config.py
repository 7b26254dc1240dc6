"""What the benchmark runs, where it writes, and the targets it compares its figures with."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from testkit.kafka_broker import BrokerEnv
from testkit.settings import settings
from testkit.simulator import BINARY

DEFAULTS: Final = settings()
"""The loader's default settings, for the parts measured in this process."""


REPO: Final = Path(__file__).resolve().parents[1]


RESULTS_DIR: Final = REPO / "bench" / "results"


DOCS: Final = REPO / "docs" / "benchmarks.md"


SIMBENCH: Final = BINARY.with_name("simbench")


HOT_PATH_TEST: Final = REPO / "bench" / "test_hot_path.py"


TEN_SYMBOLS: Final = (
    "BTCUSDT",
    "ETHUSDT",
    "BNBUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "TRXUSDT",
    "LINKUSDT",
    "DOTUSDT",
)


def symbols(count: int) -> tuple[str, ...]:
    """``count`` symbols: the ten above, then made-up ones the simulator trades alike."""
    made_up = tuple(f"X{number:04d}USDT" for number in range(count - len(TEN_SYMBOLS)))
    return (*TEN_SYMBOLS, *made_up)[:count]


SCENARIOS: Final = (
    "simbench",
    "ceiling-1",
    "throughput-1",
    "ceiling-10",
    "throughput-10",
    "throughput-200",
    "latency-1000",
    "latency-10000",
    "hot-path",
    "memory",
    "throughput-200-single",
    "throughput-1000",
    "throughput-1000-single",
    "throughput-1500",
    "steady-1",
    "steady-10",
    "steady-200",
    "steady-1000",
    "steady-1000-single",
    "steady-1500",
    "drop-100-single",
    "drops-1000",
    "drops-1000-single",
)


# Targets the figures are compared with (the benchmark reports them, it never fails on them).
TARGET_RATE: Final = 50_000.0


TARGET_CEILING_SHARE: Final = 0.6


TARGET_CPU_US: Final = 20.0


TARGET_P99_MS: Final = 50.0


TARGET_RSS_MB: Final = 120.0


FLAT_SLOPE_MB_PER_MIN: Final = 1.0
"""Memory counts as flat when it grows by less than this after the warm-up."""


class BenchError(RuntimeError):
    """A scenario could not run or its output is wrong: the benchmark fails."""


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; ``--quick`` shrinks them."""

    trades: int = 200_000
    """Per throughput run (split evenly over the symbols)."""
    repeat: int = 2
    simbench_frames: int = 1_000_000
    latency_seconds: float = 25.0
    latency_warmup: float = 3.0
    memory_seconds: float = 180.0
    memory_rate: int = 5_000
    memory_warmup: float = 30.0
    hot_path_rounds: int = 30
    steady_seconds: float = 40.0
    """Of each scenario at 20,000 trades a second over many symbols."""
    drops_seconds: float = 75.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            trades=60_000,
            repeat=1,
            simbench_frames=300_000,
            latency_seconds=8.0,
            latency_warmup=2.0,
            memory_seconds=30.0,
            memory_warmup=10.0,
            hot_path_rounds=5,
            steady_seconds=15.0,
            drops_seconds=65.0,
        )


@dataclass
class Context:
    """What every scenario shares: the broker, the plan, a scratch directory, the findings."""

    broker: BrokerEnv
    plan: Plan
    scratch: Path
    partitions: int
    repeat: int
    profile_dir: Path | None
    py_spy: str | None
    results: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    runs: Counter[str] = field(default_factory=Counter)
    loader_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What each loader run logged as its settings in effect, by run label."""

    def log_path(self, label: str, what: str) -> Path:
        """A fresh file for one run's log (the simulator appends to an existing one)."""
        self.runs[f"{label}-{what}"] += 1
        return self.scratch / f"{label}-{what}-{self.runs[f'{label}-{what}']}.log"

    @property
    def bootstrap(self) -> str:
        return self.broker.plaintext


def linear_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def target_rows(rows: list[tuple[str, str, str, bool | None]]) -> list[str]:
    """The targets as Markdown table rows (after a ``| target | goal | measured | met |``
    header)."""
    lines = []
    for name, goal, measured, met in rows:
        verdict = "—" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {goal} | {measured} | {verdict} |")
    return lines


def round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
