"""What must hold at the end of every simulated world, whatever its schedule did."""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Any

from adapters.binance.codec import IGNORED_KINDS, REJECT_REASONS
from adapters.binance.connection import RECONNECT_REASONS
from domain.state import Status
from simulation.exchange import BINANCE_ATTEMPT_LIMIT, Executed
from simulation.loop import EPOCH
from simulation.world import TOPIC, RunResult, WorldResult

NAMED_GAP = re.compile(
    r"Gap in (\w+): trades (\d+)\.\.(\d+) \((\d+)\) could not be recovered: ([^;]*)"
)
HISTORY_REASONS = ("history does not reach them", "missing from history too")
GIVE_UP_PATIENCE = 5.0
"""A trade missing from history this long after a gap was declared was given up too early."""
NOT_WRITTEN = re.compile(r"(\w+) trades (\d+)\.\.(\d+)")
REFUSED_LOGGED = re.compile(r"Kafka refused trades: .*?; (.*) were not written")
"""The log line naming the batches the broker refused: every ``NOT_WRITTEN`` in the list."""
SILENT = re.compile(r"No (\w+) trade received for")

TERMINAL_EVENT_BOUND = 3.0 + 1.0
"""Beyond the drain bound: 3 s for the last event, 1 s for a started event still to send."""
LIVENESS_SLACK = 0.5


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass
class _Published:
    run: int
    partition: int
    offset: int
    trade_id: int


Published = dict[str, list[_Published]]
"""What the topic holds, by symbol, in offset order."""
Named = dict[str, list[tuple[int, int, int]]]
"""The gaps the runs reported as unrecoverable, by symbol: (run, first id, last id)."""
Truths = dict[str, "_Truth"]
"""What the exchange executed, by symbol."""


def check(world: WorldResult) -> list[Violation]:
    """Every violated invariant, each with what was seen."""
    found: list[Violation] = []
    truth = {symbol: _Truth(executed) for symbol, executed in world.exchange.executed.items()}
    published = _published(world, truth, found)
    named = _named_gaps(world)
    _order_and_holes(world, published, named, truth, found)
    _given_up_too_early(world, truth, found)
    for run in world.runs:
        _run_checks(world, run, published, named, truth, found)
    _exchange_rules(world, found)
    for problem in world.unhandled:
        found.append(Violation("no unhandled exception", problem))
    if not world.schedule.faulty:
        for line in world.logs:
            if line.level in ("ERROR", "CRITICAL"):
                found.append(
                    Violation("a healthy run logs no ERROR", f"{line.at:.3f} s: {line.message}")
                )
    return found


class _Truth:
    """The trades one symbol's market executed, by id."""

    def __init__(self, executed: list[Executed]) -> None:
        self.executed = executed
        self.first = executed[0].trade.trade_id if executed else 0

    def get(self, trade_id: int) -> Executed | None:
        index = trade_id - self.first
        if 0 <= index < len(self.executed):
            return self.executed[index]
        return None

    def newest_at(self, moment: float) -> int | None:
        """Id of the newest trade executed at or before ``moment``."""
        times = [e.at for e in self.executed]
        index = bisect_right(times, moment)
        return self.executed[index - 1].trade.trade_id if index else None

    def executed_between(self, start: float, end: float) -> bool:
        return any(start <= e.at <= end for e in self.executed)


