"""Faults of the exchange, the network, the broker and the loader: nothing lost, nothing twice.

Each test asserts on the topic's content: the exact contiguous range of trade ids the exchange
produced, each once, in order. The results are collected into a fault matrix
(`.local/fault-matrix.md`, the source of docs/faults.md).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit.kafka_broker import REPO_ROOT, BrokerEnv, LocalBroker
from testkit.service import LoaderProcess, loader_env
from testkit.simulator import Simulator
from testkit.topics import Record, TopicSet, read_all, trade_ids

SYMBOL = "BTCUSDT"


@dataclass
class FaultMatrix:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, fault: str, produced: int, ids: list[int], first: int, recover: str) -> None:
        expected = set(range(first, first + produced))
        self.rows.append(
            {
                "fault": fault,
                "produced": produced,
                "in_kafka": len(ids),
                "missing": len(expected - set(ids)),
                "duplicated": len(ids) - len(set(ids)),
                "recover": recover,
            }
        )

    def verify(self, fault: str, produced: int, ids: list[int], first: int, recover: str) -> None:
        """Record the row, then fail unless the topic holds exactly ``first`` .. the last id."""
        self.record(fault, produced, ids, first, recover)
        assert_exact_range(ids, first, produced)

    def write(self, path: Path) -> None:
        lines = [
            "| fault | trades the exchange produced | trades in Kafka | missing | duplicated "
            "| time to recover |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['fault']} | {row['produced']} | {row['in_kafka']} | {row['missing']} "
                f"| {row['duplicated']} | {row['recover']} |"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def matrix() -> Iterator[FaultMatrix]:
    collected = FaultMatrix()
    yield collected
    collected.write(REPO_ROOT / ".local" / "fault-matrix.md")


@pytest.fixture(scope="module")
def own_broker() -> Iterator[LocalBroker]:
    """A broker of these tests' own, so pausing and restarting it disturbs no other test."""
    broker = LocalBroker("faults", 29092)
    broker.up()
    yield broker
    broker.down()


def synthetic(
    simulator: Callable[..., Simulator], seed: int, rate: int, count: int | None = None, *more: str
) -> Simulator:
    """The simulator with one synthetic market of ``SYMBOL`` (``count`` trades, or endless)."""
    bounded = ["--count", str(count)] if count is not None else []
    return simulator(
        "--market", f"{SYMBOL}=synthetic:seed={seed}", "--rate", str(rate), *bounded, *more
    )


async def on_own_broker(
    own_broker: LocalBroker,
    simulator: Callable[..., Simulator],
    name: str,
    *,
    seed: int,
    rate: int,
    count: int,
) -> tuple[BrokerEnv, TopicSet, Simulator]:
    """Fresh topics on the tests' own broker, and a market of ``count`` trades."""
    env = own_broker.env
    return env, await TopicSet.created(env.plaintext, name), synthetic(simulator, seed, rate, count)


def market(sim: Simulator) -> dict[str, Any]:
    state: dict[str, Any] = sim.state()["markets"][SYMBOL]
    return state


async def caught_up(bootstrap: str, topics: TopicSet, sim: Simulator, since: float) -> float:
    """Wait until the topic holds every trade the market produced by now; seconds from
    ``since`` until it did."""
    produced = market(sim)["produced"]
    await read_all(bootstrap, topics.data, until=lambda r: len(r) >= produced, timeout=120)
    return time.monotonic() - since


def assert_exact_range(ids: list[int], first: int, count: int) -> None:
    assert len(ids) == len(set(ids)), "duplicates in the topic"
    missing = sorted(set(range(first, first + count)) - set(ids))
    assert ids == list(range(first, first + count)), (
        f"expected {first}..{first + count - 1}, got {len(ids)} ids "
        f"({ids[:3]}...{ids[-3:]}); missing {missing[:10]}"
    )


