"""The local Kafka test broker (testbed/kafka/kafka.sh) as seen from tests.

`kafka.sh up` starts a single-node KRaft broker from the Apache Kafka jars and writes an env
file with its addresses, CA certificates and SCRAM users; `load_env` reads that file and
`LocalBroker` drives the script (up, down, pause, resume, restart) for fault-injection tests.

Listeners: PLAINTEXT on 127.0.0.1:<base> (no authentication, super user) and SASL_SSL on
localhost:<base+1> (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN; certificate signed by the CA at
`ca_path`). User `producer` may write `wf-*` topics and `queue-events` and read
`queue-control`; `nobody` has no ACL; `admin` is a super user.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO_ROOT / "testbed" / "kafka" / "kafka.sh"
KAFKA_POM = REPO_ROOT / "testbed" / "kafka" / "pom.xml"
KAFKA_TOOLS_LOG_CONFIG = REPO_ROOT / "testbed" / "kafka" / "log4j2-tools.properties"
DEFAULT_PORT_BASE = 19092
_TIMEOUT_SECONDS = 900.0  # the very first `up` downloads the Kafka jars


class BrokerError(RuntimeError):
    """kafka.sh failed, or its env file is missing or incomplete."""


@dataclass(frozen=True)
class BrokerEnv:
    instance: str
    plaintext: str
    """host:port of the unauthenticated PLAINTEXT listener."""
    sasl_ssl: str
    """host:port of the SASL_SSL listener (host name `localhost`, matching the certificate)."""
    ca_path: Path
    other_ca_path: Path
    """A CA that signed nothing the broker uses: the broker's certificate is untrusted with it."""
    admin_user: str
    admin_password: str
    producer_user: str
    producer_password: str
    noperm_user: str
    noperm_password: str
    pid_file: Path
    log: Path

    @property
    def data_dir(self) -> Path:
        """The broker's ``log.dirs``: one folder of segment files per topic partition."""
        return self.log.parent / "data"

    def __repr__(self) -> str:
        return (
            f"BrokerEnv(instance={self.instance!r}, plaintext={self.plaintext!r}, "
            f"sasl_ssl={self.sasl_ssl!r}, passwords hidden)"
        )


def env_file(instance: str = "main") -> Path:
    """Path of the env file `kafka.sh up` writes for `instance`."""
    name = "kafka.env" if instance == "main" else f"kafka-{instance}.env"
    return REPO_ROOT / ".local" / name


def parse_env(text: str) -> BrokerEnv:
    """Parse the KEY=VALUE lines of a broker env file."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()

    def get(key: str) -> str:
        try:
            return values[f"KAFKA_TESTBED_{key}"]
        except KeyError:
            raise BrokerError(f"broker env file lacks KAFKA_TESTBED_{key}") from None

    return BrokerEnv(
        instance=get("INSTANCE"),
        plaintext=get("PLAINTEXT"),
        sasl_ssl=get("SASL_SSL"),
        ca_path=Path(get("CA_PATH")),
        other_ca_path=Path(get("OTHER_CA_PATH")),
        admin_user=get("ADMIN_USER"),
        admin_password=get("ADMIN_PASSWORD"),
        producer_user=get("PRODUCER_USER"),
        producer_password=get("PRODUCER_PASSWORD"),
        noperm_user=get("NOPERM_USER"),
        noperm_password=get("NOPERM_PASSWORD"),
        pid_file=Path(get("PID_FILE")),
        log=Path(get("LOG")),
    )


def load_env(instance: str = "main") -> BrokerEnv:
    """Read the env file of a broker started with `kafka.sh up`."""
    path = env_file(instance)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BrokerError(
            f"{path} not found: start the broker with "
            f"KAFKA_INSTANCE={instance} bash testbed/kafka/kafka.sh up"
        ) from None
    return parse_env(text)


def kafka_jars() -> Path:
    """The folder of the Kafka release's jars that kafka.sh resolved and runs the broker from."""
    pom = KAFKA_POM.read_text(encoding="utf-8")
    version = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    if version is None:
        raise BrokerError(f"no <kafka.version> in {KAFKA_POM}")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    libs = cache / "loader-ws-trades" / f"kafka-{version.group(1)}" / "libs"
    if not (libs / ".complete").exists():
        raise BrokerError(f"{libs} is not complete: start the broker once (make kafka-up)")
    return libs


def kafka_tool(main_class: str) -> list[str]:
    """The command line of one of Kafka's tools (what its bin/*.sh scripts run), as kafka.sh
    runs them: a small, quick JVM that logs warnings and errors only."""
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    return [
        str(java),
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={KAFKA_TOOLS_LOG_CONFIG}",
        "-cp",
        f"{kafka_jars()}/*",
        main_class,
    ]


def batch_codecs(env: BrokerEnv, topic: str) -> set[str]:
    """The compression codecs of the record batches stored for ``topic``, as Kafka's own
    ``kafka-dump-log.sh`` reads them from the segment files."""
    segments = sorted(str(path) for path in env.data_dir.glob(f"{topic}-*/*.log"))
    if not segments:
        raise BrokerError(f"no segment files for {topic} in {env.data_dir}")
    dump = subprocess.run(
        [*kafka_tool("org.apache.kafka.tools.DumpLogSegments"), "--files", ",".join(segments)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(re.findall(r"compresscodec: (\w+)", dump.stdout))


class LocalBroker:
    """One instance of the local test broker, driven through testbed/kafka/kafka.sh."""

    def __init__(self, instance: str = "main", port_base: int = DEFAULT_PORT_BASE) -> None:
        self.instance = instance
        self.port_base = port_base

    def __repr__(self) -> str:
        return f"LocalBroker(instance={self.instance!r}, port_base={self.port_base})"

    def _run(self, command: str) -> str:
        env = dict(os.environ)
        env["KAFKA_INSTANCE"] = self.instance
        env["KAFKA_PORT_BASE"] = str(self.port_base)
        try:
            done = subprocess.run(
                ["bash", str(KAFKA_SCRIPT), command],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"kafka.sh {command} ({self.instance}) timed out after {exc.timeout:g}s"
            ) from exc
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise BrokerError(
                f"kafka.sh {command} ({self.instance}, port base {self.port_base}) "
                f"exited with {done.returncode}:\n{output}"
            )
        return output

    def up(self) -> BrokerEnv:
        """Start the broker (no-op when it runs) and wait until both listeners answer."""
        self._run("up")
        return self.env

    def down(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 20 s); no-op when it is not running."""
        self._run("down")

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP): connections stay open but nothing answers."""
        self._run("pause")

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        self._run("resume")

    def restart(self) -> BrokerEnv:
        """Stop and start again with the same data, ports and credentials."""
        self._run("restart")
        return self.env

    def is_running(self) -> bool:
        """True when the broker process runs and is not paused."""
        try:
            self._run("status")
        except BrokerError:
            return False
        return True

    @property
    def env(self) -> BrokerEnv:
        return load_env(self.instance)
