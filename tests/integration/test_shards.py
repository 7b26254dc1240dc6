"""Many symbols on one process: connection shards against the simulator's Binance limits."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest

from testkit.kafka_broker import BrokerEnv
from testkit.logs import json_lines
from testkit.service import LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.topics import TopicSet, create_topics, read_all

PER_SYMBOL = 10


def symbols(count: int) -> list[str]:
    return [f"S{n:04d}USDT" for n in range(count)]


def markets(names: list[str], *extra: str) -> list[str]:
    args: list[str] = []
    for seed, name in enumerate(names, start=1):
        args += ["--market", f"{name}=synthetic:seed={seed}"]
    return [*args, *extra]


def within_binance_limits(sim: Simulator) -> None:
    state = sim.state()
    connections, rest = state["connections"], state["rest"]
    assert connections["too_many_streams"] == 0
    assert connections["message_rate_closes"] == 0
    assert connections["attempts_refused"] == 0
    assert rest["banned_418"] == 0


def ids_by_symbol(records: list) -> dict[str, list[int]]:  # type: ignore[type-arg]
    ids: dict[str, list[int]] = defaultdict(list)
    for record in records:
        message = record.json()
        assert record.key == message["symbol"].encode()
        ids[message["symbol"]].append(message["trade_id"])
    return ids


@pytest.mark.parametrize(
    ("extra", "sizes", "legs"),
    [
        # Redundant by default at this size: two connections per shard.
        ({}, [183] * 8 + [184] * 4, 2),
        ({"WS_STREAMS_PER_CONNECTION": "1024", "WS_REDUNDANT_CONNECTIONS": "off"}, [550, 550], 1),
    ],
    ids=["default-200-redundant", "binance-limit-1024-single"],
)
async def test_over_1024_symbols_stream_complete_on_connections_within_binance_limits(
    broker: BrokerEnv,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    extra: dict[str, str],
    sizes: list[int],
    legs: int,
) -> None:
    names = symbols(1100)
    topics = TopicSet.fresh("shards")
    await create_topics(broker.plaintext, topics.data, partitions=6)
    await create_topics(broker.plaintext, topics.events, topics.control)
    sim = simulator(*markets(names, "--rate", "5", "--count", str(PER_SYMBOL)))
    env = loader_env(
        broker,
        topics,
        sim,
        symbols=",".join(names),
        STOP_AFTER_RECORDS=str(len(names) * PER_SYMBOL),
        **extra,
    )
    process = await loader(env).start()
    assert await process.wait(180) == 0, process.output()[-3000:]

    ids = ids_by_symbol(await read_all(broker.plaintext, topics.data))
    assert set(ids) == set(names)
    for name in names:
        assert ids[name] == list(range(1, PER_SYMBOL + 1)), name
    opened = sim.log_events("conn_open")
    assert sorted(len(event["streams"]) for event in opened) == sorted(sizes)
    carried = sorted(s.removesuffix("@trade").upper() for e in opened for s in e["streams"])
    assert carried == sorted(names * legs)
    within_binance_limits(sim)


FOUR = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
COUNT = 3000


Start = Callable[..., Awaitable[tuple[Simulator, LoaderProcess]]]


@pytest.fixture
def four_symbols_on_two_shards(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> Start:
    """Starts ``FOUR`` symbols at 300 trades a second each, two a shard, ``COUNT`` trades
    each, with the loader's ``variables``; returns once the first one's market has produced a
    fifth of them."""

    async def start(**variables: str) -> tuple[Simulator, LoaderProcess]:
        sim = simulator(*markets(FOUR, "--rate", "300", "--count", str(COUNT)))
        env = loader_env(
            broker,
            topics,
            sim,
            symbols=",".join(FOUR),
            WS_STREAMS_PER_CONNECTION="2",
            STOP_AFTER_RECORDS=str(len(FOUR) * COUNT),
            **variables,
        )
        process = await loader(env).start()
        sim.wait_produced(FOUR[0], COUNT // 5, timeout=60)
        return sim, process

    return start


async def complete(broker: BrokerEnv, topics: TopicSet, process: LoaderProcess) -> None:
    assert await process.wait(120) == 0, process.output()[-3000:]
    ids = ids_by_symbol(await read_all(broker.plaintext, topics.data))
    for name in FOUR:
        assert ids[name] == list(range(1, COUNT + 1)), name


def dropped_connections(sim: Simulator) -> list[list[str]]:
    opened = {e["conn"]: e["streams"] for e in sim.log_events("conn_open")}
    return [opened[e["conn"]] for e in sim.log_events("conn_close") if e["reason"] == "drop"]


async def test_a_drop_of_one_shard_touches_only_its_symbols(
    broker: BrokerEnv, topics: TopicSet, four_symbols_on_two_shards: Start
) -> None:
    sim, process = await four_symbols_on_two_shards()
    assert sim.drop_carrying("AAAUSDT") == 1
    await complete(broker, topics, process)

    assert dropped_connections(sim) == [["aaausdt@trade", "bbbusdt@trade"]]
    # The other shard's connection stayed open throughout: opened once, never replaced.
    opened = [e["streams"] for e in sim.log_events("conn_open")]
    assert opened.count(["cccusdt@trade", "dddusdt@trade"]) == 1
    # Only the dropped shard's symbols can have missed trades (each gap found by the
    # symbol's next live trade) and been fetched from history.
    touched = {
        match.group(1)
        for line in json_lines(process.output())
        if (match := re.match(r"(?:Gap in|Backfilled \d+) (\w+)", line["message"]))
    }
    assert touched <= {"AAAUSDT", "BBBUSDT"}
    within_binance_limits(sim)


async def test_with_redundant_connections_a_drop_of_one_costs_no_rest_call_and_loses_nothing(
    broker: BrokerEnv, topics: TopicSet, four_symbols_on_two_shards: Start
) -> None:
    sim, process = await four_symbols_on_two_shards(WS_REDUNDANT_CONNECTIONS="on")
    assert sim.drop_carrying("AAAUSDT", limit=1) == 1
    sim.wait_produced("AAAUSDT", COUNT // 2, timeout=60)
    assert sim.drop_carrying("CCCUSDT", limit=1) == 1
    await complete(broker, topics, process)

    # Two connections per shard, and one replacement for each connection dropped.
    opened = sorted(tuple(e["streams"]) for e in sim.log_events("conn_open"))
    assert opened == sorted(
        [("aaausdt@trade", "bbbusdt@trade")] * 3 + [("cccusdt@trade", "dddusdt@trade")] * 3
    )
    assert len(dropped_connections(sim)) == 2
    # The other connection carried every trade meanwhile: no gap, no history, no probe.
    messages = [line["message"] for line in json_lines(process.output())]
    assert not [m for m in messages if m.startswith("Gap in")]
    rest = sim.state()["rest"]
    assert rest["historical_requests"] == 0
    assert rest["agg_requests"] == 0
    within_binance_limits(sim)