def _published(
    world: WorldResult, truth: Truths, found: list[Violation]
) -> dict[str, list[_Published]]:
    by_symbol: dict[str, list[_Published]] = defaultdict(list)
    topic = world.broker.topics.get(TOPIC)
    if topic is None:
        return by_symbol
    for partition, records in enumerate(topic.partitions):
        for record in records:
            message = json.loads(record.value, parse_float=Decimal)
            symbol = message.get("symbol")
            expected = truth.get(symbol) if isinstance(symbol, str) else None
            executed = expected.get(message.get("trade_id", -1)) if expected else None
            if executed is None:
                found.append(Violation("every message is a trade", f"unknown trade {message}"))
                continue
            trade = executed.trade
            wanted = {
                "trade_id": trade.trade_id,
                "price": trade.price,
                "quantity": trade.quantity,
                "timestamp": trade.timestamp,
                "is_buyer_maker": trade.is_buyer_maker,
                "symbol": trade.symbol,
            }
            if message != wanted or record.key != symbol.encode():
                found.append(
                    Violation(
                        "the exchange's exact values",
                        f"partition {partition} offset {record.offset}: {message} != {wanted}",
                    )
                )
            by_symbol[symbol].append(
                _Published(record.run, partition, record.offset, trade.trade_id)
            )
    for entries in by_symbol.values():
        entries.sort(key=lambda p: (p.run, p.offset))
    return by_symbol


def _named_gaps(world: WorldResult) -> dict[str, list[tuple[int, int, int]]]:
    """Holes the runs' events name, per symbol: (first id, last id, the run that named it)."""
    named: Named = defaultdict(list)
    for run in world.runs:
        for event in run.events:
            for match in NAMED_GAP.finditer(event.message):
                named[match.group(1)].append((int(match.group(2)), int(match.group(3)), run.number))
            # A failed run names the batches the broker refused.
            _, marker, refused = event.message.partition("Not written to Kafka: ")
            if marker and event.status is Status.ERROR:
                for match in NOT_WRITTEN.finditer(refused):
                    named[match.group(1)].append(
                        (int(match.group(2)), int(match.group(3)), run.number)
                    )
    # With the broker away the last event may never arrive: the log names them too.
    for line in world.logs:
        if line.level == "ERROR" and line.run is not None:
            listed = REFUSED_LOGGED.search(line.message)
            for match in NOT_WRITTEN.finditer(listed.group(1) if listed else ""):
                named[match.group(1)].append((int(match.group(2)), int(match.group(3)), line.run))
    return named


def _given_up_too_early(world: WorldResult, truth: Truths, found: list[Violation]) -> None:
    lag = world.schedule.setup.knob("world", "history_lag", 0.0)
    for run in world.runs:
        for event in run.events:
            declared = event.timestamp - EPOCH
            for match in NAMED_GAP.finditer(event.message):
                if not match.group(5).startswith(HISTORY_REASONS):
                    continue
                symbol, first, last = match.group(1), int(match.group(2)), int(match.group(3))
                for trade_id in range(first, min(last, first + 50) + 1):
                    executed = truth[symbol].get(trade_id)
                    if executed is not None and executed.at + lag <= declared + GIVE_UP_PATIENCE:
                        found.append(
                            Violation(
                                "a gap is declared lost only when history lacks it",
                                f"run {run.number} at {declared:.3f} s: {symbol} {trade_id} "
                                f"declared missing from history, which held it "
                                f"from {executed.at + lag:.3f} s",
                            )
                        )
                        break


def _covered(ranges: list[tuple[int, int, int]], first: int, last: int) -> bool:
    """Whether ``first..last`` lies within the union of ``ranges``."""
    position = first
    for start, end, _ in sorted(ranges):
        if start > position:
            break
        position = max(position, end + 1)
        if position > last:
            return True
    return position > last


