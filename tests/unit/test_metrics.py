"""What /metrics exposes, read back with Prometheus's own text parser."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from adapters.metrics import Readings, RunStats, make_registry
from testkit.prometheus import by_label, sample


def readings(used: list[int]) -> Readings:
    return Readings(
        queue_depth=lambda: 3,
        feed_connected=lambda: True,
        feed_connections=lambda: 2,
        broker_reachable=lambda: False,
        rest_weight_used=lambda: used[0],
        rest_weight_budget=4800,
    )


def exposition(stats: RunStats, used: list[int] | None = None) -> str:
    return generate_latest(make_registry(stats, readings(used or [0]))).decode()


def test_every_given_label_value_is_exposed_at_zero_before_anything_happened() -> None:
    stats = RunStats(
        ["BTCUSDT", "ETHUSDT"],
        reject_reasons=["invalid_json", "binary"],
        ignored_kinds=["reply"],
        reconnect_reasons=["dropped", "rotation"],
    )
    text = exposition(stats)
    for name in (
        "loader_trades_received_total",
        "loader_trades_published_total",
        "loader_trades_duplicate_total",
        "loader_gaps_total",
        "loader_trades_backfilled_total",
        "loader_trades_unrecoverable_total",
    ):
        assert by_label(text, name, "symbol") == {"BTCUSDT": 0, "ETHUSDT": 0}, name
    assert by_label(text, "loader_frames_rejected_total", "reason") == {
        "binary": 0,
        "invalid_json": 0,
    }
    assert by_label(text, "loader_frames_ignored_total", "kind") == {"reply": 0}
    assert by_label(text, "loader_reconnects_total", "reason") == {"dropped": 0, "rotation": 0}

    stats.received["BTCUSDT"] += 2
    stats.rejected["invalid_json"] += 1
    text = exposition(stats)
    assert sample(text, "loader_trades_received_total", symbol="BTCUSDT") == 2
    assert sample(text, "loader_frames_rejected_total", reason="invalid_json") == 1


def test_the_readings_are_taken_at_each_scrape() -> None:
    used = [125]
    text = exposition(RunStats(), used)
    assert sample(text, "loader_queue_depth") == 3
    assert sample(text, "loader_feed_connected") == 1
    assert sample(text, "loader_broker_reachable") == 0
    assert sample(text, "loader_rest_weight_used") == 125
    assert sample(text, "loader_rest_weight_budget") == 4800
    used[0] = 4000
    assert sample(exposition(RunStats(), used), "loader_rest_weight_used") == 4000
