"""The loader use case: stream every trade of the configured symbols into the trade topic.

One run's life is here: announce, prepare and resume, stream, stop, end; gap recovery is in
``backfill`` and the silence watchdog in ``silence``. It stays one module of about 500 lines
because the rules of how a run ends span every phase (the first reason stands unless received
trades were lost; one stop budget bounds draining, flushing and the last event together), and
split further they would be spread over modules that each hold part of the ending's state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from loguru import logger

from application.backfill import LIVE_GAP, RECONNECT_GAP, Backfill
from application.clocked import within
from application.config import LoaderConfig
from application.ports import (
    Clock,
    ControlChannel,
    Dropped,
    EventPublisher,
    FeedItem,
    LoaderMetrics,
    Received,
    Reconnected,
    SymbolDirectory,
    TopicTail,
    TradeFeed,
    TradeHistory,
    TradePublisher,
)
from application.silence import SilenceWatch
from domain.errors import (
    BrokerUnavailableError,
    ExchangeUnavailableError,
    LoaderError,
    PermanentFailure,
)
from domain.messages import TelemetryEvent
from domain.sequence import TradeSequencer, Verdict
from domain.state import LoaderState, StateChange, Status
from domain.trade import Trade

TERMINAL_EVENT_SECONDS = 3.0
"""What the last event may take beyond the drain bound: a stop then ends within both."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the run ended: the terminal status, its message and the process exit code."""

    status: Status
    message: str
    exit_code: int
    records_written: int


@dataclass(frozen=True, slots=True)
class _Ending:
    status: Status
    message: str
    exit_code: int


