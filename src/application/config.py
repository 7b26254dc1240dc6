"""What one run loads and how it behaves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    """What one run loads and how it behaves; built from the settings by the entrypoint, which
    hold the defaults of every field but ``backfill_page_size`` (Binance's largest page)."""

    queue_id: str
    symbols: tuple[str, ...]
    data_type: str
    producer_id: str
    telemetry_interval: float
    stop_after_records: int | None
    stop_after_seconds: float | None
    drain_timeout: float
    backfill_max_trades: int
    backfill_max_age: float
    resume_window: float
    silence_timeout: float
    backfill_hold_trades: int
    backfill_page_size: int = 1000
