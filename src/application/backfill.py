"""Trades missing from the live stream, recovered from the exchange's history and handed on in
trade-id order, or reported when they cannot be."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from loguru import logger

from application.config import LoaderConfig
from application.ports import Clock, DroppedRange, HistoryError, LoaderMetrics, TradeHistory
from domain.sequence import Gap, TradeSequencer
from domain.trade import Trade

HISTORY_PATIENCE = 6.0
"""How long a gap before a received trade waits for history to reach it (which lags the
stream) before it is reported as unrecoverable."""


class Run(Protocol):
    """What the backfill needs of the run it serves."""

    async def hand(self, trade: Trade, received_at: float) -> None:
        """Publish ``trade``, the next of its symbol."""
        ...

    def over_limit(self) -> bool:
        """Whether ``STOP_AFTER_RECORDS`` was reached."""
        ...

    def stopping(self) -> bool:
        """Whether the run's ending is decided (reading the exchange has ended)."""
        ...

    def stopped_at_ms(self) -> float:
        """When the ending was decided (epoch ms), ``inf`` before."""
        ...

    async def tell(self, message: str) -> None:
        """Report a problem on the telemetry topic (a ``loading`` event)."""
        ...


class Backfill:
    """Fills gaps and catches up after reconnections from the exchange's history."""

    def __init__(
        self,
        config: LoaderConfig,
        history: TradeHistory,
        sequencer: TradeSequencer,
        clock: Clock,
        metrics: LoaderMetrics,
        run: Run,
    ) -> None:
        self._config = config
        self._history = history
        self._sequencer = sequencer
        self._clock = clock
        self._metrics = metrics
        self._run = run

    async def fill(
        self, gap: Gap, newest_time: int, found: str = "missing from the live stream"
    ) -> None:
        """Publish the trades of ``gap`` (found before a live trade made at ``newest_time``)."""
        self._metrics.gap(gap)
        logger.warning(
            "Gap in {symbol}: trades {first}..{last} ({size}) {found}",
            symbol=gap.symbol,
            first=gap.first_id,
            last=gap.last_id,
            size=gap.size,
            found=found,
        )
        refusal = self._refuse_fill(gap)
        if refusal is not None:
            await self._unrecoverable(gap, refusal)
            return
        await self._recover(gap.symbol, gap.first_id, gap.last_id, newest_time)

    def _refuse_fill(self, gap: Gap) -> str | None:
        if gap.size > self._config.backfill_max_trades:
            return f"larger than BACKFILL_MAX_TRADES={self._config.backfill_max_trades}"
        return None

    async def dropped(self, ranges: Sequence[DroppedRange]) -> None:
        """Publish from history the trades the feed read and dropped for want of room: they
        were received, so they are due even at a stop. What cannot be had is reported, and
        the sequence goes on after the range either way."""
        for dropped in ranges:
            symbol = dropped.symbol
            last = self._sequencer.last(symbol)
            if last is not None and last >= dropped.last_id:
                continue
            first = dropped.first_id if last is None else last + 1
            if self._run.over_limit():
                return
            await self.fill(
                Gap(symbol, first, dropped.last_id),
                dropped.last_time,
                found="dropped by the full receive buffer",
            )
            now = self._sequencer.last(symbol)
            if (now is None or now < dropped.last_id) and not self._run.over_limit():
                self._sequencer.accept(symbol, dropped.last_id)

    async def catch_up(self, reason: str, symbols: Sequence[str]) -> None:
        """After a reconnect, publish from history what the old connection of ``symbols``
        missed."""
        for symbol in symbols:
            last = self._sequencer.last(symbol)
            if last is not None:
                logger.info(
                    "Reconnected ({reason}): catching up {symbol} from trade {first}",
                    reason=reason,
                    symbol=symbol,
                    first=last + 1,
                )
                await self._recover(symbol, last + 1, None)

    async def _recover(
        self, symbol: str, first_id: int, last_id: int | None, newest_time: int | None = None
    ) -> None:
        """Publish history trades ``first_id..last_id`` (to the newest when ``last_id`` is None).

        Trades more than ``backfill_max_age`` older than ``newest_time`` (exchange time of the
        trade that revealed the gap) are reported instead of published.
        """
        page_size = self._config.backfill_page_size
        budget = self._config.backfill_max_trades
        oldest = None if newest_time is None else newest_time - self._config.backfill_max_age * 1000
        next_id = first_id
        recovered = 0
        stale_from: int | None = None
        patience, pause = HISTORY_PATIENCE, 0.1
        while (last_id is None or next_id <= last_id) and recovered < budget:
            if self._run.over_limit():
                break
            if last_id is None and self._run.stopping():
                # A stop ends reading the exchange: no catching up with trades that came after
                # it. Gaps before trades already received are still closed (``last_id`` set).
                break
            want = page_size if last_id is None else min(page_size, last_id - next_id + 1)
            try:
                page = await self._history.trades_from(symbol, next_id, want)
            except HistoryError as error:
                if last_id is not None:
                    await self._unrecoverable(Gap(symbol, next_id, last_id), str(error))
                    next_id = last_id + 1  # accounted for
                else:
                    logger.warning(
                        "Catch-up of {symbol} from history failed: {error}",
                        symbol=symbol,
                        error=str(error),
                    )
                break
            now = self._clock.monotonic()
            start = next_id
            for trade in page:
                if trade.trade_id < next_id:
                    continue
                if (last_id is not None and trade.trade_id > last_id) or self._run.over_limit():
                    break
                if last_id is None and trade.timestamp > self._run.stopped_at_ms():
                    break  # made after the stop: reading the exchange had ended
                if oldest is not None and trade.timestamp < oldest:
                    stale_from = trade.trade_id if stale_from is None else stale_from
                    next_id = trade.trade_id + 1
                    continue
                if stale_from is not None:
                    await self._too_old(Gap(symbol, stale_from, trade.trade_id - 1))
                    stale_from = None
                if trade.trade_id > next_id:
                    await self._unrecoverable(
                        Gap(symbol, next_id, trade.trade_id - 1), "missing from history too"
                    )
                await self._run.hand(trade, now)
                recovered += 1
                next_id = trade.trade_id + 1
            if len(page) < want or next_id == start:
                if last_id is not None and next_id <= last_id and patience > 0:
                    # Trades after these were received, so these exist: history lags the
                    # stream. Ask again a little later rather than give them up.
                    await self._clock.sleep(min(pause, patience))
                    patience -= pause
                    pause *= 2
                    continue
                break
        if stale_from is not None:
            await self._too_old(Gap(symbol, stale_from, next_id - 1))
        if last_id is not None and next_id <= last_id and not self._run.over_limit():
            await self._unrecoverable(Gap(symbol, next_id, last_id), "history does not reach them")
        if recovered:
            self._metrics.backfilled(symbol, recovered)
            logger.info(
                "Backfilled {count} {symbol} trades from history",
                count=recovered,
                symbol=symbol,
            )

    async def _too_old(self, gap: Gap) -> None:
        reason = f"older than BACKFILL_MAX_AGE_SEC={self._config.backfill_max_age:g}"
        await self._unrecoverable(gap, reason)

    async def _unrecoverable(self, gap: Gap, reason: str) -> None:
        self._metrics.unrecoverable(gap.symbol, gap.size)
        message = (
            f"Gap in {gap.symbol}: trades {gap.first_id}..{gap.last_id} ({gap.size}) "
            f"could not be recovered: {reason}"
        )
        logger.error(message)
        await self._run.tell(message)
