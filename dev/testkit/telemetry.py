"""Reading and checking the loader's telemetry in integration tests."""

from __future__ import annotations

from typing import Any

from testkit.kafka_broker import BrokerEnv
from testkit.topics import CONTRACT_EVENT_FIELDS, TopicSet, read_all


async def events_of(broker: BrokerEnv, topics: TopicSet) -> list[dict[str, Any]]:
    """Every telemetry event of the run, oldest first."""
    return [r.json() for r in await read_all(broker.plaintext, topics.events)]


def assert_telemetry(events: list[dict[str, Any]], queue_id: str, final: str, written: int) -> None:
    assert events, "no telemetry"
    for event in events:
        assert set(event) == CONTRACT_EVENT_FIELDS
        assert event["queue_id"] == queue_id
        assert event["type"] == "ws_trade"
        assert isinstance(event["timestamp"], float)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "started"
    assert statuses[-1] == final
    assert set(statuses[1:-1]) <= {"loading"}
    assert [e["finished"] for e in events] == [False] * (len(events) - 1) + [True]
    counts = [e["records_written"] for e in events]
    assert counts == sorted(counts)
    assert counts[-1] == written
