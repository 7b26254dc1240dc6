"""Many symbols on one process: connection shards against the simulator's Binance limits."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

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
    ("per_connection", "sizes"),
    [(None, [183] * 4 + [184] * 2), ("1024", [550, 550])],
    ids=["default-200", "binance-limit-1024"],
)
async def test_over_1024_symbols_stream_complete_on_connections_within_binance_limits(
    broker: BrokerEnv,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    per_connection: str | None,
    sizes: list[int],
) -> None:
    names = symbols(1100)
    topics = TopicSet.fresh("shards")
    await create_topics(broker.plaintext, topics.data, partitions=6)
    await create_topics(broker.plaintext, topics.events, topics.control)
    sim = simulator(*markets(names, "--rate", "5", "--count", str(PER_SYMBOL)))
    extra = {} if per_connection is None else {"WS_STREAMS_PER_CONNECTION": per_connection}
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
    assert carried == sorted(names)
    within_binance_limits(sim)


async def test_a_drop_of_one_shard_touches_only_its_symbols(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    names = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
    count = 3000
    sim = simulator(*markets(names, "--rate", "300", "--count", str(count)))
    env = loader_env(
        broker,
        topics,
        sim,
        symbols=",".join(names),
        WS_STREAMS_PER_CONNECTION="2",
        STOP_AFTER_RECORDS=str(len(names) * count),
    )
    process = await loader(env).start()
    sim.wait_produced("AAAUSDT", 600, timeout=60)
    assert sim.drop_carrying("AAAUSDT") == 1
    assert await process.wait(120) == 0, process.output()[-3000:]

    ids = ids_by_symbol(await read_all(broker.plaintext, topics.data))
    for name in names:
        assert ids[name] == list(range(1, count + 1)), name
    opened = {e["conn"]: e["streams"] for e in sim.log_events("conn_open")}
    dropped = [e["conn"] for e in sim.log_events("conn_close") if e["reason"] == "drop"]
    assert [opened[conn] for conn in dropped] == [["aaausdt@trade", "bbbusdt@trade"]]
    # The other shard's connection stayed open throughout: opened once, never replaced.
    assert list(opened.values()).count(["cccusdt@trade", "dddusdt@trade"]) == 1
    # Only the dropped shard's symbols can have missed trades (each gap found by the
    # symbol's next live trade) and been fetched from history.
    touched = {
        match.group(1)
        for line in json_lines(process.output())
        if (match := re.match(r"(?:Gap in|Backfilled \d+) (\w+)", line["message"]))
    }
    assert touched <= {"AAAUSDT", "BBBUSDT"}
    within_binance_limits(sim)
