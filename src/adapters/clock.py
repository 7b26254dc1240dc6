"""The real clock."""

from __future__ import annotations

import asyncio
import time

from application.ports import Clock


class SystemClock(Clock):
    """Wall and monotonic time of this machine; sleeping on the running event loop."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
