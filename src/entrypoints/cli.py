"""The ``loader-ws-trades`` command: the Job's main, and the operator's stop and events commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import uvloop
from dependency_injector.wiring import Provide, inject
from loguru import logger

from adapters.kafka.admin import follow_events, send_command
from application.loader import TradeLoader
from domain.errors import LoaderError, PermanentFailure
from domain.messages import ControlCommand, TelemetryEvent
from domain.state import Status
from entrypoints.container import Container
from entrypoints.launch import EarlySignals
from entrypoints.logs import configure_logging
from entrypoints.settings import (
    KafkaSettings,
    Settings,
    SettingsError,
    load_settings,
    variables_help,
)

HANDLED_SIGNALS = EarlySignals.HANDLED

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
    stop = commands.add_parser(
        "stop",
        help="ask the loader of a queue to stop (publishes a stop command)",
        description='Publish {"command": "stop", "queue_id": QUEUE_ID} to '
        "QUEUE_CONTROL_TOPIC, using the same KAFKA_* variables as the loader.",
    )
    stop.add_argument("--queue-id", required=True, help="the QUEUE_ID of the loader to stop")
    events = commands.add_parser(
        "events",
        help="follow a queue's telemetry in the terminal",
        description="Print the telemetry events of one queue from QUEUE_EVENTS_TOPIC, oldest "
        "first, then live, until its terminal event; uses the same KAFKA_* variables.",
    )
    events.add_argument("--queue-id", required=True, help="the QUEUE_ID to follow")
    events.add_argument(
        "--keep-following",
        action="store_true",
        help="do not exit at the terminal event (a Job retry may start the queue again)",
    )
    return parser


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "run"):
        return run_job(early)
    if early is not None:
        early.uninstall()  # Ctrl-C ends the operator's commands at once
    try:
        settings = load_settings(KafkaSettings)
    except SettingsError as error:
        sys.stderr.write(f"loader-ws-trades: {error}\n")
        return EXIT_PERMANENT
    configure_logging("WARNING", "text", stream=sys.stderr)
    if args.command == "stop":
        return uvloop.run(_send_stop(settings, args.queue_id))
    return uvloop.run(_show_events(settings, args.queue_id, keep=args.keep_following))


async def _send_stop(settings: KafkaSettings, queue_id: str) -> int:
    command = ControlCommand("stop", queue_id)
    try:
        await send_command(
            settings.kafka_client("loader-ws-trades-operator"),
            settings.queue_control_topic,
            command,
            settings.kafka_connect_timeout_sec,
        )
    except LoaderError as error:
        sys.stderr.write(f"loader-ws-trades: stop not sent: {error}\n")
        return EXIT_PERMANENT if isinstance(error, PermanentFailure) else EXIT_RETRYABLE
    sys.stdout.write(f"stop sent to queue {queue_id} on {settings.queue_control_topic}\n")
    return EXIT_OK


async def _show_events(settings: KafkaSettings, queue_id: str, *, keep: bool) -> int:
    live = sys.stdout.isatty()
    connection = settings.kafka_client("loader-ws-trades-operator")
    try:
        events = follow_events(
            connection, settings.queue_events_topic, queue_id, settings.kafka_connect_timeout_sec
        )
        async for event in events:
            line = render_event(event)
            if live and event.status is Status.LOADING:
                # A person at a terminal sees one line whose count keeps climbing.
                sys.stdout.write(f"\r\x1b[2K{line}")
            else:
                sys.stdout.write(f"\r\x1b[2K{line}\n" if live else f"{line}\n")
            sys.stdout.flush()
            if event.finished and not keep:
                return EXIT_OK
    except LoaderError as error:
        sys.stderr.write(f"loader-ws-trades: cannot read events: {error}\n")
        return EXIT_PERMANENT if isinstance(error, PermanentFailure) else EXIT_RETRYABLE
    except asyncio.CancelledError:  # pragma: no cover - Ctrl-C
        return EXIT_OK
    return EXIT_OK  # pragma: no cover - the event stream does not end by itself


def render_event(event: TelemetryEvent) -> str:
    """One readable line for a telemetry event."""
    when = datetime.fromtimestamp(event.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{when}  {event.status.value:<11} {event.records_written:>12,} records  "
        f"{event.symbol}  {event.message}"
    )


def run_job(early: EarlySignals | None = None) -> int:
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
    logger.info("Settings in effect", settings=settings.in_effect())
    return uvloop.run(_run(settings, early))


class _StopRequest:
    """A SIGTERM or SIGINT, whenever it comes: kept until the loader exists, then passed on."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.requested = asyncio.Event()
        self._target: Callable[[str], None] | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.requested.set()
        if self._target is not None:
            self._target(reason)

    def pass_to(self, target: Callable[[str], None]) -> None:
        self._target = target
        if self.reason is not None:
            target(self.reason)


async def _run(settings: Settings, early: EarlySignals | None) -> int:
    stop = _StopRequest()
    loop = asyncio.get_running_loop()
    for signum in HANDLED_SIGNALS:
        loop.add_signal_handler(signum, stop.request, f"{signal.Signals(signum).name} received")
    if early is not None and early.first is not None:
        stop.request(f"{early.first} received")
    container = Container(settings=settings)
    container.wire(modules=[__name__])
    try:
        code = await _start(container, stop, settings.drain_timeout_sec)
        if code is not None:
            return code
        # Everything built so far lives for the whole run: keep the collector off it, and let
        # it run less often, as each trade makes short-lived objects (measured: ~1 us a trade).
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        return await _load(stop)
    finally:
        for signum in HANDLED_SIGNALS:
            loop.remove_signal_handler(signum)
        await container.shutdown_resources()  # type: ignore[misc]
        container.unwire()


async def _start(container: Container, stop: _StopRequest, bound: float) -> int | None:
    """Connect everything; the exit code when the run ends before it could begin.

    A stop during start-up gives the start what is left of the drain bound: when the broker
    is reached meanwhile, the run still reports ``started`` and then ``interrupted``.
    """
    initialising = container.init_resources()
    if initialising is None:  # pragma: no cover - the container has async resources
        return None
    starting = asyncio.ensure_future(initialising)
    requested = asyncio.ensure_future(stop.requested.wait())
    try:
        await asyncio.wait({starting, requested}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            await asyncio.wait({starting}, timeout=bound)
    finally:
        requested.cancel()
        await asyncio.gather(requested, return_exceptions=True)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, LoaderError):
            await starting
        logger.warning(
            "{reason} while starting, before Kafka could be reached: nothing was published",
            reason=stop.reason,
        )
        return EXIT_OK
    error = starting.exception()
    if isinstance(error, LoaderError):
        logger.error("Cannot start: {error}", error=str(error))
        if stop.reason is not None:
            return EXIT_OK
        return EXIT_PERMANENT if isinstance(error, PermanentFailure) else EXIT_RETRYABLE
    if error is not None:
        raise error
    return None


@inject
async def _load(stop: _StopRequest, loader: TradeLoader = Provide[Container.loader]) -> int:
    stop.pass_to(loader.request_stop)
    outcome = await loader.run()
    return outcome.exit_code
