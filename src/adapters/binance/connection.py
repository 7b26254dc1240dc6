"""One WebSocket connection to Binance's stream: its URL, its frames, and why it ended."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

RECONNECT_REASONS: Final = frozenset(
    {
        "dropped",
        "closed_by_exchange",
        "closed_with_error",
        "closed_by_loader",
        "network_error",
        "connect_failed",
        "rotation",
        "server_shutdown",
        "silent_stream",
        "other",
    }
)
"""The labels of the reconnect metric: few and fixed, whatever the errors' texts say."""


_REASON_PREFIXES: Final = (
    ("dropped without a close frame", "dropped"),
    ("closed by the exchange", "closed_by_exchange"),
    ("closed with error", "closed_with_error"),
    ("closed by the loader", "closed_by_loader"),
    ("network error", "network_error"),
    ("server shutdown", "server_shutdown"),
    ("silent stream", "silent_stream"),
    ("rotation", "rotation"),
)


def reconnect_reason(detail: str) -> str:
    """The metric label of a reconnection whose cause reads ``detail``."""
    for prefix, label in _REASON_PREFIXES:
        if detail.startswith(prefix):
            return label
    return "other"


def stream_url(base_url: str, symbols: Sequence[str]) -> str:
    """The raw stream of one symbol, or the combined stream of several on the same host."""
    base = base_url.rstrip("/")
    streams = [f"{symbol.lower()}@trade" for symbol in symbols]
    if len(streams) == 1:
        return f"{base}/{streams[0]}"
    root = base.removesuffix("/ws")
    return f"{root}/stream?streams={'/'.join(streams)}"


class ConnectFailed(Exception):
    """A connection to the exchange could not be opened; the message says why."""


class ConnectionLost(Exception):
    """An open connection ended without the loader closing it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamConnection(Protocol):
    """One open connection to the exchange's stream."""

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        """The frames as they arrive; raises ``ConnectionLost`` when the connection ends."""
        ...

    async def close(self) -> None:
        """Close the connection; safe to call more than once."""
        ...


Connector = Callable[[str], Awaitable[StreamConnection]]
"""Opens a connection to a stream URL, or raises ``ConnectFailed``."""


class _WebSocket(StreamConnection):
    """A websockets client connection, its closes told as ``ConnectionLost``."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        try:
            async for frame in self._ws:
                yield frame
        except ConnectionClosedOK:
            raise ConnectionLost(_close_reason(self._ws, clean=True)) from None
        except ConnectionClosed:
            raise ConnectionLost(_close_reason(self._ws, clean=False)) from None
        except OSError as error:
            raise ConnectionLost(f"network error: {error}") from None
        raise ConnectionLost(_close_reason(self._ws, clean=True))

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            await self._ws.close()


def websocket_connector(
    *,
    open_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    close_timeout: float,
    max_frame_bytes: int,
) -> Connector:
    """Opens websockets client connections with these time-outs and size limits."""

    async def open_websocket(url: str) -> StreamConnection:
        try:
            ws = await connect(
                url,
                open_timeout=open_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=close_timeout,
                max_size=max(max_frame_bytes * 16, 1 << 20),
                max_queue=(4096, 1024),
                compression=None,
                proxy=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as error:
            raise ConnectFailed(f"{type(error).__name__}: {error}") from None
        return _WebSocket(ws)

    return open_websocket


def _close_reason(ws: ClientConnection, *, clean: bool) -> str:
    received = ws.protocol.close_rcvd
    sent = ws.protocol.close_sent
    if received is None and sent is not None:
        # The client library closed it, e.g. 1009 for a frame over its size limit.
        return f"closed by the loader ({sent.code})"
    if received is None:
        return "dropped without a close frame"
    if clean:
        return f"closed by the exchange ({received.code})"
    return f"closed with error ({received.code})"
