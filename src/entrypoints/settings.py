"""All configuration, from environment variables, validated before anything connects.

The one source of every default: each variable is declared once here (hence the module's
length, about 450 lines, most of them declarations), and the adapters' tuning objects are made
from these values.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar, overload

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.binance.feed import FeedTuning
from adapters.binance.rest import HISTORY_WEIGHT, RestTuning
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.producer import ProducerTuning
from application.config import LoaderConfig
from domain.backoff import Backoff

SYMBOL_PATTERN: Final = re.compile(r"[A-Z0-9]{2,30}")
BOOTSTRAP_HOST: Final = re.compile(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

_S = TypeVar("_S", bound="KafkaSettings")

Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class KafkaSettings(BaseSettings):
    """The brokers and the queue topics: shared by the Job and the operator's commands."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    # Broker.
    kafka_bootstrap_servers: str = Field(
        "localhost:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
    )
    kafka_user: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_USER_PRODUCER", "KAFKA_USER")
    )
    kafka_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_PASSWORD_PRODUCER", "KAFKA_PASSWORD")
    )
    ca_path: Path | None = Field(None, validation_alias="CA_PATH")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = (
        Field(None, validation_alias="KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM"
    )
    queue_control_topic: str = Field(
        "queue-control", validation_alias="QUEUE_CONTROL_TOPIC", pattern=r"^[A-Za-z0-9._-]{1,249}$"
    )
    kafka_connect_timeout_sec: Seconds = Field(60.0, validation_alias="KAFKA_CONNECT_TIMEOUT_SEC")
    queue_events_topic: str = Field(
        "queue-events", validation_alias="QUEUE_EVENTS_TOPIC", pattern=r"^[A-Za-z0-9._-]{1,249}$"
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]
        for number, server in enumerate(servers, 1):
            host, _, port = server.rpartition(":")
            if (
                not BOOTSTRAP_HOST.fullmatch(host)
                or not port.isdigit()
                or not 0 < int(port) < 65536
            ):
                # The value is not echoed: a mistaken "user:password@host" must not leak.
                raise ValueError(
                    f"entry {number} is not host:port; give one or more, comma-separated "
                    "(e.g. kafka-bootstrap.kafka:9093)"
                )
        return ",".join(servers)

    @field_validator("ca_path")
    @classmethod
    def _readable_pem(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        try:
            text = value.read_text(encoding="ascii", errors="replace")
        except OSError as error:
            raise ValueError(f"cannot read {value}: {error.strerror}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{value} is not a PEM certificate")
        try:
            ssl.create_default_context(cafile=str(value))
        except ssl.SSLError as error:
            detail = error.reason or error.strerror or str(error)
            raise ValueError(f"{value} holds no usable PEM certificate ({detail})") from None
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _rules_between_variables(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Rules between variables, checked on the values as given (keyed by variable), so they
        are told together with every problem of a single variable."""
        broken = cls._broken_rules(data) if isinstance(data, Mapping) else []
        try:
            settings = handler(data)
        except ValidationError as error:
            raise _with_rules(cls.__name__, error, broken) from None
        if broken:
            raise _with_rules(cls.__name__, None, broken)
        return settings

    @classmethod
    def _broken_rules(cls, given: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(variable, problem) for each rule between variables that ``given`` breaks."""
        broken = []
        user = cls._given(given, "kafka_user")
        password = cls._given(given, "kafka_password")
        protocol = infer_protocol(
            cls._given(given, "kafka_security_protocol"), password is not None
        )
        if (user is None) != (password is None):
            missing = "KAFKA_PASSWORD_PRODUCER" if user else "KAFKA_USER_PRODUCER"
            broken.append((missing, "is required when the other SASL credential is set"))
        if protocol in SECURITY_PROTOCOLS:
            if protocol.startswith("SASL_") and not (user and password):
                broken.append(
                    (
                        "KAFKA_SECURITY_PROTOCOL",
                        f"{protocol} needs KAFKA_USER_PRODUCER and KAFKA_PASSWORD_PRODUCER",
                    )
                )
            if (user or password) and not protocol.startswith("SASL_"):
                broken.append(
                    (
                        "KAFKA_SECURITY_PROTOCOL",
                        f"credentials are set but {protocol} would not use them; use SASL_SSL "
                        "(or SASL_PLAINTEXT, which sends the password unencrypted)",
                    )
                )
        return broken

    @classmethod
    def _given(cls, given: Mapping[str, Any], field: str) -> Any:
        """The value given for ``field`` under any of its variables' names (None if unset)."""
        for name in [*variable_names(cls.model_fields[field]), field]:
            value = given.get(name)
            if value is not None and value != "":
                return value
        return None

    @property
    def security_protocol(self) -> str:
        return infer_protocol(self.kafka_security_protocol, self.kafka_password is not None)

    def kafka_client(self, client_id: str) -> KafkaConnection:
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_user,
            password=self.kafka_password.get_secret_value() if self.kafka_password else None,
            ca_path=str(self.ca_path) if self.ca_path else None,
            client_id=client_id,
        )


class Settings(KafkaSettings):
    """The service's environment variables (see the README for each one's meaning)."""

    # Required.
    queue_id: str = Field(validation_alias="QUEUE_ID", min_length=1, max_length=249)
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(validation_alias="SYMBOL")
    type: Literal["ws_trade"] = Field(validation_alias="TYPE")
    kafka_topic: str = Field(validation_alias="KAFKA_TOPIC", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    telemetry_producer_id: str = Field(
        validation_alias="TELEMETRY_PRODUCER_ID", min_length=1, max_length=249
    )

    # Exchange.
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443/ws",
        validation_alias="BINANCE_WS_URL",
        pattern=r"^wss?://[^\s/?#]+(/[^\s?#]*)?$",
    )
    binance_rest_url: str = Field(
        "https://api.binance.com",
        validation_alias="BINANCE_REST_URL",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
    )

    # Run bounds and reporting.
    telemetry_interval_sec: Seconds = Field(5.0, validation_alias="TELEMETRY_INTERVAL_SEC")
    stop_after_records: int | None = Field(None, ge=1, validation_alias="STOP_AFTER_RECORDS")
    stop_after_seconds: Seconds | None = Field(None, validation_alias="STOP_AFTER_SECONDS")
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LOG_LEVEL"
    )
    log_format: Literal["json", "text"] = Field("json", validation_alias="LOG_FORMAT")
    metrics_port: int = Field(9108, ge=0, le=65535, validation_alias="METRICS_PORT")
    metrics_host: str = Field("0.0.0.0", validation_alias="METRICS_HOST", min_length=1)  # noqa: S104 - probes come from outside the pod

    # Tuning.
    kafka_linger_ms: int = Field(5, ge=0, le=10_000, validation_alias="KAFKA_LINGER_MS")
    kafka_max_batch_bytes: int = Field(
        256 * 1024, ge=1024, le=16 * 1024 * 1024, validation_alias="KAFKA_MAX_BATCH_BYTES"
    )
    kafka_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field(
        "none", validation_alias="KAFKA_COMPRESSION"
    )
    kafka_request_timeout_ms: int = Field(
        30_000, ge=1000, le=600_000, validation_alias="KAFKA_REQUEST_TIMEOUT_MS"
    )
    kafka_outage_timeout_sec: Seconds = Field(120.0, validation_alias="KAFKA_OUTAGE_TIMEOUT_SEC")
    max_in_flight_trades: int = Field(
        20_000, ge=1, le=10_000_000, validation_alias="MAX_IN_FLIGHT_TRADES"
    )
    drain_timeout_sec: Seconds = Field(20.0, validation_alias="DRAIN_TIMEOUT_SEC")
    ws_buffer_frames: int = Field(
        50_000, ge=100, le=10_000_000, validation_alias="WS_BUFFER_FRAMES"
    )
    ws_max_frame_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, validation_alias="WS_MAX_FRAME_BYTES"
    )
    ws_streams_per_connection: int = Field(
        200, ge=1, le=1024, validation_alias="WS_STREAMS_PER_CONNECTION"
    )
    ws_redundant_connections: Literal["auto", "on", "off"] = Field(
        "auto", validation_alias="WS_REDUNDANT_CONNECTIONS"
    )
    ws_open_timeout_sec: Seconds = Field(10.0, validation_alias="WS_OPEN_TIMEOUT_SEC")
    ws_rotate_after_sec: Seconds = Field(23 * 3600.0, validation_alias="WS_ROTATE_AFTER_SEC")
    reconnect_initial_delay_sec: Seconds = Field(
        0.5, validation_alias="RECONNECT_INITIAL_DELAY_SEC"
    )
    reconnect_max_delay_sec: Seconds = Field(30.0, validation_alias="RECONNECT_MAX_DELAY_SEC")
    reconnect_max_attempts_per_5min: int = Field(
        250, ge=1, le=300, validation_alias="RECONNECT_MAX_ATTEMPTS_PER_5MIN"
    )
    exchange_unavailable_timeout_sec: Seconds = Field(
        300.0, validation_alias="EXCHANGE_UNAVAILABLE_TIMEOUT_SEC"
    )
    silence_timeout_sec: Seconds = Field(60.0, validation_alias="SILENCE_TIMEOUT_SEC")
    backfill_max_trades: int = Field(
        100_000, ge=0, le=10_000_000, validation_alias="BACKFILL_MAX_TRADES"
    )
    backfill_max_age_sec: Seconds = Field(6 * 3600.0, validation_alias="BACKFILL_MAX_AGE_SEC")
    backfill_hold_trades: int = Field(
        50_000, ge=0, le=10_000_000, validation_alias="BACKFILL_HOLD_TRADES"
    )
    resume_window_sec: float = Field(6 * 3600.0, ge=0, validation_alias="RESUME_WINDOW_SEC")
    rest_weight_budget: int = Field(4800, ge=25, le=6000, validation_alias="REST_WEIGHT_BUDGET")

    @classmethod
    def _broken_rules(cls, given: Mapping[str, Any]) -> list[tuple[str, str]]:
        broken = super()._broken_rules(given)
        fields = cls.model_fields
        initial = cls._given(given, "reconnect_initial_delay_sec")
        cap = cls._given(given, "reconnect_max_delay_sec")
        if initial is None:
            initial = fields["reconnect_initial_delay_sec"].default
        if cap is None:
            cap = fields["reconnect_max_delay_sec"].default
        try:
            if float(initial) > float(cap):
                broken.append(
                    ("RECONNECT_INITIAL_DELAY_SEC", "must not exceed RECONNECT_MAX_DELAY_SEC")
                )
        except (TypeError, ValueError):
            pass  # not a number: told by the variable's own check
        return broken

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = [name.strip().upper() for name in value.split(",")]
        problems = []
        for name in names:
            if not SYMBOL_PATTERN.fullmatch(name):
                problems.append(f"{name!r} is not a symbol name (2-30 letters and digits)")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            problems.append(f"listed more than once: {', '.join(duplicates)}")
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(names)

    @field_validator("type", mode="before")
    @classmethod
    def _accept_plural_type(cls, value: Any) -> Any:
        return "ws_trade" if value == "ws_trades" else value

    def in_effect(self) -> dict[str, Any]:
        """Every variable's value as this run uses it (defaults included), secrets masked."""
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            values[variable_names(type(self).model_fields[name])[0]] = value
        return values

    # What each layer gets.

    def loader_config(self) -> LoaderConfig:
        return LoaderConfig(
            queue_id=self.queue_id,
            symbols=self.symbols,
            data_type=self.type,
            producer_id=self.telemetry_producer_id,
            telemetry_interval=self.telemetry_interval_sec,
            stop_after_records=self.stop_after_records,
            stop_after_seconds=self.stop_after_seconds,
            drain_timeout=self.drain_timeout_sec,
            backfill_max_trades=self.backfill_max_trades,
            backfill_max_age=self.backfill_max_age_sec,
            resume_window=self.resume_window_sec,
            silence_timeout=self.silence_timeout_sec,
            backfill_hold_trades=self.backfill_hold_trades,
        )

    def kafka_connection(self) -> KafkaConnection:
        return self.kafka_client(f"loader-ws-trades-{self.telemetry_producer_id}")

    def producer_tuning(self) -> ProducerTuning:
        return ProducerTuning(
            linger_ms=self.kafka_linger_ms,
            max_batch_bytes=self.kafka_max_batch_bytes,
            compression=None if self.kafka_compression == "none" else self.kafka_compression,
            request_timeout_ms=self.kafka_request_timeout_ms,
            max_in_flight_trades=self.max_in_flight_trades,
            outage_timeout=self.kafka_outage_timeout_sec,
            connect_timeout=self.kafka_connect_timeout_sec,
        )

    def feed_tuning(self) -> FeedTuning:
        return FeedTuning(
            buffer_frames=self.ws_buffer_frames,
            max_frame_bytes=self.ws_max_frame_bytes,
            open_timeout=self.ws_open_timeout_sec,
            backoff=Backoff(
                initial=self.reconnect_initial_delay_sec, cap=self.reconnect_max_delay_sec
            ),
            attempts_limit=self.reconnect_max_attempts_per_5min,
            unavailable_timeout=self.exchange_unavailable_timeout_sec,
            rotate_after=self.ws_rotate_after_sec,
            streams_per_connection=self.ws_streams_per_connection,
            redundant=self.redundant_connections(),
        )

    def redundant_connections(self) -> bool:
        """Whether each shard keeps two connections: with ``auto``, when more symbols are
        loaded than the REST budget can fetch history for in a minute, since one drop of a
        single connection would leave nearly every one of them with a gap."""
        if self.ws_redundant_connections == "auto":
            return len(self.symbols) > self.rest_weight_budget // HISTORY_WEIGHT
        return self.ws_redundant_connections == "on"

    def rest_tuning(self) -> RestTuning:
        return RestTuning(
            unavailable_timeout=min(self.exchange_unavailable_timeout_sec, 120.0),
            weight_budget=self.rest_weight_budget,
        )


