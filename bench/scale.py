"""Many symbols on one process: steady rates, connection drops, and what they cost.

Every scenario here runs the real loader process against the simulator and the broker, with
the default settings unless its name says otherwise (``-single``: one connection per shard,
``WS_REDUNDANT_CONNECTIONS=off``).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from adapters.binance.feed import shard_symbols
from adapters.binance.rest import AGG_TRADES_WEIGHT, HISTORY_WEIGHT
from bench.config import DEFAULTS, Context, log, round_or_none, symbols
from bench.procs import LoaderRun, base_env, check_exit, run_loader, start_simulator
from bench.topics import TopicScan, create_bench_topics, delete_bench_topics, verify_topic
from testkit.prometheus import histogram, histogram_delta, histogram_quantile
from testkit.simulator import Simulator
from testkit.topics import TopicSet

TOTAL_RATE: Final = 20_000
"""Trades a second over all symbols in the steady and drop scenarios."""

SINGLE: Final = {"WS_REDUNDANT_CONNECTIONS": "off"}

LATENCY: Final = "loader_publish_latency_seconds"


def latency_window(run: LoaderRun, warmup: float) -> tuple[list[tuple[float, float]], float]:
    """The receipt-to-acknowledgement histogram of the scrapes after ``warmup`` seconds,
    and how long that window was."""
    usable = [(t, text) for t, text in run.scrapes if histogram(text, LATENCY)]
    if not usable:
        return [], 0.0
    last_t, last_text = usable[-1]
    warm = [(t, text) for t, text in usable if t >= warmup]
    final = histogram(last_text, LATENCY)
    if len(warm) < 2:
        return final, last_t
    first_t, first_text = warm[0]
    return histogram_delta(final, histogram(first_text, LATENCY)), last_t - first_t


def p99_ms(window: list[tuple[float, float]]) -> float | None:
    if not window or not window[-1][1]:
        return None
    return round_or_none(histogram_quantile(0.99, window) * 1000, 2)


def rest_figures(sim: Simulator) -> dict[str, Any]:
    rest = sim.state()["rest"]
    return {
        "rest_history_requests": rest["historical_requests"],
        "rest_newest_id_requests": rest["agg_requests"],
        "rest_weight": rest["historical_requests"] * HISTORY_WEIGHT
        + rest["agg_requests"] * AGG_TRADES_WEIGHT,
        "rest_429": rest["rate_limited"],
        "rest_418": rest["banned_418"],
    }


class Dropper:
    """Drops the oldest connection carrying a symbol at given seconds after the start."""

    def __init__(self, sim: Simulator, plan: Sequence[tuple[float, str]]) -> None:
        self._sim = sim
        self._plan = sorted(plan)
        self._stop = threading.Event()
        self.done: list[tuple[float, str, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started_at = 0.0

    def start(self, _pid: int) -> None:
        self.started_at = time.time()
        self._thread.start()

    def _run(self) -> None:
        for at, symbol in self._plan:
            if self._stop.wait(max(0.0, self.started_at + at - time.time())):
                return
            closed = self._sim.drop_carrying(symbol, limit=1)
            self.done.append((time.time(), symbol, closed))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def steady_once(
    ctx: Context,
    label: str,
    names: Sequence[str],
    seconds: float,
    env_extra: dict[str, str] | None = None,
    drops: Sequence[tuple[float, str]] = (),
) -> tuple[dict[str, Any], TopicScan, Dropper, LoaderRun]:
    """``names`` at ``TOTAL_RATE`` trades a second in all for ``seconds``, with the drops
    asked; the figures every such scenario reports, the topic, what was dropped, the run."""
    rate = TOTAL_RATE / len(names)
    count = int(rate * (seconds + 60)) + 1
    topics = TopicSet.fresh("bench")
    asyncio.run(create_bench_topics(ctx.bootstrap, topics, ctx.partitions))
    try:
        with start_simulator(
            ctx, label, names, "--rate", f"{rate:g}", "--count", str(count)
        ) as sim:
            env = {**base_env(ctx, topics, sim, names), **(env_extra or {})}
            env["STOP_AFTER_SECONDS"] = f"{seconds:g}"
            dropper = Dropper(sim, drops)
            began = time.time()
            try:
                run = run_loader(
                    env,
                    ctx.log_path(label, "loader"),
                    timeout=seconds + 180,
                    metrics_port=int(env["METRICS_PORT"]),
                    # As Prometheus would: the text for a thousand symbols costs the loader.
                    scrape_every=5.0,
                    rss_every=1.0,
                    on_connected=dropper.start,
                )
            finally:
                dropper.stop()
            state = sim.state()
            produced = sum(m["produced"] for m in state["markets"].values())
            rest = rest_figures(sim)
            opened = len(sim.log_events("conn_open"))
            limits = state["connections"]
            breaches = (
                limits["too_many_streams"]
                + limits["message_rate_closes"]
                + limits["attempts_refused"]
                + state["rest"]["banned_418"]
            )
        check_exit(ctx, label, run)
        scan = verify_topic(ctx, label, topics.data, None)
    finally:
        asyncio.run(delete_bench_topics(ctx.bootstrap, topics))
    warmup = min(5.0, seconds / 4)
    window, window_seconds = latency_window(run, warmup)
    published_rate = (window[-1][1] / window_seconds) if window and window_seconds else None
    stream = run.stream_seconds or run.wall_seconds
    first_ms = scan.first_ms
    out: dict[str, Any] = {
        "symbols": len(names),
        "target_rate": TOTAL_RATE,
        "seconds": seconds,
        "produced": produced,
        "published": scan.records,
        "published_share_of_produced": round(scan.records / produced, 4) if produced else None,
        "published_rate_after_warmup": round_or_none(published_rate, 0),
        "kept_up_share": round_or_none(
            None if published_rate is None else published_rate / TOTAL_RATE, 3
        ),
        "p99_receipt_to_ack_ms": p99_ms(window),
        "lag_p99_ms": round_or_none(scan.lag_quantile(0.99, after_ms=warmup * 1000), 1),
        "lag_max_ms": round_or_none(scan.lag_quantile(1.0, after_ms=warmup * 1000), 1),
        "seconds_to_first_trade_in_kafka": round_or_none(
            None if first_ms is None else first_ms / 1000 - began, 2
        ),
        "cpu_us_per_trade": round(run.stream_cpu_seconds / max(scan.records, 1) * 1e6, 2),
        "cpu_cores": round(run.stream_cpu_seconds / stream, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "connections_opened": opened,
        "binance_limit_breaches": breaches,
        **rest,
        **run.recovery(),
        "settings": env_extra or "default",
        "default_settings": not env_extra,
    }
    log(
        f"{label}: {out['published_rate_after_warmup']} trades/s published after warm-up "
        f"(target {TOTAL_RATE:,}), lag p99 {out['lag_p99_ms']} ms, receipt->ack p99 "
        f"{out['p99_receipt_to_ack_ms']} ms, {out['cpu_us_per_trade']} us CPU/trade, "
        f"RSS {out['peak_rss_mb']} MB, REST weight {rest['rest_weight']}, "
        f"{out['gaps_in_stream']} gaps"
    )
    return out, scan, dropper, run


def scenario_steady(ctx: Context, count: int) -> dict[str, Any]:
    out, _, _, _ = steady_once(ctx, f"steady-{count}", symbols(count), ctx.plan.steady_seconds)
    return out


def steady_single(ctx: Context, count: int) -> dict[str, Any]:
    out, _, _, _ = steady_once(
        ctx, f"steady-{count}-single", symbols(count), ctx.plan.steady_seconds, SINGLE
    )
    return out


def scenario_drop(ctx: Context) -> dict[str, Any]:
    """100 symbols on four shards of 25, one connection each; one shard is dropped once."""
    names = symbols(100)
    per = 25
    label = "drop-100-single"
    dropped_at = ctx.plan.steady_seconds / 3
    out, scan, dropper, run = steady_once(
        ctx,
        label,
        names,
        ctx.plan.steady_seconds,
        {**SINGLE, "WS_STREAMS_PER_CONNECTION": str(per)},
        [(dropped_at, names[0])],
    )
    shards = shard_symbols(names, per)
    others = [s for shard in shards[1:] for s in shard]
    gapped = {
        match.group(1)
        for line in run.log_lines()
        if (match := re.match(r"Gap in (\w+)", str(line.get("message", ""))))
    }
    out["shards"] = len(shards)
    out["symbols_with_a_gap"] = len(gapped)
    out["rest_weight_per_gapped_symbol"] = round(out["rest_weight"] / max(len(gapped), 1), 1)
    out["other_shards_lag_max_ms"] = round_or_none(
        scan.lag_quantile(1.0, after_ms=5000, symbols=others), 1
    )
    out["dropped"] = [closed for _, _, closed in dropper.done]
    if dropper.done:
        out["catch_up_seconds"] = round_or_none(scan.caught_up_after(dropper.done[0][0]), 2)
    log(
        f"{label}: {len(gapped)} symbols had a gap, caught up {out.get('catch_up_seconds')} s "
        f"after the drop, other shards' lag at most {out['other_shards_lag_max_ms']} ms"
    )
    return out


def scenario_drops(ctx: Context, env_extra: dict[str, str] | None) -> dict[str, Any]:
    """1,000 symbols; every shard's oldest connection dropped once a minute, in turn."""
    names = symbols(1000)
    seconds = ctx.plan.drops_seconds
    shards = shard_symbols(names, DEFAULTS.ws_streams_per_connection)
    step = 60.0 / len(shards)
    plan = [
        (5.0 + minute * 60.0 + index * step, shard[0])
        for minute in range(int(seconds // 60) + 1)
        for index, shard in enumerate(shards)
        if 5.0 + minute * 60.0 + index * step < seconds - 5
    ]
    label = "drops-1000" + ("-single" if env_extra else "")
    out, _, dropper, _ = steady_once(ctx, label, names, seconds, env_extra, plan)
    out["drops"] = len(dropper.done)
    out["connections_closed_by_drops"] = sum(closed for _, _, closed in dropper.done)
    return out
