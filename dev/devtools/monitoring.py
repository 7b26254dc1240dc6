"""What operators look at: the Grafana dashboard, and the alert rules as a ``PrometheusRule``.

``monitoring/alerts.yml`` is the one written source of the alerts (a plain rules file, for a
Prometheus without the operator); ``k8s/monitoring/prometheusrule.yaml`` carries the same groups
for the Prometheus Operator. The dashboard is built here with grafanalib. Regenerate both after a
change with ``make monitoring``; ``--check`` (run by the unit tests) fails when they are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml
from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

ROOT: Final = Path(__file__).resolve().parents[2]
ALERTS: Final = ROOT / "monitoring" / "alerts.yml"
DASHBOARD: Final = ROOT / "monitoring" / "dashboard.json"
PROMETHEUS_RULE: Final = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"

DATASOURCE: Final = "${datasource}"
LOADER: Final = 'job=~"$job", instance=~"$instance"'
"""The series of the loaders chosen in the dashboard's variables."""
SYMBOLS: Final = LOADER + ', symbol=~"$symbol"'
WINDOW: Final = "$__rate_interval"


def _by(label: str, function: str, metric: str, selector: str = LOADER) -> str:
    """``function`` of a counter over the panel's window, summed by ``label``."""
    return f"sum by ({label}) ({function}({metric}{{{selector}}}[{WINDOW}]))"


def _target(expr: str, legend: str, ref: str) -> g.Target:
    return g.Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE)


def _series(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    unit: str,
    at: tuple[int, int, int, int],
    **options: Any,
) -> g.TimeSeries:
    x, y, w, h = at
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[_target(expr, legend, "ABCDEFGH"[n]) for n, (expr, legend) in enumerate(targets)],
        unit=unit,
        gridPos=g.GridPos(h=h, w=w, x=x, y=y),
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        **options,
    )


def _stat(
    title: str, description: str, expr: str, legend: str, at: tuple[int, int], **options: Any
) -> g.Stat:
    x, w = at
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[_target(expr, legend, "A")],
        gridPos=g.GridPos(h=4, w=w, x=x, y=0),
        reduceCalc="lastNotNull",
        **options,
    )


def _variable(name: str, label: str, metric: str) -> g.Template:
    return g.Template(
        name=name,
        label=label,
        query=f"label_values({metric}, {name})",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        refresh=2,
        sort=1,
    )


UP_DOWN: Final = [
    {"type": "value", "options": {"0": {"text": "no", "color": "red"}}},
    {"type": "value", "options": {"1": {"text": "yes", "color": "green"}}},
]


