"""Waiting on the run's clock, so that tests and the simulation control time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from application.ports import Clock


async def within(clock: Clock, job: Awaitable[Any], seconds: float) -> bool:
    """Wait up to ``seconds`` of ``clock`` for ``job``; whether it finished.

    A task passed in is left running when time is up; any other awaitable is cancelled.
    """
    task = asyncio.ensure_future(job)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        return task.done()
    finally:
        timer.cancel()
        owned = [timer] if task is job else [timer, task]
        if task is not job:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
