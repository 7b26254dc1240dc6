"""The loader's Kafka messages as JSON Schemas and an AsyncAPI document, for other teams to read.

The models here describe the wire format that ``adapters.kafka_codec`` writes and reads; they are
documentation and test oracles, never used to encode or decode on the hot path. They are not a
parser either: pydantic reads JSON numbers through a binary float, so a consumer that needs the
exact ``price`` and ``quantity`` must parse numbers as decimals itself
(``json.loads(value, parse_float=decimal.Decimal)``).

Regenerate the committed document after changing a message:
``.venv/bin/python -m devtools.message_schemas > docs/asyncapi.yaml``
"""

from __future__ import annotations

import sys
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

from adapters.kafka.codec import MAX_MESSAGE_BYTES
from domain.state import Status

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SYMBOL_PATTERN: Final = r"^[A-Z0-9]{2,30}$"
SYMBOLS_PATTERN: Final = r"^[A-Z0-9]{2,30}(,[A-Z0-9]{2,30})*$"

TRADE_EXAMPLE: Final[dict[str, Any]] = {
    "trade_id": 3735683259,
    "price": 61837.63,
    "quantity": 0.02,
    "timestamp": 1723161255342,
    "is_buyer_maker": True,
    "symbol": "BTCUSDT",
}
EVENT_EXAMPLE: Final[dict[str, Any]] = {
    "queue_id": "wf-ws-trades-20240801-a1b2c3",
    "symbol": "BTCUSDT",
    "type": "ws_trade",
    "status": "loading",
    "message": "Loaded and published 15000 trade records",
    "records_written": 15000,
    "finished": False,
    "producer": "loader-ws-trades__a1b2c3",
    "timestamp": 1722445567.89,
}
COMMAND_EXAMPLE: Final[dict[str, Any]] = {
    "command": "stop",
    "queue_id": "wf-ws-trades-20240801-a1b2c3",
}

_EXACT_DECIMAL: Final = (
    "A JSON number that carries the exchange's decimal value exactly: the exchange's decimal "
    "string with trailing zeros removed, never rounded through a binary float and never in "
    'exponent form ("0.00009000" is written 0.00009). Parse it as a decimal to get the value back '
    "exactly."
)
_TERMINAL: Final[list[JsonValue]] = [status.value for status in Status if status.terminal]


def _number_only(value: object) -> object:
    # A strict Decimal field takes strings and refuses floats; on the wire these are JSON numbers.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a JSON number")  # noqa: TRY004 - pydantic reports ValueError
    return value if isinstance(value, Decimal) else Decimal(repr(value))


PositiveExactDecimal = Annotated[
    Decimal,
    BeforeValidator(_number_only),
    Field(gt=0),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "description": _EXACT_DECIMAL}),
]


class TradeMessage(BaseModel):
    """One trade on KAFKA_TOPIC, keyed by its symbol (UTF-8)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={"examples": [TRADE_EXAMPLE]},
    )

    trade_id: int = Field(
        ge=0,
        description="The exchange's trade id (Binance `t`); rises by one per trade of a symbol.",
    )
    price: PositiveExactDecimal
    quantity: PositiveExactDecimal
    timestamp: int = Field(ge=0, description="Trade time (Binance `T`), epoch milliseconds.")
    is_buyer_maker: bool = Field(description="The buyer was the maker (Binance `m`).")
    symbol: str = Field(pattern=SYMBOL_PATTERN, description="Trading pair, upper case.")


class TelemetryEventMessage(BaseModel):
    """One telemetry event on QUEUE_EVENTS_TOPIC, keyed by QUEUE_ID; exactly these nine fields."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={
            "examples": [EVENT_EXAMPLE],
            # `finished` is true in the one terminal event and false in every other.
            "if": {"properties": {"status": {"enum": _TERMINAL}}, "required": ["status"]},
            "then": {"properties": {"finished": {"const": True}}},
            "else": {"properties": {"finished": {"const": False}}},
        },
    )

    queue_id: str = Field(min_length=1, max_length=249, description="QUEUE_ID of the workflow.")
    symbol: str = Field(
        pattern=SYMBOLS_PATTERN,
        description="The run's trading pairs, upper case, comma-separated when several.",
    )
    type: Literal["ws_trade"] = Field(description="The data type the loader handles.")
    status: Status = Field(
        description=(
            "started, then loading (every TELEMETRY_INTERVAL_SEC, also as a heartbeat), then "
            "exactly one of finished (a bound was reached), interrupted (stop command or "
            "SIGTERM/SIGINT) or error (the run cannot go on)."
        )
    )
    message: str = Field(description="What happened, for an operator to read and act on.")
    records_written: int = Field(
        ge=0,
        description="Trades acknowledged by the broker in this run; never decreases.",
    )
    finished: bool = Field(description="True in the terminal event only.")
    producer: str = Field(
        min_length=1, max_length=249, description="TELEMETRY_PRODUCER_ID of this instance."
    )
    timestamp: float = Field(ge=0, description="When the event was made, epoch seconds.")

    @model_validator(mode="after")
    def _finished_only_when_terminal(self) -> TelemetryEventMessage:
        if self.finished != self.status.terminal:
            raise ValueError("finished must be true in a terminal event and false otherwise")
        return self