def _order_and_holes(
    world: WorldResult, published: Published, named: Named, truth: Truths, found: list[Violation]
) -> None:
    for symbol, entries in published.items():
        partitions_by_run: dict[int, set[int]] = defaultdict(set)
        for entry in entries:
            partitions_by_run[entry.run].add(entry.partition)
        for run, partitions in partitions_by_run.items():
            if len(partitions) > 1:
                found.append(
                    Violation("one partition per symbol", f"{symbol} in run {run}: {partitions}")
                )
        seen: set[int] = set()
        for entry in entries:
            if entry.trade_id in seen:
                found.append(
                    Violation(
                        "no trade published twice",
                        f"{symbol} {entry.trade_id} again in run {entry.run} "
                        f"(partition {entry.partition} offset {entry.offset})",
                    )
                )
            seen.add(entry.trade_id)
        for before, after in pairwise(entries):
            if after.trade_id <= before.trade_id:
                if after.trade_id != before.trade_id:
                    found.append(
                        Violation(
                            "ids strictly increase",
                            f"{symbol}: {before.trade_id} (run {before.run}) then "
                            f"{after.trade_id} (run {after.run})",
                        )
                    )
                continue
            if after.trade_id == before.trade_id + 1:
                continue
            first, last = before.trade_id + 1, after.trade_id - 1
            if _covered(named.get(symbol, []), first, last):
                continue
            if after.run != before.run and not _resumable(world, after.run, symbol, before, truth):
                continue
            found.append(
                Violation(
                    "contiguous except named holes",
                    f"{symbol}: {first}..{last} ({last - first + 1}) missing between run "
                    f"{before.run} and run {after.run}, and no event names them",
                )
            )
        for first, last, namer in named.get(symbol, []):
            # A later run may fill a hole an earlier one named; the namer itself may not.
            inside = sorted(
                e.trade_id for e in entries if e.run == namer and first <= e.trade_id <= last
            )
            if inside:
                found.append(
                    Violation(
                        "a named hole is really missing",
                        f"{symbol} {first}..{last} named unrecoverable, yet {inside[:5]} published",
                    )
                )


def _resumable(
    world: WorldResult, run_number: int, symbol: str, tail: _Published, truth: Truths
) -> bool:
    """Whether ``run_number`` should have resumed ``symbol`` after ``tail`` (the topic's last)."""
    run = world.runs[run_number]
    if run.tail_read_at is None:
        return True
    executed = truth[symbol].get(tail.trade_id)
    if executed is None:
        return True
    age = (EPOCH + run.tail_read_at) * 1000 - executed.trade.timestamp
    return age <= run.config.resume_window * 1000


