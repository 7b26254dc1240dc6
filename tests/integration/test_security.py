"""Bad input and security: refused credentials and certificates, missing permissions, secrets,
hostile control messages and malformed exchange frames, against the real broker and process.

Each run records what it was given and how it ended (``input``, ``exit_code``, ``seconds``,
``message``, ``data_lost``) as test properties, so a JUnit report lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from testkit.kafka_broker import BrokerEnv
from testkit.logs import json_lines, wait_for_log
from testkit.net import free_port, http_get
from testkit.prometheus import by_label
from testkit.recorded import CURRENT, LEGACY, expected_message, trades
from testkit.service import LoaderProcess, loader_env, sasl_env
from testkit.simulator import Simulator
from testkit.telemetry import assert_telemetry, events_of
from testkit.topics import (
    TopicSet,
    create_topics,
    publish,
    read_all,
    trade_ids,
)

RecordProperty = Callable[[str, object], None]

FAIL_WITHIN = 30.0
"""Seconds a run refused by the broker may take to exit: it must not hang or retry."""


# Running the service and reading what it said.


@pytest.fixture
def report(request: pytest.FixtureRequest) -> RecordProperty:
    """Adds a (name, value) property to the test's report (a JUnit report lists them)."""

    def add(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return add


@dataclass(frozen=True)
class Ending:
    exit_code: int
    seconds: float
    output: str
    message: str
    """The service's own last error line, or its whole text output folded into one line."""


def service_message(output: str) -> str:
    """The operator-facing line: the service's last ERROR record, else how the run ended, else
    its text output (a configuration error) folded into one line."""
    lines = [line for line in json_lines(output) if "library" not in line]
    for line in reversed(lines):
        if line.get("level") == "ERROR":
            return str(line["message"])
    for line in reversed(lines):
        if str(line.get("message", "")).startswith("Run ended"):
            return str(line["message"])
    return " ".join(output.split())


async def run_to_end(process: LoaderProcess, timeout: float = FAIL_WITHIN) -> Ending:
    started = time.monotonic()
    await process.start()
    exit_code = await process.wait(timeout)
    output = process.output()
    return Ending(exit_code, time.monotonic() - started, output, service_message(output))


def record(report: RecordProperty, what: str, ending: Ending, data_lost: str = "none") -> None:
    report("input", what)
    report("exit_code", ending.exit_code)
    report("seconds", round(ending.seconds, 2))
    report("message", ending.message)
    report("data_lost", data_lost)


def assert_secret_absent(text: str | bytes, where: str, *secrets: str) -> None:
    """Fails without echoing ``text``: the failure report must not show the secret either.

    Case-insensitive, so a secret shown upper-cased is found too.
    """
    haystack = (text if isinstance(text, bytes) else text.encode()).lower()
    for number, secret in enumerate(secrets, 1):
        leaked = secret.encode().lower() in haystack
        assert not leaked, f"secret #{number} appears in {where}"


def assert_clean_failure(ending: Ending, *secrets: str) -> None:
    assert ending.exit_code == 2, ending.output[-3000:]
    assert ending.seconds < FAIL_WITHIN
    assert "Traceback" not in ending.output
    assert_secret_absent(ending.output, "the service's output", *secrets)


def assert_nothing_read_from_the_exchange(sim: Simulator) -> None:
    """No trade was taken from the exchange, so none can have been lost."""
    state = sim.state()
    assert state["connections"]["accepted"] == 0
    assert state["sent_trades"] == 0


class Relay:
    """A TCP relay from ``host`` to ``target``: reaches the broker's TLS listener under an address
    its certificate does not name (the broker itself listens on 127.0.0.1 only)."""

    def __init__(self, host: str, target: str) -> None:
        self.host = host
        target_host, _, target_port = target.rpartition(":")
        self._target = (target_host, int(target_port))
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        writers = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            writers.append(upstream_writer)
            pipes = {
                asyncio.create_task(self._pipe(reader, upstream_writer)),
                asyncio.create_task(self._pipe(upstream_reader, writer)),
            }
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for each in writers:
                each.close()
                with contextlib.suppress(OSError):
                    await each.wait_closed()
            self._handlers.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


# 2-5. Runs the broker refuses: each ends at once with exit 2, a clean message and no secret
# shown, before anything is read from the exchange.


@dataclass
class Refused:
    """Runs the service on the SASL_SSL listener with one thing wrong, to its (refused) end."""

    broker: BrokerEnv
    topics: TopicSet
    simulator: Callable[..., Simulator]
    loader: Callable[[dict[str, str]], LoaderProcess]
    report: RecordProperty

    async def run(
        self,
        what: str,
        seed: int,
        *,
        secrets: tuple[str, ...] = (),
        exchange_untouched: bool = True,
        timeout: float = FAIL_WITHIN,
        user: str | None = None,
        password: str | None = None,
        ca_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Ending:
        sim = self.simulator("--market", f"BTCUSDT=synthetic:seed={seed}", "--rate", "100")
        variables = sasl_env(
            self.broker, self.topics, sim, user=user, password=password, ca_path=ca_path
        )
        variables |= env or {}
        ending = await run_to_end(self.loader(variables), timeout)
        record(self.report, what, ending)
        assert_clean_failure(ending, self.broker.producer_password, *secrets)
        if exchange_untouched:
            assert_nothing_read_from_the_exchange(sim)
        return ending


@pytest.fixture
def refused(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    report: RecordProperty,
) -> Refused:
    return Refused(broker, topics, simulator, loader, report)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_a_wrong_password_ends_with_exit_2_within_seconds(
    refused: Refused, broker: BrokerEnv, topics: TopicSet, mechanism: str
) -> None:
    wrong = f"wrong-{broker.producer_password}"
    ending = await refused.run(
        f"wrong password ({mechanism})",
        11,
        secrets=(wrong,),
        password=wrong,
        env={"KAFKA_SASL_MECHANISM": mechanism},
    )

    assert "Kafka authentication failed" in ending.message
    assert broker.sasl_ssl in ending.message
    assert "'producer'" in ending.message
    assert await read_all(broker.plaintext, topics.data) == []
    assert await read_all(broker.plaintext, topics.events) == []


async def test_a_ca_that_did_not_sign_the_broker_certificate_ends_with_exit_2(
    refused: Refused, broker: BrokerEnv, topics: TopicSet
) -> None:
    ending = await refused.run(
        "CA_PATH = a CA that did not sign the broker's certificate",
        12,
        ca_path=broker.other_ca_path,
    )

    assert "TLS certificate was not trusted" in ending.message
    assert broker.sasl_ssl in ending.message
    assert "CA_PATH" in ending.message
    assert await read_all(broker.plaintext, topics.events) == []


async def test_a_broker_address_the_certificate_does_not_name_ends_with_exit_2(
    refused: Refused, broker: BrokerEnv, topics: TopicSet
) -> None:
    # 127.0.0.2 is loopback but not in the certificate's names (localhost, 127.0.0.1).
    async with Relay("127.0.0.2", broker.sasl_ssl) as relay:
        # The relay reaches the broker: under a name the certificate holds, TLS succeeds.
        trusted = ssl.create_default_context(cafile=str(broker.ca_path))
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                relay.host, relay.port, ssl=trusted, server_hostname="localhost"
            ),
            10,
        )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        checked = relay.connections

        ending = await refused.run(
            f"broker address {relay.address} not in the certificate",
            13,
            env={"KAFKA_BOOTSTRAP_SERVERS": relay.address},
        )
        reached = relay.connections - checked

    assert reached >= 1, "the service never reached the relay"
    assert "TLS certificate was not trusted" in ending.message
    assert relay.address in ending.message
    assert "mismatch" in ending.message
    assert await read_all(broker.plaintext, topics.events) == []