class ControlCommandMessage(BaseModel):
    """One command on QUEUE_CONTROL_TOPIC."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={
            "examples": [COMMAND_EXAMPLE],
            "description": (
                "Only `stop` is acted upon, by the loader whose QUEUE_ID equals `queue_id`: it "
                "stops reading the exchange, publishes every trade already received, sends "
                "`interrupted` and exits 0. Commands for other queues, unknown commands and "
                f"malformed messages (including any over {MAX_MESSAGE_BYTES} bytes) are logged "
                "and ignored."
            ),
        },
    )

    command: str = Field(
        description="The command; `stop` is the only one acted upon.", examples=["stop"]
    )
    queue_id: str = Field(description="QUEUE_ID of the loader the command is for.")


MODELS: Final[tuple[type[BaseModel], ...]] = (
    TradeMessage,
    TelemetryEventMessage,
    ControlCommandMessage,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each message's standalone JSON Schema (draft 2020-12), by model name."""
    schemas = {}
    for model in MODELS:
        schema = model.model_json_schema()
        schemas[model.__name__] = {"$schema": JSON_SCHEMA_DIALECT, **schema}
    return schemas


def _component_schemas() -> dict[str, dict[str, Any]]:
    """The models' schemas with shared definitions hoisted, referenced within the document."""
    components: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


def _package_version() -> str:
    try:
        return version("loader-ws-trades")
    except PackageNotFoundError:  # pragma: no cover - the package is always installed
        return "0.0.0"


