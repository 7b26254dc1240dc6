"""End-to-end benchmarks of loader-ws-trades on the local Kafka broker and the exchange simulator.

Scenarios (``--only`` takes one or more of these names, comma-separated):

- ``simbench``: the simulator's own rate with a Go client that only reads, so the loader's
  figures can be compared with what the exchange side can deliver.
- ``ceiling-1``, ``ceiling-10``: the trades the loader receives, decoded and encoded as the
  loader does, pushed by a bare aiokafka loop through a producer started exactly as the
  service starts its own (acks=all, idempotent, the default linger and batch size, key =
  symbol, one ``send()`` per trade without awaiting its future, then ``flush()``). A second
  loop with ``create_batch()``/``send_batch()`` shows what the producer can do without the
  per-message path.
- ``throughput-1``, ``throughput-10``: the real ``loader-ws-trades`` process fed as fast as it
  reads (simulator ``--rate 0``), one symbol on the raw stream and ten on the combined stream,
  stopped by ``STOP_AFTER_RECORDS``; the topic must then hold exactly every trade.
- ``latency-1000``, ``latency-10000``: fixed rates; quantiles of the service's own
  ``loader_publish_latency_seconds`` histogram (frame receipt to broker acknowledgement).
- ``hot-path``: pytest-benchmark of frame text -> ``FrameDecoder.decode`` -> ``encode_trade``.
- ``memory``: a fixed 5,000 trades/s for a few minutes, resident memory sampled every 5 s.

Results go to ``bench/results/<date>.json`` and, for a full run, to the table in
``docs/benchmarks.md``. The run fails (exit 1) only when something broke: a lost, duplicated
or misordered trade, a loader that did not end cleanly, a scenario that could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from websockets.asyncio.client import connect

from adapters.binance.codec import FrameDecoder
from adapters.binance.connection import stream_url
from adapters.clock import SystemClock
from adapters.kafka.codec import encode_trade
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.health import BrokerHealth
from adapters.kafka.metadata import topic_partitions
from adapters.kafka.producer import start_producer, stop_producer
from adapters.kafka.trades import KafkaTradePublisher
from adapters.metrics import RunStats
from domain.trade import Trade
from testkit.kafka_broker import BrokerEnv, load_env
from testkit.service import COMMAND, loader_env
from testkit.settings import settings
from testkit.simulator import BINARY, Simulator, ensure_built
from testkit.topics import TopicSet, create_topics

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
SCENARIOS: Final = (
    "simbench",
    "ceiling-1",
    "throughput-1",
    "ceiling-10",
    "throughput-10",
    "latency-1000",
    "latency-10000",
    "hot-path",
    "memory",
)

# Targets the figures are compared with (the benchmark reports them, it never fails on them).
TARGET_RATE: Final = 50_000.0
TARGET_CEILING_SHARE: Final = 0.6
TARGET_CPU_US: Final = 20.0
TARGET_P99_MS: Final = 50.0
TARGET_RSS_MB: Final = 120.0
FLAT_SLOPE_MB_PER_MIN: Final = 1.0
"""Memory counts as flat when it grows by less than this after the warm-up."""

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


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


# -- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a live process, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_memory_mb(pid: int) -> tuple[float, float] | None:
    """VmRSS and VmHWM of a live process in MB, from /proc/<pid>/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


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


def round_or_none(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- Kafka -----------------------------------------------------------------------------------


async def create_bench_topics(bootstrap: str, topics: TopicSet, partitions: int) -> None:
    """The trade topic stamps each record with the broker's append time; the others as usual."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topics.data,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"},
                )
            ]
        )
    finally:
        await admin.close()
    await create_topics(bootstrap, topics.events, topics.control)


async def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    except Exception as error:
        log(f"could not delete topics {', '.join(names)}: {error!r}")
    finally:
        await admin.close()


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
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        scan.not_trades += 1
                        continue
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


# -- the simulator ---------------------------------------------------------------------------


def market_args(symbols: Sequence[str]) -> list[str]:
    args: list[str] = []
    for seed, symbol in enumerate(symbols, start=1):
        args += ["--market", f"{symbol}=synthetic:seed={seed}"]
    return args


def start_simulator(ctx: Context, name: str, symbols: Sequence[str], *extra: str) -> Simulator:
    sim = Simulator(
        *market_args(symbols),
        "--ping-interval",
        "20s",
        *extra,
        log_path=ctx.log_path(name, "sim"),
    )
    return sim.start()


def simulator_cpu(sim: Simulator) -> float | None:
    return proc_cpu_seconds(sim.pid) if sim.running else None


# -- the loader process ----------------------------------------------------------------------


@dataclass
class LoaderRun:
    """One finished run of the loader process, with what was measured while it ran."""

    exit_code: int
    wall_seconds: float
    stream_seconds: float | None
    """From the exchange connection to the process's exit."""
    cpu_seconds: float
    cpu_before_stream: float | None
    peak_rss_mb: float
    """VmHWM of the loader's own image, sampled every poll (``ru_maxrss`` of a child also
    counts the forked copy of this process before ``exec``, so it is not used)."""
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the exchange connection, resident MB) samples."""
    cpu: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the exchange connection, CPU seconds) at each /metrics scrape."""
    scrapes: list[tuple[float, str]] = field(default_factory=list)
    log_path: Path = Path()
    machine_busy_cores: float | None = None
    """Busy cores of the whole machine from the exchange connection to the exit."""

    @property
    def stream_cpu_seconds(self) -> float:
        if self.cpu_before_stream is None:
            return self.cpu_seconds
        return self.cpu_seconds - self.cpu_before_stream

    def log_lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    lines.append(orjson.loads(raw))
        return lines

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def recovery(self) -> dict[str, int]:
        """Receive-buffer overflows, trades recovered from history, and reconnections."""
        lines = [str(line.get("message", "")) for line in self.log_lines()]
        recovered = 0
        for message in lines:
            match = re.match(r"Backfilled (\d+) ", message)
            if match:
                recovered += int(match[1])
        return {
            "frames_dropped_warnings": sum("frames dropped" in m for m in lines),
            "gaps_in_stream": sum(m.startswith("Gap in") for m in lines),
            "recovered_from_history": recovered,
            "reconnects": sum(
                m.startswith(("Replacing exchange", "Exchange connection")) for m in lines
            ),
        }

    def count_messages(self, prefix: str) -> int:
        return sum(
            1 for line in self.log_lines() if str(line.get("message", "")).startswith(prefix)
        )


CONNECTED_MARK: Final = b"Connected to the exchange"


def _reap(pid: int, grace: float) -> tuple[int, Any]:
    """Wait for the process to exit (SIGKILL after ``grace`` seconds); its status and rusage."""
    deadline = time.monotonic() + grace
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        time.sleep(0.05)


