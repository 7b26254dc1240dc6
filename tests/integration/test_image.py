"""The container image built from the real Dockerfile (`make image`), run the way the Job runs it:
read-only root, UID 10001, no capabilities, against the real broker and the simulator."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.image import BASE_IMAGE, IMAGE, ImageProcess, inspect, run_in_image
from testkit.kafka_broker import BrokerEnv
from testkit.net import free_port, until_http
from testkit.prometheus import sample
from testkit.recorded import CURRENT
from testkit.service import REPO_ROOT, LoaderProcess, loader_env, sasl_env
from testkit.simulator import Simulator
from testkit.telemetry import assert_telemetry, events_of
from testkit.topics import Record, TopicSet, read_all

pytestmark = pytest.mark.image

COUNT = 3000
REPLAY = ("--market", f"BTCUSDT=replay:{CURRENT}", "--rate", "500", "--count", str(COUNT))
REPLAY_KEEPING_TIMES = (*REPLAY, "--keep-times")
CA_IN_CONTAINER = "/etc/loader/ca.crt"
GRACE_SECONDS = 45  # k8s/base/job.yaml terminationGracePeriodSeconds
REPORT = REPO_ROOT / ".local" / "image-test.json"
"""The image's size and its start time to the first trade, which `make image-test` prints."""


def exact(records: list[Record]) -> list[tuple[bytes | None, bytes, int]]:
    return [(r.key, r.value, r.partition) for r in records]


async def test_the_image_publishes_byte_for_byte_what_the_venv_publishes(
    tmp_path: Path,
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    record_property: Callable[[str, object], None],
) -> None:
    venv = await loader(
        loader_env(broker, topics, simulator(*REPLAY_KEEPING_TIMES), STOP_AFTER_RECORDS=str(COUNT))
    ).start()
    assert await venv.wait(90) == 0, venv.output()[-3000:]
    from_venv = await read_all(broker.plaintext, topics.data)
    assert len(from_venv) == COUNT

    image_topics = await TopicSet.created(broker.plaintext)
    port = free_port()
    env = loader_env(
        broker, image_topics, simulator(*REPLAY_KEEPING_TIMES),
        STOP_AFTER_RECORDS=str(COUNT), METRICS_PORT=str(port), METRICS_HOST="127.0.0.1",
    )  # fmt: skip
    container = ImageProcess(env, tmp_path / "image.log")
    started = time.monotonic()
    await container.start()
    try:
        await read_all(broker.plaintext, image_topics.data, until=bool, timeout=60)
        first_trade = time.monotonic() - started
        metrics = await until_http(f"http://127.0.0.1:{port}/metrics", 200)
        assert sample(metrics, "loader_trades_received_total", symbol="BTCUSDT") > 0
        ready = json.loads(await until_http(f"http://127.0.0.1:{port}/readyz", 200))
        assert ready == {"ready": True, "exchange_connected": True, "broker_reachable": True}
        assert await container.wait(90) == 0, container.output()[-3000:]
    finally:
        await container.kill()
    from_image = await read_all(broker.plaintext, image_topics.data)
    assert exact(from_image) == exact(from_venv)
    assert_telemetry(await events_of(broker, image_topics), env["QUEUE_ID"], "finished", COUNT)

    size = int(inspect("{{.Size}}"))
    record_property("image_bytes", size)
    record_property("seconds_to_first_trade", round(first_trade, 2))
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "image": IMAGE,
                "megabytes": round(size / 1e6),
                "first_trade_seconds": round(first_trade, 2),
            }
        )
        + "\n"
    )


async def test_sasl_ssl_with_the_ca_mounted_read_only_and_sigterm_ends_interrupted(
    tmp_path: Path,
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=61", "--rate", "200")
    env = sasl_env(broker, topics, sim) | {"CA_PATH": CA_IN_CONTAINER}
    container = ImageProcess(
        env, tmp_path / "image.log", mounts=[(broker.ca_path, CA_IN_CONTAINER)]
    )
    await container.start()
    try:
        await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 200, timeout=60)
        container.signal()  # podman passes it on to the loader in the container
        stopped = time.monotonic()
        assert await container.wait(GRACE_SECONDS) == 0, container.output()[-3000:]
        assert time.monotonic() - stopped < GRACE_SECONDS
    finally:
        await container.kill()
    records = await read_all(broker.plaintext, topics.data)
    ids = [r.json()["trade_id"] for r in records]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert_telemetry(await events_of(broker, topics), env["QUEUE_ID"], "interrupted", len(ids))
    assert broker.producer_password not in container.output()


async def test_a_bad_configuration_exits_2_with_one_message(
    tmp_path: Path, broker: BrokerEnv, topics: TopicSet, simulator: Callable[..., Simulator]
) -> None:
    env = loader_env(broker, topics, simulator("--market", "BTCUSDT=synthetic:seed=62"))
    env |= {"TELEMETRY_INTERVAL_SEC": "soon"}
    del env["QUEUE_ID"]
    container = ImageProcess(env, tmp_path / "image.log")
    await container.start()
    assert await container.wait(30) == 2
    output = container.output()
    assert output.startswith("loader-ws-trades: Invalid configuration:"), output
    assert "Traceback" not in output
    assert "QUEUE_ID: is required but not set" in output
    assert "TELEMETRY_INTERVAL_SEC" in output


def test_the_image_is_what_the_dockerfile_promises() -> None:
    assert inspect("{{.Config.User}}") == "10001:10001"
    assert inspect("{{json .Config.Entrypoint}}") == '["loader-ws-trades"]'
    labels = json.loads(inspect("{{json .Labels}}"))
    assert labels["org.opencontainers.image.title"] == "loader-ws-trades"
    facts = json.loads(
        run_in_image(
            "python",
            "-c",
            "import importlib.util as u, json, os, pathlib as p;"
            "print(json.dumps({'uid': os.getuid(), 'pip': bool(u.find_spec('pip')),"
            " 'setuptools': bool(u.find_spec('setuptools')),"
            " 'testkit': bool(u.find_spec('testkit')),"
            " 'writable_root': os.access('/', os.W_OK), 'pip_conf': [str(f) for f in"
            " (p.Path('/etc/pip.conf'), p.Path('/etc/xdg/pip/pip.conf')) if f.exists()]}))",
        )
    )
    assert facts == {
        "uid": 10001,
        "pip": False,
        "setuptools": False,
        "testkit": False,
        "writable_root": False,
        "pip_conf": [],
    }
    # The host's CA bundle was mounted for the build only: the image keeps the base's.
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    digest = f"sha256sum {bundle}"
    in_image = run_in_image("sh", "-c", digest).split()[0]
    assert in_image == run_in_image("sh", "-c", digest, image=BASE_IMAGE).split()[0]
    if hashlib.sha256(Path(bundle).read_bytes()).hexdigest() == in_image:
        pytest.fail("the host's CA bundle is Debian's: this check cannot tell them apart")