class TradeLoader:
    """Drives one run: announce, stream and publish, report, and end exactly once."""

    def __init__(
        self,
        config: LoaderConfig,
        *,
        feed: TradeFeed,
        directory: SymbolDirectory,
        history: TradeHistory,
        publisher: TradePublisher,
        tail: TopicTail,
        events: EventPublisher,
        control: ControlChannel,
        clock: Clock,
        metrics: LoaderMetrics,
    ) -> None:
        self._config = config
        self._feed = feed
        self._directory = directory
        self._history = history
        self._publisher = publisher
        self._tail = tail
        self._events = events
        self._control = control
        self._clock = clock
        self._metrics = metrics
        self._state = LoaderState()
        self._sequencer = TradeSequencer()
        self._handed = 0
        self._ending: _Ending | None = None
        self._ended = asyncio.Event()
        self._broker_failed = False
        self._stopping_since = 0.0
        self._ended_at_ms = float("inf")
        """Wall-clock time (epoch ms) the run's ending was decided."""
        self._unprocessed = 0
        """Items of the feed's current batch the pump has not reached yet."""
        self._horizon = 0.0
        """When the newest live trade the pump has reached was received."""
        self._revealing = False
        """Whether the live trade being taken is its symbol's first since a reconnect."""
        self._backfill = Backfill(config, history, self._sequencer, clock, metrics, self)
        self._silence = SilenceWatch(config, history, feed, self._sequencer, clock, self._behind)
        self._last_seen = self._silence.last_seen
        self._newest_received = self._silence.newest_received

    @property
    def state(self) -> LoaderState:
        return self._state

    def request_stop(self, reason: str) -> None:
        """Stop as ``interrupted`` after publishing what was received (signals, stop command)."""
        self._end(Status.INTERRUPTED, reason, 0)

    async def run(self) -> Outcome:
        """Run until a bound, a stop or a failure; exactly one terminal event is sent."""
        symbols = ", ".join(self._config.symbols)
        # Commands are read from the start: a stop already in the topic ends the run before
        # anything streams.
        control = asyncio.create_task(self._watch(self._listen_control), name="control")
        try:
            # Sent first whatever happens; after a stop it waits only what the stop allows.
            started = self._state.start(f"Loader started for {symbols}")
            await self._unless_ended(
                self._announce(started), grace=lambda: max(self._stop_budget(), 1.0)
            )
            if self._ending is None:
                await self._unless_ended(self._prepare())
            if self._ending is not None:
                return await self._conclude()
            await self._stream()
            return await self._shutdown()
        finally:
            control.cancel()
            await asyncio.gather(control, return_exceptions=True)
            await self._publisher.close()

    async def _unless_ended(
        self, job: Awaitable[None], grace: Callable[[], float] | None = None
    ) -> None:
        """Do ``job`` unless the run ends first (a stop, a signal): then it is abandoned, at
        once or after ``grace()`` seconds more."""
        task = asyncio.ensure_future(job)
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)
        if not task.done() and grace is not None:
            await within(self._clock, task, grace())
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
        error = task.exception()
        if isinstance(error, LoaderError):
            logger.error("Run failed before streaming: {error}", error=str(error))
            self._fail(error)
        elif error is not None:
            raise error

    async def _prepare(self) -> None:
        infos = await self._directory.describe(self._config.symbols)
        for info in infos:
            if not info.trading:
                message = (
                    f"{info.symbol} is listed but not trading (status {info.status}); "
                    "waiting for its trades"
                )
                logger.warning(message)
                await self._announce(self._state.loading(message))
        await self._publisher.start(self._config.symbols)
        await self._resume()
        await self._control.caught_up()

    async def _resume(self) -> None:
        now_ms = self._clock.time() * 1000
        for last in await self._tail.last_published(self._config.symbols):
            age = (now_ms - last.timestamp) / 1000
            if age <= self._config.resume_window:
                self._sequencer.resume(last.symbol, last.trade_id)
                logger.info(
                    "Resuming {symbol} after trade {trade_id} found in the topic ({age:.0f} s old)",
                    symbol=last.symbol,
                    trade_id=last.trade_id,
                    age=age,
                )
            else:
                self._sequencer.published_up_to(last.symbol, last.trade_id)
                logger.info(
                    "Last {symbol} trade in the topic ({trade_id}) is {age:.0f} s old, beyond the "
                    "resume window: starting from live trades",
                    symbol=last.symbol,
                    trade_id=last.trade_id,
                    age=age,
                )

    # The streaming phase.

    async def _stream(self) -> None:
        self._horizon = self._clock.monotonic()
        self._silence.start(self._horizon)
        await self._feed.open()
        pump = asyncio.create_task(self._pump(), name="pump")
        helpers = [
            asyncio.create_task(self._watch(self._tick), name="telemetry"),
            asyncio.create_task(self._watch(self._silence.run), name="silence"),
        ]
        if self._config.stop_after_seconds is not None:
            helpers.append(asyncio.create_task(self._watch(self._time_bound), name="time-bound"))
        try:
            await self._wait_end_or(pump)
            await self._feed.close()
            await self._drain(pump)
        finally:
            if not pump.done():  # the run itself was cancelled
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                await self._feed.close()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _wait_end_or(self, pump: asyncio.Task[None]) -> None:
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({ended, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)
        if pump.done() and self._ending is None:
            self._end_from(pump)

    async def _drain(self, pump: asyncio.Task[None]) -> None:
        if not await within(self._clock, pump, self._config.drain_timeout):
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            unacknowledged = self._handed - self._publisher.acknowledged()
            waiting = self._unprocessed + self._feed.backlog()
            message = (
                f"Received trades were not all published: DRAIN_TIMEOUT_SEC="
                f"{self._config.drain_timeout:g} ran out with {unacknowledged} trades not yet "
                f"acknowledged by Kafka, {self._backfill.held_trades} held behind gaps being "
                f"filled and {waiting} frames not yet processed"
            )
            logger.error(message)
            # Whatever ended the run, losing received trades makes it an error.
            self._end(Status.ERROR, message, 1, lost=True)
            return
        self._end_from(pump)

    def _end_from(self, pump: asyncio.Task[None]) -> None:
        if pump.cancelled():
            return
        error = pump.exception()
        if isinstance(error, LoaderError):
            self._fail(error)
        elif error is not None:
            logger.opt(exception=error).error("Unexpected failure while streaming")
            self._end(Status.ERROR, f"Unexpected failure: {error!r}", 1, lost=True)
        else:
            self._end(Status.INTERRUPTED, "The trade feed closed", 0)

    async def _watch(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except LoaderError as error:
            self._fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any bug in a helper must still end the run
            logger.opt(exception=error).error("Unexpected failure in a background task")
            self._end(Status.ERROR, f"Unexpected failure: {error!r}", 1)

    async def _pump(self) -> None:
        worker = asyncio.create_task(self._watch(self._backfill.work), name="backfill")
        try:
            if await self._read_feed():
                # Trades held behind a gap were received: they are owed even at a stop.
                await self._backfill.settled()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _read_feed(self) -> bool:
        """Process the feed's batches until it ends (True) or the bound on records is reached."""
        while True:
            batch = await self._feed.next_batch()
            if not batch:
                return True
            self._unprocessed = len(batch)
            for index, item in enumerate(batch):
                self._unprocessed -= 1
                if type(item) is Received:
                    self._horizon = item.received_at
                    verdict = self._receive(item)
                    if verdict is Verdict.GAP:
                        await self._gap(item, batch, index)
                    elif verdict is not None:
                        await self.hand(item.trade, item.received_at)
                elif isinstance(item, Reconnected):
                    self._backfill.reconnected(item.symbols)
                elif isinstance(item, Dropped):
                    self._backfill.dropped(item.ranges)
                if self.over_limit():
                    return False

    def _receive(self, item: Received) -> Verdict | None:
        """Note a live trade's receipt; how it follows on, or None when it is dealt with
        (held behind its symbol's gap, or a duplicate)."""
        trade = item.trade
        symbol = trade.symbol
        self._last_seen[symbol] = item.received_at
        self._newest_received[symbol] = trade.trade_id
        backfill = self._backfill
        self._revealing = backfill.watching and backfill.traded(symbol)
        if backfill.holds(symbol):
            backfill.hold(item, RECONNECT_GAP if self._revealing else LIVE_GAP)
            return None
        verdict = self._sequencer.classify(symbol, trade.trade_id)
        if verdict is Verdict.DUPLICATE:
            self._metrics.duplicate(symbol)
            return None
        return verdict

    async def _gap(self, item: Received, batch: Sequence[FeedItem], index: int) -> None:
        if await self._from_batch(item.trade, batch, index):
            await self.hand(item.trade, item.received_at)
        else:
            # History is fetched in the background; only this symbol waits for it.
            self._backfill.hold(item, RECONNECT_GAP if self._revealing else LIVE_GAP)

    async def _from_batch(self, trade: Trade, batch: Sequence[FeedItem], index: int) -> bool:
        """Hand the missing trades found further on in the batch; whether none is missing.

        While one connection replaces another their frames interleave, so a trade can
        arrive just after a later one. It is taken from the batch rather than from history
        (which may refuse, or lag).
        """
        gap = self._sequencer.gap_before(trade.symbol, trade.trade_id)
        return gap is None or await self._backfill.hand_ahead(batch[index + 1 :], gap) is None

    async def hand(self, trade: Trade, received_at: float) -> None:
        """Publish ``trade``, the next of its symbol, unless the bound on records is reached
        (the pump and the backfill worker both hand trades on)."""
        if self.over_limit():
            return
        self._sequencer.accept(trade.symbol, trade.trade_id)
        self._last_seen[trade.symbol] = received_at
        self._handed += 1
        await self._publisher.publish(trade, received_at)
        if self.over_limit():
            self._end(
                Status.FINISHED, f"Reached STOP_AFTER_RECORDS={self._config.stop_after_records}", 0
            )

    def over_limit(self) -> bool:
        limit = self._config.stop_after_records
        return limit is not None and self._handed >= limit

    # What the backfill is told of the run (``backfill.Run``).

    def stopping(self) -> bool:
        return self._ending is not None

    def stopped_at_ms(self) -> float:
        return self._ended_at_ms

    async def tell(self, message: str) -> None:
        self._sync_records()
        await self._announce(self._state.loading(message))

    # Background helpers.

    async def _listen_control(self) -> None:
        async with contextlib.aclosing(self._control.commands()) as commands:
            async for command in commands:
                if command.is_stop_for(self._config.queue_id):
                    logger.info("Stop command received for queue {queue}", queue=command.queue_id)
                    self.request_stop("Stop command received")
                    return
                logger.info(
                    "Ignoring control command {command!r} for queue {queue!r}",
                    command=command.command[:100],
                    queue=command.queue_id[:250],
                )

    async def _tick(self) -> None:
        interval = self._config.telemetry_interval
        while True:
            await self._clock.sleep(interval)
            if self._state.is_terminal or self._ending is not None:
                return
            self._sync_records()
            count = self._state.records_written
            await self._announce(self._state.loading(f"Loaded and published {count} trade records"))

    async def _time_bound(self) -> None:
        seconds = self._config.stop_after_seconds
        if seconds is None:
            return
        await self._clock.sleep(seconds)
        self._end(Status.FINISHED, f"Reached STOP_AFTER_SECONDS={seconds:g}", 0)

    def _behind(self, moment: float) -> bool:
        """Whether items received before ``moment`` may still wait to be processed."""
        waiting = self._unprocessed or self._feed.backlog()
        return bool(waiting) and self._horizon < moment

    # Ending.

    def _fail(self, error: LoaderError, *, lost: bool | None = None) -> None:
        if isinstance(error, BrokerUnavailableError):
            self._broker_failed = True
        exit_code = 2 if isinstance(error, PermanentFailure) else 1
        if lost is None:
            # An exchange that went away loses nothing received; any other failure may have.
            lost = not isinstance(error, ExchangeUnavailableError)
        self._end(Status.ERROR, str(error), exit_code, lost=lost)

    def _end(self, status: Status, message: str, exit_code: int, *, lost: bool = False) -> None:
        """Decide how the run ends: the first reason stands, unless received trades were lost.

        A stop or a bound asks for a clean end; if publishing what was received then fails,
        the run must not claim one.
        """
        current = self._ending
        if current is None:
            self._stopping_since = self._clock.monotonic()
            self._ended_at_ms = self._clock.time() * 1000
        if current is None or (lost and current.status is not Status.ERROR):
            self._ending = _Ending(status, message, exit_code)
            self._ended.set()

    async def _shutdown(self) -> Outcome:
        ending = self._ending
        if ending is None:  # pragma: no cover - _stream always decides an ending
            ending = _Ending(Status.ERROR, "The run ended without a reason", 1)
            self._ending = ending
        # Draining and flushing share one bound, so the whole stop fits the pod's grace period.
        # A failed run still publishes what it can, but need not wait long on a broker that failed.
        spent = self._clock.monotonic() - self._stopping_since
        bound = max(self._config.drain_timeout - spent, 0.5)
        if ending.status is Status.ERROR:
            bound = 0.0 if self._broker_failed else min(bound, 5.0)
        try:
            await self._publisher.flush(bound)
        except LoaderError as error:
            logger.error("Flushing trades at shutdown failed: {error}", error=str(error))
            if ending.status is not Status.ERROR:
                self._ending = _Ending(Status.ERROR, f"{error} (while flushing at shutdown)", 1)
        return await self._conclude()

    async def _conclude(self) -> Outcome:
        ending = self._ending or _Ending(Status.ERROR, "The run ended without a reason", 1)
        self._sync_records()
        count = self._state.records_written
        if ending.status is Status.FINISHED:
            change = self._state.finish(
                f"{ending.message}: loaded and published {count} trade records"
            )
        elif ending.status is Status.INTERRUPTED:
            change = self._state.interrupt(
                f"{ending.message}: loaded and published {count} trade records"
            )
        else:
            change = self._state.fail(ending.message + self._not_written())
        await self._announce(change)
        logger.info(
            "Run ended: {status} ({message}), {count} trade records written",
            status=change.status.value,
            message=change.message,
            count=count,
        )
        return Outcome(change.status, change.message, ending.exit_code, count)

    def _not_written(self) -> str:
        """The trades the broker refused, told so that nobody takes the holes for gaps."""
        gaps = self._publisher.unwritten()
        if not gaps:
            return ""
        named = ", ".join(f"{g.symbol} trades {g.first_id}..{g.last_id}" for g in gaps[:20])
        more = f" and {len(gaps) - 20} more batches" if len(gaps) > 20 else ""
        return f". Not written to Kafka: {named}{more}"

    def _sync_records(self) -> None:
        if self._state.is_terminal:
            return
        delta = self._publisher.acknowledged() - self._state.records_written
        if delta > 0:
            self._state.record_written(delta)

    def _stop_budget(self) -> float:
        """What is left of the drain bound: the stop as a whole (draining, flushing, events)
        fits the pod's grace period."""
        spent = self._clock.monotonic() - self._stopping_since
        return max(self._config.drain_timeout - spent, 0.0)

    async def _announce(self, change: StateChange) -> None:
        timeout = None
        if self._ending is not None:
            left = self._stop_budget()
            # The last event has its own 3 s; another one (``started``, when the stop came
            # first) at least 1 s.
            timeout = left + TERMINAL_EVENT_SECONDS if change.status.terminal else max(left, 1.0)
        self._metrics.state(change.status)
        event = TelemetryEvent(
            queue_id=self._config.queue_id,
            symbol=",".join(self._config.symbols),
            type=self._config.data_type,
            status=change.status,
            message=change.message,
            records_written=change.records_written,
            finished=change.finished,
            producer=self._config.producer_id,
            timestamp=self._clock.time(),
        )
        try:
            await self._events.publish(event, timeout)
        except LoaderError as error:
            logger.error(
                "Telemetry event {status} could not be sent: {error}",
                status=change.status.value,
                error=str(error),
            )
            if not change.status.terminal:
                # Telemetry that cannot be sent ends the run, but loses no trade.
                self._fail(error, lost=False)
