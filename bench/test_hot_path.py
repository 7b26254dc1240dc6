"""The per-trade hot path on recorded Binance frames: frame text -> Trade -> Kafka message bytes.

Run through ``bench/run.py`` (scenario ``hot-path``) or directly:

    .venv/bin/pytest bench/test_hot_path.py -p no:cacheprovider --benchmark-only

Each round handles every recorded trade once; ``extra_info["trades"]`` turns a round's time
into time per trade. ``raw`` frames are what a single-symbol stream sends, ``combined`` frames
carry the ``{"stream":…,"data":…}`` envelope of the multi-symbol stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
import pytest

from adapters.binance.codec import FrameDecoder
from adapters.kafka.codec import encode_trade
from domain.trade import Trade
from testkit import recorded
from testkit.settings import settings

ROUNDS = int(os.environ.get("BENCH_HOT_PATH_ROUNDS", "30"))


@cache
def combined_frames() -> tuple[str, ...]:
    return tuple(recorded.frames(recorded.CURRENT))


@cache
def raw_frames() -> tuple[str, ...]:
    return tuple(orjson.dumps(orjson.loads(frame)["data"]).decode() for frame in combined_frames())


def decoder() -> FrameDecoder:
    return FrameDecoder(frozenset({"BTCUSDT"}), settings().ws_max_frame_bytes)


def trades() -> list[Trade]:
    decode = decoder().decode
    out: list[Trade] = []
    for frame in raw_frames():
        trade = decode(frame)
        assert type(trade) is Trade
        out.append(trade)
    return out


def measure(benchmark: Any, job: Callable[[], int], trades: int) -> None:
    benchmark.extra_info["trades"] = trades
    handled = benchmark.pedantic(job, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert handled == trades


@pytest.mark.parametrize("shape", ["raw", "combined"])
def test_decode_and_encode(benchmark: Any, shape: str) -> None:
    """The whole per-trade path the loader runs before handing a message to the producer."""
    frames = raw_frames() if shape == "raw" else combined_frames()
    decode = decoder().decode

    def job() -> int:
        done = 0
        for frame in frames:
            trade = decode(frame)
            if type(trade) is Trade:
                encode_trade(trade)
                done += 1
        return done

    measure(benchmark, job, len(frames))


def test_decode(benchmark: Any) -> None:
    """``FrameDecoder.decode`` alone: JSON parsing, validation, two Decimals, the Trade."""
    frames = raw_frames()
    decode = decoder().decode

    def job() -> int:
        return sum(1 for frame in frames if type(decode(frame)) is Trade)

    measure(benchmark, job, len(frames))


def test_encode(benchmark: Any) -> None:
    """``encode_trade`` alone: the contract's message with exact decimal numbers."""
    items = trades()

    def job() -> int:
        for trade in items:
            encode_trade(trade)
        return len(items)

    measure(benchmark, job, len(items))


def test_json_parse_only(benchmark: Any) -> None:
    """A floor for comparison: ``orjson.loads`` of the frame and nothing else."""
    frames = raw_frames()
    loads = orjson.loads

    def job() -> int:
        for frame in frames:
            loads(frame)
        return len(frames)

    measure(benchmark, job, len(frames))
