"""The ``loader-ws-trades`` command: it takes signals from its first moment, then starts.

Importing the service takes a noticeable part of a second; a SIGTERM meanwhile (a pod deleted
as it starts) would otherwise kill the process with no event and no log line.
"""

from __future__ import annotations

import signal
from types import FrameType


class EarlySignals:
    """SIGTERM and SIGINT received before the event loop takes them over."""

    HANDLED = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: list[str] = []

    def install(self) -> EarlySignals:
        for signum in self.HANDLED:
            signal.signal(signum, self._note)
        return self

    def uninstall(self) -> None:
        """Give the signals their default meaning back (the operator's commands)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def first(self) -> str | None:
        return self.received[0] if self.received else None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)


def main() -> int:
    early = EarlySignals().install()
    # The service is imported only now that a signal can no longer kill the process unseen.
    from entrypoints.cli import main as run

    return run(early=early)