def _run_checks(
    world: WorldResult,
    run: RunResult,
    published: Published,
    named: Named,
    truth: Truths,
    found: list[Violation],
) -> None:
    name = f"run {run.number}"
    if run.hung:
        found.append(Violation("every run ends", f"{name} still running {run.ended:.0f} s in"))
        return
    _telemetry(world, run, found)
    for breach in run.bound_breaches[:3]:
        found.append(Violation("memory stays within its bounds", f"{name}: {breach}"))
    _labels(run, found)
    _silence(world, run, published, truth, found)
    if run.killed or run.outcome is None:
        return
    outcome = run.outcome
    expected_code = {Status.FINISHED: (0,), Status.INTERRUPTED: (0,), Status.ERROR: (1,)}
    if outcome.exit_code not in expected_code[outcome.status]:
        found.append(
            Violation(
                "the exit code matches the status",
                f"{name}: {outcome.status.value} with exit {outcome.exit_code}",
            )
        )
    mine = {
        (s, p.trade_id) for s, entries in published.items() for p in entries if p.run == run.number
    }
    everything = {(s, p.trade_id) for s, entries in published.items() for p in entries}
    trigger = run.first_trigger
    if trigger is not None:
        bound = max(trigger.at, run.began + world.schedule.setup.knob("world", "startup"))
        late = run.ended - bound - run.config.drain_timeout - TERMINAL_EVENT_BOUND
        if run.ended is not None and late > LIVENESS_SLACK:
            found.append(
                Violation(
                    "a stop ends the run within the drain bound",
                    f"{name}: {trigger.kind} at {trigger.at:.3f} s, ended at {run.ended:.3f} s "
                    f"(DRAIN_TIMEOUT_SEC={run.config.drain_timeout:g})",
                )
            )
        newer = sorted(
            (s, t)
            for s, t in mine
            if (executed := truth[s].get(t)) is not None and executed.at > trigger.newest_allowed
        )
        if newer:
            found.append(
                Violation(
                    "nothing executed after the stop is published",
                    f"{name}: {trigger.kind} at {trigger.at:.3f} s, yet {len(newer)} later trades "
                    f"published, first {newer[0]}",
                )
            )
    if outcome.status is Status.ERROR:
        return
    limit = run.config.stop_after_records
    if limit is not None and run.acknowledged == limit:
        return  # the bound was reached (a stop may have come first): nothing more was due
    if outcome.status is Status.FINISHED and "STOP_AFTER_RECORDS" in outcome.message:
        if run.acknowledged != limit:
            found.append(
                Violation(
                    "STOP_AFTER_RECORDS publishes exactly that many",
                    f"{name}: {run.acknowledged} published, bound {limit}",
                )
            )
        return
    cutoff = trigger.at if trigger is not None else (run.ended or 0.0)
    # Trades older than anything the topic holds (replays of old history) need not be published.
    floor = {s: _sequence_start(world, run, s, entries, truth) for s, entries in published.items()}
    # A replay of a trade the run already reported lost (too old, say) need not be published.
    reported = {
        s: [(a, b, n) for a, b, n in ranges if n == run.number] for s, ranges in named.items()
    }
    lost = sorted(
        {
            (r.symbol, r.trade_id)
            for r in world.exchange.log.received
            if r.run == run.number
            and r.at <= cutoff
            and (r.symbol, r.trade_id) not in everything
            and ((start := floor.get(r.symbol)) is None or r.trade_id > start)
            and not _covered(reported.get(r.symbol, []), r.trade_id, r.trade_id)
        }
    )
    if lost:
        found.append(
            Violation(
                "a run that lost received trades does not end with exit 0",
                f"{name} ended {outcome.status.value} (exit {outcome.exit_code}) though "
                f"{len(lost)} received trades are not in the topic, first {lost[:3]}",
            )
        )


def _sequence_start(
    world: WorldResult,
    run: RunResult,
    symbol: str,
    entries: list[_Published],
    truth: Truths,
) -> int | None:
    """Where the run's sequence of ``symbol`` begins: the tail it resumed from (older trades
    cannot follow it in order, whatever holes earlier runs left), else the first trade it
    published itself."""
    earlier = [p for p in entries if p.run < run.number]
    own = [p.trade_id for p in entries if p.run == run.number]
    if earlier and _resumable(world, run.number, symbol, earlier[-1], truth):
        return max(p.trade_id for p in earlier)
    return min(own, default=None)


def _telemetry(world: WorldResult, run: RunResult, found: list[Violation]) -> None:
    name = f"run {run.number}"
    events = run.events
    statuses = [event.status for event in events]
    if events and statuses[0] is not Status.STARTED:
        found.append(Violation("started first", f"{name}: {[s.value for s in statuses]}"))
    terminal = [i for i, event in enumerate(events) if event.status.terminal]
    if len(terminal) > 1 or (terminal and terminal[0] != len(events) - 1):
        found.append(
            Violation("exactly one terminal event, last", f"{name}: {[s.value for s in statuses]}")
        )
    if any(event.finished != event.status.terminal for event in events):
        found.append(Violation("finished only on the terminal event", name))
    counts = [event.records_written for event in events]
    if counts != sorted(counts):
        found.append(Violation("records_written never decreases", f"{name}: {counts}"))
    if counts and counts[-1] > run.acknowledged:
        found.append(
            Violation(
                "records_written counts acknowledged trades",
                f"{name}: {counts[-1]} reported, {run.acknowledged} acknowledged",
            )
        )
    outcome = run.outcome
    if run.killed or outcome is None:
        return
    if outcome.status is not Status.ERROR and outcome.records_written != run.acknowledged:
        found.append(
            Violation(
                "records_written equals the broker's acknowledgements",
                f"{name}: {outcome.records_written} reported, {run.acknowledged} acknowledged",
            )
        )
    ended = run.ended or 0.0
    faults = world.broker.faults
    broker_away = any(start <= ended and end >= ended - 30 for start, end in faults.outages) or any(
        start <= ended and end >= ended - 30 and latency >= 1.0
        for start, end, latency in faults.slow
    )
    if not terminal and not broker_away:
        found.append(
            Violation(
                "exactly one terminal event, last",
                f"{name} ended {outcome.status.value} with no terminal event: "
                f"{[s.value for s in statuses]}",
            )
        )
    if terminal and events[-1].status is not outcome.status:
        found.append(
            Violation(
                "the terminal event tells the outcome",
                f"{name}: event {events[-1].status.value}, outcome {outcome.status.value}",
            )
        )
    if terminal and events[-1].records_written != outcome.records_written:
        found.append(
            Violation(
                "the terminal event tells the outcome",
                f"{name}: event says {events[-1].records_written}, "
                f"outcome {outcome.records_written}",
            )
        )


