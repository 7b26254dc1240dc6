"""docs/consuming.md run for real: its commands read what a loader run published, exactly.

Every block of the guide marked ``test:<name>`` is run as it stands, with the broker, topic and
credentials given through the variables it reads (``BOOTSTRAP``, ``TOPIC``, ...). The topics
are made by the guide's own ``kafka-topics.sh`` commands, a real loader run fills them from
the recorded Binance trades through the simulator, and each consumer's output is compared, trade
by trade, with the exchange's decimal strings. Blocks marked ``output:<name>`` are excerpts of
what block ``<name>`` prints, and must be in what it really printed.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.kafka.metadata import partition_for
from testkit.kafka_broker import BrokerEnv, kafka_tool
from testkit.recorded import CURRENT, expected_message, trades
from testkit.service import REPO_ROOT, LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.topics import TopicSet

GUIDE = REPO_ROOT / "docs" / "consuming.md"
JVM_PROJECT = Path("docs", "consuming", "jvm")
JAVA_SOURCE = JVM_PROJECT / "src" / "main" / "java" / "io" / "streamforge" / "examples"
SYMBOL = "BTCUSDT"
PARTITIONS = 3  # more than the run's one symbol: a consumer must read every partition

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_RUN_LANGUAGES = {"sh", "python", "pycon", "java"}


@dataclass(frozen=True)
class Block:
    language: str
    role: str
    """``test`` (a command or file the tests run) or ``output`` (an excerpt of what one prints)."""
    name: str
    text: str


def guide_blocks() -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(GUIDE.read_text(encoding="utf-8")):
        language, _, marker = match.group(1).strip().partition(" ")
        role, _, name = marker.strip().partition(":")
        blocks.append(Block(language, role, name, match.group(2)))
    return blocks


def blocks(name: str, role: str = "test") -> list[str]:
    """The texts of the guide's blocks marked ``role:name``."""
    texts = [b.text for b in guide_blocks() if b.role == role and b.name == name]
    assert texts, f"{GUIDE.name} has no block marked {role}:{name}"
    return texts


def block(name: str, role: str = "test") -> str:
    """The text of the guide's one block marked ``role:name``."""
    (text,) = blocks(name, role)
    return text


def require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found on PATH: {why}", pytrace=False)
    return path