def run_loader(
    env: dict[str, str],
    log_path: Path,
    *,
    timeout: float,
    metrics_port: int | None = None,
    scrape_every: float | None = None,
    rss_every: float | None = None,
    on_connected: Callable[[int], None] | None = None,
) -> LoaderRun:
    """Run the loader to its end, polling /proc, its log and optionally its /metrics.

    The process is reaped with ``wait4`` so its own CPU time and peak RSS come back with it.
    """
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(COMMAND), "run"],
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    started = time.monotonic()
    connected_at: float | None = None
    cpu_at_connect: float | None = None
    busy_at_connect = 0.0
    next_scrape = next_rss = 0.0
    rss: list[tuple[float, float]] = []
    scrapes: list[tuple[float, str]] = []
    cpu: list[tuple[float, float]] = []
    tail = b""
    peak_rss = 0.0
    outcome: tuple[int, Any] | None = None
    try:
        with log_path.open("rb") as reader:
            while outcome is None:
                done, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if done:
                    outcome = status, usage
                    break
                now = time.monotonic()
                memory = proc_memory_mb(proc.pid)
                if memory is not None:
                    peak_rss = max(peak_rss, memory[1])
                if connected_at is None:
                    seen = tail + reader.read()
                    if CONNECTED_MARK in seen:
                        connected_at = now
                        cpu_at_connect = proc_cpu_seconds(proc.pid)
                        busy_at_connect = machine_busy_seconds()
                        next_scrape = next_rss = now
                        if on_connected is not None:
                            on_connected(proc.pid)
                    tail = seen[-len(CONNECTED_MARK) :]
                else:
                    if rss_every is not None and now >= next_rss and memory is not None:
                        rss.append((now - connected_at, memory[0]))
                        next_rss += rss_every
                    if scrape_every is not None and metrics_port is not None and now >= next_scrape:
                        text = scrape(metrics_port)
                        if text is not None:
                            at = time.monotonic() - connected_at
                            scrapes.append((at, text))
                            used = proc_cpu_seconds(proc.pid)
                            if used is not None:
                                cpu.append((at, used))
                        next_scrape += scrape_every
                if now - started > timeout:
                    raise BenchError(f"loader still running after {timeout:g} s; stopped it")
                time.sleep(0.02)
    finally:
        if outcome is None:
            proc.send_signal(signal.SIGTERM)
            outcome = _reap(proc.pid, 30.0)
        proc.returncode = os.waitstatus_to_exitcode(outcome[0])
    ended = time.monotonic()
    busy = None
    if connected_at is not None and ended > connected_at:
        busy = (machine_busy_seconds() - busy_at_connect) / (ended - connected_at)
    usage = outcome[1]
    return LoaderRun(
        exit_code=proc.returncode,
        wall_seconds=ended - started,
        stream_seconds=None if connected_at is None else ended - connected_at,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        cpu_before_stream=cpu_at_connect,
        peak_rss_mb=peak_rss,
        rss=rss,
        scrapes=scrapes,
        cpu=cpu,
        log_path=log_path,
        machine_busy_cores=busy,
    )


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
            body: bytes = response.read()
            return body.decode()
    except OSError:
        return None


def check_exit(ctx: Context, label: str, run: LoaderRun) -> None:
    if run.exit_code != 0:
        problem = f"{label}: loader exited with {run.exit_code}"
        ctx.problems.append(problem)
        log(f"PROBLEM {problem}\n{run.log_tail()}")
    lines = run.log_lines()
    logged = [line for line in lines if line.get("message") == "Settings in effect"]
    if logged:
        ctx.loader_settings[label] = logged[0]["settings"]
    else:
        ctx.problems.append(f"{label}: the loader logged no settings in effect")
    finished = [line for line in lines if "Run ended" in str(line.get("message", ""))]
    if finished:
        log(f"{label}: {finished[-1]['message']}")


def base_env(
    ctx: Context, topics: TopicSet, sim: Simulator, symbols: Sequence[str]
) -> dict[str, str]:
    return loader_env(
        ctx.broker,
        topics,
        sim,
        symbols=",".join(symbols),
        TELEMETRY_INTERVAL_SEC="5",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(free_port()),
        LOG_LEVEL="INFO",
    )


# -- Prometheus text ---------------------------------------------------------------------------

