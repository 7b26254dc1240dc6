"""The loader's messages other services read or send: telemetry events and control commands."""

from __future__ import annotations

from dataclasses import dataclass

from domain.state import Status


@dataclass(frozen=True, slots=True)
class TelemetryEvent:
    """One event on the telemetry topic; exactly these nine fields."""

    queue_id: str
    symbol: str
    type: str
    status: Status
    message: str
    records_written: int
    finished: bool
    producer: str
    timestamp: float
    """Epoch seconds."""


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """A command read from the control topic."""

    command: str
    queue_id: str

    def is_stop_for(self, queue_id: str) -> bool:
        return self.command == "stop" and self.queue_id == queue_id
