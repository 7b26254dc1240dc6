"""The silence watchdog: a symbol's stream that went quiet while the exchange traded on."""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from application.config import LoaderConfig
from application.ports import Clock, HistoryError, TradeFeed, TradeHistory
from domain.sequence import TradeSequencer

READER_CATCH_UP_SECONDS = 1.0
"""How long a reader no longer paused may take to read what waited in the socket."""


class SilenceWatch:
    """Asks the feed to reconnect when a symbol's trades stop while the exchange has newer ones.

    ``last_seen`` (monotonic receipt time by symbol) and ``newest_received`` (trade id by
    symbol) are written by the run as it takes each live trade, held behind a gap or not;
    ``behind(moment)`` tells whether items received before ``moment`` still wait to be
    processed, when nothing can be told about silence.
    """

    def __init__(
        self,
        config: LoaderConfig,
        history: TradeHistory,
        feed: TradeFeed,
        sequencer: TradeSequencer,
        clock: Clock,
        behind: Callable[[float], bool],
    ) -> None:
        self._config = config
        self._history = history
        self._feed = feed
        self._sequencer = sequencer
        self._clock = clock
        self._behind = behind
        self._since = 0.0
        self._baseline: dict[str, int | None] = {}
        self.last_seen: dict[str, float] = {}
        self.newest_received: dict[str, int] = {}

    def start(self, since: float) -> None:
        """Streaming began at ``since``: symbols not seen yet count as seen then."""
        self._since = since

    async def run(self) -> None:
        """Reconnect when a symbol's stream is silent while the exchange shows newer trades."""
        timeout = self._config.silence_timeout
        while True:
            await self._clock.sleep(timeout / 2)
            now = self._clock.monotonic()
            if self._behind(now - timeout / 2):
                # Trades wait to be processed: nothing can be told about silence until then.
                continue
            for symbol in self._config.symbols:
                if now - self.last_seen.get(symbol, self._since) < timeout:
                    continue
                # Looked at now; a quiet market is looked at again only after another timeout.
                self.last_seen[symbol] = now
                if await self._missed_trades(symbol, timeout / 2):
                    logger.warning(
                        "No {symbol} trade received for {timeout:g} s while the exchange shows "
                        "newer ones: reconnecting",
                        timeout=timeout,
                        symbol=symbol,
                    )
                    self._feed.reconnect("silent stream", [symbol])
                    break

    async def _missed_trades(self, symbol: str, patience: float) -> bool:
        """Whether the exchange executed trades of ``symbol`` that the stream did not bring."""
        asked = self._clock.monotonic()
        try:
            newest = await self._history.latest_trade_id(symbol)
        except HistoryError as error:
            logger.warning("Could not check {symbol} for silence: {e}", symbol=symbol, e=error)
            return False
        # What was received before the answer may still wait its turn: judge once the pump
        # has reached it, or not at all.
        answered = self._clock.monotonic()
        deadline = answered + patience
        while self._behind(answered):
            if self._clock.monotonic() >= deadline:
                return False
            await self._clock.sleep(0.05)
        if self._feed.paused_until(symbol) >= asked - READER_CATCH_UP_SECONDS:
            # A full buffer paused reading: what the exchange sent meanwhile is still in the
            # socket, unseen. Looked at again after another timeout.
            return False
        last = max(
            (
                i
                for i in (self._sequencer.last(symbol), self.newest_received.get(symbol))
                if i is not None
            ),
            default=None,
        )
        if last is not None:
            return newest is not None and newest > last
        # Nothing received yet: only trades newer than the first look count (a symbol that is
        # listed but halted still has old trades in its history).
        baseline = self._baseline.setdefault(symbol, newest)
        return newest is not None and (baseline is None or newest > baseline)
