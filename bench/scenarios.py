"""The scenarios: each runs the real parts and returns its figures."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import uvloop
from aiokafka.partitioner import DefaultPartitioner
from websockets.asyncio.client import connect

from adapters.binance.codec import FrameDecoder
from adapters.binance.connection import stream_url
from adapters.clock import SystemClock
from adapters.kafka.codec import encode_trade
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.health import BrokerHealth
from adapters.kafka.producer import start_producer, stop_producer
from adapters.kafka.trades import KafkaTradePublisher
from adapters.metrics import RunStats
from bench.config import (
    DEFAULTS,
    FLAT_SLOPE_MB_PER_MIN,
    HOT_PATH_TEST,
    REPO,
    SIMBENCH,
    BenchError,
    Context,
    linear_slope,
    log,
    round_or_none,
)
from bench.procs import (
    LoaderRun,
    base_env,
    check_exit,
    finish_profiler,
    run_loader,
    simulator_cpu,
    start_profiler,
    start_simulator,
)
from bench.topics import TopicScan, create_bench_topics, delete_bench_topics, verify_topic
from domain.trade import Trade
from testkit.prometheus import histogram, histogram_delta, histogram_quantile, metric_total, samples
from testkit.simulator import BINARY, Simulator
from testkit.topics import TopicSet


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
    publisher: KafkaTradePublisher | None = None
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
        if publisher is not None:
            await publisher.close()
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
                asyncio.run(delete_bench_topics(ctx.bootstrap, topics))
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


def scenario_throughput(
    ctx: Context, symbols: Sequence[str], env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    runs = [throughput_once(ctx, symbols, env_extra) for _ in range(ctx.repeat)]
    return best_of(runs)


def throughput_once(
    ctx: Context, symbols: Sequence[str], env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """The loader fed as fast as it reads; ``env_extra`` (a ``-single`` label) overrides
    the defaults."""
    label = f"throughput-{len(symbols)}" + ("-single" if env_extra else "")
    per = ctx.plan.trades // len(symbols)
    total = per * len(symbols)
    topics = TopicSet.fresh("bench")
    asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
    profiler: list[subprocess.Popen[bytes]] = []
    try:
        with start_simulator(ctx, label, symbols, "--rate", "0", "--count", str(per)) as sim:
            env = {**base_env(ctx, topics, sim, symbols), **(env_extra or {})}
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
        asyncio.run(delete_bench_topics(ctx.bootstrap, topics))
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
        "default_settings": not env_extra,
        "settings": env_extra or "default",
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


def timed_run(
    ctx: Context,
    label: str,
    rate: int,
    seconds: float,
    *,
    scrape_every: float | None = None,
    rss_every: float | None = None,
) -> tuple[LoaderRun, TopicScan]:
    """The loader on one BTCUSDT market at ``rate`` trades/s for ``seconds``
    (``STOP_AFTER_SECONDS``), sampled as asked; its run and the verified topic."""
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
                env,
                ctx.log_path(label, "loader"),
                timeout=seconds + 120,
                metrics_port=int(env["METRICS_PORT"]),
                scrape_every=scrape_every,
                rss_every=rss_every,
            )
        check_exit(ctx, label, run)
        scan = verify_topic(ctx, label, topics.data, None)
    finally:
        asyncio.run(delete_bench_topics(ctx.bootstrap, topics))
    return run, scan


def scenario_latency(ctx: Context, rate: int) -> dict[str, Any]:
    label = f"latency-{rate}"
    seconds = ctx.plan.latency_seconds
    run, scan = timed_run(ctx, label, rate, seconds, scrape_every=1.0, rss_every=1.0)
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
    run, scan = timed_run(ctx, label, rate, seconds, rss_every=5.0)
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
