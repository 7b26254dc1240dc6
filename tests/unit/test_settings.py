"""Configuration: every variable validated at once, aliases honoured, secrets never shown."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import AliasChoices, ValidationError

from adapters.binance.feed import FeedTuning
from adapters.binance.rest import RestTuning
from adapters.kafka.producer import ProducerTuning
from application.config import LoaderConfig
from entrypoints.cli import main
from entrypoints.settings import Settings, SettingsError, load_settings
from testkit.settings import settings

REQUIRED = {
    "QUEUE_ID": "wf-ws-trades-20240801-a1b2c3",
    "SYMBOL": "BTCUSDT",
    "TYPE": "ws_trade",
    "KAFKA_TOPIC": "wf-ws-trades-20240801-a1b2c3-data",
    "TELEMETRY_PRODUCER_ID": "loader-ws-trades__a1b2c3",
}
PING_AND_CLOSE: Final = {"ping_interval", "ping_timeout", "close_timeout"}
SECRET = "s3cr3t-Pa55w0rd-never-shown"  # noqa: S105 - a test value to search the output for


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.isupper() and not name.startswith(("PATH", "HOME", "PYTHON", "LANG", "LC_")):
            monkeypatch.delenv(name, raising=False)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_defaults_follow_the_contract(env: pytest.MonkeyPatch) -> None:
    sut = load_settings()
    assert sut.kafka_bootstrap_servers == "localhost:9092"
    assert sut.queue_control_topic == "queue-control"
    assert sut.queue_events_topic == "queue-events"
    assert sut.binance_ws_url == "wss://stream.binance.com:9443/ws"
    assert sut.binance_rest_url == "https://api.binance.com"
    assert sut.security_protocol == "PLAINTEXT"
    assert sut.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert sut.telemetry_interval_sec == 5
    assert sut.stop_after_records is None
    assert sut.stop_after_seconds is None
    assert (sut.log_level, sut.log_format, sut.metrics_port) == ("INFO", "json", 9108)


def test_symbols_are_a_comma_separated_list_in_upper_case(env: pytest.MonkeyPatch) -> None:
    env.setenv("SYMBOL", "btcusdt,EthUsdt")
    assert load_settings().symbols == ("BTCUSDT", "ETHUSDT")


@pytest.mark.parametrize(
    ("count", "variables", "redundant"),
    [
        (192, {}, False),
        (193, {}, True),
        (41, {"REST_WEIGHT_BUDGET": "1000"}, True),
        (1000, {"WS_REDUNDANT_CONNECTIONS": "off"}, False),
        (1, {"WS_REDUNDANT_CONNECTIONS": "on"}, True),
    ],
)
def test_redundant_connections_by_default_above_what_the_rest_budget_can_refill(
    count: int, variables: dict[str, str], redundant: bool
) -> None:
    symbols = ",".join(f"S{n:04d}USDT" for n in range(count))
    sut = settings(SYMBOL=symbols, **variables)
    assert sut.feed_tuning().redundant is redundant


def test_plural_type_is_the_same(env: pytest.MonkeyPatch) -> None:
    env.setenv("TYPE", "ws_trades")
    assert load_settings().type == "ws_trade"


@pytest.mark.parametrize(
    ("user_var", "password_var"),
    [("KAFKA_USER_PRODUCER", "KAFKA_PASSWORD_PRODUCER"), ("KAFKA_USER", "KAFKA_PASSWORD")],
)
def test_credentials_by_either_name_mean_sasl_ssl(
    env: pytest.MonkeyPatch, user_var: str, password_var: str
) -> None:
    env.setenv(user_var, "producer")
    env.setenv(password_var, SECRET)
    sut = load_settings()
    assert sut.security_protocol == "SASL_SSL"
    connection = sut.kafka_connection()
    assert connection.username == "producer"
    assert connection.password == SECRET
    assert SECRET not in repr(sut)
    assert SECRET not in str(sut)
    assert SECRET not in repr(connection)


def test_every_problem_is_named_at_once(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("QUEUE_ID")
    env.delenv("KAFKA_TOPIC")
    env.setenv("TYPE", "rest_klines")
    env.setenv("SYMBOL", "BTC USDT,ETHUSDT,ethusdt")
    env.setenv("METRICS_PORT", "70000")
    env.setenv("TELEMETRY_INTERVAL_SEC", "-1")
    env.setenv("STOP_AFTER_RECORDS", "many")
    env.setenv("CA_PATH", str(tmp_path / "missing.crt"))
    env.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    env.setenv("KAFKA_USER_PRODUCER", "producer")
    env.setenv("KAFKA_PASSWORD_PRODUCER", SECRET)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value)
    for variable in (
        "QUEUE_ID",
        "KAFKA_TOPIC",
        "TYPE",
        "SYMBOL",
        "METRICS_PORT",
        "TELEMETRY_INTERVAL_SEC",
        "STOP_AFTER_RECORDS",
        "CA_PATH",
        "KAFKA_SECURITY_PROTOCOL",
    ):
        assert f"{variable}:" in text, variable
    assert "listed more than once: ETHUSDT" in text
    assert SECRET not in text


def test_a_ca_that_is_not_a_certificate_is_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.crt"
    bogus.write_text("hello")
    env.setenv("CA_PATH", str(bogus))
    with pytest.raises(SettingsError, match="not a PEM certificate"):
        load_settings()


def test_sasl_without_credentials_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="needs KAFKA_USER_PRODUCER"):
        load_settings()


def test_half_credentials_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_PASSWORD", SECRET)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "KAFKA_USER_PRODUCER: is required" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_sasl_plaintext_is_allowed_when_chosen_explicitly(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    env.setenv("KAFKA_USER", "producer")
    env.setenv("KAFKA_PASSWORD", SECRET)
    assert load_settings().security_protocol == "SASL_PLAINTEXT"


def test_the_command_exits_2_with_one_readable_message_and_no_traceback(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.delenv("SYMBOL")
    env.setenv("KAFKA_PASSWORD_PRODUCER", SECRET)
    assert main(["run"]) == 2
    captured = capsys.readouterr()
    assert "SYMBOL: is required but not set" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert SECRET not in captured.err + captured.out


def test_help_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for variable in (*REQUIRED, "KAFKA_BOOTSTRAP_SERVERS", "CA_PATH", "METRICS_PORT", "LOG_FORMAT"):
        assert variable in out


def test_the_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [alias]
        for name in names:
            assert f"`{name}`" in readme, f"{name} is missing from the README"


def test_the_readme_states_each_default() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    checked = 0
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        name = alias.choices[0] if isinstance(alias, AliasChoices) else alias
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}`")]
        if info.is_required() or not rows:
            continue
        stated = rows[0].split("|")[2].strip()
        if info.default is None:
            assert stated == "unset" or "else" in stated, f"{name}: {stated}"
        elif isinstance(info.default, int | float) and not isinstance(info.default, bool):
            assert float(stated.strip("`")) == info.default, f"{name}: {stated}"
        else:
            assert stated == f"`{info.default}`", f"{name}: {stated}"
        checked += 1
    assert checked >= 30


def test_the_settings_in_effect_name_every_variable_and_mask_the_password(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("KAFKA_USER", "producer")
    env.setenv("KAFKA_PASSWORD", SECRET)
    env.setenv("SYMBOL", "btcusdt,ETHUSDT")
    sut = load_settings().in_effect()
    assert sut["KAFKA_PASSWORD_PRODUCER"] == "**********"  # noqa: S105 - the mask itself
    assert SECRET not in str(sut)
    assert sut["KAFKA_USER_PRODUCER"] == "producer"
    assert sut["SYMBOL"] == "BTCUSDT,ETHUSDT"
    assert sut["KAFKA_LINGER_MS"] == 5
    assert sut["WS_BUFFER_FRAMES"] == 50_000
    assert len(sut) == len(Settings.model_fields)


@pytest.mark.parametrize(
    ("tuning", "not_configurable"),
    [
        (ProducerTuning, set()),
        (
            FeedTuning,
            {
                "batch_size",
                "attempts_window",
                "stable_after",
                "pause_limit",
                "rotation_stagger",
                "arbitration",
                "cover_margin",
            }
            | PING_AND_CLOSE,
        ),
        (RestTuning, {"request_timeout", "max_retry_wait"}),
        (LoaderConfig, {"backfill_page_size"}),
    ],
)
def test_only_the_settings_hold_defaults_of_what_is_configurable(
    tuning: type[Any], not_configurable: set[str]
) -> None:
    with_defaults = {
        item.name
        for item in dataclasses.fields(tuning)
        if item.default is not dataclasses.MISSING
        or item.default_factory is not dataclasses.MISSING
    }
    assert with_defaults == not_configurable


def test_the_rules_between_variables_know_every_name_of_a_variable() -> None:
    sut = settings(KAFKA_USER="producer", KAFKA_PASSWORD=SECRET, KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    assert sut.security_protocol == "SASL_SSL"
    assert sut.kafka_user == "producer"
    with pytest.raises(ValidationError, match="must not exceed RECONNECT_MAX_DELAY_SEC"):
        settings(RECONNECT_INITIAL_DELAY_SEC=0, RECONNECT_MAX_DELAY_SEC=-1)
    with pytest.raises(ValidationError, match="must not exceed RECONNECT_MAX_DELAY_SEC"):
        settings(RECONNECT_INITIAL_DELAY_SEC=40)


def test_the_test_kit_refuses_a_variable_the_loader_does_not_know() -> None:
    with pytest.raises(ValidationError, match="KAFKA_LINGER"):
        settings(KAFKA_LINGER=50)