def dashboard() -> g.Dashboard:
    """The panels an on-call engineer looks at first, top to bottom."""
    panels: list[g.Panel] = [
        _stat(
            "State",
            "The run's state: started, loading, then finished, interrupted or error.",
            f"max by (state) (loader_state{{{LOADER}}}) == 1",
            "{{state}}",
            (0, 6),
            textMode="name",
            colorMode="none",
        ),
        _stat(
            "Exchange connected",
            "1 while every loader chosen has its WebSocket connection up.",
            f"min(loader_feed_connected{{{LOADER}}})",
            "connected",
            (6, 6),
            mappings=UP_DOWN,
        ),
        _stat(
            "Broker reachable",
            "1 while the broker answers every loader chosen.",
            f"min(loader_broker_reachable{{{LOADER}}})",
            "reachable",
            (12, 6),
            mappings=UP_DOWN,
        ),
        _stat(
            "Trades acknowledged",
            "Trades the broker acknowledged in this run (all symbols chosen).",
            f"sum(loader_trades_published_total{{{SYMBOLS}}})",
            "trades",
            (18, 6),
            format="short",
        ),
        _series(
            "Trades per second, by symbol",
            "Acknowledged by the broker (lines) and received from the exchange (dashed).",
            [
                (
                    _by("symbol", "rate", "loader_trades_published_total", SYMBOLS),
                    "{{symbol}} acknowledged",
                ),
                (
                    _by("symbol", "rate", "loader_trades_received_total", SYMBOLS),
                    "{{symbol}} received",
                ),
            ],
            "ops",
            (0, 4, 12, 8),
            overrides=[_dashed("received")],
        ),
        _series(
            "Receipt to acknowledgement",
            "Time from a trade's frame arriving to the broker acknowledging it: quantiles.",
            [
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(loader_publish_latency_seconds_bucket{{{LOADER}}}[{WINDOW}])))",
                    f"p{label}",
                )
                for q, label in (("0.5", "50"), ("0.99", "99"), ("0.999", "99.9"))
            ],
            "s",
            (12, 4, 12, 8),
        ),
        _series(
            "Exchange lag, by symbol",
            "Receipt time minus trade time of each symbol's latest trade.",
            [(f"max by (symbol) (loader_exchange_lag_seconds{{{SYMBOLS}}})", "{{symbol}}")],
            "s",
            (0, 12, 12, 8),
        ),
        _series(
            "Gaps and backfilled trades",
            "Jumps in the live stream's trade ids, the trades recovered from the REST history, "
            "and those that could not be recovered (each one a hole in the topic).",
            [
                (
                    _by("symbol", "increase", f"loader_{name}_total", SYMBOLS),
                    f"{{{{symbol}}}} {what}",
                )
                for name, what in (
                    ("gaps", "gaps"),
                    ("trades_backfilled", "backfilled"),
                    ("trades_unrecoverable", "unrecoverable"),
                )
            ],
            "short",
            (12, 12, 12, 8),
            drawStyle="bars",
        ),
        _series(
            "Reconnects, by reason",
            "Exchange reconnections; rotation is the planned one before the exchange's 24 h cut.",
            [(_by("reason", "increase", "loader_reconnects_total"), "{{reason}}")],
            "short",
            (0, 20, 8, 8),
            drawStyle="bars",
        ),
        _series(
            "Rejected frames, by reason",
            "Frames from the exchange that were not valid trades.",
            [(_by("reason", "increase", "loader_frames_rejected_total"), "{{reason}}")],
            "short",
            (8, 20, 8, 8),
            drawStyle="bars",
        ),
        _series(
            "Receive buffer",
            "Frames received and not yet processed, and how often reading paused on a full buffer.",
            [
                (f"sum(loader_queue_depth{{{LOADER}}})", "frames waiting"),
                (f"sum(increase(loader_receive_pauses_total{{{LOADER}}}[{WINDOW}]))", "pauses"),
            ],
            "short",
            (16, 20, 8, 8),
        ),
        _series(
            "REST request weight",
            "Weight used this minute against the loader's budget (REST_WEIGHT_BUDGET); the "
            "exchange's own limit is per IP, shared by every loader on a node.",
            [
                (f"max(loader_rest_weight_used{{{LOADER}}})", "used"),
                (f"max(loader_rest_weight_budget{{{LOADER}}})", "budget"),
            ],
            "short",
            (0, 28, 24, 7),
            overrides=[_dashed("budget")],
        ),
    ]
    return g.Dashboard(
        title="loader-ws-trades",
        uid="loader-ws-trades",
        description="Every exchange trade into Kafka: throughput, latency, gaps and the exchange.",
        tags=["streamforge", "kafka", "binance"],
        timezone="utc",
        refresh="30s",
        time=g.Time("now-1h", "now"),
        panels=panels,
        templating=g.Templating(
            [
                g.Template(
                    name="datasource",
                    label="Prometheus",
                    query="prometheus",
                    type="datasource",
                ),
                _variable("job", "Job", "loader_state"),
                _variable("instance", "Loader", 'loader_state{job=~"$job"}'),
                _variable("symbol", "Symbol", f"loader_trades_received_total{{{LOADER}}}"),
            ]
        ),
    ).auto_panel_ids()


def _dashed(suffix: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byRegexp", "options": f".*{suffix}$"},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }


def dashboard_json() -> str:
    data = dashboard().to_json_data()
    return json.dumps(data, cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def prometheus_rule_yaml() -> str:
    rules = yaml.safe_load(ALERTS.read_text())
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "loader-ws-trades",
            "labels": {"app.kubernetes.io/name": "loader-ws-trades"},
        },
        "spec": rules,
    }
    header = "# Generated from monitoring/alerts.yml (`make monitoring`): edit that file instead.\n"
    return header + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the longer expressions) as literal blocks, as written."""


def _block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _block_strings)


def dashboard_queries(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every query of a dashboard's JSON, panels and variables."""
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]


OUTPUTS: Final = {DASHBOARD: dashboard_json, PROMETHEUS_RULE: prometheus_rule_yaml}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, render in OUTPUTS.items():
        text = render()
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        names = ", ".join(map(str, stale))
        sys.stderr.write(f"out of date: {names}; run `make monitoring`\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
