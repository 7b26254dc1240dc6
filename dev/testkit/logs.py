"""The service's JSON log lines, as tests, the benchmark and the demo read them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson


def json_lines(output: str) -> list[dict[str, Any]]:
    """The complete JSON log lines of ``output`` (a line still being written is left out)."""
    lines = []
    for line in output.split("\n")[:-1]:
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                lines.append(orjson.loads(line))
    return lines


class HasOutput(Protocol):
    def output(self) -> str:
        """Everything the process wrote so far."""
        ...


async def wait_for_log(
    process: HasOutput,
    holds: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Wait until the process's log lines satisfy ``holds``; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = json_lines(process.output())
        if holds(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not logged within {timeout:g} s: {what}; output:\n{process.output()[-3000:]}"
            )
        await asyncio.sleep(0.05)