_SAMPLE: Final = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        yield labels, float(match["value"])


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram, ordered by bound."""
    buckets = [(float(labels["le"]), value) for labels, value in samples(text, f"{name}_bucket")]
    return sorted(buckets)


def histogram_delta(
    later: list[tuple[float, float]], earlier: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    before = dict(earlier)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in later]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket holding q."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def metric_total(text: str, name: str) -> float:
    return sum(value for _, value in samples(text, name))


# -- scenarios ---------------------------------------------------------------------------------


def scenario_simbench(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for symbols in (1, 10):
        count = ctx.plan.simbench_frames // symbols
        done = subprocess.run(
            [str(SIMBENCH), "--symbols", str(symbols), "--count", str(count), "--sim", str(BINARY)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=REPO,
        )
        if done.returncode != 0:
            raise BenchError(f"simbench failed ({done.returncode}): {done.stderr[-2000:]}")
        figures = json.loads(done.stdout.splitlines()[0])
        out[f"symbols_{symbols}"] = {
            "frames": figures["frames"],
            "frames_per_s": round(figures["frames_per_s"]),
            "sim_cpu_share": round(figures["sim_cpu_share"], 2),
            "client_cpu_share": round(figures["client_cpu_share"], 2),
        }
        log(f"simbench {symbols} symbol(s): {figures['frames_per_s']:,.0f} frames/s")
    return out


async def fetch_frames(ws_url: str, symbols: Sequence[str], total: int) -> list[str]:
    """Every frame the loader would receive from a fresh simulator, read as fast as possible."""
    frames: list[str] = []
    async with connect(stream_url(ws_url, symbols), max_size=1 << 20, compression=None) as ws:
        while len(frames) < total:
            frame = await ws.recv()
            if isinstance(frame, str):
                frames.append(frame)
    return frames


def decode_frames(frames: Sequence[str], symbols: Sequence[str]) -> list[Trade]:
    """The trades in ``frames``, decoded exactly as the loader decodes them."""
    decode = FrameDecoder(frozenset(symbols), DEFAULTS.ws_max_frame_bytes).decode
    trades: list[Trade] = []
    for frame in frames:
        trade = decode(frame)
        if type(trade) is not Trade:
            raise BenchError(f"the simulator sent a frame that is not a trade: {frame[:200]}")
        trades.append(trade)
    return trades


CEILING_VARIANTS: Final = ("send", "publisher", "send_batch")
"""``send``: the bare loop on pre-encoded messages; ``publisher``: the service's own
``KafkaTradePublisher`` (encoding, per-trade bookkeeping and done-callback included);
``send_batch``: whole batches built with ``create_batch()`` and sent with ``send_batch()``."""


async def push(
    bootstrap: str, topic: str, trades: Sequence[Trade], variant: str
) -> dict[str, float]:
    """Send every trade through a producer started as the service starts its own."""
    connection = KafkaConnection(bootstrap)
    tuning = DEFAULTS.producer_tuning()
    stats = RunStats()
    health = BrokerHealth()
    producer = await start_producer(connection, tuning, health)
    try:
        ordered = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        symbols = sorted({trade.symbol for trade in trades})
        keys = {symbol: symbol.encode() for symbol in symbols}
        partition_of = {s: partitioner(keys[s], ordered, ordered) for s in symbols}
        records = [(trade.symbol, encode_trade(trade)) for trade in trades]
        publisher = KafkaTradePublisher(
            producer, topic, connection, tuning, health, stats, SystemClock()
        )
        await publisher.start(symbols)
        futures: list[asyncio.Future[Any]] = []
        wall = time.perf_counter()
        cpu = time.process_time()
        if variant == "send":
            send = producer.send
            for symbol, value in records:
                futures.append(
                    await send(topic, value, key=keys[symbol], partition=partition_of[symbol])
                )
            await producer.flush()
        elif variant == "publisher":
            publish = publisher.publish
            received_at = time.monotonic()
            for trade in trades:
                await publish(trade, received_at)
            await publisher.flush(60.0)
        else:
            builders: dict[int, Any] = {}
            for symbol, value in records:
                partition = partition_of[symbol]
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(key=keys[symbol], value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = builders[partition] = producer.create_batch()
                    builder.append(key=keys[symbol], value=value, timestamp=None)
            for partition, builder in builders.items():
                if builder.record_count():
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
            await producer.flush()
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        # Checked after the clock stopped: flush() returns once every future is resolved.
        failed = [f for f in futures if not f.done() or f.cancelled() or f.exception()]
        if failed:
            raise BenchError(f"{len(failed)} of {len(futures)} sends were not acknowledged")
        if variant == "publisher" and publisher.acknowledged() != len(trades):
            raise BenchError(f"{publisher.acknowledged()} of {len(trades)} trades acknowledged")
    finally:
        await stop_producer(producer, 10.0)
    return {"wall_seconds": wall, "cpu_seconds": cpu}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the highest broker rate, with every run's rate alongside."""
    best = max(runs, key=lambda run: run.get("trades_per_s") or 0.0)
    rates = [run.get("trades_per_s") for run in runs]
    return {**best, "runs": len(runs), "all_trades_per_s": rates}


def scenario_ceiling(ctx: Context, symbols: Sequence[str]) -> dict[str, Any]:
    label = f"ceiling-{len(symbols)}"
    per = ctx.plan.trades // len(symbols)
    total = per * len(symbols)
    with start_simulator(ctx, label, symbols, "--rate", "0", "--count", str(per)) as sim:
        cpu = time.process_time()
        frames = uvloop.run(fetch_frames(sim.ws_url, symbols, total))
        receive_cpu = time.process_time() - cpu
    cpu = time.process_time()
    trades = decode_frames(frames, symbols)
    decode_cpu = time.process_time() - cpu
    cpu = time.process_time()
    size = sum(len(encode_trade(trade)) for trade in trades) / total
    encode_cpu = time.process_time() - cpu
    del frames
    out: dict[str, Any] = {
        "trades": total,
        "avg_message_bytes": round(size, 1),
        "websockets_receive_cpu_us_per_frame": round(receive_cpu / total * 1e6, 2),
        "decode_cpu_us_per_trade": round(decode_cpu / total * 1e6, 2),
        "encode_cpu_us_per_trade": round(encode_cpu / total * 1e6, 2),
    }
    log(
        f"{label}: websockets receive {out['websockets_receive_cpu_us_per_frame']} us/frame, "
        f"decode {out['decode_cpu_us_per_trade']} us, encode {out['encode_cpu_us_per_trade']} us"
    )
    for variant in CEILING_VARIANTS:
        runs: list[dict[str, Any]] = []
        for _ in range(ctx.repeat):
            topics = TopicSet.fresh("bench")
            asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
            try:
                timing = uvloop.run(push(ctx.bootstrap, topics.data, trades, variant))
                scan = verify_topic(ctx, f"{label} {variant}", topics.data, _expected(symbols, per))
            finally:
                asyncio.run(
                    delete_topics(ctx.bootstrap, [topics.data, topics.events, topics.control])
                )
            rate = scan.rate()
            runs.append(
                {
                    "trades_per_s": round(total / timing["wall_seconds"]),
                    "trades_per_s_broker_span": round_or_none(rate, 0),
                    "wall_seconds": round(timing["wall_seconds"], 3),
                    "cpu_us_per_trade": round(timing["cpu_seconds"] / total * 1e6, 2),
                }
            )
            log(
                f"{label} {variant}: {total / timing['wall_seconds']:,.0f} trades/s (first "
                f"send to flush), {rate or 0:,.0f} trades/s (broker append span), "
                f"{timing['cpu_seconds'] / total * 1e6:.1f} us CPU/trade"
            )
        out[variant] = best_of(runs)
    return out


def _expected(symbols: Sequence[str], per: int) -> dict[str, int]:
    return dict.fromkeys(symbols, per)


def _last_counter(run: LoaderRun, name: str) -> float | None:
    """A metric's value in the last /metrics scrape (None without a scrape)."""
    if not run.scrapes:
        return None
    text = run.scrapes[-1][1]
    values = [value for _, value in samples(text, name)]
    values += [value for _, value in samples(text, f"{name}_total")]
    return max(values) if values else None


def first_market_start(sim: Simulator) -> float | None:
    """Epoch seconds when the simulator began sending trades (its first ``market_started``)."""
    starts: list[float] = []
    for event in sim.log_events("market_started"):
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", str(event["time"])).replace("Z", "+00:00")
        starts.append(dt.datetime.fromisoformat(stamp).timestamp())
    return min(starts) if starts else None


def timeline(run: LoaderRun) -> list[list[float]]:
    """[seconds since connection, trades published, frames queued, loader cores] per scrape."""
    points: list[list[float]] = []
    previous: tuple[float, float] | None = None
    cpu = dict(run.cpu)
    for at, text in run.scrapes:
        published = metric_total(text, "loader_trades_published_total")
        queued = metric_total(text, "loader_queue_depth")
        used = cpu.get(at)
        cores = math.nan
        if used is not None and previous is not None and at > previous[0]:
            cores = (used - previous[1]) / (at - previous[0])
        if used is not None:
            previous = (at, used)
        points.append([round(at, 2), published, queued, round(cores, 2)])
    return points