def asyncapi_document() -> dict[str, Any]:
    """The loader's Kafka interface as an AsyncAPI 3.0.0 document."""
    binding = "0.5.0"
    client_id = {
        "type": "string",
        "pattern": "^loader-ws-trades-",
        "description": "loader-ws-trades-{TELEMETRY_PRODUCER_ID}",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "loader-ws-trades",
            "version": _package_version(),
            "description": (
                "A StreamForge loader, run as a Kubernetes Job: it publishes every real-time "
                "trade of the configured trading pairs from the exchange to a Kafka topic, one "
                "JSON message per trade, reports its state on the telemetry topic and obeys "
                "`stop` on the control topic. Topic names and the broker come from environment "
                "variables, named in braces below.\n\n"
                "Generated from `devtools.message_schemas`; do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{KAFKA_BOOTSTRAP_SERVERS}",
                "protocol": "kafka-secure",
                "description": (
                    "The brokers in KAFKA_BOOTSTRAP_SERVERS. With KAFKA_USER_PRODUCER and "
                    "KAFKA_PASSWORD_PRODUCER set the loader uses SASL_SSL (SCRAM-SHA-512 unless "
                    "KAFKA_SASL_MECHANISM says otherwise) and trusts the CA in CA_PATH; "
                    "without credentials it uses PLAINTEXT (KAFKA_SECURITY_PROTOCOL overrides)."
                ),
                "variables": {
                    "KAFKA_BOOTSTRAP_SERVERS": {
                        "default": "kafka-bootstrap.kafka:9093",
                        "description": (
                            "Broker addresses, comma-separated; the loader's own default is "
                            "localhost:9092, the deployment's (k8s/) the value here."
                        ),
                    }
                },
                "security": [
                    {"$ref": "#/components/securitySchemes/scramSha512"},
                    {"$ref": "#/components/securitySchemes/scramSha256"},
                    {"$ref": "#/components/securitySchemes/plain"},
                ],
            }
        },
        "channels": {
            "trades": {
                "address": "{KAFKA_TOPIC}",
                "title": "Trades",
                "description": (
                    "One message per trade. The key is the symbol, so each symbol's trades stay "
                    "in one partition in trade-id order. Each trade is published once per run: "
                    "no duplicates, and no gap that the exchange's history could fill."
                ),
                "parameters": {
                    "KAFKA_TOPIC": {
                        "description": "The topic named by KAFKA_TOPIC.",
                        "examples": ["wf-ws-trades-20240801-a1b2c3-data"],
                    }
                },
                "messages": {"trade": {"$ref": "#/components/messages/trade"}},
            },
            "events": {
                "address": "queue-events",
                "title": "Telemetry events",
                "description": (
                    "The run's state, keyed by QUEUE_ID: one `started`, `loading` every "
                    "TELEMETRY_INTERVAL_SEC, exactly one terminal event last. The address is "
                    "QUEUE_EVENTS_TOPIC's default."
                ),
                "messages": {"event": {"$ref": "#/components/messages/telemetryEvent"}},
            },
            "control": {
                "address": "queue-control",
                "title": "Control commands",
                "description": (
                    "Commands for loaders, read from the earliest offset of every partition "
                    "without a consumer group, so a command sent before the loader started is "
                    "honoured too. The address is QUEUE_CONTROL_TOPIC's default."
                ),
                "messages": {"command": {"$ref": "#/components/messages/controlCommand"}},
            },
        },
        "operations": {
            "sendTrades": {
                "action": "send",
                "channel": {"$ref": "#/channels/trades"},
                "messages": [{"$ref": "#/channels/trades/messages/trade"}],
                "summary": "Publish each trade received from the exchange.",
                "description": (
                    "acks=all with an idempotent producer; a trade counts as written only once "
                    "the broker has acknowledged it."
                ),
                "bindings": {"kafka": {"clientId": client_id, "bindingVersion": binding}},
            },
            "readLastTrades": {
                "action": "receive",
                "channel": {"$ref": "#/channels/trades"},
                "messages": [{"$ref": "#/channels/trades/messages/trade"}],
                "summary": "At start, read the newest trade of each symbol to resume after it.",
                "description": (
                    "Reads the end of each partition without a consumer group, so a retried "
                    "Job neither repeats nor skips trades that are still within "
                    "RESUME_WINDOW_SEC."
                ),
                "bindings": {"kafka": {"clientId": client_id, "bindingVersion": binding}},
            },
            "sendEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "messages": [{"$ref": "#/channels/events/messages/event"}],
                "summary": "Report the run's state.",
                "bindings": {"kafka": {"clientId": client_id, "bindingVersion": binding}},
            },
            "receiveControl": {
                "action": "receive",
                "channel": {"$ref": "#/channels/control"},
                "messages": [{"$ref": "#/channels/control/messages/command"}],
                "summary": "Obey `stop` for this loader's QUEUE_ID.",
                "description": "No consumer group: no other service can take the commands.",
                "bindings": {"kafka": {"clientId": client_id, "bindingVersion": binding}},
            },
        },
        "components": {
            "schemas": _component_schemas(),
            "messages": {
                "trade": {
                    "name": "trade",
                    "title": "Trade",
                    "payload": {"$ref": "#/components/schemas/TradeMessage"},
                    "bindings": {
                        "kafka": {
                            "key": {
                                "type": "string",
                                "pattern": SYMBOL_PATTERN,
                                "description": "The trade's symbol, UTF-8.",
                            },
                            "bindingVersion": binding,
                        }
                    },
                    "examples": [{"name": "contract", "payload": TRADE_EXAMPLE}],
                },
                "telemetryEvent": {
                    "name": "telemetryEvent",
                    "title": "Telemetry event",
                    "payload": {"$ref": "#/components/schemas/TelemetryEventMessage"},
                    "bindings": {
                        "kafka": {
                            "key": {"type": "string", "description": "QUEUE_ID, UTF-8."},
                            "bindingVersion": binding,
                        }
                    },
                    "examples": [{"name": "contract", "payload": EVENT_EXAMPLE}],
                },
                "controlCommand": {
                    "name": "controlCommand",
                    "title": "Control command",
                    "payload": {"$ref": "#/components/schemas/ControlCommandMessage"},
                    "examples": [{"name": "stop", "payload": COMMAND_EXAMPLE}],
                },
            },
            "securitySchemes": {
                "scramSha512": {"type": "scramSha512", "description": "SASL SCRAM-SHA-512."},
                "scramSha256": {"type": "scramSha256", "description": "SASL SCRAM-SHA-256."},
                "plain": {"type": "plain", "description": "SASL PLAIN."},
            },
        },
    }


def asyncapi_yaml() -> str:
    """``asyncapi_document()`` as the YAML committed in docs/asyncapi.yaml."""
    # PyYAML is a development dependency: only writing the document needs it.
    import yaml

    header = (
        "# Generated by `python -m devtools.message_schemas` from dev/devtools/message_schemas.py;"
        "\n# do not edit by hand.\n"
    )
    body = yaml.safe_dump(
        asyncapi_document(), sort_keys=False, allow_unicode=True, width=100, indent=2
    )
    return header + body


def main() -> None:
    sys.stdout.write(asyncapi_yaml())


if __name__ == "__main__":
    main()
