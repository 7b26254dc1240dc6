"""`make demo`: the loader on the local broker and the exchange simulator, shown as it runs.

Starts the simulator replaying recorded BTCUSDT trades, runs the real `loader-ws-trades`
process against the local Kafka broker, prints trades as they land in the topic and every
telemetry event, then sends a `stop` command and checks what arrived.

DEMO_EXCHANGE=binance points the loader at the real Binance (internet needed) instead.
DEMO_SECONDS (default 20) is how long it streams before the stop command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from testkit.kafka_broker import load_env
from testkit.recorded import CURRENT, trades
from testkit.service import LoaderProcess
from testkit.simulator import Simulator
from testkit.topics import Record, create_topics, publish, read_all

ROOT = Path(__file__).resolve().parents[1]
EVENTS_TOPIC = "queue-events"
CONTROL_TOPIC = "queue-control"


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


async def follow(bootstrap: str, topic: str, queue_id: str | None, stop: asyncio.Event) -> int:
    """Print what arrives on ``topic``: trades (the first few, then a count) or events."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    seen = 0
    last_report = time.monotonic()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                for record in records:
                    if queue_id is not None:
                        if record.key == queue_id.encode():
                            say(f"  [telemetry] {record.value.decode()}")
                        continue
                    seen += 1
                    if seen <= 5:
                        say(f"  [{topic}] {record.value.decode()}")
            if queue_id is None and time.monotonic() - last_report >= 3:
                last_report = time.monotonic()
                say(f"  [{topic}] {seen} trades so far")
    finally:
        await consumer.stop()
    return seen


def check_against_recording(records: list[Record]) -> str:
    """Compare the topic with the recorded trades the simulator replayed."""
    messages = [json.loads(r.value, parse_float=Decimal) for r in records]
    if not messages:
        return "Check: no trades in the topic"
    recorded = {d["t"]: d for d in trades(CURRENT)}
    ids = [m["trade_id"] for m in messages]
    contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
    exact = all(
        m["price"] == Decimal(recorded[m["trade_id"]]["p"])
        and m["quantity"] == Decimal(recorded[m["trade_id"]]["q"])
        and m["is_buyer_maker"] == recorded[m["trade_id"]]["m"]
        for m in messages
    )
    return (
        f"Check: trade ids {ids[0]}..{ids[-1]}, "
        f"{'contiguous' if contiguous else 'NOT contiguous'}, "
        f"{len(ids) - len(set(ids))} duplicates, prices and quantities "
        f"{'identical to' if exact else 'DIFFERENT from'} the recording"
    )


async def main() -> int:
    broker = load_env()
    bootstrap = broker.plaintext
    stamp = time.strftime("%Y%m%d-%H%M%S")
    queue_id = f"wf-ws-trades-demo-{stamp}"
    data_topic = f"{queue_id}-data"
    seconds = float(os.environ.get("DEMO_SECONDS", "20"))
    real = os.environ.get("DEMO_EXCHANGE", "simulator") == "binance"
    local = ROOT / ".local" / "demo"
    local.mkdir(parents=True, exist_ok=True)

    await create_topics(bootstrap, data_topic, EVENTS_TOPIC, CONTROL_TOPIC)
    simulator: Simulator | None = None
    if real:
        ws_url, rest_url = "wss://stream.binance.com:9443/ws", "https://api.binance.com"
        say("Exchange: the real Binance")
    else:
        simulator = Simulator(
            "--market",
            f"BTCUSDT=replay:{CURRENT}",
            "--rate",
            "40",
            log_path=local / "simulator.log",
        )
        simulator.start()
        ws_url, rest_url = simulator.ws_url, simulator.rest_url
        say(f"Exchange: the local simulator at {simulator.rest_url}, replaying {CURRENT.name}")
    say(f"Kafka: {bootstrap}; trades to {data_topic}, telemetry on {EVENTS_TOPIC}\n")

    loader = LoaderProcess(
        {
            "QUEUE_ID": queue_id,
            "SYMBOL": "BTCUSDT",
            "TYPE": "ws_trade",
            "KAFKA_TOPIC": data_topic,
            "TELEMETRY_PRODUCER_ID": f"loader-ws-trades__{stamp}",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "QUEUE_EVENTS_TOPIC": EVENTS_TOPIC,
            "QUEUE_CONTROL_TOPIC": CONTROL_TOPIC,
            "BINANCE_WS_URL": ws_url,
            "BINANCE_REST_URL": rest_url,
            "TELEMETRY_INTERVAL_SEC": "3",
            "LOG_FORMAT": "text",
            "METRICS_PORT": "0",
        },
        local / "loader.log",
    )
    stop_following = asyncio.Event()
    trades = asyncio.create_task(follow(bootstrap, data_topic, None, stop_following))
    events = asyncio.create_task(follow(bootstrap, EVENTS_TOPIC, queue_id, stop_following))
    await loader.start()
    say(f"Loader started (pid {loader.pid}); streaming for {seconds:g} s\n")
    try:
        await asyncio.sleep(seconds)
        say(f"\nSending {{'command': 'stop', 'queue_id': '{queue_id}'}} to {CONTROL_TOPIC}")
        command = f'{{"command":"stop","queue_id":"{queue_id}"}}'.encode()
        await publish(bootstrap, CONTROL_TOPIC, command, key=queue_id.encode())
        code = await loader.wait(60)
        await asyncio.sleep(1.5)  # let the followers print the last records
    finally:
        stop_following.set()
        await loader.kill()
        if simulator is not None:
            simulator.stop()
    in_topic = await trades
    await events
    say(f"\nLoader exited with code {code}; {in_topic} trades in {data_topic}.")
    if not real:
        say(check_against_recording(await read_all(bootstrap, data_topic)))
    say(f"Its log: {loader.log_path}")
    with contextlib.suppress(OSError):
        tail = loader.log_path.read_text().splitlines()[-6:]
        say("\n".join(f"  {line}" for line in tail))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
