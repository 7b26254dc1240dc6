"""The Binance exchange simulator (testbed/simulator, binary `.local/bin/binance-sim`) for tests.

`Simulator(*args)` runs the binary with command-line arguments such as
``"--market", "BTCUSDT=synthetic:seed=1", "--rate", "500"``, waits for its ready line and
exposes its URLs (`ws_url` is the `BINANCE_WS_URL` for the service, `rest_url` the
`BINANCE_REST_URL`) and its admin API: state, runtime fault knobs, start/pause/resume of the
market clocks, dropping or shutting down all connections, and the full trade history.

    with Simulator("--market", "BTCUSDT=synthetic:seed=1", "--rate", "1000") as sim:
        ...  # run the service against sim.ws_url / sim.rest_url
        sim.faults(drop_every=300)
        sim.wait_produced("BTCUSDT", 5000, timeout=30)
        trades = sim.history("BTCUSDT")

The binary is built with `testbed/simulator/build.sh` when it is missing or older than its
sources. See testbed/simulator/README.md for every flag and endpoint.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
SIMULATOR_DIR = REPO_ROOT / "testbed" / "simulator"
BUILD_SCRIPT = SIMULATOR_DIR / "build.sh"
BINARY = REPO_ROOT / ".local" / "bin" / "binance-sim"

_READY_TIMEOUT_SECONDS = 30.0
_BUILD_TIMEOUT_SECONDS = 600.0
_HTTP_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_HISTORY_PAGE = 100_000

_build_lock = threading.Lock()


class SimulatorError(RuntimeError):
    """The simulator could not be built or started, or its admin API refused a request."""


def _binary_is_stale() -> bool:
    if not BINARY.exists():
        return True
    built = BINARY.stat().st_mtime
    for dirpath, _dirnames, filenames in os.walk(SIMULATOR_DIR):
        for name in filenames:
            if (name.endswith(".go") or name in ("go.mod", "go.sum")) and (
                Path(dirpath, name).stat().st_mtime > built
            ):
                return True
    return False


def ensure_built() -> Path:
    """Build the simulator binary if it is missing or out of date; return its path."""
    with _build_lock:
        if _binary_is_stale():
            result = subprocess.run(
                ["bash", str(BUILD_SCRIPT)],
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT_SECONDS,
                check=False,
            )
            if result.returncode != 0 or not BINARY.exists():
                raise SimulatorError(
                    f"{BUILD_SCRIPT} failed (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )
    return BINARY


class Simulator:
    """One running `binance-sim` process."""

    def __init__(self, *args: str, log_path: Path | None = None) -> None:
        self.args: tuple[str, ...] = args
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stderr_kept = ""
        self._ready: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the simulator and wait for its ready line; raise with its stderr on failure."""
        if self._proc is not None:
            raise SimulatorError("simulator already started")
        binary = ensure_built()
        argv = [str(binary), *self.args]
        if self.log_path is not None:
            argv += ["--log", str(self.log_path)]
        # stderr goes to a file: a pipe nobody reads would fill up and block the simulator.
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(prefix="binance-sim-stderr-")  # noqa: SIM115
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        try:
            line = self._read_ready_line(_READY_TIMEOUT_SECONDS)
            ready = json.loads(line)
            if not isinstance(ready, dict) or ready.get("event") != "listening":
                raise SimulatorError(f"unexpected ready line {line!r}")
        except Exception as exc:
            stderr = self.stderr_text()
            self.stop()
            raise SimulatorError(
                f"binance-sim {' '.join(self.args)} did not start: {exc}\n{stderr}"
            ) from exc
        self._ready = ready
        return self

    def _read_ready_line(self, timeout: float) -> str:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise SimulatorError("simulator not started")
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no ready line within {timeout:.0f} s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise SimulatorError(f"exited with code {proc.wait()} before it was ready")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self) -> None:
        """Terminate the simulator (SIGTERM, then SIGKILL if it does not exit in time)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(_STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(_STOP_TIMEOUT_SECONDS)
            if proc.stdout is not None:
                proc.stdout.close()
        self._ready = None
        if self._stderr is not None:
            self._stderr_kept = self.stderr_text()
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise SimulatorError("simulator not started")
        return self._proc.pid

    def stderr_text(self) -> str:
        """What the simulator wrote to stderr so far (its log, unless `log_path` is set)."""
        if self._stderr is None:
            return self._stderr_kept
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        self._stderr.seek(0, os.SEEK_END)
        return text

    def log_events(self, msg: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (from `log_path`, else stderr), optionally only those with `msg`."""
        if self.log_path is not None:
            text = self.log_path.read_text() if self.log_path.exists() else ""
        else:
            text = self.stderr_text()
        events: list[dict[str, Any]] = []
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (msg is None or event.get("msg") == msg):
                events.append(event)
        return events

    # -- addresses -------------------------------------------------------------------------

    def _ready_field(self, key: str) -> Any:
        if self._ready is None:
            raise SimulatorError("simulator not started")
        return self._ready[key]

    @property
    def port(self) -> int:
        return int(self._ready_field("port"))

    @property
    def ws_url(self) -> str:
        """WebSocket base `ws://127.0.0.1:N/ws`: append `/btcusdt@trade`; the combined
        endpoint is `/stream?streams=...` on the same host."""
        return str(self._ready_field("ws_url"))

    @property
    def rest_url(self) -> str:
        """REST base, `http://127.0.0.1:N`."""
        return str(self._ready_field("rest_url"))

    # -- admin API -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback http URL built from the ready line
            self.rest_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_SECONDS) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise SimulatorError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc

    def state(self) -> dict[str, Any]:
        """GET /admin/state: markets (first_id, last_id, produced, done, started), connections,
        sent_trades, malformed_sent, rest counters, paused, faults."""
        result: dict[str, Any] = self._request("GET", "/admin/state")
        return result

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change fault knobs at runtime (drop_every, shutdown_after, lifetime, malformed_every,
        rest_429_every, retry_after, flap, silent, max_incoming_per_sec); returns all knobs.
        `faults()` only reads."""
        result: dict[str, Any] = self._request("POST", "/admin/faults", knobs)
        return result

    def start_market(self) -> None:
        """Start the market clocks (for `--start admin`)."""
        self._request("POST", "/admin/start")

    def drop_all(self) -> None:
        """Abruptly close every open WebSocket connection (no close frame)."""
        self._request("POST", "/admin/drop")

    def drop_carrying(self, symbol: str, limit: int | None = None) -> int:
        """Abruptly close the connections whose URL named `symbol`'s trade stream (one shard of
        a client), only the oldest `limit` of them when given; how many were closed."""
        stream = urllib.parse.quote(f"{symbol.lower()}@trade")
        query = f"stream={stream}" + ("" if limit is None else f"&limit={limit}")
        result: dict[str, Any] = self._request("POST", f"/admin/drop?{query}")
        return int(result["connections"])

    def shutdown_all(self) -> None:
        """Send serverShutdown to every open connection, then close each normally."""
        self._request("POST", "/admin/shutdown")

    def pause(self) -> None:
        """Pause the market clocks (connections stay open)."""
        self._request("POST", "/admin/pause")

    def resume(self) -> None:
        self._request("POST", "/admin/resume")

    def history(self, symbol: str) -> list[dict[str, Any]]:
        """Every trade the market of `symbol` produced so far, in id order, in the
        historicalTrades shape (id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch).

        Pages through the simulator's admin history from the first id; unlike
        /api/v3/historicalTrades this costs no request weight, is not counted in the REST
        statistics and is never refused by the 429 faults.
        """
        market = self.state()["markets"].get(symbol)
        if market is None:
            raise SimulatorError(f"no market {symbol}")
        first_id, last_id = market["first_id"], market["last_id"]
        trades: list[dict[str, Any]] = []
        if first_id is None:
            return trades
        from_id = int(first_id)
        while from_id <= int(last_id):
            query = urllib.parse.urlencode(
                {"symbol": symbol, "fromId": from_id, "limit": _HISTORY_PAGE}
            )
            page: list[dict[str, Any]] = self._request("GET", f"/admin/history?{query}")
            if not page:
                break
            trades.extend(page)
            from_id = int(page[-1]["id"]) + 1
        return trades

    def wait_produced(self, symbol: str, n: int, timeout: float) -> dict[str, Any]:
        """Wait until the market of `symbol` produced at least `n` trades; return its state."""
        deadline = time.monotonic() + timeout
        while True:
            market: dict[str, Any] = self.state()["markets"][symbol]
            if market["produced"] >= n:
                return market
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{symbol}: {market['produced']} trades produced, waited for {n} "
                    f"for {timeout:.1f} s"
                )
            time.sleep(0.02)

    def wait_open_connections(self, n: int, timeout: float) -> dict[str, Any]:
        """Wait until at least `n` WebSocket connections are open; return the connection counts."""
        deadline = time.monotonic() + timeout
        while True:
            connections: dict[str, Any] = self.state()["connections"]
            if connections["open"] >= n:
                return connections
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{connections['open']} connections open, waited for {n}")
            time.sleep(0.02)
