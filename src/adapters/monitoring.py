"""The monitoring endpoint: Prometheus metrics, liveness and readiness over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

HEARTBEAT_SECONDS = 1.0
STALL_SECONDS = 10.0


class MonitoringServer:
    """``/metrics``; ``/healthz``: the event loop turns; ``/readyz``: exchange and broker up."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], dict[str, bool]],
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self._beat = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        sockets = self._runner.addresses
        self.port = sockets[0][1] if sockets else self._port
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="heartbeat")
        logger.info("Metrics and health on http://{host}:{port}", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        stalled = time.monotonic() - self._beat
        if stalled > STALL_SECONDS:
            return web.json_response({"status": "stalled", "seconds": stalled}, status=503)
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = self._ready()
        status = 200 if all(checks.values()) else 503
        return web.json_response({"ready": status == 200, **checks}, status=status)
