"""The topic-tail scan that a restart resumes from, over partitions held in memory."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.kafka.codec import encode_trade
from adapters.kafka.metadata import partition_for
from adapters.kafka.tail import PartitionLog, StoredRecord, newest_trades
from application.ports import LastPublished
from testkit.factories import make_trades


class ListLog(PartitionLog):
    """Partitions as lists of records, published one a second in the order written."""

    def __init__(self, partitions: int) -> None:
        self.partitions_data: list[list[StoredRecord]] = [[] for _ in range(partitions)]
        self.reads: list[tuple[int, int, int]] = []
        self.now_ms = 1_700_000_000_000

    def write(self, partition: int, first: int, last: int, symbol: str = "BTCUSDT") -> None:
        for trade in make_trades(first, last, symbol=symbol):
            self.now_ms += 1000
            self.partitions_data[partition].append(StoredRecord(encode_trade(trade), self.now_ms))

    def grow(self, partitions: int) -> None:
        self.partitions_data += [[] for _ in range(partitions - len(self.partitions_data))]

    async def partitions(self) -> set[int] | None:
        return set(range(len(self.partitions_data))) if self.partitions_data else None

    async def offsets(self, partition: int) -> tuple[int, int]:
        return 0, len(self.partitions_data[partition])

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        self.reads.append((partition, start, stop))
        return self.partitions_data[partition][start:stop]


def ids(found: Sequence[LastPublished]) -> dict[str, int]:
    return {last.symbol: last.trade_id for last in found}


def a_topic_where_the_key_is_not_in_partition_zero(symbol: str) -> int:
    count = 2
    while partition_for(symbol, list(range(count))) == 0:
        count += 1
    return count


async def test_the_newest_trade_is_found_at_the_end_of_a_long_partition() -> None:
    sut = ListLog(1)
    sut.write(0, 1, 5000)
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 5000}


async def test_after_the_topic_grew_the_newest_trade_is_in_the_keys_partition_not_the_first() -> (
    None
):
    count = a_topic_where_the_key_is_not_in_partition_zero("BTCUSDT")
    home = partition_for("BTCUSDT", list(range(count)))
    sut = ListLog(count)
    sut.write(0, 1, 100)  # written while the topic had one partition
    sut.write(home, 101, 150)  # written since it grew
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 150}


async def test_a_symbol_not_yet_written_since_the_topic_grew_is_found_where_it_was() -> None:
    count = a_topic_where_the_key_is_not_in_partition_zero("BTCUSDT")
    sut = ListLog(count)
    sut.write(0, 1, 100)
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 100}


async def test_symbols_spread_over_partitions_are_each_found_in_their_own() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"]
    sut = ListLog(3)
    for number, symbol in enumerate(symbols):
        first = 1_000_000 * (number + 1)
        sut.write(partition_for(symbol, [0, 1, 2]), first, first + 2500 + number, symbol)
    found = ids(await newest_trades(sut, symbols))
    assert found == {s: 1_000_000 * (n + 1) + 2500 + n for n, s in enumerate(symbols)}


async def test_the_scan_reads_only_the_partitions_the_symbols_map_to() -> None:
    count = a_topic_where_the_key_is_not_in_partition_zero("BTCUSDT")
    home = partition_for("BTCUSDT", list(range(count)))
    sut = ListLog(count)
    for other in range(count):
        if other != home:
            sut.write(other, 1, 3000, "ETHUSDT")
    sut.write(home, 1, 100)
    # The newest partition held records long before BTCUSDT's last trade: the topic has not
    # grown since, so no other partition can hold a newer one.
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 100}
    scanned = {partition for partition, start, stop in sut.reads if stop - start > 1}
    assert scanned == {home}


async def test_after_the_topic_grew_other_partitions_are_read_back_to_the_trade_found() -> None:
    count = 3
    while partition_for("BTCUSDT", list(range(count))) == count - 1:
        count += 1
    home = partition_for("BTCUSDT", list(range(count)))
    older = [p for p in range(count - 1) if p != home]
    sut = ListLog(count)  # the newest partition is still empty: the topic just grew
    for partition in older:
        sut.write(partition, 1, 3000, "ETHUSDT")
    sut.write(home, 1, 10)
    for partition in older:
        sut.write(partition, 3001, 3500, "ETHUSDT")
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 10}
    # Each older partition is read back past BTCUSDT's trade (one span), not to its start.
    for partition in older:
        spans = [(start, stop) for p, start, stop in sut.reads if p == partition]
        assert spans == [(2500, 3500)]


def counts_where_the_key_moves_away_and_back(symbol: str) -> tuple[int, int, int]:
    for first in range(1, 12):
        for second in range(first + 1, 13):
            for third in range(second + 1, 14):
                a, b, c = (partition_for(symbol, list(range(n))) for n in (first, second, third))
                if a == c != b:
                    return first, second, third
    raise AssertionError("no such partition counts")  # pragma: no cover


async def test_a_key_that_maps_back_to_its_older_trades_after_two_growths_finds_the_newest() -> (
    None
):
    # BTCUSDT's trades went to partition a, then (grown) to b, then (grown again) its key maps
    # to a again: the newest trades are in b, though a holds BTCUSDT trades.
    first, second, third = counts_where_the_key_moves_away_and_back("BTCUSDT")
    sut = ListLog(first)
    sut.write(partition_for("BTCUSDT", list(range(first))), 1, 100)
    sut.grow(second)
    sut.write(partition_for("BTCUSDT", list(range(second))), 101, 150)
    sut.grow(third)
    assert ids(await newest_trades(sut, ["BTCUSDT"])) == {"BTCUSDT": 150}


async def test_an_empty_or_missing_topic_has_no_tail() -> None:
    assert await newest_trades(ListLog(0), ["BTCUSDT"]) == []
    assert await newest_trades(ListLog(2), ["BTCUSDT"]) == []


async def test_a_symbol_seen_where_another_one_lives_is_still_looked_for_everywhere() -> None:
    # The topic grew twice: ETHUSDT's trades went to partition a, then b, and its key now
    # maps to a third one, still empty. BTCUSDT lives in a, where ETHUSDT's old trades are.
    count = 6
    ordered = list(range(count))
    home_eth, a = partition_for("ETHUSDT", ordered), partition_for("BTCUSDT", ordered)
    assert home_eth != a
    b = next(p for p in ordered if p not in (home_eth, a))
    sut = ListLog(count)
    sut.write(a, 1, 100, "ETHUSDT")
    sut.write(a, 500, 600, "BTCUSDT")
    sut.write(b, 101, 150, "ETHUSDT")
    found = ids(await newest_trades(sut, ["BTCUSDT", "ETHUSDT"]))
    assert found == {"BTCUSDT": 600, "ETHUSDT": 150}
