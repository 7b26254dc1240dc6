"""The report: the machine and the code measured, the settings in effect, the targets, and
the tables of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Final

from bench.config import (
    DEFAULTS,
    DOCS,
    FLAT_SLOPE_MB_PER_MIN,
    REPO,
    TARGET_CEILING_SHARE,
    TARGET_CPU_US,
    TARGET_P99_MS,
    TARGET_RATE,
    TARGET_RSS_MB,
    Context,
    target_rows,
)
from bench.scale_report import BEGIN as SCALE_BEGIN
from bench.scale_report import END as SCALE_END
from bench.scale_report import render_scale, scale_targets


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
    lines += target_rows(targets(results))
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
    for key, title in (
        ("1", "1 (raw stream)"),
        ("10", "10 (combined stream)"),
        ("200", "200 (combined stream)"),
    ):
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
        "| the rest: receive buffer, pump, sequencer, event loop, GC, telemetry | "
        + (
            f"{rest:.1f} |"
            if rest >= 0
            else "— (the parts, each measured apart, add up to more than the total: noise) |"
        ),
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
    """Regenerate the blocks of ``docs/benchmarks.md`` that the results have figures for:
    the single-connection tables, the many-symbols ones, or both."""
    scen = results.get("scenarios", {})
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if all(name in scen for name in ("throughput-1", "ceiling-1", "latency-10000", "memory")):
        text = _with_block(text, BEGIN, END, render_tables(results), "Results")
    if any(name.startswith(("steady-", "drop")) or name.endswith("-single") for name in scen):
        text = _with_block(text, SCALE_BEGIN, SCALE_END, render_scale(results), "Many symbols")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def _with_block(text: str, begin: str, end: str, body: str, heading: str) -> str:
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        return f"{head}{block}{tail}"
    return f"{text.rstrip()}\n\n## {heading}\n\n{block}\n"


def print_summary(results: dict[str, Any]) -> None:
    print()
    print("=" * 78)
    for name, goal, measured, met in targets(results) + scale_targets(results["scenarios"]):
        verdict = "-" if met is None else ("met" if met else "MISSED")
        print(f"{name:<44} {goal:<22} {measured}  [{verdict}]")
    scen = results["scenarios"]
    for key in ("1", "10", "200"):
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
