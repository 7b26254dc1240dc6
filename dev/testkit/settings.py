"""The loader's settings as a given environment makes them, with nothing read from the process's.

Tests, the simulation and the benchmark take their tuning objects from here, so that every
default they run with is the one ``entrypoints.settings`` documents and the Job uses.
"""

from __future__ import annotations

import builtins
from typing import Any, Final

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from entrypoints.settings import Settings

REQUIRED: Final = {
    "QUEUE_ID": "wf-ws-trades-test",
    "SYMBOL": "BTCUSDT",
    "TYPE": "ws_trade",
    "KAFKA_TOPIC": "wf-ws-trades-test-data",
    "TELEMETRY_PRODUCER_ID": "loader-ws-trades__test",
}
"""Values for the variables that have no default."""


class _Given(Settings):
    """``Settings`` read from keyword arguments named as the variables, and nothing else; a
    name that is no variable is refused, so that a misspelt one cannot pass unnoticed."""

    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: builtins.type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings(**variables: Any) -> Settings:
    """The settings of an environment holding ``variables`` (and ``REQUIRED`` where not given)."""
    given: dict[str, Any] = {**REQUIRED, **variables}
    return _Given(**given)
