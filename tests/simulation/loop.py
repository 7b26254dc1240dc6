"""An asyncio event loop on virtual time: when nothing is ready, time jumps to the next timer."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

from application.ports import Clock

EPOCH = 1_750_000_000.0
"""Wall-clock time (epoch seconds) at virtual time 0."""


class Deadlock(Exception):
    """Every task waits and no timer is set: nothing can ever happen again."""


class _Now:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for ``timeout`` seconds moves virtual time on by that much."""

    def __init__(self, now: _Now) -> None:
        super().__init__()
        self._now = now

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock("every task waits for something that no timer will bring")
        if timeout > 0:
            self._now.value += timeout
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Single-threaded and deterministic: the same callbacks run in the same order every time.

    Only virtual time passes, so an hour of a run takes as long as its callbacks take to run.
    There is no real I/O in a simulated run; the loop's own wake-up pipe is the only file.
    """

    def __init__(self) -> None:
        self._now = _Now()
        super().__init__(_VirtualSelector(self._now))
        self.unhandled: list[str] = []
        self.set_exception_handler(self._record)

    def time(self) -> float:
        return self._now.value

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        what = context.get("message", "")
        self.unhandled.append(f"{what}: {error!r}" if error is not None else what)


class VirtualClock(Clock):
    """The ``Clock`` port on the virtual loop's time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return EPOCH + self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
