"""The recorded Binance trades in ../shared/data/binance, read by path (never copied)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "binance"
CURRENT = DATA / "btcusdt-trades-20240808.jsonl.gz"
LEGACY = DATA / "btcusdt-trades-20230405-legacy-ba.jsonl.gz"


def frames(path: Path) -> Iterator[str]:
    """Each recorded combined-stream frame as the exchange sent it."""
    if not path.exists():
        raise FileNotFoundError(
            f"recorded trades missing: {path} (../shared must be beside the checkout)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield line.rstrip("\n")


def trades(path: Path) -> list[dict[str, Any]]:
    """The ``data`` part of each recorded frame."""
    return [orjson.loads(frame)["data"] for frame in frames(path)]


def expected_message(data: dict[str, Any], symbol: str) -> dict[str, Any]:
    """The trade message the loader must publish for a recorded trade, numbers as decimals."""
    return {
        "trade_id": data["t"],
        "price": Decimal(data["p"]),
        "quantity": Decimal(data["q"]),
        "timestamp": data["T"],
        "is_buyer_maker": data["m"],
        "symbol": symbol,
    }