async def test_a_user_without_any_permission_ends_with_exit_2(
    refused: Refused, broker: BrokerEnv, topics: TopicSet
) -> None:
    ending = await refused.run(
        "user 'nobody' (no ACL)",
        14,
        secrets=(broker.noperm_password,),
        user=broker.noperm_user,
        password=broker.noperm_password,
    )

    assert "Kafka authorisation refused" in ending.message
    assert f"'{broker.noperm_user}'" in ending.message
    assert await read_all(broker.plaintext, topics.data) == []
    assert await read_all(broker.plaintext, topics.events) == []


@pytest.mark.parametrize(
    ("variable", "role", "seed"),
    [
        ("KAFKA_TOPIC", "data", 15),
        ("QUEUE_EVENTS_TOPIC", "events", 16),
        ("QUEUE_CONTROL_TOPIC", "control", 17),
    ],
)
async def test_a_topic_outside_the_users_acl_ends_with_exit_2(
    refused: Refused, broker: BrokerEnv, topics: TopicSet, variable: str, role: str, seed: int
) -> None:
    allowed = getattr(topics, role)
    forbidden = f"other-{role}-{allowed.removeprefix('wf-')}"
    await create_topics(broker.plaintext, forbidden)
    # A control topic that cannot be read is found while the run starts; the others at once.
    bounded = {"STOP_AFTER_RECORDS": "200"} if role == "control" else {}
    ending = await refused.run(
        f"{variable}={forbidden} (outside the user's wf- prefix)",
        seed,
        exchange_untouched=role != "control",
        timeout=60 if role == "control" else FAIL_WITHIN,
        env={variable: forbidden, **bounded},
    )

    assert "authorisation refused" in ending.message
    assert forbidden in ending.message
    assert await read_all(broker.plaintext, forbidden) == []
    if role == "data":
        # The broker can be reached (the telemetry topic is allowed): the error is told there.
        events = await events_of(broker, topics)
        assert [e["status"] for e in events] == ["started", "error"]
        assert "authorisation refused" in events[-1]["message"]
        assert forbidden in events[-1]["message"]
        assert_secret_absent(orjson.dumps(events), "the telemetry", broker.producer_password)
    if role == "events":
        assert await read_all(broker.plaintext, topics.data) == []


