"""The message contract as documents: the schemas accept what the loader sends, and nothing else."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from adapters.kafka.codec import encode_command, encode_event, encode_trade
from devtools.message_schemas import (
    ControlCommandMessage,
    TelemetryEventMessage,
    TradeMessage,
    asyncapi_document,
    asyncapi_yaml,
    json_schemas,
)
from domain.messages import ControlCommand, TelemetryEvent
from domain.state import Status
from testkit.factories import make_trade

ASYNCAPI_FILE = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
REGENERATE = ".venv/bin/python -m devtools.message_schemas > docs/asyncapi.yaml"

# The examples of CONTRACT.md, verbatim.
CONTRACT_TRADE = (
    '{"trade_id": 3735683259, "price": 61837.63, "quantity": 0.02, "timestamp": 1723161255342, '
    '"is_buyer_maker": true, "symbol": "BTCUSDT"}'
)
CONTRACT_EVENT = """\
{"queue_id": "wf-ws-trades-20240801-a1b2c3", "symbol": "BTCUSDT", "type": "ws_trade", "status": "loading",
 "message": "Loaded and published 15000 trade records", "records_written": 15000, "finished": false,
 "producer": "loader-ws-trades__a1b2c3", "timestamp": 1722445567.89}"""  # noqa: E501 - as in the contract
CONTRACT_STOP = '{"command": "stop", "queue_id": "wf-ws-trades-20240801-a1b2c3"}'

TRADE = "TradeMessage"
EVENT = "TelemetryEventMessage"
COMMAND = "ControlCommandMessage"


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json_schemas()[name])


def errors(name: str, message: Any) -> list[str]:
    return [error.message for error in validator(name).iter_errors(message)]


def make_event(status: Status = Status.LOADING, **changes: Any) -> TelemetryEvent:
    fields: dict[str, Any] = {
        "queue_id": "wf-ws-trades-20240801-a1b2c3",
        "symbol": "BTCUSDT",
        "type": "ws_trade",
        "status": status,
        "message": "Loaded and published 15000 trade records",
        "records_written": 15000,
        "finished": status.terminal,
        "producer": "loader-ws-trades__a1b2c3",
        "timestamp": 1722445567.89,
    }
    fields.update(changes)
    return TelemetryEvent(**fields)


# The committed document.


def test_committed_asyncapi_document_is_what_the_code_generates() -> None:
    committed = ASYNCAPI_FILE.read_text(encoding="utf-8")
    assert committed == asyncapi_yaml(), (
        f"docs/asyncapi.yaml is out of date with dev/devtools/message_schemas.py; "
        f"regenerate it with: {REGENERATE}"
    )


def test_asyncapi_yaml_reads_back_as_the_document() -> None:
    assert yaml.safe_load(asyncapi_yaml()) == asyncapi_document()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_reference_in_the_asyncapi_document_resolves() -> None:
    document = asyncapi_document()
    refs = _refs(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict), ref
            assert part in node, ref
            node = node[part]


def test_asyncapi_document_describes_the_three_channels() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    addresses = {name: channel["address"] for name, channel in document["channels"].items()}
    assert addresses == {
        "trades": "{KAFKA_TOPIC}",
        "events": "queue-events",
        "control": "queue-control",
    }
    actions = {
        (operation["channel"]["$ref"], operation["action"])
        for operation in document["operations"].values()
    }
    assert {
        ("#/channels/trades", "send"),
        ("#/channels/events", "send"),
        ("#/channels/control", "receive"),
    } <= actions
    schemas = document["components"]["schemas"]
    assert {TRADE, EVENT, COMMAND} <= set(schemas)
    assert "$defs" not in json.dumps(schemas), "definitions must be hoisted to components"


# The schemas.


@pytest.mark.parametrize("name", [TRADE, EVENT, COMMAND])
def test_schemas_are_valid_draft_2020_12_and_closed(name: str) -> None:
    schema = json_schemas()[name]
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])


def test_trade_price_and_quantity_are_json_numbers() -> None:
    properties = json_schemas()[TRADE]["properties"]
    for field in ("price", "quantity"):
        assert properties[field]["type"] == "number"
        assert "exponent" in properties[field]["description"]


def test_event_status_lists_every_state() -> None:
    schema = json_schemas()[EVENT]
    assert schema["$defs"]["Status"]["enum"] == [status.value for status in Status]


@pytest.mark.parametrize(
    ("name", "example", "model"),
    [
        (TRADE, CONTRACT_TRADE, TradeMessage),
        (EVENT, CONTRACT_EVENT, TelemetryEventMessage),
        (COMMAND, CONTRACT_STOP, ControlCommandMessage),
    ],
)
def test_the_contracts_examples_are_valid(name: str, example: str, model: type[BaseModel]) -> None:
    assert errors(name, json.loads(example)) == []
    model.model_validate_json(example)


# What the real encoders write.


@given(
    trade_id=st.integers(min_value=0, max_value=2**63 - 1),
    price=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10**12), places=8),
    quantity=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10**9), places=8),
    is_buyer_maker=st.booleans(),
    symbol=st.from_regex(r"[A-Z0-9]{2,30}", fullmatch=True),
)
def test_encoded_trades_are_valid(
    trade_id: int, price: Decimal, quantity: Decimal, is_buyer_maker: bool, symbol: str
) -> None:
    trade = make_trade(
        trade_id,
        symbol=symbol,
        price=str(price),
        quantity=str(quantity),
        is_buyer_maker=is_buyer_maker,
    )
    message = encode_trade(trade)
    assert errors(TRADE, json.loads(message, parse_float=Decimal)) == []
    TradeMessage.model_validate_json(message)


@pytest.mark.parametrize("status", list(Status))
def test_encoded_events_are_valid_in_every_state(status: Status) -> None:
    message = encode_event(make_event(status))
    assert errors(EVENT, json.loads(message)) == []
    TelemetryEventMessage.model_validate_json(message)


def test_an_encoded_event_of_several_symbols_is_valid() -> None:
    message = encode_event(make_event(symbol="BTCUSDT,ETHUSDT"))
    assert errors(EVENT, json.loads(message)) == []


@pytest.mark.parametrize("command", ["stop", "pause"])
def test_encoded_commands_are_valid(command: str) -> None:
    message = encode_command(ControlCommand(command=command, queue_id="wf-ws-trades-1"))
    assert errors(COMMAND, json.loads(message)) == []
    ControlCommandMessage.model_validate_json(message)


# What is not a message.


_DROP = object()


def _changed(example: str, **changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(example)
    for key, value in changes.items():
        if value is _DROP:
            del message[key]
        else:
            message[key] = value
    return message


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("extra field", _changed(CONTRACT_TRADE, exchange="binance")),
        ("price as a string", _changed(CONTRACT_TRADE, price="61837.63")),
        ("quantity as a string", _changed(CONTRACT_TRADE, quantity="0.02")),
        ("price zero", _changed(CONTRACT_TRADE, price=0)),
        ("missing quantity", _changed(CONTRACT_TRADE, quantity=_DROP)),
        ("negative trade id", _changed(CONTRACT_TRADE, trade_id=-1)),
        ("timestamp in seconds as a float", _changed(CONTRACT_TRADE, timestamp=1723161255.342)),
        ("lower-case symbol", _changed(CONTRACT_TRADE, symbol="btcusdt")),
        ("maker flag as a number", _changed(CONTRACT_TRADE, is_buyer_maker=1)),
    ],
)
def test_wrong_trades_are_rejected(case: str, message: dict[str, Any]) -> None:
    assert errors(TRADE, message), case
    with pytest.raises(ValidationError):
        TradeMessage.model_validate_json(json.dumps(message))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("extra field", _changed(CONTRACT_EVENT, host="pod-1")),
        ("missing producer", _changed(CONTRACT_EVENT, producer=_DROP)),
        ("unknown status", _changed(CONTRACT_EVENT, status="paused")),
        ("finished while loading", _changed(CONTRACT_EVENT, finished=True)),
        ("terminal but not finished", _changed(CONTRACT_EVENT, status="error")),
        ("count as a string", _changed(CONTRACT_EVENT, records_written="15000")),
        ("other data type", _changed(CONTRACT_EVENT, type="rest_trade")),
    ],
)
def test_wrong_events_are_rejected(case: str, message: dict[str, Any]) -> None:
    assert errors(EVENT, message), case
    with pytest.raises(ValidationError):
        TelemetryEventMessage.model_validate_json(json.dumps(message))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("extra field", _changed(CONTRACT_STOP, reason="maintenance")),
        ("missing queue id", _changed(CONTRACT_STOP, queue_id=_DROP)),
        ("command as a number", _changed(CONTRACT_STOP, command=1)),
    ],
)
def test_wrong_commands_are_rejected(case: str, message: dict[str, Any]) -> None:
    assert errors(COMMAND, message), case
    with pytest.raises(ValidationError):
        ControlCommandMessage.model_validate_json(json.dumps(message))