async def complete_run(
    bootstrap: str,
    topics: TopicSet,
    sim: Simulator,
    process: LoaderProcess,
    count: int,
    timeout: float = 120.0,
) -> tuple[list[int], float]:
    """Wait until the market produced ``count`` trades and all are in the topic; stop the loader.

    Returns the topic's trade ids and how long after the market's end the topic caught up.
    """
    await asyncio.to_thread(sim.wait_produced, SYMBOL, count, timeout)
    ended = time.monotonic()

    def caught_up(records: list[Record]) -> bool:
        return len(records) >= count

    await read_all(bootstrap, topics.data, until=caught_up, timeout=timeout)
    lag = time.monotonic() - ended
    process.signal(signal.SIGTERM)
    assert await process.wait(60) == 0, process.output()[-3000:]
    return trade_ids(await read_all(bootstrap, topics.data)), lag


@pytest.mark.parametrize(
    ("fault", "faults", "extra"),
    [
        ("TCP drop (no close frame) every 300 trades", ["--drop-every", "300"], {}),
        (
            "`serverShutdown` notice after every 1000 trades",
            ["--shutdown-after", "1000"],
            {},
        ),
        (
            "connection lifetime cut every 2 s, rotation at 1.5 s",
            ["--lifetime", "2s"],
            {"WS_ROTATE_AFTER_SEC": "1.5"},
        ),
        ("connection lifetime cut every 2 s, no rotation", ["--lifetime", "2s"], {}),
        (
            "TCP drop every 500 trades and every 2nd REST request answered 429",
            ["--drop-every", "500", "--rest-429-every", "2", "--retry-after", "1"],
            {},
        ),
    ],
    ids=["drops", "server-shutdown", "rotation", "lifetime-cut", "rest-429"],
)
async def test_exchange_faults_lose_and_duplicate_nothing(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
    fault: str,
    faults: list[str],
    extra: dict[str, str],
) -> None:
    count = 8000
    sim = synthetic(simulator, 21, 1000, count, *faults)
    process = await loader(loader_env(broker, topics, sim, **extra)).start()
    ids, lag = await complete_run(broker.plaintext, topics, sim, process, count)
    state = market(sim)
    connections = sim.state()["connections"]
    assert connections["accepted"] >= 2, "the fault never hit"
    matrix.verify(
        fault,
        count,
        ids,
        state["first_id"],
        f"{connections['accepted'] - 1} reconnections; caught up {lag:.1f} s after the last trade",
    )


async def test_a_flapping_endpoint_is_not_hammered(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 3000
    sim = synthetic(simulator, 22, 1000, count, "--flap", "5", "--start", "admin")
    env = loader_env(
        broker, topics, sim, RECONNECT_INITIAL_DELAY_SEC="0.2", RECONNECT_MAX_DELAY_SEC="5"
    )
    started = time.monotonic()
    process = await loader(env).start()
    await asyncio.to_thread(sim.wait_open_connections, 1, 60)
    connected = time.monotonic() - started
    sim.start_market()
    ids, _ = await complete_run(broker.plaintext, topics, sim, process, count)
    connections = sim.state()["connections"]
    assert connections["flapped"] == 5
    # Five failures back off 0.2, 0.4, 0.8, 1.6 and 3.2 s at most, jittered down to half:
    # at least 3.1 s in all before the sixth attempt, which is the one that holds.
    assert connected >= 3.1
    assert connections["accepted"] == 6
    matrix.verify(
        "endpoint accepts then closes at once, 5 times",
        count,
        ids,
        market(sim)["first_id"],
        f"connected after {connected:.1f} s and 6 attempts (backoff)",
    )


async def test_a_silent_stream_is_detected_and_its_trades_recovered(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 6000
    sim = synthetic(simulator, 23, 500, count)
    process = await loader(loader_env(broker, topics, sim, SILENCE_TIMEOUT_SEC="2")).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 500, timeout=60)
    sim.faults(silent=[SYMBOL])
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 3000, timeout=60)
    silenced_connections = sim.state()["connections"]["accepted"]
    sim.faults(silent=[])
    ids, lag = await complete_run(broker.plaintext, topics, sim, process, count)
    assert silenced_connections >= 2, "the silence was never noticed"
    assert "silent stream" in process.output()
    matrix.verify(
        "stream goes silent while the market trades",
        count,
        ids,
        market(sim)["first_id"],
        f"reconnected after the 2 s silence bound; caught up {lag:.1f} s after the last trade",
    )