async def test_a_corrupt_ca_file_is_a_configuration_error(refused: Refused, tmp_path: Path) -> None:
    corrupt = tmp_path / "ca.pem"
    corrupt.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    ending = await refused.run(
        "CA_PATH = a PEM file with no valid certificate", 18, ca_path=corrupt
    )

    assert "CA_PATH" in ending.message


# 6. The password appears nowhere.


async def test_the_password_appears_nowhere_in_a_successful_run(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    report: RecordProperty,
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=19", "--rate", "500")
    port = free_port()
    env = sasl_env(
        broker, topics, sim, LOG_LEVEL="DEBUG", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1"
    )
    password = broker.producer_password
    process = loader(env)
    started = time.monotonic()
    await process.start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 300, timeout=60)
    await publish(
        broker.plaintext,
        topics.control,
        json.dumps({"command": "restart", "queue_id": env["QUEUE_ID"]}).encode(),
        b"not json",
    )
    await wait_for_log(
        process,
        lambda lines: sum("Ignoring" in line["message"] for line in lines) >= 2,
        "the control messages ignored",
    )
    pages = {
        path: await http_get(f"http://127.0.0.1:{port}{path}")
        for path in ("/metrics", "/readyz", "/healthz")
    }
    process.signal(signal.SIGTERM)
    exit_code = await process.wait(30)
    output = process.output()
    ending = Ending(exit_code, time.monotonic() - started, output, service_message(output))

    record(report, "correct SCRAM credentials, LOG_LEVEL=DEBUG, then SIGTERM", ending)
    assert exit_code == 0, output[-3000:]
    assert "Connected to Kafka" in output
    assert_secret_absent(output, "stdout and stderr", password)
    events = await read_all(broker.plaintext, topics.events)
    assert_secret_absent(b"".join(r.value for r in events), "the telemetry", password)
    records = await read_all(broker.plaintext, topics.data)
    assert_secret_absent(b"".join(r.value for r in records), "the trade topic", password)
    for path, body in pages.items():
        assert_secret_absent(body, path, password)
    ids = trade_ids(records)
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert_telemetry([r.json() for r in events], env["QUEUE_ID"], "interrupted", len(ids))


