"""What operators use: metrics and health over HTTP, the stop and events commands."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

from testkit.kafka_broker import BrokerEnv
from testkit.net import fetch, free_port, until_http
from testkit.prometheus import sample
from testkit.service import COMMAND, LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.topics import TopicSet, read_all


async def test_metrics_and_health_over_http(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator(
        "--market", "BTCUSDT=synthetic:seed=31", "--rate", "1000",
        "--drop-every", "700", "--malformed-every", "200",
    )  # fmt: skip
    port = free_port()
    env = loader_env(broker, topics, sim, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    process = await loader(env).start()
    base = f"http://127.0.0.1:{port}"
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 2000, timeout=60)

    assert json.loads(await until_http(f"{base}/healthz", 200)) == {"status": "ok"}
    ready = json.loads(await until_http(f"{base}/readyz", 200))
    assert ready == {"ready": True, "exchange_connected": True, "broker_reachable": True}
    status, metrics = await asyncio.to_thread(fetch, f"{base}/metrics")
    assert status == 200
    assert sample(metrics, "loader_trades_received_total", symbol="BTCUSDT") >= 2000
    assert sample(metrics, "loader_trades_published_total", symbol="BTCUSDT") >= 2000
    assert sample(metrics, "loader_publish_latency_seconds_count") >= 2000
    assert sample(metrics, "loader_state", state="loading") == 1
    assert sample(metrics, "loader_state", state="started") == 0
    assert sample(metrics, "loader_frames_rejected_total", reason="invalid_json") >= 1
    reconnects = re.findall(r"^loader_reconnects_total\{reason=\"[^\"]+\"\} (\S+)$", metrics, re.M)
    assert sum(float(value) for value in reconnects) >= 2
    assert sample(metrics, "loader_trades_backfilled_total", symbol="BTCUSDT") >= 1
    assert "loader_exchange_lag_seconds{" in metrics
    assert "loader_queue_depth " in metrics

    sim.stop()
    not_ready = json.loads(await until_http(f"{base}/readyz", 503))
    assert not_ready["exchange_connected"] is False
    process.signal()
    assert await process.wait(30) == 0


async def test_the_operator_commands_stop_a_queue_and_follow_its_telemetry(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=32", "--rate", "500")
    env = loader_env(broker, topics, sim)
    process = await loader(env).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 300, timeout=60)
    operator_env = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_BOOTSTRAP_SERVERS": broker.plaintext,
        "QUEUE_CONTROL_TOPIC": topics.control,
        "QUEUE_EVENTS_TOPIC": topics.events,
    }
    follower = await asyncio.create_subprocess_exec(
        str(COMMAND),
        "events",
        "--queue-id",
        env["QUEUE_ID"],
        env=operator_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stopper = await asyncio.create_subprocess_exec(
        str(COMMAND),
        "stop",
        "--queue-id",
        env["QUEUE_ID"],
        env=operator_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(stopper.communicate(), 60)
    assert stopper.returncode == 0, err.decode()
    assert f"stop sent to queue {env['QUEUE_ID']}" in out.decode()
    assert await process.wait(60) == 0

    shown, err = await asyncio.wait_for(follower.communicate(), 60)
    assert follower.returncode == 0, err.decode()
    lines = shown.decode().splitlines()
    assert "started" in lines[0]
    assert any("loading" in line for line in lines)
    assert "interrupted" in lines[-1]
    assert "Stop command received" in lines[-1]
    written = [r.json() for r in await read_all(broker.plaintext, topics.events)][-1]
    assert f"{written['records_written']:,} records" in lines[-1]
