"""The real service process against the real broker and the exchange simulator."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.kafka_broker import BrokerEnv, batch_codecs
from testkit.recorded import CURRENT, LEGACY, expected_message, trades
from testkit.service import LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.telemetry import assert_telemetry, events_of
from testkit.topics import TopicSet, publish, read_all, trade_ids


@pytest.mark.parametrize("source", [CURRENT, LEGACY], ids=["current", "legacy-b-a"])
async def test_recorded_trades_arrive_complete_in_order_once_and_exact(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    source: Path,
) -> None:
    recorded = trades(source)
    sim = simulator("--market", f"BTCUSDT=replay:{source}", "--rate", "4000", "--keep-times")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS=str(len(recorded)))
    process = await loader(env).start()
    assert await process.wait(120) == 0, process.output()[-3000:]

    records = await read_all(broker.plaintext, topics.data)
    assert [r.exact() for r in records] == [expected_message(d, "BTCUSDT") for d in recorded]
    assert {r.key for r in records} == {b"BTCUSDT"}
    assert len({r.partition for r in records}) == 1
    assert_telemetry(await events_of(broker, topics), env["QUEUE_ID"], "finished", len(recorded))
    state = sim.state()
    assert state["markets"]["BTCUSDT"]["first_id"] == recorded[0]["t"]


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd", "snappy"])
async def test_every_compression_the_settings_accept_is_written_and_reads_back_exact(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    codec: str,
) -> None:
    recorded = {data["t"]: data for data in trades(CURRENT)}
    sim = simulator("--market", f"BTCUSDT=replay:{CURRENT}", "--rate", "4000", "--keep-times")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS="3000", KAFKA_COMPRESSION=codec)
    process = await loader(env).start()
    assert await process.wait(120) == 0, process.output()[-3000:]

    records = await read_all(broker.plaintext, topics.data)
    ids = trade_ids(records, "BTCUSDT")
    assert ids == list(range(ids[0], ids[0] + 3000))
    assert [r.exact() for r in records] == [expected_message(recorded[i], "BTCUSDT") for i in ids]
    assert await asyncio.to_thread(batch_codecs, broker, topics.data) == {codec}


async def test_two_symbols_over_one_combined_stream(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    btc = trades(CURRENT)
    eth = trades(LEGACY)
    sim = simulator(
        "--market", f"BTCUSDT=replay:{CURRENT}", "--market", f"ETHUSDT=replay:{LEGACY}",
        "--rate", "2000", "--keep-times",
    )  # fmt: skip
    env = loader_env(
        broker, topics, sim, symbols="BTCUSDT,ETHUSDT", STOP_AFTER_RECORDS=str(len(btc) + len(eth))
    )
    process = await loader(env).start()
    assert await process.wait(120) == 0, process.output()[-3000:]

    records = await read_all(broker.plaintext, topics.data)
    for symbol, recorded in (("BTCUSDT", btc), ("ETHUSDT", eth)):
        mine = [r for r in records if r.key == symbol.encode()]
        assert [r.exact() for r in mine] == [expected_message(d, symbol) for d in recorded]
    events = await events_of(broker, topics)
    assert_telemetry(events, env["QUEUE_ID"], "finished", len(btc) + len(eth))
    assert {e["symbol"] for e in events} == {"BTCUSDT,ETHUSDT"}


async def test_a_stop_command_ends_the_run_with_exit_0_and_interrupted(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=7", "--rate", "300")
    env = loader_env(broker, topics, sim)
    process = await loader(env).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 200, timeout=60)
    queue = env["QUEUE_ID"]
    await publish(
        broker.plaintext,
        topics.control,
        b'{"command":"stop","queue_id":"someone-else"}',
        b"not json at all",
        b'{"command":"stop"}',
        json.dumps({"command": "stop", "queue_id": queue}).encode(),
    )
    assert await process.wait(60) == 0, process.output()[-3000:]

    ids = trade_ids(await read_all(broker.plaintext, topics.data))
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    events = await events_of(broker, topics)
    assert_telemetry(events, queue, "interrupted", len(ids))
    assert "Stop command" in events[-1]["message"]


async def test_a_stop_published_before_the_loader_started_is_honoured(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=1", "--rate", "50")
    env = loader_env(broker, topics, sim)
    command = {"command": "stop", "queue_id": env["QUEUE_ID"]}
    await publish(broker.plaintext, topics.control, json.dumps(command).encode())
    process = await loader(env).start()
    assert await process.wait(60) == 0, process.output()[-3000:]
    events = await events_of(broker, topics)
    assert [e["status"] for e in events][-1] == "interrupted"
    assert events[0]["status"] == "started"


async def test_commands_for_other_queues_are_ignored(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=2", "--rate", "500")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS="300")
    await publish(
        broker.plaintext,
        topics.control,
        b'{"command":"stop","queue_id":"wf-some-other-queue"}',
        b'{"command":"restart","queue_id":"' + env["QUEUE_ID"].encode() + b'"}',
        b"[]",
        b"\xff\xfe",
    )
    process = await loader(env).start()
    assert await process.wait(60) == 0, process.output()[-3000:]
    events = await events_of(broker, topics)
    assert events[-1]["status"] == "finished"
    assert events[-1]["records_written"] == 300
    assert len(await read_all(broker.plaintext, topics.data)) == 300


async def test_sigterm_drains_and_ends_interrupted(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=3", "--rate", "1000")
    env = loader_env(broker, topics, sim)
    process = await loader(env).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 500, timeout=60)
    process.signal(signal.SIGTERM)
    assert await process.wait(30) == 0, process.output()[-3000:]
    ids = trade_ids(await read_all(broker.plaintext, topics.data))
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    events = await events_of(broker, topics)
    assert_telemetry(events, env["QUEUE_ID"], "interrupted", len(ids))
    assert "SIGTERM" in events[-1]["message"]


async def test_an_unknown_symbol_ends_with_exit_2_and_an_error_event(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=4", "--rate", "10")
    env = loader_env(broker, topics, sim, symbols="BTCUSDT,NOSUCHCOIN")
    process = await loader(env).start()
    assert await process.wait(60) == 2, process.output()[-3000:]
    events = await events_of(broker, topics)
    assert [e["status"] for e in events] == ["started", "error"]
    assert "NOSUCHCOIN" in events[-1]["message"]
    assert "BTCUSDT" not in events[-1]["message"].split(":")[-1]
    assert await read_all(broker.plaintext, topics.data) == []


async def test_sasl_ssl_with_scram_and_the_ca(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    recorded = trades(LEGACY)
    sim = simulator("--market", f"BTCUSDT=replay:{LEGACY}", "--rate", "3000", "--keep-times")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS=str(len(recorded)))
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl,
        "KAFKA_USER_PRODUCER": broker.producer_user,
        "KAFKA_PASSWORD_PRODUCER": broker.producer_password,
        "CA_PATH": str(broker.ca_path),
    }
    process = await loader(env).start()
    assert await process.wait(120) == 0, process.output()[-3000:]
    records = await read_all(broker.plaintext, topics.data)
    assert [r.exact() for r in records] == [expected_message(d, "BTCUSDT") for d in recorded]
    assert_telemetry(await events_of(broker, topics), env["QUEUE_ID"], "finished", len(recorded))
    assert broker.producer_password not in process.output()


async def test_a_listed_symbol_that_is_not_trading_is_reported_and_the_run_goes_on(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", "BTCUSDT=synthetic:seed=5", "--rate", "500", "--halted", "HALTUSDT")
    env = loader_env(broker, topics, sim, symbols="BTCUSDT,HALTUSDT", STOP_AFTER_RECORDS="200")
    process = await loader(env).start()
    assert await process.wait(60) == 0, process.output()[-3000:]
    events = await events_of(broker, topics)
    assert [e["status"] for e in events][:2] == ["started", "loading"]
    assert "HALTUSDT is listed but not trading (status BREAK)" in events[1]["message"]
    assert events[-1]["status"] == "finished"
    ids = trade_ids(await read_all(broker.plaintext, topics.data), "BTCUSDT")
    assert ids == list(range(ids[0], ids[0] + 200))


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0, 2.0])
async def test_a_sigterm_at_any_moment_of_the_start_ends_interrupted_with_exit_0(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    delay: float,
) -> None:
    sim = simulator("--market", f"BTCUSDT=replay:{CURRENT}", "--rate", "500")
    env = loader_env(broker, topics, sim, DRAIN_TIMEOUT_SEC="5")
    process = await loader(env).start()
    # From its first line of code on (before that the interpreter itself is starting, and a
    # signal has its default meaning), the process takes SIGTERM as a stop. The signal is the
    # input here, sent at moments of the start counted from then.
    await process.catching(signal.SIGTERM)
    await asyncio.sleep(delay)
    process.signal(signal.SIGTERM)
    assert await process.wait(30) == 0, process.output()[-3000:]
    events = await events_of(broker, topics)
    assert [e["status"] for e in events] == ["started", "interrupted"], process.output()[-3000:]


async def test_a_sigterm_while_the_broker_cannot_be_reached_ends_within_the_drain_bound(
    topics: TopicSet,
    broker: BrokerEnv,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    sim = simulator("--market", f"BTCUSDT=replay:{CURRENT}", "--rate", "500")
    env = loader_env(
        broker,
        topics,
        sim,
        DRAIN_TIMEOUT_SEC="3",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",  # nothing listens there
        KAFKA_CONNECT_TIMEOUT_SEC="120",
    )
    process = await loader(env).start()
    await asyncio.sleep(1.0)
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    assert await process.wait(30) == 0, process.output()[-3000:]
    assert time.monotonic() - started < 3 + 3
    assert "Traceback" not in process.output()


async def test_a_first_run_on_topics_yet_to_be_created_logs_no_error(
    broker: BrokerEnv,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
) -> None:
    topics = TopicSet.fresh("autocreate")  # the broker creates them as the loader uses them
    sim = simulator("--market", f"BTCUSDT=replay:{CURRENT}", "--rate", "2000")
    env = loader_env(broker, topics, sim, STOP_AFTER_RECORDS="100")
    process = await loader(env).start()
    assert await process.wait(120) == 0, process.output()[-3000:]
    errors = [line for line in process.log_lines() if line["level"] in ("ERROR", "CRITICAL")]
    assert errors == []
    assert len(await read_all(broker.plaintext, topics.data)) == 100
