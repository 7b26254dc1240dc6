"""One logging setup: loguru writing JSON lines (or text) to stdout, with the run's context."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

_RESERVED = frozenset({"timestamp", "level", "message"})


class _JsonLines:
    """A loguru sink writing one JSON object per record."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, message: Message) -> None:
        record = message.record
        line: dict[str, Any] = {
            "timestamp": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "message": record["message"],
            "logger": record["name"],
        }
        for key, value in record["extra"].items():
            if key not in _RESERVED:
                line[key] = value
        if record["exception"] is not None:
            line["exception"] = "".join(_format_exception(record["exception"]))
        self._stream.write(orjson.dumps(line, default=str).decode() + "\n")
        self._stream.flush()


def _format_exception(exception: Any) -> list[str]:
    import traceback

    return traceback.format_exception(exception.type, exception.value, exception.traceback)


_DEMOTED: dict[tuple[str, str], str] = {
    # Said while the broker auto-creates the trade topic on a first run: a healthy run must not
    # page an operator who alerts on ERROR. A topic that stays missing is reported by the
    # loader itself.
    ("aiokafka.cluster", "Topic %s not found in cluster metadata"): "WARNING",
}
"""Library records logged at a lower level than the library chose, by logger and message."""


class _ToLoguru(logging.Handler):
    """Routes the libraries' standard logging (aiokafka, websockets, aiohttp) to loguru.

    A library that retries in a loop (aiokafka while the broker is away) repeats one line
    thousands of times a second: each distinct line passes at most once per ``REPEAT_SECONDS``,
    with the count of the ones held back.
    """

    REPEAT_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        key = (record.name, text)
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.REPEAT_SECONDS:
            self._seen[key] = (last, held + 1)
            return
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            text = f"{text} (and {held} more like it in the last {now - last:.0f} s)"
        level: str | int = _DEMOTED.get((record.name, str(record.msg)), record.levelname)
        try:
            level = logger.level(str(level)).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).bind(library=record.name).log(level, text)


def configure_logging(
    level: str,
    fmt: Literal["json", "text"],
    context: dict[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Log records at ``level`` and above; libraries only from WARNING, as they are chatty."""
    out = stream or sys.stdout
    logger.remove()
    logger.configure(extra=context or {})
    if fmt == "json":
        logger.add(
            _JsonLines(out), level=level, format="{message}", backtrace=False, diagnose=False
        )
    else:
        logger.add(
            out,
            level=level,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}",
            backtrace=False,
            diagnose=False,
            colorize=out.isatty(),
        )
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)
