"""The ``loader-ws-trades`` command: the Job's main, and the operator's stop and events commands."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import uvloop
from dependency_injector.wiring import Provide, inject
from loguru import logger

from application.loader import TradeLoader
from domain.errors import LoaderError, PermanentFailure
from entrypoints.container import Container
from entrypoints.logs import configure_logging
from entrypoints.settings import Settings, SettingsError, load_settings, variables_help

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_PERMANENT = 2

DESCRIPTION = """\
Streams every real-time trade of the configured symbols from the exchange's WebSocket API into a
Kafka topic, one JSON message per trade, reporting its state on a telemetry topic and obeying
`stop` commands on a control topic. All configuration comes from environment variables.

Exit codes: 0 finished or interrupted after a clean flush; 1 a failure a retry may cure
(broker or exchange unreachable for too long); 2 a failure no retry cures (invalid
configuration, unknown symbol, authentication or authorisation refused).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loader-ws-trades",
        description=DESCRIPTION,
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the loader (the default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "run"):
        return run_job()
    return EXIT_PERMANENT  # pragma: no cover - argparse rejects unknown commands


def run_job() -> int:
    """The Job: validate settings, run once, exit with the contract's code."""
    try:
        settings = load_settings()
    except SettingsError as error:
        sys.stderr.write(f"loader-ws-trades: {error}\n")
        return EXIT_PERMANENT
    configure_logging(
        settings.log_level,
        settings.log_format,
        {
            "queue_id": settings.queue_id,
            "symbol": ",".join(settings.symbols),
            "producer": settings.telemetry_producer_id,
        },
    )
    return uvloop.run(_run(settings))


async def _run(settings: Settings) -> int:
    container = Container(settings=settings)
    container.wire(modules=[__name__])
    try:
        try:
            await container.init_resources()  # type: ignore[misc]
        except LoaderError as error:
            logger.error("Cannot start: {error}", error=str(error))
            return EXIT_PERMANENT if isinstance(error, PermanentFailure) else EXIT_RETRYABLE
        return await _load()
    finally:
        await container.shutdown_resources()  # type: ignore[misc]
        container.unwire()


@inject
async def _load(loader: TradeLoader = Provide[Container.loader]) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            signum, loader.request_stop, f"{signal.Signals(signum).name} received"
        )
    try:
        outcome = await loader.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return outcome.exit_code