@dataclass(frozen=True)
class Workplace:
    """A directory that stands for a checkout: the guide's commands run in it."""

    root: Path
    bin: Path

    def run(self, name: str, env: Mapping[str, str], timeout: float = 60.0, then: str = "") -> str:
        """Run the guide's shell block ``name`` (and ``then`` in the same shell); its stdout."""
        script = f"set -euo pipefail\n{block(name)}\n{then}"
        path = f"{self.bin}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "JAVA_HOME")}
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=self.root,
                env={**base, "PATH": path, **env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"block {name} still running after {timeout:g} s") from exc
        assert done.returncode == 0, (
            f"block {name} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
        return done.stdout


@pytest.fixture(scope="module")
def workplace(tmp_path_factory: pytest.TempPathFactory) -> Workplace:
    """The local broker's env file where the guide expects it, and ``kafka-topics.sh``: the
    Kafka distribution's script runs ``TopicCommand`` of the Kafka jars, as this one does."""
    require("java", "the Kafka tools and the JVM consumer need a JDK 17 or later")
    root = tmp_path_factory.mktemp("checkout")
    (root / ".local").symlink_to(REPO_ROOT / ".local")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "kafka-topics.sh"
    command = shlex.join(kafka_tool("org.apache.kafka.tools.TopicCommand"))
    shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return Workplace(root, bin_dir)


@dataclass(frozen=True)
class Published:
    topics: TopicSet
    recorded: list[dict[str, Any]]
    partition: int
    """The partition the symbol's key maps to."""

    @property
    def volume(self) -> Decimal:
        return sum((Decimal(d["q"]) for d in self.recorded), Decimal(0))


def plaintext(broker: BrokerEnv) -> dict[str, str]:
    return {"BOOTSTRAP": broker.plaintext}


def sasl_ssl(broker: BrokerEnv, mechanism: str) -> dict[str, str]:
    return {
        "BOOTSTRAP": broker.sasl_ssl,
        "KAFKA_USER": broker.producer_user,
        "KAFKA_PASSWORD": broker.producer_password,
        "CA_PATH": str(broker.ca_path),
        "SASL_MECHANISM": mechanism,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def published(
    broker: BrokerEnv, workplace: Workplace, tmp_path_factory: pytest.TempPathFactory
) -> Published:
    """The guide's topics, filled by one loader run with every recorded trade, gzip-compressed."""
    topics = TopicSet.fresh("consuming")
    single_node = {"REPLICATION_FACTOR": "1", "MIN_INSYNC_REPLICAS": "1"}
    workplace.run(
        "topics-shared",
        plaintext(broker)
        | single_node
        | {"EVENTS_TOPIC": topics.events, "CONTROL_TOPIC": topics.control},
    )
    workplace.run(
        "topics-trades",
        plaintext(broker) | single_node | {"TOPIC": topics.data, "PARTITIONS": str(PARTITIONS)},
    )
    recorded = trades(CURRENT)
    log = tmp_path_factory.mktemp("loader") / "loader.log"
    with Simulator(
        "--market", f"{SYMBOL}=replay:{CURRENT}", "--rate", "4000", "--keep-times"
    ) as sim:
        env = loader_env(
            broker, topics, sim, STOP_AFTER_RECORDS=str(len(recorded)), KAFKA_COMPRESSION="gzip"
        )
        process = await LoaderProcess(env, log).start()
        try:
            assert await process.wait(120) == 0, process.output()[-3000:]
        finally:
            await process.kill()
    return Published(topics, recorded, partition_for(SYMBOL, range(PARTITIONS)))


def stripped(exchange: str) -> str:
    """The exchange's decimal string as the loader writes it: trailing zeros removed."""
    return exchange.rstrip("0").rstrip(".") if "." in exchange else exchange


def assert_in_output(name: str, stdout: str) -> None:
    """The guide's excerpts of what block ``name`` prints are in what it printed."""
    printed = set(stdout.splitlines())
    for line in block(name, role="output").splitlines():
        if line.strip() != "…":
            assert line in printed, f"the guide shows {line!r} for {name}; it did not print it"


def assert_exact_lines(block_name: str, stdout: str, run: Published, name: str) -> None:
    """Block ``block_name`` printed ``key, partition, offset, trade_id, price, quantity`` of
    every trade, then the volume line; ``name`` says which run it was."""
    *lines, summary = stdout.splitlines()
    rows = [line.split("\t") for line in lines]
    assert len(rows) == len(run.recorded), f"{name}: {len(rows)} trades, {len(run.recorded)} sent"
    for offset, (row, data) in enumerate(zip(rows, run.recorded, strict=True)):
        assert len(row) == 6, f"{name}: unexpected line {row}"
        key, partition, at, trade_id, price, quantity = row
        assert (key, int(partition), int(at)) == (SYMBOL, run.partition, offset), f"{name}: {row}"
        assert int(trade_id) == data["t"], f"{name}: {row} where trade {data['t']} was due"
        # equal as decimals to the exchange's strings, and printed with exactly its digits
        assert Decimal(price) == Decimal(data["p"]), f"{name}: {row} for {data}"
        assert Decimal(quantity) == Decimal(data["q"]), f"{name}: {row} for {data}"
        assert (price, quantity) == (stripped(data["p"]), stripped(data["q"])), f"{name}: {row}"
    assert "0.00009" in {row[5] for row in rows}, "the recording's 0.00009000 went missing"

    found = re.fullmatch(
        r"(\d+) trades, volume ([0-9.]+) \(as (?:floats|doubles) ([0-9.]+)\)", summary
    )
    assert found, f"{name}: unexpected last line {summary!r}"
    count, volume, of_floats = found.groups()
    assert int(count) == len(run.recorded)
    assert Decimal(volume) == run.volume, f"{name}: volume {volume}, exchange's {run.volume}"
    assert Decimal(of_floats) != run.volume, "summed as floats the volume should drift"
    assert_in_output(block_name, stdout)


def test_every_command_of_the_guide_is_run_by_a_test() -> None:
    blocks = guide_blocks()
    unmarked = [b.text[:60] for b in blocks if b.language in _RUN_LANGUAGES and b.role != "test"]
    assert unmarked == [], f"blocks of {GUIDE.name} that no test runs: {unmarked}"
    run = {
        "local-env", "kcat-plaintext", "kcat-sasl-ssl", "python-decimals", "consume_trades.py",
        "python-run", "jvm-excerpt", "jvm-build", "jvm-run", "topics-shared", "topics-trades",
        "topics-describe",
    }  # fmt: skip
    assert {b.name for b in blocks if b.role == "test"} == run
    outputs = {b.name for b in blocks if b.role == "output"}
    assert outputs <= run, f"excerpts of blocks that do not exist: {outputs - run}"


def test_the_local_variables_name_the_local_broker(broker: BrokerEnv, workplace: Workplace) -> None:
    printed = 'printf "%s\\n" "$BOOTSTRAP" "$CA_PATH" "$KAFKA_USER" "$KAFKA_PASSWORD"'
    stdout = workplace.run("local-env", {}, then=printed)
    assert stdout.splitlines() == [
        broker.plaintext, str(broker.ca_path), broker.producer_user, broker.producer_password
    ]  # fmt: skip


def test_the_topics_are_made_as_the_guide_says(
    broker: BrokerEnv, workplace: Workplace, published: Published
) -> None:
    described = {}
    for topic in (published.topics.data, published.topics.events, published.topics.control):
        out = workplace.run("topics-describe", sasl_ssl(broker, "SCRAM-SHA-512") | {"TOPIC": topic})
        header = out.splitlines()[0]
        found = re.search(r"PartitionCount: (\d+).*Configs: (\S*)", header)
        assert found, f"unexpected describe output {header!r}"
        configs = dict(item.split("=", 1) for item in found.group(2).split(","))
        described[topic] = (int(found.group(1)), configs)
    data, events, control = (
        described[t]
        for t in (published.topics.data, published.topics.events, published.topics.control)
    )
    for _, configs in described.values():
        assert configs["cleanup.policy"] == "delete"
        assert configs["min.insync.replicas"] == "1"
        assert configs["retention.ms"] == "604800000"
    assert data[0] == PARTITIONS
    assert data[1]["compression.type"] == "producer"
    assert data[1]["message.timestamp.type"] == "CreateTime"
    assert events[0] == 6
    assert (control[0], control[1]["segment.ms"]) == (1, "86400000")
    # what the guide says of hashing two symbols onto three and onto two partitions
    assert [partition_for(s, range(3)) for s in ("BTCUSDT", "ETHUSDT")] == [2, 2]
    assert [partition_for(s, range(2)) for s in ("BTCUSDT", "ETHUSDT")] == [0, 1]


@pytest.mark.parametrize("connection", ["plaintext", "sasl_ssl-plain"])
def test_kcat_prints_every_trade_with_the_exchanges_digits(
    broker: BrokerEnv, workplace: Workplace, published: Published, connection: str
) -> None:
    require("kcat", "install it with `make tools` (Debian's kcat package)")
    if connection == "plaintext":
        name, env = "kcat-plaintext", plaintext(broker)
    else:
        name, env = "kcat-sasl-ssl", sasl_ssl(broker, "PLAIN")
    stdout = workplace.run(name, env | {"TOPIC": published.topics.data})
    lines = stdout.splitlines()
    assert len(lines) == len(published.recorded), (
        f"{len(lines)} lines for {len(published.recorded)} trades"
    )
    for offset, (line, data) in enumerate(zip(lines, published.recorded, strict=True)):
        key, partition, at, value = line.split("\t", 3)
        assert (key, int(partition), int(at)) == (SYMBOL, published.partition, offset)
        assert json.loads(value, parse_float=Decimal) == expected_message(data, SYMBOL), line
        assert f'"price":{stripped(data["p"])},' in value, line
        assert f'"quantity":{stripped(data["q"])},' in value, line
    assert any('"quantity":0.00009,' in line for line in lines)
    if connection == "plaintext":
        assert_in_output(name, stdout)


def test_the_python_decimal_examples_hold() -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block("python-decimals"), {}, "python-decimals", str(GUIDE), 0)
    failures: list[str] = []
    runner = doctest.DocTestRunner()
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)


