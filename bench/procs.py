"""Process control: the loader and the simulator run and sampled from /proc, their logs read,
and the optional profiler."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.config import BenchError, Context, log
from testkit.logs import json_lines
from testkit.net import fetch, free_port
from testkit.service import COMMAND, loader_env
from testkit.simulator import Simulator
from testkit.topics import TopicSet

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


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
        return json_lines(self.log_path.read_text(errors="replace"))

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
    """The loader's /metrics now, or None when it does not answer."""
    try:
        status, body = fetch(f"http://127.0.0.1:{port}/metrics", timeout=2.0)
    except OSError:
        return None
    return body if status == 200 else None


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
    ("encode_trade (message text, plain_decimal)", ("adapters/kafka/codec.py", "domain/trade.py")),
    ("FrameDecoder.decode (orjson, checks, Decimal, Trade)", ("adapters/binance/codec.py",)),
    (
        "feed: receive buffer and decode loop",
        ("adapters/binance/feed.py", "adapters/binance/connection.py"),
    ),
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
        ("adapters/kafka/", "adapters/metrics.py"),
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