async def test_a_broker_paused_for_20_seconds_costs_nothing(
    own_broker: LocalBroker,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 40_000
    env_broker, topics, sim = await on_own_broker(
        own_broker, simulator, "pause", seed=24, rate=1000, count=count
    )
    process = await loader(loader_env(env_broker, topics, sim)).start()
    await read_all(env_broker.plaintext, topics.data, until=lambda r: len(r) >= 3000, timeout=60)
    own_broker.pause()
    await asyncio.sleep(20)  # the fault itself: the broker stays frozen this long
    own_broker.resume()
    recovered = await caught_up(env_broker.plaintext, topics, sim, since=time.monotonic())
    ids, _ = await complete_run(env_broker.plaintext, topics, sim, process, count, timeout=180)
    events = [r.json() for r in await read_all(env_broker.plaintext, topics.events)]
    assert events[-1]["status"] == "interrupted"
    assert events[-1]["records_written"] == count
    matrix.verify(
        "broker frozen (SIGSTOP) for 20 s",
        count,
        ids,
        market(sim)["first_id"],
        f"caught up {recovered:.1f} s after SIGCONT",
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_stalled_broker_fills_the_buffer_and_history_fills_the_hole(
    own_broker: LocalBroker,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 30_000
    env_broker, topics, sim = await on_own_broker(
        own_broker, simulator, "overflow", seed=29, rate=3000, count=count
    )
    env = loader_env(env_broker, topics, sim, WS_BUFFER_FRAMES="2000", MAX_IN_FLIGHT_TRADES="2000")
    process = await loader(env).start()
    await read_all(env_broker.plaintext, topics.data, until=lambda r: len(r) >= 3000, timeout=60)
    own_broker.pause()
    # The faults: the broker stays frozen 8 s, and meanwhile the exchange drops the
    # connection the stalled loader has stopped reading (as Binance does to slow clients).
    await asyncio.sleep(3)
    sim.drop_all()
    await asyncio.sleep(5)
    own_broker.resume()
    recovered = await caught_up(env_broker.plaintext, topics, sim, since=time.monotonic())
    peak = peak_rss_mb(process.pid)
    ids, _ = await complete_run(env_broker.plaintext, topics, sim, process, count, timeout=180)
    output = process.output()
    assert "Receive buffer full" in output
    assert "Gap in BTCUSDT" in output
    assert "Backfilled" in output
    assert sim.state()["connections"]["accepted"] >= 2
    assert peak < 200, f"peak RSS {peak:.0f} MB"
    matrix.verify(
        "broker frozen 8 s at 3,000 trades/s with a 2,000-frame buffer: reading pauses, "
        "and the exchange drops the stalled connection",
        count,
        ids,
        market(sim)["first_id"],
        f"missed trades refetched from history; caught up {recovered:.1f} s after SIGCONT; "
        f"peak RSS {peak:.0f} MB",
    )


async def test_a_broker_restart_costs_nothing(
    own_broker: LocalBroker,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 20_000
    env_broker, topics, sim = await on_own_broker(
        own_broker, simulator, "restart", seed=25, rate=1000, count=count
    )
    process = await loader(loader_env(env_broker, topics, sim)).start()
    await read_all(env_broker.plaintext, topics.data, until=lambda r: len(r) >= 3000, timeout=60)
    restart_began = time.monotonic()
    await asyncio.to_thread(own_broker.restart)
    restarted = time.monotonic()
    recovered = await caught_up(env_broker.plaintext, topics, sim, since=restarted)
    ids, _ = await complete_run(env_broker.plaintext, topics, sim, process, count, timeout=180)
    matrix.verify(
        "broker restarted",
        count,
        ids,
        market(sim)["first_id"],
        f"broker down {restarted - restart_began:.1f} s; caught up {recovered:.1f} s after",
    )


async def test_a_loader_killed_and_started_again_continues_the_topic(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    count = 12_000
    sim = synthetic(simulator, 26, 1000, count)
    env = loader_env(broker, topics, sim)
    first = await loader(env).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 2000, timeout=60)
    first.signal(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    await asyncio.sleep(2)  # the fault: the Job controller takes a while to start the retry
    restarted = time.monotonic()
    second = await loader(env).start()
    produced = market(sim)["produced"]
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= produced, timeout=60)
    recovered = time.monotonic() - restarted
    ids, _ = await complete_run(broker.plaintext, topics, sim, second, count)
    assert "Resuming BTCUSDT after trade" in second.output()
    matrix.verify(
        "loader killed (SIGKILL) and started again",
        count,
        ids,
        market(sim)["first_id"],
        f"caught up {recovered:.1f} s after the new process started",
    )


async def test_an_exchange_gone_for_good_ends_with_exit_1(
    broker: BrokerEnv,
    topics: TopicSet,
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    sim = synthetic(simulator, 27, 500)
    env = loader_env(broker, topics, sim, EXCHANGE_UNAVAILABLE_TIMEOUT_SEC="5")
    process = await loader(env).start()
    await read_all(broker.plaintext, topics.data, until=lambda r: len(r) >= 500, timeout=60)
    sim.stop()
    gone = time.monotonic()
    assert await process.wait(90) == 1, process.output()[-3000:]
    took = time.monotonic() - gone
    events = [r.json() for r in await read_all(broker.plaintext, topics.events)]
    assert events[-1]["status"] == "error"
    assert "unreachable" in events[-1]["message"]
    ids = trade_ids(await read_all(broker.plaintext, topics.data))
    assert len(ids) == len(set(ids))
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    matrix.record(
        "exchange gone for good (EXCHANGE_UNAVAILABLE_TIMEOUT_SEC=5)",
        len(ids),
        ids,
        ids[0],
        f"exit 1 and `error` {took:.1f} s after the exchange vanished",
    )


async def test_a_broker_gone_for_good_ends_with_exit_1_without_hanging(
    simulator: Callable[..., Simulator],
    loader: Callable[[dict[str, str]], LoaderProcess],
    matrix: FaultMatrix,
) -> None:
    doomed = LocalBroker("doomed", 29192)
    env_broker = doomed.up()
    try:
        topics = await TopicSet.created(env_broker.plaintext, "doomed")
        sim = synthetic(simulator, 28, 500)
        env = loader_env(env_broker, topics, sim, KAFKA_OUTAGE_TIMEOUT_SEC="8")
        process = await loader(env).start()
        await read_all(env_broker.plaintext, topics.data, until=lambda r: len(r) >= 500)
    finally:
        doomed.down()
    gone = time.monotonic()
    assert await process.wait(90) == 1, process.output()[-3000:]
    took = time.monotonic() - gone
    lines = process.log_lines()
    assert any("Kafka" in line["message"] for line in lines if line["level"] == "ERROR")
    matrix.rows.append(
        {
            "fault": "broker gone for good (KAFKA_OUTAGE_TIMEOUT_SEC=8)",
            "produced": "n/a",
            "in_kafka": "n/a (broker gone)",
            "missing": "n/a",
            "duplicated": "n/a",
            "recover": f"exit 1 {took:.1f} s after the broker stopped; no hang",
        }
    )
