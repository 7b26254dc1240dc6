"""Exchange frames: both recorded shapes, the combined wrapper, every kind of bad frame."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.binance.codec import (
    IGNORED_KINDS,
    SERVER_SHUTDOWN,
    FrameDecoder,
    FrameIssue,
    parse_history_trade,
    trade_key,
)
from domain.trade import Trade
from testkit.recorded import CURRENT, LEGACY, frames

sut = FrameDecoder(frozenset({"BTCUSDT", "ETHUSDT"}), max_bytes=64 * 1024)


@pytest.mark.parametrize("path", [CURRENT, LEGACY], ids=["current", "legacy-b-a"])
def test_the_key_of_every_recorded_frame_is_read_without_decoding(path: Path) -> None:
    for frame in frames(path):
        data = orjson.loads(frame)["data"]
        for shape in (frame, orjson.dumps(data).decode()):
            assert trade_key(shape) == (data["s"], data["t"])


@pytest.mark.parametrize(
    "frame",
    [
        b'{"e":"trade","s":"BTCUSDT","t":5,"p":"1"}',
        '{"e":"trade","s":"BTCUSDT","p":"1"}',
        '{"e":"trade","s":"BTCUSDT","t":-5,"p":"1"}',
        '{"e":"trade","s":"BTCUSDT","t":"5","p":"1"}',
        '{"e":"trade","s":"BTCUSDT","t":1_000,"p":"1"}',
        '{"e":"trade","s":"BTCUSDT","t":\u00b2,"p":"1"}',
        '{"e":"trade","t":5,"p":"1"}',
        '{"e":"trade","s":"BTCUSDT","t":5}',
    ],
)
def test_a_frame_whose_key_cannot_be_read_cheaply_has_none(frame: str | bytes) -> None:
    assert trade_key(frame) is None


@pytest.mark.parametrize("path", [CURRENT, LEGACY], ids=["current", "legacy-b-a"])
def test_every_recorded_frame_decodes_exactly(path: Path) -> None:
    count = 0
    previous = None
    for frame in frames(path):
        data = orjson.loads(frame)["data"]
        for shape in (frame, orjson.dumps(data).decode()):  # combined and raw forms
            trade = sut.decode(shape)
            assert isinstance(trade, Trade)
            assert trade.trade_id == data["t"]
            assert trade.price == Decimal(data["p"])
            assert trade.quantity == Decimal(data["q"])
            assert trade.timestamp == data["T"]
            assert trade.is_buyer_maker is data["m"]
            if previous is not None:
                assert trade.trade_id == previous + 1
        previous = data["t"]
        count += 1
    assert count > 3000


def _trade(**changes: object) -> str:
    data: dict[str, object] = {
        "e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 3735683259,
        "p": "61837.63000000", "q": "0.02000000", "T": 1723161255342, "m": True, "M": True,
    }  # fmt: skip
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data).decode()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "invalid_json"),
        ('{"e":"trade","s":"BTCUSDT"', "invalid_json"),
        ("[1,2,3]", "not_object"),
        ('{"stream":"btcusdt@trade","data":[1]}', "not_object"),
        (_trade(p=...), "missing_field"),
        (_trade(t=...), "missing_field"),
        (_trade(p=61837.63), "bad_type"),
        (_trade(t="3735683259"), "bad_type"),
        (_trade(m="true"), "bad_type"),
        (_trade(t=True), "bad_type"),
        (_trade(p="NaN"), "bad_number"),
        (_trade(q="1e400"), "bad_number"),
        (_trade(p="Infinity"), "bad_number"),
        (_trade(p="1.5e3"), "bad_number"),
        (_trade(p=" 1.0"), "bad_number"),
        (_trade(p="0123.4"), "bad_number"),
        (_trade(p="9" * 40), "bad_number"),
        (_trade(p="-1.00000000"), "non_positive"),
        (_trade(q="0.00000000"), "non_positive"),
        (_trade(p="0"), "non_positive"),
        (_trade(t=-1), "non_positive"),
        (_trade(s="DOGEUSDT"), "unsubscribed_symbol"),
        ('{"q":1e400}', "invalid_json"),
        ("x" * (64 * 1024 + 1), "oversized"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: str, reason: str) -> None:
    result = sut.decode(frame)
    assert isinstance(result, FrameIssue)
    assert result.rejected
    assert result.reason == reason


def test_binary_frames_are_rejected() -> None:
    result = sut.decode(_trade().encode())
    assert isinstance(result, FrameIssue)
    assert result.reason == "binary"


def test_non_trade_messages_are_ignored_on_purpose() -> None:
    shutdown = sut.decode('{"e":"serverShutdown","E":1723161255343}')
    assert shutdown is SERVER_SHUTDOWN
    reply = sut.decode('{"result":null,"id":1}')
    assert isinstance(reply, FrameIssue)
    assert (reply.kind, reply.reason) == ("ignored", "reply")
    ticker = sut.decode('{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","s":"BTCUSDT"}}')
    assert isinstance(ticker, FrameIssue)
    assert (ticker.kind, ticker.reason) == ("ignored", "other")


def test_the_kinds_of_ignored_frames_are_few_whatever_the_event_names() -> None:
    kinds = set()
    for number in range(500):
        issue = sut.decode(f'{{"e":"event{number}","E":1,"s":"BTCUSDT"}}')
        assert isinstance(issue, FrameIssue)
        kinds.add(issue.reason)
    assert kinds == {"other"}
    assert {"reply", "other"} == IGNORED_KINDS


def test_meme_coin_magnitudes_are_exact() -> None:
    trade = sut.decode(_trade(p="0.00001234", q="12345678901.00000000"))
    assert isinstance(trade, Trade)
    assert trade.price == Decimal("0.00001234")
    assert trade.quantity == Decimal("12345678901")


def test_history_entries_parse_exactly_and_malformed_ones_are_refused() -> None:
    good = {
        "id": 5, "price": "0.00009000", "qty": "3.10000000", "quoteQty": "0.00027900",
        "time": 1, "isBuyerMaker": False, "isBestMatch": True,
    }  # fmt: skip
    trade = parse_history_trade("BTCUSDT", good)
    assert trade is not None
    assert trade.price == Decimal("0.00009")
    assert parse_history_trade("BTCUSDT", {**good, "price": 1.5}) is None
    assert parse_history_trade("BTCUSDT", {**good, "qty": "0"}) is None
    assert parse_history_trade("BTCUSDT", [good]) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=20,
)
trade_fields = st.fixed_dictionaries(
    {},
    optional={
        "e": st.sampled_from(["trade", "aggTrade", "serverShutdown"]) | st.text(max_size=5),
        "s": st.sampled_from(["BTCUSDT", "ETHUSDT", "btcusdt", ""]) | json_values,
        "t": st.integers(min_value=-5, max_value=2**70) | json_values,
        "p": st.sampled_from(["1.0", "0.00000000", "-1", "NaN", "1e5"]) | json_values,
        "q": st.sampled_from(["2.5", "0", "inf"]) | json_values,
        "T": st.integers(min_value=-5, max_value=2**64) | json_values,
        "m": st.booleans() | json_values,
    },
)


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_and_text_never_raise(frame: bytes | str) -> None:
    assert isinstance(sut.decode(frame), Trade | FrameIssue)


@settings(max_examples=500)
@given(json_values)
def test_arbitrary_json_never_raises(value: object) -> None:
    assert isinstance(sut.decode(json.dumps(value)), Trade | FrameIssue)


@settings(max_examples=1000)
@given(trade_fields, st.booleans())
def test_near_miss_trades_never_raise_and_only_valid_ones_pass(
    fields: dict[str, object], wrapped: bool
) -> None:
    message: object = {"stream": "btcusdt@trade", "data": fields} if wrapped else fields
    result = sut.decode(json.dumps(message))
    if isinstance(result, Trade):
        assert fields["e"] == "trade"
        assert result.symbol in {"BTCUSDT", "ETHUSDT"}
        assert result.price > 0
        assert result.quantity > 0
        assert result.trade_id >= 0
    else:
        assert isinstance(result, FrameIssue)