@pytest.mark.parametrize(
    ("case", "variable"),
    [
        ("PLAINTEXT with credentials", "KAFKA_SECURITY_PROTOCOL"),
        ("password without a user", "KAFKA_USER_PRODUCER"),
        ("password put in KAFKA_SASL_MECHANISM", "KAFKA_SASL_MECHANISM"),
        ("credentials in the broker address", "KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
async def test_an_invalid_configuration_never_shows_the_password(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    report: RecordProperty,
    case: str,
    variable: str,
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=20", "--rate", "100")
    password = broker.producer_password
    env = sasl_env(broker, topics, sim)
    match case:
        case "PLAINTEXT with credentials":
            env["KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
        case "password without a user":
            del env["KAFKA_USER_PRODUCER"]
        case "password put in KAFKA_SASL_MECHANISM":
            env["KAFKA_SASL_MECHANISM"] = password
        case "credentials in the broker address":
            env["KAFKA_BOOTSTRAP_SERVERS"] = f"{broker.producer_user}:{password}@{broker.sasl_ssl}"

    ending = await run_to_end(loader(env))

    record(report, f"invalid configuration: {case}", ending)
    assert_clean_failure(ending, password)
    assert ending.message.startswith("loader-ws-trades: Invalid configuration:")
    assert f"{variable}:" in ending.message
    # Reported before anything connects.
    assert_nothing_read_from_the_exchange(sim)
    assert await read_all(broker.plaintext, topics.events) == []


# 7. Hostile control messages.


def hostile_control_messages(queue_id: str) -> list[tuple[str, bytes | None, str | None]]:
    """(what, value, the reason logged) for each; ``None`` reason: a well-formed command that is
    not a stop for this queue."""
    queue = queue_id.encode()

    def command(name: str, target: str) -> bytes:
        return json.dumps({"command": name, "queue_id": target}).encode()

    huge = b'{"command":"stop","queue_id":"' + queue + b'","pad":"' + b"x" * 900_000 + b'"}'
    return [
        ("malformed JSON", b'{"command":"stop","queue_id":', "not JSON"),
        ("wrong types", b'{"command":1,"queue_id":[]}', "must be strings"),
        ("a 900 KB stop for this queue", huge, "is over"),
        ("tombstone (null value)", None, "empty message"),
        ("binary garbage", bytes(range(256)) * 4, "not JSON"),
        ("invalid UTF-8", b'{"command":"st\xffop","queue_id":"' + queue + b'"}', "not JSON"),
        ("empty value", b"", "not JSON"),
        ("a JSON array", b'["stop"]', "not a JSON object"),
        ("a JSON string", b'"stop"', "not a JSON object"),
        ("JSON null", b"null", "not a JSON object"),
        ("no queue_id", b'{"command":"stop"}', "must be strings"),
        ("5000 nested arrays", b"[" * 5000, "not JSON"),
        ("an unknown command", command("restart", queue_id), None),
        ("STOP in capitals", command("STOP", queue_id), None),
        ("a stop for another queue", command("stop", "wf-some-other-queue"), None),
        ("a stop for this queue id plus a space", command("stop", f"{queue_id} "), None),
        ("a stop for a prefix of this queue id", command("stop", queue_id[:-1]), None),
    ]


async def publish_values(bootstrap: str, topic: str, values: Sequence[bytes | None]) -> list[int]:
    """Publish each value (``None`` is a tombstone); the offsets they got."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        offsets = []
        for value in values:
            metadata = await producer.send_and_wait(topic, value, key=b"hostile")
            offsets.append(metadata.offset)
        return offsets
    finally:
        await producer.stop()


def ignored_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The service's lines saying it ignored a control message."""
    return [line for line in lines if line["message"].lower().startswith("ignor")]


async def test_hostile_control_messages_are_ignored_and_a_real_stop_still_works(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    report: RecordProperty,
) -> None:
    # The market trades only once every hostile message has been seen, so the run cannot reach
    # its bound before the control channel has read them all.
    sim = simulator("--market", "BTCUSDT=synthetic:seed=21", "--rate", "500", "--start", "admin")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS="300")
    queue_id = env["QUEUE_ID"]
    hostile = hostile_control_messages(queue_id)
    half = len(hostile) // 2
    values = [value for _, value, _ in hostile]
    offsets = await publish_values(broker.plaintext, topics.control, values[:half])

    process = loader(env)
    started = time.monotonic()
    await process.start()
    # Once the messages published before the start are ignored, the rest arrive while it reads.
    await wait_for_log(
        process,
        lambda lines: len(ignored_lines(lines)) >= half,
        f"the first {half} control messages ignored",
    )
    offsets += await publish_values(broker.plaintext, topics.control, values[half:])
    lines = await wait_for_log(
        process,
        lambda lines: len(ignored_lines(lines)) >= len(hostile),
        f"{len(hostile)} control messages ignored",
    )
    assert not any("Stop command" in line["message"] for line in lines)
    assert not any(line["message"].startswith("Run ended") for line in lines)
    sim.start_market()
    exit_code = await process.wait(60)
    output = process.output()
    ending = Ending(exit_code, time.monotonic() - started, output, service_message(output))

    record(
        report,
        f"{len(hostile)} hostile control messages, then STOP_AFTER_RECORDS=300",
        ending,
        data_lost="none: 300 contiguous trades",
    )
    assert exit_code == 0, output[-3000:]
    assert "Traceback" not in output
    ignored = ignored_lines(json_lines(output))
    assert len(ignored) == len(hostile)
    malformed = {line["offset"]: line["reason"] for line in ignored if "offset" in line}
    for (what, _, reason), offset in zip(hostile, offsets, strict=True):
        if reason is not None:
            assert offset in malformed, f"{what} was not reported"
            assert reason in malformed[offset], what
    commands = [(line["command"], line["queue"]) for line in ignored if "command" in line]
    assert len(commands) == sum(reason is None for _, _, reason in hostile)
    ids = trade_ids(await read_all(broker.plaintext, topics.data))
    assert ids == list(range(ids[0], ids[0] + 300))
    events = await events_of(broker, topics)
    assert_telemetry(events, queue_id, "finished", 300)
    assert "STOP_AFTER_RECORDS" in events[-1]["message"]

    # The same control topic, with a proper stop after the hostile messages: it is obeyed.
    await publish(
        broker.plaintext,
        topics.control,
        json.dumps({"command": "stop", "queue_id": queue_id}).encode(),
    )
    second = TopicSet.fresh("security")
    second = TopicSet(data=second.data, events=second.events, control=topics.control)
    await create_topics(broker.plaintext, second.data, second.events)
    sim_again = simulator("--market", "BTCUSDT=synthetic:seed=22", "--rate", "100")
    ending = await run_to_end(loader(loader_env(broker, second, sim_again, queue_id=queue_id)), 60)
    assert ending.exit_code == 0, ending.output[-3000:]
    assert len(ignored_lines(json_lines(ending.output))) == len(hostile)
    events = await events_of(broker, second)
    assert events[-1]["status"] == "interrupted"
    assert "Stop command" in events[-1]["message"]


# 8. Malformed exchange frames.


REJECTED_REASONS = {
    "invalid_json",  # invalid JSON, truncated JSON
    "missing_field",  # no "p"
    "bad_type",  # "p" a number
    "bad_number",  # "p":"NaN", "q":"1e400"
    "non_positive",  # negative price
    "unsubscribed_symbol",
    "binary",
}

# How the 2 MB frame is met:
# - "keep-times": the recorded trade times are kept, and WS_MAX_FRAME_BYTES is raised so the
#   WebSocket client takes the frame and the loader drops it as oversized: one connection, and
#   every field compared with the recording.
# - "reconnects": the default limits; the frame is over the client's 1 MB limit, which closes the
#   connection (1009), and each reconnect is caught up from REST history. Trade times are the
#   simulator's clock (a gap between the history read and the new subscription is then recent
#   enough to fill), so the times are compared with the simulator's own history.
MODES = {
    "keep-times": (["--keep-times"], {"WS_MAX_FRAME_BYTES": str(256 * 1024)}),
    "reconnects": ([], {}),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("source", [CURRENT, LEGACY], ids=["current", "legacy-b-a"])
async def test_malformed_exchange_frames_are_rejected_and_no_trade_is_lost_or_duplicated(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    report: RecordProperty,
    source: Path,
    mode: str,
) -> None:
    recorded = trades(source)
    sim_args, extra = MODES[mode]
    sim = simulator(
        "--market", f"BTCUSDT=replay:{source}", "--rate", "4000", "--malformed-every", "50",
        *sim_args,
    )  # fmt: skip
    port = free_port()
    env = loader_env(broker, topics, sim, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1", **extra)
    process = loader(env)
    started = time.monotonic()
    await process.start()
    await read_all(
        broker.plaintext, topics.data, until=lambda r: len(r) >= len(recorded), timeout=60
    )
    metrics = await http_get(f"http://127.0.0.1:{port}/metrics")
    process.signal(signal.SIGTERM)
    exit_code = await process.wait(30)
    output = process.output()
    ending = Ending(exit_code, time.monotonic() - started, output, service_message(output))

    rejected = by_label(metrics, "loader_frames_rejected_total", "reason")
    ignored = by_label(metrics, "loader_frames_ignored_total", "kind")
    reconnects = by_label(metrics, "loader_reconnects_total", "reason")
    backfilled = by_label(metrics, "loader_trades_backfilled_total", "symbol")
    unrecoverable = by_label(metrics, "loader_trades_unrecoverable_total", "symbol")
    records = await read_all(broker.plaintext, topics.data)
    report("rejected", json.dumps(rejected, sort_keys=True))
    report("reconnects", sum(reconnects.values()))
    report("backfilled", sum(backfilled.values()))
    record(
        report,
        f"{source.name} ({mode}): one malformed frame every 50, 11 kinds, a 2 MB one included",
        ending,
        data_lost=f"none: {len(records)} of {len(recorded)} trades, exact, in order, once",
    )
    assert exit_code == 0, output[-3000:]
    assert "Traceback" not in output
    if mode == "keep-times":
        expected = [expected_message(d, "BTCUSDT") for d in recorded]
    else:
        history = sim.history("BTCUSDT")
        assert [(h["id"], h["price"], h["qty"], h["isBuyerMaker"]) for h in history] == [
            (d["t"], d["p"], d["q"], d["m"]) for d in recorded
        ]
        expected = [
            expected_message(
                {
                    "t": h["id"],
                    "p": h["price"],
                    "q": h["qty"],
                    "T": h["time"],
                    "m": h["isBuyerMaker"],
                },
                "BTCUSDT",
            )
            for h in history
        ]
    assert [r.exact() for r in records] == expected
    assert {r.key for r in records} == {b"BTCUSDT"}
    assert sum(unrecoverable.values()) == 0

    assert set(rejected) >= REJECTED_REASONS, rejected
    assert all(rejected[reason] >= 1 for reason in REJECTED_REASONS)
    assert ignored.get("other", 0) >= 1  # the 24hrTicker events, and any event not a trade
    if mode == "keep-times":
        assert rejected.get("oversized", 0) >= 1
        assert sum(reconnects.values()) == 0
    else:
        assert sum(reconnects.values()) >= 1
        assert sum(backfilled.values()) >= 1
    assert sum(rejected.values()) + sum(ignored.values()) <= sim.state()["malformed_sent"]

    logged = {
        line["reason"]
        for line in json_lines(output)
        if line["message"].startswith("Rejected frame")
    }
    assert logged >= REJECTED_REASONS
    events = await events_of(broker, topics)
    assert_telemetry(events, env["QUEUE_ID"], "interrupted", len(recorded))
