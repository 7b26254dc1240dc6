"""A real Prometheus (Debian's ``prometheus``, ``make tools``) scraping loader processes.

    async with PrometheusServer(tmp_path, ["127.0.0.1:9108"], rules=ALERTS) as prometheus:
        await prometheus.wait_for(lambda: prometheus.query("up == 1"))
        firing = await prometheus.alerts()

It scrapes and evaluates the rules every second, listens on a free loopback port and keeps its
data in the given directory. A missing binary is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml

from testkit.net import fetch, free_port

_T = TypeVar("_T")
_READY_TIMEOUT_SECONDS = 30.0


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


class PrometheusServer:
    def __init__(self, directory: Path, targets: Sequence[str], rules: Sequence[Path] = ()) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed: run `make tools`")
        self._binary = binary
        self._directory = directory
        self._targets = list(targets)
        self._rules = [str(path) for path in rules]
        self._port = free_port()
        self.url = f"http://127.0.0.1:{self._port}"
        self.log_path = directory / "prometheus.log"
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "1s",
            },
            "rule_files": self._rules,
            "scrape_configs": [
                {"job_name": "loader", "static_configs": [{"targets": self._targets}]}
            ],
        }
        self._directory.mkdir(parents=True, exist_ok=True)
        config_path = self._directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                self._binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self._directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self._port}",
                "--log.level=warn",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        await self.wait_for(self._ready, timeout=_READY_TIMEOUT_SECONDS, what="Prometheus ready")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def _ready(self) -> bool:
        if self._process is not None and self._process.returncode is not None:
            raise PrometheusError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            status, _ = await asyncio.to_thread(fetch, f"{self.url}/-/ready")
        except OSError:
            return False
        return status == 200

    async def _api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = await asyncio.to_thread(fetch, url)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {status} {answer.get('error', body[:500])}")
        return answer["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = await self._api("query", query=expr)
        return list(data["result"])

    async def query_range(self, expr: str, seconds: float, step: float = 1.0) -> list[Any]:
        """The series ``expr`` gives over the last ``seconds``, as a dashboard panel asks."""
        now = float((await self._api("query", query="time()"))["result"][1])
        data = await self._api(
            "query_range", query=expr, start=str(now - seconds), end=str(now), step=str(step)
        )
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        """Every pending and firing alert."""
        return list((await self._api("alerts"))["alerts"])

    async def wait_for(
        self,
        condition: Callable[[], Awaitable[_T]],
        timeout: float = 60.0,
        what: str = "condition",
    ) -> _T:
        """Poll ``condition`` (each scrape is a second apart) until it returns something true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await condition()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: not met within {timeout:g} s")
            await asyncio.sleep(0.5)
