"""The real ``loader-ws-trades`` process, started the way the Job starts it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testkit.kafka_broker import BrokerEnv
from testkit.logs import json_lines
from testkit.simulator import Simulator
from testkit.topics import TopicSet

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND = Path(sys.executable).with_name("loader-ws-trades")


class LoaderProcess:
    """One run of the service; its output goes to a file the test can read."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self._env = dict(env)
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        """What starts the service; its environment is the Job's variables and nothing else."""
        return [str(COMMAND), "run"]

    async def start(self) -> LoaderProcess:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        with self.log_path.open("wb") as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.command(),
                env={**base, **self._env},
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def wait(self, timeout: float = 60.0) -> int:
        assert self._process is not None
        try:
            self.exit_code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"loader still running after {timeout:g} s; output:\n{self.output()[-4000:]}"
            ) from None
        return self.exit_code

    async def catching(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Wait until the process handles ``signum`` itself, as the kernel's mask of caught
        signals tells; until then the interpreter is starting and the default action applies.
        Returns the seconds that took from now."""
        bit = 1 << (signum - 1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not caught_signals(self.pid) & bit:
            if loop.time() - began > timeout:
                raise AssertionError(
                    f"the loader took no {signal.Signals(signum).name} handler within "
                    f"{timeout:g} s; output:\n{self.output()[-3000:]}"
                )
            await asyncio.sleep(0.001)
        return loop.time() - began

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.output())


def caught_signals(pid: int) -> int:
    """The mask of signals a process has handlers for (``SigCgt`` in ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def loader_env(
    broker: BrokerEnv,
    topics: TopicSet,
    sim: Simulator,
    *,
    symbols: str = "BTCUSDT",
    queue_id: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The Job's environment for a run against the local broker (PLAINTEXT) and ``sim``."""
    return {
        "QUEUE_ID": queue_id or topics.data.removesuffix("-data"),
        "SYMBOL": symbols,
        "TYPE": "ws_trade",
        "KAFKA_TOPIC": topics.data,
        "TELEMETRY_PRODUCER_ID": "loader-ws-trades__it",
        "KAFKA_BOOTSTRAP_SERVERS": broker.plaintext,
        "QUEUE_EVENTS_TOPIC": topics.events,
        "QUEUE_CONTROL_TOPIC": topics.control,
        "BINANCE_WS_URL": sim.ws_url,
        "BINANCE_REST_URL": sim.rest_url,
        "TELEMETRY_INTERVAL_SEC": "1",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def sasl_env(
    broker: BrokerEnv,
    topics: TopicSet,
    sim: Simulator,
    *,
    user: str | None = None,
    password: str | None = None,
    ca_path: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """The Job's environment for the SASL_SSL listener, as the `producer` user by default."""
    env = loader_env(broker, topics, sim, **extra)
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl,
        "KAFKA_USER_PRODUCER": user or broker.producer_user,
        "KAFKA_PASSWORD_PRODUCER": password or broker.producer_password,
        "CA_PATH": str(ca_path or broker.ca_path),
    }
    return env
