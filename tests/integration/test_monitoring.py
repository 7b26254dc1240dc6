"""The alert rules and the dashboard, evaluated by a real Prometheus scraping the real loader."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.monitoring import ALERTS, DASHBOARD, dashboard_queries
from testkit.kafka_broker import BrokerEnv
from testkit.net import free_port
from testkit.prometheus_server import PrometheusServer
from testkit.service import LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.topics import TopicSet, read_all

# What Grafana puts in a query's place: every loader and symbol, and a window of a few scrapes.
VARIABLES = {"$job": ".*", "$instance": ".*", "$symbol": ".*", "$__rate_interval": "15s"}
STREAMING = 'loader_state{state="loading"} == 1 and ignoring (state) loader_feed_connected == 1'
"""Streaming, in PromQL."""
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+), (?P<label>\w+)\)$")


def as_promql(query: str) -> str:
    """A panel's or a variable's query as Prometheus evaluates it for Grafana."""
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    values = LABEL_VALUES.match(query)
    if values:  # Grafana asks the series API; a group by finds the same label values
        return f"group by ({values['label']}) ({values['selector']})"
    return query


def with_samples(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The series that have at least one value that is a number (not NaN)."""
    return [item for item in series if any(value != "NaN" for _, value in item["values"])]


async def test_every_dashboard_query_returns_data_during_a_run(
    tmp_path: Path,
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    # Drops and malformed frames, so that gaps, backfills, reconnects and rejections happen.
    sim = simulator(
        "--market", "BTCUSDT=synthetic:seed=51", "--market", "ETHUSDT=synthetic:seed=52",
        "--rate", "400", "--drop-every", "1500", "--malformed-every", "250",
    )  # fmt: skip
    port = free_port()
    env = loader_env(
        broker, topics, sim, symbols="BTCUSDT,ETHUSDT", METRICS_PORT=str(port),
        METRICS_HOST="127.0.0.1",
    )  # fmt: skip
    process = await loader(env).start()
    async with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"]) as prometheus:
        await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 6000, timeout=90)
        # A reconnect has been scraped, and enough scrapes since for a 15 s window.
        await prometheus.wait_for(
            lambda: prometheus.query("sum(loader_reconnects_total) > 0"), what="a reconnect"
        )
        await prometheus.wait_for(
            lambda: prometheus.query("count_over_time(loader_state[1m]) >= 20"),
            what="20 scrapes",
        )
        dashboard = json.loads(DASHBOARD.read_text())
        queries = list(dashboard_queries(dashboard))
        assert len(queries) >= 20, queries
        empty = []
        for title, query in queries:
            if not with_samples(await prometheus.query_range(as_promql(query), 30)):
                empty.append(f"{title}: {query}")
        assert not empty, "queries without data:\n" + "\n".join(empty)

        # The values behind the panels are the run's, not only zeros.
        for expr in (
            'sum(loader_trades_published_total{symbol="ETHUSDT"}) > 1000',
            "sum(loader_trades_backfilled_total) > 0",
            "sum(loader_frames_rejected_total) > 0",
            "loader_rest_weight_used > 0",
            "loader_rest_weight_budget == 4800",
            'loader_state{state="loading"} == 1',
        ):
            assert await prometheus.query(expr), expr
    process.signal()
    assert await process.wait(30) == 0


async def test_the_exchange_disconnected_alert_goes_pending_then_fires(
    tmp_path: Path,
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=53", "--rate", "200")
    port = free_port()
    env = loader_env(
        broker, topics, sim, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1",
        EXCHANGE_UNAVAILABLE_TIMEOUT_SEC="600",
    )  # fmt: skip
    process = await loader(env).start()
    async with PrometheusServer(
        tmp_path / "prometheus", [f"127.0.0.1:{port}"], rules=[ALERTS]
    ) as prometheus:
        await prometheus.wait_for(
            lambda: prometheus.query(STREAMING),
            what="streaming",
        )
        await prometheus.wait_for(
            lambda: prometheus.query("count_over_time(loader_state[1m]) >= 10"),
            what="10 scrapes",
        )
        # A healthy run raises nothing.
        assert await prometheus.alerts() == []

        sim.stop()

        async def disconnected(state: str) -> list[dict[str, Any]]:
            return [
                alert
                for alert in await prometheus.alerts()
                if alert["labels"]["alertname"] == "LoaderExchangeDisconnected"
                and alert["state"] == state
            ]

        pending = await prometheus.wait_for(
            lambda: disconnected("pending"), timeout=30, what="the alert pending"
        )
        assert pending[0]["labels"]["instance"] == f"127.0.0.1:{port}"
        assert pending[0]["labels"]["severity"] == "critical"
        # `for: 1m`: firing a minute after the rule first held, not before.
        firing = await prometheus.wait_for(
            lambda: disconnected("firing"), timeout=90, what="the alert firing"
        )
        assert firing[0]["annotations"]["summary"] == (
            f"127.0.0.1:{port}: no connection to the exchange for a minute"
        )
        others = {
            alert["labels"]["alertname"]
            for alert in await prometheus.alerts()
            if alert["labels"]["alertname"] != "LoaderExchangeDisconnected"
        }
        assert others <= {"LoaderReconnectStorm"}, others
    process.signal()
    assert await process.wait(30) == 0