def scenario_throughput(ctx: Context, symbols: Sequence[str]) -> dict[str, Any]:
    runs = [throughput_once(ctx, symbols) for _ in range(ctx.repeat)]
    return best_of(runs)


def throughput_once(ctx: Context, symbols: Sequence[str]) -> dict[str, Any]:
    label = f"throughput-{len(symbols)}"
    per = ctx.plan.trades // len(symbols)
    total = per * len(symbols)
    topics = TopicSet.fresh("bench")
    asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
    profiler: list[subprocess.Popen[bytes]] = []
    try:
        with start_simulator(ctx, label, symbols, "--rate", "0", "--count", str(per)) as sim:
            env = base_env(ctx, topics, sim, symbols)
            env["STOP_AFTER_RECORDS"] = str(total)
            sim_cpu_before = simulator_cpu(sim) or 0.0

            def attach(pid: int) -> None:
                if ctx.profile_dir is not None and ctx.py_spy is not None:
                    profiler.append(start_profiler(ctx, label, pid))

            run = run_loader(
                env,
                ctx.log_path(label, "loader"),
                timeout=300.0,
                metrics_port=int(env["METRICS_PORT"]),
                scrape_every=0.5,
                rss_every=0.5,
                on_connected=attach,
            )
            sim_cpu = (simulator_cpu(sim) or 0.0) - sim_cpu_before
            sim_sent = sim.state()["sent_trades"]
            first_sent = first_market_start(sim)
        check_exit(ctx, label, run)
        scan = verify_topic(ctx, label, topics.data, _expected(symbols, per))
    finally:
        for spy in profiler:
            finish_profiler(ctx, label, spy)
        asyncio.run(delete_topics(ctx.bootstrap, [topics.data, topics.events, topics.control]))
    span_rate = scan.rate()
    rate = None
    if first_sent is not None and scan.last_ms is not None and scan.last_ms / 1000 > first_sent:
        rate = total / (scan.last_ms / 1000 - first_sent)
    stream = run.stream_seconds or run.wall_seconds
    recovery = run.recovery()
    gaps = recovery["gaps_in_stream"]
    loader_cores = run.stream_cpu_seconds / stream
    out = {
        "trades": total,
        "symbols": len(symbols),
        "trades_per_s": round_or_none(rate, 0),
        "seconds_first_sent_to_last_append": round_or_none(
            None if rate is None else total / rate, 3
        ),
        "trades_per_s_broker_span": round_or_none(span_rate, 0),
        "trades_per_s_wall": round(total / stream),
        "stream_seconds": round(stream, 3),
        "process_seconds": round(run.wall_seconds, 3),
        "cpu_us_per_trade": round(run.stream_cpu_seconds / total * 1e6, 2),
        "cpu_us_per_trade_with_startup": round(run.cpu_seconds / total * 1e6, 2),
        "cpu_cores_while_streaming": round(loader_cores, 2),
        "startup_cpu_seconds": round_or_none(run.cpu_before_stream, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_queue_frames": max((point[2] for point in timeline(run)), default=None),
        "simulator_cpu_cores": round(sim_cpu / stream, 2),
        "machine_busy_cores": round_or_none(run.machine_busy_cores, 2),
        "other_processes_cores": round_or_none(
            None
            if run.machine_busy_cores is None
            else run.machine_busy_cores - loader_cores - sim_cpu / stream,
            2,
        ),
        "simulator_sent": sim_sent,
        **recovery,
        "receive_pauses": _last_counter(run, "loader_receive_pauses"),
        "default_settings": True,
        "profiled": bool(profiler),
        "timeline": timeline(run),
    }
    log(
        f"{label}: {rate or 0:,.0f} trades/s (first trade sent to last append), "
        f"{span_rate or 0:,.0f} (broker append span), {total / stream:,.0f} (connect to exit), "
        f"{out['cpu_us_per_trade']} us CPU/trade, {loader_cores:.2f} cores, peak RSS "
        f"{run.peak_rss_mb:.0f} MB, simulator {out['simulator_cpu_cores']} cores, other "
        f"processes {out['other_processes_cores']} cores, {gaps} gaps"
    )
    if recovery["recovered_from_history"] or recovery["gaps_in_stream"]:
        problem = (
            f"{label}: trades were missed on the stream and recovered from history "
            f"({recovery}); the rate does not measure streaming alone"
        )
        ctx.problems.append(problem)
        log(f"PROBLEM {problem}")
    return out


def scenario_latency(ctx: Context, rate: int) -> dict[str, Any]:
    label = f"latency-{rate}"
    seconds = ctx.plan.latency_seconds
    topics = TopicSet.fresh("bench")
    asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
    symbols = ("BTCUSDT",)
    count = int(rate * (seconds + 30))
    try:
        with start_simulator(
            ctx, label, symbols, "--rate", str(rate), "--count", str(count)
        ) as sim:
            env = base_env(ctx, topics, sim, symbols)
            env["STOP_AFTER_SECONDS"] = f"{seconds:g}"
            port = int(env["METRICS_PORT"])
            run = run_loader(
                env,
                ctx.log_path(label, "loader"),
                timeout=seconds + 120,
                metrics_port=port,
                scrape_every=1.0,
                rss_every=1.0,
            )
        check_exit(ctx, label, run)
        scan = verify_topic(ctx, label, topics.data, None)
    finally:
        asyncio.run(delete_topics(ctx.bootstrap, [topics.data, topics.events, topics.control]))
    name = "loader_publish_latency_seconds"
    usable = [(t, text) for t, text in run.scrapes if histogram(text, name)]
    if not usable:
        raise BenchError(f"{label}: no /metrics scrape with the latency histogram")
    last_t, last_text = usable[-1]
    warm = [(t, text) for t, text in usable if t >= ctx.plan.latency_warmup]
    first_t, first_text = warm[0] if len(warm) > 1 else (0.0, "")
    final = histogram(last_text, name)
    window = histogram_delta(final, histogram(first_text, name)) if first_text else final
    observed = window[-1][1]
    latency_sum = metric_total(last_text, f"{name}_sum") - (
        metric_total(first_text, f"{name}_sum") if first_text else 0.0
    )
    achieved = observed / (last_t - first_t) if last_t > first_t else math.nan
    published = scan.records
    stream = run.stream_seconds or run.wall_seconds
    out: dict[str, Any] = {
        "target_rate": rate,
        "achieved_rate": round_or_none(achieved, 0),
        "window_seconds": round(last_t - first_t, 1),
        "trades_in_window": int(observed),
        "trades_published": published,
        "p50_ms": round_or_none(histogram_quantile(0.5, window) * 1000, 2),
        "p99_ms": round_or_none(histogram_quantile(0.99, window) * 1000, 2),
        "p999_ms": round_or_none(histogram_quantile(0.999, window) * 1000, 2),
        "mean_ms": round_or_none(latency_sum / observed * 1000 if observed else math.nan, 2),
        "p99_ms_whole_run": round_or_none(histogram_quantile(0.99, final) * 1000, 2),
        "cpu_cores": round(run.stream_cpu_seconds / stream, 3),
        "machine_busy_cores": round_or_none(run.machine_busy_cores, 2),
        **run.recovery(),
        "default_settings": True,
        "cpu_us_per_trade": round(run.stream_cpu_seconds / max(published, 1) * 1e6, 1),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
    }
    if not math.isnan(achieved) and achieved < 0.9 * rate:
        problem = f"{label}: only {achieved:,.0f} trades/s reached the broker, wanted {rate:,}"
        ctx.problems.append(problem)
        log(f"PROBLEM {problem}")
    log(
        f"{label}: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, p99.9 {out['p999_ms']} ms "
        f"over {int(observed):,} trades at {achieved:,.0f}/s; CPU {out['cpu_cores']} cores"
    )
    return out


def scenario_memory(ctx: Context) -> dict[str, Any]:
    label = "memory"
    seconds = ctx.plan.memory_seconds
    rate = ctx.plan.memory_rate
    topics = TopicSet.fresh("bench")
    asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
    symbols = ("BTCUSDT",)
    count = int(rate * (seconds + 30))
    try:
        with start_simulator(
            ctx, label, symbols, "--rate", str(rate), "--count", str(count)
        ) as sim:
            env = base_env(ctx, topics, sim, symbols)
            env["STOP_AFTER_SECONDS"] = f"{seconds:g}"
            run = run_loader(
                env, ctx.log_path(label, "loader"), timeout=seconds + 120, rss_every=5.0
            )
        check_exit(ctx, label, run)
        scan = verify_topic(ctx, label, topics.data, None)
    finally:
        asyncio.run(delete_topics(ctx.bootstrap, [topics.data, topics.events, topics.control]))
    samples_mb = run.rss
    if len(samples_mb) < 3:
        raise BenchError(f"{label}: only {len(samples_mb)} memory samples")
    settled = [(t, mb) for t, mb in samples_mb if t >= ctx.plan.memory_warmup]
    if len(settled) < 2:
        settled = samples_mb[len(samples_mb) // 2 :]
    slope_all = linear_slope(samples_mb) * 60
    slope_settled = linear_slope(settled) * 60
    out: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "trades_published": scan.records,
        "rss_start_mb": round(samples_mb[0][1], 1),
        "rss_after_warmup_mb": round(settled[0][1], 1),
        "rss_end_mb": round(samples_mb[-1][1], 1),
        "rss_max_mb": round(max(mb for _, mb in samples_mb), 1),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "slope_mb_per_min": round(slope_all, 3),
        "slope_after_warmup_mb_per_min": round(slope_settled, 3),
        "warmup_seconds": ctx.plan.memory_warmup,
        "flat": abs(slope_settled) < FLAT_SLOPE_MB_PER_MIN,
        "machine_busy_cores": round_or_none(run.machine_busy_cores, 2),
        **run.recovery(),
        "default_settings": True,
        "samples": [[round(t, 1), round(mb, 2)] for t, mb in samples_mb],
    }
    log(
        f"{label}: RSS {out['rss_start_mb']} -> {out['rss_end_mb']} MB "
        f"(max {out['rss_max_mb']}), slope after warm-up {slope_settled:+.2f} MB/min "
        f"over {scan.records:,} trades"
    )
    return out


def scenario_hot_path(ctx: Context) -> dict[str, Any]:
    output = ctx.scratch / "hot-path.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(HOT_PATH_TEST),
        "-p",
        "no:cacheprovider",
        "-q",
        "--benchmark-only",
        f"--benchmark-json={output}",
        "--benchmark-columns=min,median,mean,stddev,rounds",
    ]
    env = {**os.environ, "BENCH_HOT_PATH_ROUNDS": str(ctx.plan.hot_path_rounds)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=REPO, env=env
    )
    if done.returncode != 0:
        raise BenchError(f"hot-path benchmark failed:\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
    report = json.loads(output.read_text())
    out: dict[str, Any] = {}
    for bench in report["benchmarks"]:
        trades = bench["extra_info"]["trades"]
        stats = bench["stats"]
        out[bench["name"].removeprefix("test_")] = {
            "ns_per_trade_median": round(stats["median"] / trades * 1e9),
            "ns_per_trade_min": round(stats["min"] / trades * 1e9),
            "ns_per_trade_mean": round(stats["mean"] / trades * 1e9),
            "trades_per_round": trades,
            "rounds": stats["rounds"],
        }
        log(f"hot path {bench['name']}: {stats['median'] / trades * 1e9:,.0f} ns/trade (median)")
    return out


# -- profiling (optional) ---------------------------------------------------------------------


def start_profiler(ctx: Context, label: str, pid: int) -> subprocess.Popen[bytes]:
    assert ctx.profile_dir is not None
    assert ctx.py_spy is not None
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    raw = ctx.profile_dir / f"{label}.txt"
    log(f"profiling the loader (pid {pid}) with py-spy into {raw}")
    return subprocess.Popen(
        [
            ctx.py_spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--output",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(ctx.profile_dir / f"{label}.py-spy.log").open("wb"),
    )


def finish_profiler(ctx: Context, label: str, spy: subprocess.Popen[bytes]) -> None:
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    assert ctx.profile_dir is not None
    raw = ctx.profile_dir / f"{label}.txt"
    if raw.exists():
        summary = summarize_profile(raw.read_text())
        (ctx.profile_dir / f"{label}-summary.md").write_text(summary)
        print(summary)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; drop the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


# (category, substrings of "function (path)" that put a sample's own frame in it), first match.
PROFILE_CATEGORIES: Final = (
    ("metrics endpoint (aiohttp, prometheus_client)", ("aiohttp/", "prometheus_client/")),
    ("websockets: reading and parsing frames", ("websockets/",)),
    ("encode_trade (message text, plain_decimal)", ("kafka_codec.py", "domain/trade.py")),
    ("FrameDecoder.decode (orjson, checks, Decimal, Trade)", ("binance_codec.py",)),
    ("feed: receive buffer and decode loop", ("binance_feed.py",)),
    (
        "aiokafka send(): metadata check, partition, accumulator, future",
        (
            "producer/producer.py",
            "aiokafka/cluster.py",
            "aiokafka/client.py",
            "MessageAccumulator.add_message",
            "MessageBatch.append",
            "BatchBuilder.append",
            "aiokafka/util.py",
        ),
    ),
    (
        "aiokafka delivery: sender, requests, resolving every future",
        ("aiokafka/",),
    ),
    (
        "publisher: per-trade bookkeeping and done-callbacks",
        ("adapters/kafka.py", "adapters/metrics.py"),
    ),
    ("use case: pump, sequencer, hand-off", ("application/", "domain/")),
    ("event loop (uvloop internals, task and callback dispatch)", ("asyncio/", "uvloop/")),
)


def categorize(frames: Sequence[str]) -> str:
    """The category of a sample, from its innermost frame that is not generated code."""
    for frame in reversed(frames):
        if "(<string>)" in frame or frame.startswith("<lambda>"):
            continue  # namedtuple __new__, dataclass __init__: count them for their caller
        for category, needles in PROFILE_CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
        return "other"
    return "other"


def summarize_profile(raw: str, top: int = 40) -> str:
    """Categories, self and inclusive shares of a py-spy raw (collapsed stacks) profile."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if frames:
            own[frames[-1]] += count
        categories[categorize(frames)] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "empty profile\n"
    lines = [f"{total} samples", "", "| category | % of samples |", "| --- | ---: |"]
    lines += [f"| {name} | {n / total:.1%} |" for name, n in categories.most_common()]
    lines += ["", "| self % | function |", "| ---: | --- |"]
    lines += [f"| {n / total:6.1%} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "| ---: | --- |"]
    lines += [f"| {n / total:6.1%} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


# -- results -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    pom = (REPO / "testbed" / "kafka" / "pom.xml").read_text()
    kafka = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiokafka": version("aiokafka"),
        "websockets": version("websockets"),
        "uvloop": version("uvloop"),
        "orjson": version("orjson"),
        "kafka_broker": kafka[1] if kafka else None,
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and a digest of the service's sources (edits not yet committed too)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.split("\n")
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return {
        "commit": head or None,
        "uncommitted_src_changes": sorted(line[3:] for line in changed if line.strip()),
        "src_sha256": digest.hexdigest()[:16],
    }


def settings_info(ctx: Context) -> dict[str, Any]:
    """The settings the loader processes logged as in effect (the variables that differ between
    runs apart), and those of the in-process producer and the topics."""
    runs = list(ctx.loader_settings.values())
    common = (
        {key: value for key, value in runs[0].items() if all(run.get(key) == value for run in runs)}
        if runs
        else {}
    )
    varying = {
        label: {key: value for key, value in run.items() if key not in common}
        for label, run in ctx.loader_settings.items()
    }
    producer = DEFAULTS.producer_tuning()
    return {
        "loader_process": common,
        "loader_process_by_run": {label: diff for label, diff in varying.items() if diff},
        "in_process_producer": {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": producer.linger_ms,
            "max_batch_bytes": producer.max_batch_bytes,
            "compression": producer.compression,
            "max_in_flight_trades": producer.max_in_flight_trades,
        },
        "topic_partitions": ctx.partitions,
        "topic_timestamps": "LogAppendTime",
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
        return f"{text}{unit}"
    return f"{value}{unit}"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, goal, measured, met) rows; met is None when the scenario did not run."""
    scen = results.get("scenarios", {})
    rows: list[tuple[str, str, str, bool | None]] = []
    one = scen.get("throughput-1")
    ceiling = scen.get("ceiling-1")
    rate = one.get("trades_per_s") if one else None
    rows.append(
        (
            "Sustained trades/s, one symbol",
            f"≥ {TARGET_RATE:,.0f}",
            _fmt(rate),
            None if rate is None else rate >= TARGET_RATE,
        )
    )
    ceiling_rate = ceiling["send"].get("trades_per_s") if ceiling else None
    share = rate / ceiling_rate if rate and ceiling_rate else None
    rows.append(
        (
            "Loader / bare-producer ceiling, one symbol",
            f"≥ {TARGET_CEILING_SHARE:.1f}",
            "n/a" if share is None else f"{share:.2f} (ceiling {_fmt(ceiling_rate)}/s)",
            None if share is None else share >= TARGET_CEILING_SHARE,
        )
    )
    cpu = one.get("cpu_us_per_trade") if one else None
    rows.append(
        (
            "CPU per trade, one symbol",
            f"≤ {TARGET_CPU_US:g} µs",
            _fmt(cpu, " µs"),
            None if cpu is None else cpu <= TARGET_CPU_US,
        )
    )
    lat = scen.get("latency-10000")
    p99 = lat.get("p99_ms") if lat else None
    rows.append(
        (
            "p99 receipt → ack at 10,000 trades/s",
            f"≤ {TARGET_P99_MS:g} ms",
            _fmt(p99, " ms"),
            None if p99 is None else p99 <= TARGET_P99_MS,
        )
    )
    peaks = [
        (name, figures["peak_rss_mb"])
        for name, figures in scen.items()
        if isinstance(figures, dict) and "peak_rss_mb" in figures and figures["default_settings"]
    ]
    if peaks:
        name, peak = max(peaks, key=lambda item: item[1])
        rows.append(
            (
                "Peak RSS of the loader (default settings)",
                f"≤ {TARGET_RSS_MB:g} MB",
                f"{peak:.0f} MB ({name})",
                peak <= TARGET_RSS_MB,
            )
        )
    else:
        rows.append(
            ("Peak RSS of the loader (default settings)", f"≤ {TARGET_RSS_MB:g} MB", "n/a", None)
        )
    memory = scen.get("memory")
    rows.append(
        (
            "Memory flat at a steady rate",
            f"slope within ±{FLAT_SLOPE_MB_PER_MIN:g} MB/min after warm-up",
            "n/a"
            if memory is None
            else f"{memory['slope_after_warmup_mb_per_min']:+.2f} MB/min "
            f"({memory['rss_after_warmup_mb']:.0f} → {memory['rss_end_mb']:.0f} MB)",
            None if memory is None else bool(memory["flat"]),
        )
    )
    return rows


def render_tables(results: dict[str, Any]) -> str:
    scen = results.get("scenarios", {})
    machine = results["machine"]
    code = results.get("code", {})
    dirty = ""
    if code.get("uncommitted_src_changes"):
        dirty = f" with uncommitted changes to {', '.join(code['uncommitted_src_changes'])}"
    if results.get("code_changed_during_run"):
        dirty += " (src/ changed during the run)"
    lines = [
        f"Measured {results['date']} at commit `{code.get('commit')}`{dirty} on "
        f"{machine['cores']} cores ({machine['cpu_model']}), Python {machine['python']}, "
        f"aiokafka {machine['aiokafka']}, websockets {machine['websockets']}, uvloop "
        f"{machine['uvloop']}, Kafka {machine['kafka_broker']} (local single broker, PLAINTEXT, "
        f"on the same machine). Raw figures: `bench/results/{results['file']}`.",
        "",
        "| target | goal | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, goal, measured, met in targets(results):
        verdict = "—" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {goal} | {measured} | {verdict} |")
    lines.append("")
    lines += _throughput_tables(scen)
    lines += _cost_table(scen)
    lines += _latency_table(scen)
    hot = scen.get("hot-path")
    if hot:
        lines += [
            "Hot path per trade (pytest-benchmark on the recorded BTCUSDT frames, "
            "`bench/test_hot_path.py`):",
            "",
            "| step | ns/trade (median) | min |",
            "| --- | ---: | ---: |",
        ]
        for name, figures in hot.items():
            if not isinstance(figures, dict):
                continue
            median, low = figures["ns_per_trade_median"], figures["ns_per_trade_min"]
            lines.append(f"| `{name}` | {median:,} | {low:,} |")
        lines.append("")
    memory = scen.get("memory")
    if memory:
        lines += [
            f"Memory at a steady {memory['rate']:,} trades/s for {memory['seconds']:g} s "
            f"({memory['trades_published']:,} trades, RSS sampled every 5 s): start "
            f"{memory['rss_start_mb']} MB, after {memory['warmup_seconds']:g} s warm-up "
            f"{memory['rss_after_warmup_mb']} MB, end {memory['rss_end_mb']} MB, max "
            f"{memory['rss_max_mb']} MB; slope {memory['slope_mb_per_min']:+.2f} MB/min overall, "
            f"{memory['slope_after_warmup_mb_per_min']:+.2f} MB/min after the warm-up.",
            "",
        ]
    if results.get("problems"):
        lines += ["Problems:", "", *[f"- {p}" for p in results["problems"]], ""]
    return "\n".join(lines)


def _throughput_tables(scen: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    details: list[str] = []
    for key, title in (("1", "1 (raw stream)"), ("10", "10 (combined stream)")):
        ceiling = scen.get(f"ceiling-{key}")
        loader = scen.get(f"throughput-{key}")
        sim = scen.get("simbench", {}).get(f"symbols_{key}")
        if ceiling:
            for variant, what in (
                ("send", "bare producer, one `send()` per trade"),
                ("publisher", "the service's `KafkaTradePublisher` alone"),
                ("send_batch", "bare producer, `send_batch()`"),
            ):
                c = ceiling.get(variant)
                if c:
                    rows.append(
                        f"| {title} | {what} | {_fmt(c['trades_per_s'])} | "
                        f"{_fmt(c['cpu_us_per_trade'])} | — | — |"
                    )
        if loader:
            rate = loader["trades_per_s"]
            share = "—"
            if ceiling and ceiling["send"]["trades_per_s"] and rate:
                share = f"{rate / ceiling['send']['trades_per_s']:.2f}"
            sim_share = f"{rate / sim['frames_per_s']:.3f}" if sim and rate else "—"
            rows.append(
                f"| {title} | **loader-ws-trades** (whole process) | **{_fmt(rate)}** | "
                f"{_fmt(loader['cpu_us_per_trade'])} | {share} | {sim_share} |"
            )
            details.append(
                f"| {key} | {loader['trades']:,} | {_fmt(loader['trades_per_s_wall'])} | "
                f"{loader['cpu_cores_while_streaming']} | {loader['other_processes_cores']} | "
                f"{loader['simulator_cpu_cores']} | {_fmt(loader['peak_queue_frames'])} | "
                f"{loader['peak_rss_mb']:.0f} | {loader['runs']} |"
            )
        if sim:
            rows.append(
                f"| {title} | simulator → Go reader (`simbench`) | {_fmt(sim['frames_per_s'])} | "
                "— | — | — |"
            )
    lines: list[str] = []
    if rows:
        lines += [
            "Throughput, trades/s end to end. Loader: N trades ÷ (broker append time of the "
            "last one minus the moment the simulator began sending, both on this machine's clock; "
            "the topics stamp `LogAppendTime`), fed at `--rate 0` with every setting at its "
            "default and stopped by `STOP_AFTER_RECORDS`. Ceilings: N ÷ (first send → "
            "`flush()` returned) on pre-decoded trades. CPU: µs per trade of the sending "
            "process while streaming. Best of the runs listed in the JSON.",
            "",
            "| symbols | sender | trades/s | CPU µs/trade | ÷ `send()` ceiling | ÷ simulator |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    if details:
        lines += [
            "| symbols | trades | trades/s connect → exit | loader cores | other processes "
            "cores | simulator cores | peak queued frames | peak RSS MB | runs |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *details,
            "",
        ]
    return lines


def _cost_table(scen: dict[str, Any]) -> list[str]:
    ceiling = scen.get("ceiling-1")
    loader = scen.get("throughput-1")
    if not ceiling or not loader:
        return []
    receive = ceiling["websockets_receive_cpu_us_per_frame"]
    decode = ceiling["decode_cpu_us_per_trade"]
    publish = ceiling["publisher"]["cpu_us_per_trade"]
    total = loader["cpu_us_per_trade"]
    rest = total - receive - decode - publish
    return [
        "Where one trade's CPU goes (one symbol; each part measured on its own in the "
        "ceiling scenario, the rest is the loader process's total minus the parts):",
        "",
        "| part | µs/trade |",
        "| --- | ---: |",
        f"| websockets client: receive and parse the frame | {receive:.1f} |",
        f"| `FrameDecoder.decode` | {decode:.1f} |",
        f"| `KafkaTradePublisher.publish` to acknowledgement (encoding included; "
        f"`encode_trade` alone {ceiling['encode_cpu_us_per_trade']:.1f}) | {publish:.1f} |",
        f"| the rest: receive buffer, pump, sequencer, event loop, GC, telemetry | {rest:.1f} |",
        f"| **loader process, total** | **{total:.1f}** |",
        "",
    ]


def _latency_table(scen: dict[str, Any]) -> list[str]:
    rows = []
    for rate in (1000, 10000):
        lat = scen.get(f"latency-{rate}")
        if lat:
            rows.append(
                f"| {rate:,} | {_fmt(lat['achieved_rate'])} | {lat['p50_ms']} | {lat['p99_ms']} | "
                f"{lat['p999_ms']} | {lat['mean_ms']} | {lat['cpu_cores']} | "
                f"{lat['peak_rss_mb']:.0f} |"
            )
    if not rows:
        return []
    return [
        "Latency from frame receipt to broker acknowledgement: quantiles of the service's "
        "`loader_publish_latency_seconds` histogram (buckets 10 % apart, interpolated), "
        "scraped from `/metrics` every second; the first seconds are left out as warm-up. "
        "Default settings.",
        "",
        "| trades/s | achieved | p50 ms | p99 ms | p99.9 ms | mean ms | loader cores "
        "| peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


BEGIN: Final = "<!-- bench:results:begin (generated by bench/run.py; edit outside) -->"
END: Final = "<!-- bench:results:end -->"


def write_docs(results: dict[str, Any]) -> None:
    table = f"{BEGIN}\n{render_tables(results)}\n{END}"
    if DOCS.exists():
        text = DOCS.read_text()
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            DOCS.write_text(f"{head}{table}{tail}")
            return
        DOCS.write_text(f"{text.rstrip()}\n\n## Results\n\n{table}\n")
        return
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(f"# Benchmarks\n\n## Results\n\n{table}\n")


def print_summary(results: dict[str, Any]) -> None:
    print()
    print("=" * 78)
    for name, goal, measured, met in targets(results):
        verdict = "-" if met is None else ("met" if met else "MISSED")
        print(f"{name:<44} {goal:<22} {measured}  [{verdict}]")
    scen = results["scenarios"]
    for key in ("1", "10"):
        loader = scen.get(f"throughput-{key}")
        ceiling = scen.get(f"ceiling-{key}")
        if loader and ceiling and loader["trades_per_s"]:
            ratio = loader["trades_per_s"] / ceiling["send"]["trades_per_s"]
            print(
                f"loader/ceiling, {key} symbol(s): {loader['trades_per_s']:,.0f} / "
                f"{ceiling['send']['trades_per_s']:,.0f} = {ratio:.2f}"
            )
    for problem in results["problems"]:
        print(f"PROBLEM: {problem}")
    print("=" * 78)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a minute or two)")
    parser.add_argument(
        "--only",
        metavar="SCENARIO[,SCENARIO...]",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--trades", type=int, help="trades per throughput run (default 200000)")
    parser.add_argument(
        "--repeat", type=int, help="runs of each throughput and ceiling scenario (best kept)"
    )
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions of each trade topic (default 1)"
    )
    parser.add_argument(
        "--docs",
        choices=("auto", "yes", "no"),
        default="auto",
        help="regenerate the table in docs/benchmarks.md (auto: only after a full run)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="attach py-spy to the loader in the throughput scenarios and write profiles here",
    )
    parser.add_argument("--py-spy", default="py-spy", help="py-spy binary for --profile")
    parser.add_argument("--keep-logs", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only regenerate the tables in docs/benchmarks.md from a results file",
    )
    return parser.parse_args(argv)


def selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    aliases = {
        "ceiling": ["ceiling-1", "ceiling-10"],
        "throughput": ["throughput-1", "throughput-10"],
        "latency": ["latency-1000", "latency-10000"],
    }
    names: list[str] = []
    for name in wanted:
        for item in aliases.get(name, [name]):
            if item not in SCENARIOS:
                raise SystemExit(f"unknown scenario {item!r}; known: {', '.join(SCENARIOS)}")
            names.append(item)
    return [name for name in SCENARIOS if name in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        write_docs(json.loads(args.render.read_text()))
        print_summary(json.loads(args.render.read_text()))
        return 0
    names = selected(args.only)
    plan = Plan.quick() if args.quick else Plan()
    if args.trades:
        plan = Plan(**{**plan.__dict__, "trades": args.trades})
    py_spy = shutil.which(args.py_spy) if args.profile else None
    if args.profile and py_spy is None:
        raise SystemExit(f"--profile needs py-spy ({args.py_spy} not found)")
    ensure_built()
    broker = load_env()
    scratch = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    ctx = Context(
        broker=broker,
        plan=plan,
        scratch=scratch,
        partitions=args.partitions,
        repeat=args.repeat or plan.repeat,
        profile_dir=args.profile,
        py_spy=py_spy,
    )
    started = dt.datetime.now(dt.UTC)
    code_before = code_state()
    log(f"scenarios: {', '.join(names)}; plan {plan}; scratch {scratch}")
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "simbench": lambda: scenario_simbench(ctx),
        "ceiling-1": lambda: scenario_ceiling(ctx, TEN_SYMBOLS[:1]),
        "throughput-1": lambda: scenario_throughput(ctx, TEN_SYMBOLS[:1]),
        "ceiling-10": lambda: scenario_ceiling(ctx, TEN_SYMBOLS),
        "throughput-10": lambda: scenario_throughput(ctx, TEN_SYMBOLS),
        "latency-1000": lambda: scenario_latency(ctx, 1000),
        "latency-10000": lambda: scenario_latency(ctx, 10_000),
        "hot-path": lambda: scenario_hot_path(ctx),
        "memory": lambda: scenario_memory(ctx),
    }
    for name in names:
        load = os.getloadavg()[0]
        log(f"--- {name} (load average {load:.2f})")
        try:
            ctx.results[name] = {**runners[name](), "load_average_before": round(load, 2)}
        except Exception as error:
            problem = f"{name}: {type(error).__name__}: {error}"
            ctx.problems.append(problem)
            log(f"PROBLEM {problem}")
            if not isinstance(error, BenchError):
                traceback.print_exc()
    full = names == list(SCENARIOS) and not args.quick and not args.trades
    suffix = "" if full else ("-quick" if args.quick else "-partial")
    date = started.date().isoformat()
    results: dict[str, Any] = {
        "date": date,
        "file": f"{date}{suffix}.json",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds()),
        "quick": args.quick,
        "scenarios_run": names,
        "plan": plan.__dict__,
        "machine": machine_info(),
        "code": code_before,
        "settings": settings_info(ctx),
        "scenarios": ctx.results,
        "problems": ctx.problems,
    }
    code_after = code_state()
    if code_after["src_sha256"] != code_before["src_sha256"]:
        results["code_changed_during_run"] = code_after
        log("warning: src/ changed while the benchmark ran; the figures mix two versions")
    results["targets"] = [
        {"target": t, "goal": g, "measured": m, "met": ok} for t, g, m, ok in targets(results)
    ]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / results["file"]
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    log(f"results written to {path.relative_to(REPO)}")
    if args.docs == "yes" or (args.docs == "auto" and full):
        write_docs(results)
        log(f"table regenerated in {DOCS.relative_to(REPO)}")
    print_summary(results)
    if args.keep_logs or ctx.problems:
        log(f"logs kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if ctx.problems else 0


if __name__ == "__main__":
    sys.exit(main())