class SettingsError(Exception):
    """Configuration is invalid; ``problems`` names every bad or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "Invalid configuration:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


def variable_names(info: FieldInfo) -> tuple[str, ...]:
    """The environment variables a field is read from, the preferred one first."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (str(alias),)


_FIELD_VARIABLES: Final = {
    name: "/".join(variable_names(info)) for name, info in Settings.model_fields.items()
}


@overload
def load_settings() -> Settings: ...
@overload
def load_settings(kind: type[_S]) -> _S: ...
def load_settings(kind: type[KafkaSettings] = Settings) -> KafkaSettings:
    """Settings from the process environment, or ``SettingsError`` naming every problem."""
    try:
        return kind()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def infer_protocol(explicit: str | None, has_password: bool) -> str:
    """The security protocol: as set, else SASL_SSL when a password is given, else PLAINTEXT."""
    if explicit is not None:
        return explicit
    return "SASL_SSL" if has_password else "PLAINTEXT"


def _with_rules(
    title: str, error: ValidationError | None, broken: list[tuple[str, str]]
) -> ValidationError:
    """``error``'s problems and the broken rules between variables, as one error."""
    details: list[InitErrorDetails] = []
    for item in error.errors(include_url=False) if error is not None else []:
        detail = InitErrorDetails(type=item["type"], loc=item["loc"], input=item["input"])
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
        details.append(detail)
    for variable, problem in broken:
        rule = PydanticCustomError("rule_between_variables", "{problem}", {"problem": problem})
        details.append(InitErrorDetails(type=rule, loc=(variable,), input=None))
    return ValidationError.from_exception_data(title, details)


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        location = item["loc"][0] if item["loc"] else None
        variable = _FIELD_VARIABLES.get(str(location), str(location)) if location else None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required but not set"
        problems.append(f"{variable}: {message}" if variable else message)
    return problems


def variables_help() -> str:
    """The environment variables with their defaults, for ``--help``."""
    lines = ["environment variables (required ones first):"]
    fields = sorted(Settings.model_fields.items(), key=lambda item: not item[1].is_required())
    for name, info in fields:
        variable = _FIELD_VARIABLES[name]
        if info.is_required():
            default = "required"
        elif info.default is None:
            default = "unset"
        else:
            default = f"default {info.default}"
        lines.append(f"  {variable:<34} {default}")
    return "\n".join(lines)