@pytest.mark.parametrize("connection", ["plaintext", "sasl_ssl-scram-sha-512"])
def test_the_python_consumer_reads_every_trade_exactly(
    broker: BrokerEnv, workplace: Workplace, published: Published, connection: str
) -> None:
    (workplace.root / "consume_trades.py").write_text(block("consume_trades.py"), encoding="utf-8")
    env = plaintext(broker) if connection == "plaintext" else sasl_ssl(broker, "SCRAM-SHA-512")
    stdout = workplace.run("python-run", env | {"TOPIC": published.topics.data})
    assert_exact_lines("python-run", stdout, published, f"python over {connection}")


@pytest.fixture(scope="module")
def trades_consumer_jar(workplace: Workplace) -> Path:
    """The guide's Maven build of the JVM consumer, in a copy of its project."""
    require("mvn", "the JVM consumer is built with Maven 3.6.3 or later")
    source = (REPO_ROOT / JAVA_SOURCE / "TradesConsumer.java").read_text(encoding="utf-8")
    for excerpt in blocks("jvm-excerpt"):
        assert excerpt in source, f"the guide quotes code TradesConsumer.java lacks:\n{excerpt}"
    shutil.copytree(
        REPO_ROOT / JVM_PROJECT,
        workplace.root / JVM_PROJECT,
        ignore=shutil.ignore_patterns("target"),
    )
    started = time.monotonic()
    workplace.run("jvm-build", {}, timeout=600)
    print(f"Maven build of the JVM consumer: {time.monotonic() - started:.1f} s")  # noqa: T201
    jar = workplace.root / JVM_PROJECT / "target" / "trades-consumer.jar"
    assert jar.is_file(), f"the build made no {jar}"
    return jar


@pytest.mark.timeout(660)
@pytest.mark.parametrize("connection", ["plaintext", "sasl_ssl-scram-sha-512"])
def test_the_jvm_consumer_reads_every_trade_exactly(
    broker: BrokerEnv,
    workplace: Workplace,
    published: Published,
    trades_consumer_jar: Path,
    connection: str,
) -> None:
    env = plaintext(broker) if connection == "plaintext" else sasl_ssl(broker, "SCRAM-SHA-512")
    stdout = workplace.run("jvm-run", env | {"TOPIC": published.topics.data})
    assert_exact_lines("jvm-run", stdout, published, f"java over {connection}")
