"""The loader's Kafka messages as bytes: trades, telemetry events, control commands."""

from __future__ import annotations

from typing import Any, Final

import orjson

from domain.messages import ControlCommand, TelemetryEvent
from domain.state import Status
from domain.trade import Trade, plain_decimal

MAX_MESSAGE_BYTES: Final = 64 * 1024

_TRUE: Final = "true"
_FALSE: Final = "false"


def encode_trade(trade: Trade) -> bytes:
    """The contract's trade message; price and quantity are exact JSON numbers."""
    # Written by hand: no JSON library emits a Decimal as a number without a float.
    return (
        f'{{"trade_id":{trade.trade_id},"price":{plain_decimal(trade.price)},'
        f'"quantity":{plain_decimal(trade.quantity)},"timestamp":{trade.timestamp},'
        f'"is_buyer_maker":{_TRUE if trade.is_buyer_maker else _FALSE},'
        f'"symbol":{orjson.dumps(trade.symbol).decode()}}}'
    ).encode()


def encode_event(event: TelemetryEvent) -> bytes:
    return orjson.dumps(
        {
            "queue_id": event.queue_id,
            "symbol": event.symbol,
            "type": event.type,
            "status": event.status.value,
            "message": event.message,
            "records_written": event.records_written,
            "finished": event.finished,
            "producer": event.producer,
            "timestamp": event.timestamp,
        }
    )


def encode_command(command: ControlCommand) -> bytes:
    return orjson.dumps({"command": command.command, "queue_id": command.queue_id})


def _json_object(value: bytes | None) -> dict[str, Any] | str:
    """The message as a JSON object, or the reason it is not one."""
    if value is None:
        return "empty message"
    if len(value) > MAX_MESSAGE_BYTES:
        return f"message of {len(value)} bytes is over {MAX_MESSAGE_BYTES}"
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not JSON"
    if type(message) is not dict:
        return "not a JSON object"
    return message


def decode_command(value: bytes | None) -> ControlCommand | str:
    """A control command, or the reason the message is not one."""
    message = _json_object(value)
    if isinstance(message, str):
        return message
    command = message.get("command")
    queue_id = message.get("queue_id")
    if type(command) is not str or type(queue_id) is not str:
        return "command and queue_id must be strings"
    return ControlCommand(command=command, queue_id=queue_id)


def decode_event(value: bytes | None) -> TelemetryEvent | None:
    """A telemetry event as the loader writes it, or None if the message is not one."""
    message = _json_object(value)
    if isinstance(message, str):
        return None
    try:
        event = TelemetryEvent(
            queue_id=message["queue_id"],
            symbol=message["symbol"],
            type=message["type"],
            status=Status(message["status"]),
            message=message["message"],
            records_written=message["records_written"],
            finished=message["finished"],
            producer=message["producer"],
            timestamp=float(message["timestamp"]),
        )
    except (KeyError, ValueError, TypeError):
        return None
    texts = (event.queue_id, event.symbol, event.type, event.message, event.producer)
    if not all(isinstance(text, str) for text in texts):
        return None
    if type(event.records_written) is not int or type(event.finished) is not bool:
        return None
    return event


def decode_trade_position(value: bytes | None) -> tuple[str, int, int] | None:
    """Symbol, trade id and trade time of a published trade message, or None if it is not one."""
    message = _json_object(value)
    if isinstance(message, str):
        return None
    symbol = message.get("symbol")
    trade_id = message.get("trade_id")
    timestamp = message.get("timestamp")
    if type(symbol) is not str or type(trade_id) is not int or type(timestamp) is not int:
        return None
    return symbol, trade_id, timestamp
