"""Loopback networking for tests: free ports and plain HTTP requests."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fetch(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """The status and body of ``url``, an error status included (``/readyz`` answers 503);
    raises ``OSError`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            body: bytes = response.read()
            return response.status, body.decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def http_get(url: str, timeout: float = 10.0) -> str:
    """The body of ``url`` (whatever its status), without blocking the event loop."""
    _, body = await asyncio.to_thread(fetch, url, timeout)
    return body


async def until_http(url: str, status: int, timeout: float = 30.0) -> str:
    """Poll an HTTP endpoint (the only way to observe it) until it answers ``status``; a
    server not listening yet (a process still starting) counts as not answering it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            code, body = await asyncio.to_thread(fetch, url)
        except OSError as error:
            code, body = 0, str(error)
        if code == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{url} answered {code}, not {status}: {body[:500]}")
        await asyncio.sleep(0.2)
