"""Run statistics kept as plain numbers on the hot path and exposed to Prometheus on scrape."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from application.ports import LoaderMetrics
from domain.sequence import Gap
from domain.state import Status


def _log_buckets(low: float, high: float, factor: float) -> tuple[float, ...]:
    bounds = []
    bound = low
    while bound < high:
        bounds.append(round(bound, 7))
        bound *= factor
    bounds.append(high)
    return tuple(bounds)


# From 100 us to 120 s, about 10 % apart: fine enough to read p99.9 off the histogram.
LATENCY_BUCKETS: Final = _log_buckets(0.0001, 120.0, 1.1)


class LatencyHistogram:
    """A fixed-bucket histogram cheap enough to observe every trade."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds


class RunStats(LoaderMetrics):
    """Counters of one run; adapters and the use case write, only the collector reads.

    The label values given are exposed at 0 from the first scrape, so that ``rate()`` and
    ``increase()`` see a counter's first increment and a dashboard panel has a series before
    anything happened.
    """

    def __init__(
        self,
        symbols: Iterable[str] = (),
        *,
        reject_reasons: Iterable[str] = (),
        ignored_kinds: Iterable[str] = (),
        reconnect_reasons: Iterable[str] = (),
    ) -> None:
        symbols = tuple(symbols)
        self.received: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.published: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.duplicates: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.gaps: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.backfilled_trades: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.unrecoverable_trades: Counter[str] = Counter(dict.fromkeys(symbols, 0))
        self.rejected: Counter[str] = Counter(dict.fromkeys(reject_reasons, 0))
        self.ignored: Counter[str] = Counter(dict.fromkeys(ignored_kinds, 0))
        self.reconnects: Counter[str] = Counter(dict.fromkeys(reconnect_reasons, 0))
        self.exchange_lag: dict[str, float] = {}
        self.latency = LatencyHistogram()
        self.status: Status | None = None
        self.buffer_pauses = 0
        self.held_symbols = 0
        self.held_trades = 0
        self.overflow_frames = 0
        self.redundant_frames = 0

    # LoaderMetrics

    def state(self, status: Status) -> None:
        self.status = status

    def gap(self, gap: Gap) -> None:
        self.gaps[gap.symbol] += 1

    def backfilled(self, symbol: str, count: int) -> None:
        self.backfilled_trades[symbol] += count

    def unrecoverable(self, symbol: str, count: int) -> None:
        self.unrecoverable_trades[symbol] += count

    def duplicate(self, symbol: str) -> None:
        self.duplicates[symbol] += 1

    def holding(self, symbols: int, trades: int) -> None:
        self.held_symbols = symbols
        self.held_trades = trades


@dataclass(frozen=True, slots=True)
class Readings:
    """Gauges read from the adapters' own state at each scrape (never the other way round)."""

    queue_depth: Callable[[], int]
    feed_connected: Callable[[], bool]
    feed_connections: Callable[[], int]
    broker_reachable: Callable[[], bool]
    rest_weight_used: Callable[[], int]
    rest_weight_budget: int


class RunStatsCollector(Collector):
    """Exposes ``RunStats`` and the ``Readings`` in the Prometheus text format."""

    def __init__(self, stats: RunStats, readings: Readings) -> None:
        self._stats = stats
        self._readings = readings

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        yield from _per_label(
            "loader_trades_received", "Trades received from the exchange", "symbol", stats.received
        )
        yield from _per_label(
            "loader_trades_published",
            "Trades acknowledged by the broker",
            "symbol",
            stats.published,
        )
        yield from _per_label(
            "loader_trades_duplicate",
            "Trades received again and dropped",
            "symbol",
            stats.duplicates,
        )
        yield from _per_label(
            "loader_gaps", "Jumps in trade ids found in the live stream", "symbol", stats.gaps
        )
        yield from _per_label(
            "loader_trades_backfilled",
            "Missing trades recovered from the exchange's history",
            "symbol",
            stats.backfilled_trades,
        )
        yield from _per_label(
            "loader_trades_unrecoverable",
            "Missing trades that could not be recovered",
            "symbol",
            stats.unrecoverable_trades,
        )
        yield from _per_label(
            "loader_frames_rejected", "Frames rejected by reason", "reason", stats.rejected
        )
        yield from _per_label(
            "loader_frames_ignored", "Non-trade frames ignored, by kind", "kind", stats.ignored
        )
        yield from _per_label(
            "loader_reconnects", "Exchange reconnections by reason", "reason", stats.reconnects
        )
        lag = GaugeMetricFamily(
            "loader_exchange_lag_seconds",
            "Receipt time minus trade time of the latest trade",
            labels=["symbol"],
        )
        for symbol, seconds in sorted(stats.exchange_lag.items()):
            lag.add_metric([symbol], seconds)
        yield lag
        yield _histogram(stats.latency)
        yield GaugeMetricFamily(
            "loader_queue_depth",
            "Frames received and not yet processed",
            value=self._readings.queue_depth(),
        )
        yield CounterMetricFamily(
            "loader_receive_pauses",
            "Times reading from the exchange paused because the receive buffer was full",
            value=stats.buffer_pauses,
        )
        yield CounterMetricFamily(
            "loader_frames_overflowed",
            "Frames read and dropped because the receive buffer stayed full longer than reading "
            "may pause; their trades are recovered from history",
            value=stats.overflow_frames,
        )
        yield CounterMetricFamily(
            "loader_frames_redundant",
            "Trades received again on a shard's second connection (WS_REDUNDANT_CONNECTIONS) "
            "and dropped, most before decoding",
            value=stats.redundant_frames,
        )
        state = GaugeMetricFamily("loader_state", "Current state of the run", labels=["state"])
        for status in Status:
            state.add_metric([status.value], 1.0 if stats.status is status else 0.0)
        yield state
        yield GaugeMetricFamily(
            "loader_feed_connected",
            "1 while every connection shard is connected to the exchange",
            value=self._readings.feed_connected(),
        )
        yield GaugeMetricFamily(
            "loader_backfill_held_symbols",
            "Symbols whose live trades wait for a gap to be filled from history",
            value=stats.held_symbols,
        )
        yield GaugeMetricFamily(
            "loader_backfill_held_trades",
            "Live trades waiting behind their symbol's gap",
            value=stats.held_trades,
        )
        yield GaugeMetricFamily(
            "loader_exchange_connections",
            "Connection shards with a connection to the exchange open now",
            value=self._readings.feed_connections(),
        )
        yield GaugeMetricFamily(
            "loader_broker_reachable",
            "1 while the broker answers",
            value=self._readings.broker_reachable(),
        )
        yield GaugeMetricFamily(
            "loader_rest_weight_used",
            "REST request weight used in the current minute, as the exchange last counted it",
            value=self._readings.rest_weight_used(),
        )
        yield GaugeMetricFamily(
            "loader_rest_weight_budget",
            "REST request weight a minute this loader allows itself (REST_WEIGHT_BUDGET)",
            value=self._readings.rest_weight_budget,
        )


def _per_label(name: str, doc: str, label: str, values: Counter[str]) -> Iterator[Metric]:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    yield family


def _histogram(histogram: LatencyHistogram) -> Metric:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", histogram.count))
    family = HistogramMetricFamily(
        "loader_publish_latency_seconds",
        "Time from receiving a trade's frame to the broker's acknowledgement",
    )
    family.add_metric([], buckets, histogram.total)
    return family


def make_registry(stats: RunStats, readings: Readings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunStatsCollector(stats, readings))
    return registry