def _labels(run: RunResult, found: list[Violation]) -> None:
    """The metrics' labels take only the values the adapters declare, a fixed few."""
    stats = run.stats
    for label, values, allowed in (
        ("reason", stats.reconnects, RECONNECT_REASONS),
        ("reason", stats.rejected, REJECT_REASONS),
        ("kind", stats.ignored, IGNORED_KINDS),
    ):
        unknown = sorted(set(values) - allowed)
        if unknown:
            found.append(
                Violation(
                    "metric labels come from a bounded vocabulary",
                    f"run {run.number}: {label} values {unknown[:4]}",
                )
            )


def _silence(
    world: WorldResult, run: RunResult, published: Published, truth: Truths, found: list[Violation]
) -> None:
    start = run.streaming_from
    if start is None:
        return
    for line in world.logs:
        if line.run != run.number:
            continue
        match = SILENT.search(line.message)
        if match is None:
            continue
        symbol = match.group(1)
        received = [
            r.trade_id
            for r in world.exchange.log.received
            if r.run == run.number and r.symbol == symbol and r.at <= line.at
        ]
        earlier = [p.trade_id for p in published.get(symbol, []) if p.run < run.number]
        known = max(received + earlier, default=None)
        newest = truth[symbol].newest_at(line.at)
        if known is None:
            justified = truth[symbol].executed_between(start, line.at)
        else:
            justified = newest is not None and newest > known
        if not justified:
            found.append(
                Violation(
                    "a silence reconnect only when trades were missed",
                    f"run {run.number} at {line.at:.3f} s: {symbol} called silent, but the "
                    f"exchange executed nothing it did not send (newest {newest}, known {known})",
                )
            )


def _exchange_rules(world: WorldResult, found: list[Violation]) -> None:
    log = world.exchange.log
    for ban in log.banned[:3]:
        found.append(Violation("never a request during a Retry-After (418)", ban))
    for streams in log.refused_streams[:3]:
        found.append(
            Violation("at most 1,024 streams on a connection", f"a connection named {streams}")
        )
    attempts = log.attempts
    for index, at in enumerate(attempts):
        later = bisect_right(attempts, at + 300.0) - index
        if later > BINANCE_ATTEMPT_LIMIT:
            found.append(
                Violation(
                    "at most 300 connection attempts in 5 minutes",
                    f"{later} attempts from {at:.1f} s",
                )
            )
            break


def summary(world: WorldResult) -> dict[str, Any]:
    """A few figures of what the world did, for the runner's report."""
    topic = world.broker.topics.get(TOPIC)
    return {
        "runs": len(world.runs),
        "published": sum(len(p) for p in topic.partitions) if topic else 0,
        "received": len(world.exchange.log.received),
        "connections": world.exchange.log.connections,
        "outcomes": [
            (r.outcome.status.value if r.outcome else ("killed" if r.killed else "none"))
            for r in world.runs
        ],
    }
