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
- ``throughput-1``, ``throughput-10``, ``throughput-200``: the real ``loader-ws-trades`` process
  fed as fast as it reads (simulator ``--rate 0``), one symbol on the raw stream, ten and 200
  on the combined stream, stopped by ``STOP_AFTER_RECORDS``; the topic must then hold exactly
  every trade.
- ``latency-1000``, ``latency-10000``: fixed rates; quantiles of the service's own
  ``loader_publish_latency_seconds`` histogram (frame receipt to broker acknowledgement).
- ``hot-path``: pytest-benchmark of frame text -> ``FrameDecoder.decode`` -> ``encode_trade``.
- ``memory``: a fixed 5,000 trades/s for a few minutes, resident memory sampled every 5 s.
- ``throughput-1000``, ``throughput-1500`` (and ``-200-single``, ``-1000-single``): many symbols fed
  as fast as the loader reads, with the default settings (redundant connections above 192
  symbols) and with one connection per shard (``WS_REDUNDANT_CONNECTIONS=off``).
- ``steady-1`` ... ``steady-1500``: 20,000 trades/s in all over that many symbols for
  ``steady_seconds``: kept up?, lag (broker append time minus trade time), receipt->ack,
  CPU per trade, REST weight, time to the first trade in Kafka.
- ``drop-100-single``: 100 symbols on four shards of one connection, one shard dropped once:
  how long until every symbol is contiguous again, REST weight per symbol that had a gap,
  the other shards' lag.
- ``drops-1000`` (default settings) and ``drops-1000-single``: 1,000 symbols at 20,000/s,
  every shard's oldest connection dropped once a minute: 429s, 418s, REST calls, lag.

Results go to ``bench/results/<date>.json`` and, for a full run, to the table in
``docs/benchmarks.md``. The run fails (exit 1) only when something broke: a lost, duplicated
or misordered trade, a loader that did not end cleanly, a scenario that could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.config import (
    DOCS,
    REPO,
    RESULTS_DIR,
    SCENARIOS,
    TEN_SYMBOLS,
    BenchError,
    Context,
    Plan,
    log,
    symbols,
)
from bench.report import code_state, machine_info, print_summary, settings_info, targets, write_docs
from bench.scale import SINGLE, scenario_drop, scenario_drops, scenario_steady, steady_single
from bench.scale_report import scale_targets
from bench.scenarios import (
    scenario_ceiling,
    scenario_hot_path,
    scenario_latency,
    scenario_memory,
    scenario_simbench,
    scenario_throughput,
)
from testkit.kafka_broker import load_env
from testkit.simulator import ensure_built


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
        help="regenerate the tables in docs/benchmarks.md that the run has figures for "
        "(auto: only after a full run)",
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
        "throughput": ["throughput-1", "throughput-10", "throughput-200"],
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
        "throughput-200": lambda: scenario_throughput(ctx, symbols(200)),
        "latency-1000": lambda: scenario_latency(ctx, 1000),
        "latency-10000": lambda: scenario_latency(ctx, 10_000),
        "hot-path": lambda: scenario_hot_path(ctx),
        "memory": lambda: scenario_memory(ctx),
        "throughput-200-single": lambda: scenario_throughput(ctx, symbols(200), SINGLE),
        "throughput-1000": lambda: scenario_throughput(ctx, symbols(1000)),
        "throughput-1000-single": lambda: scenario_throughput(ctx, symbols(1000), SINGLE),
        "throughput-1500": lambda: scenario_throughput(ctx, symbols(1500)),
        "steady-1": lambda: scenario_steady(ctx, 1),
        "steady-10": lambda: scenario_steady(ctx, 10),
        "steady-200": lambda: scenario_steady(ctx, 200),
        "steady-1000": lambda: scenario_steady(ctx, 1000),
        "steady-1000-single": lambda: steady_single(ctx, 1000),
        "steady-1500": lambda: scenario_steady(ctx, 1500),
        "drop-100-single": lambda: scenario_drop(ctx),
        "drops-1000": lambda: scenario_drops(ctx, None),
        "drops-1000-single": lambda: scenario_drops(ctx, SINGLE),
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
        {"target": t, "goal": g, "measured": m, "met": ok}
        for t, g, m, ok in targets(results) + scale_targets(ctx.results)
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
