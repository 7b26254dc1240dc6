"""Reconnect pacing: jittered exponential backoff and a cap on attempts per time window."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n`` (1-based): ``initial * factor**(n-1)``, capped, then jittered.

    With ``jitter`` j the delay is drawn from ``[d * (1 - j), d]`` so that many clients that
    lost the same server do not come back in step.
    """

    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap) or self.factor < 1 or not (0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff {self}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before ``attempt``."""
        if attempt <= 1:
            return self.initial
        # Stop multiplying once the cap is reached: factor**n overflows for large n.
        delay = self.initial
        for _ in range(attempt - 1):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return delay

    def delay(self, attempt: int, rand: float) -> float:
        """The delay before ``attempt`` for a uniform random draw ``rand`` in [0, 1)."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter * rand)


class AttemptWindow:
    """At most ``limit`` attempts in any ``window`` seconds: the exchange bans clients beyond it."""

    __slots__ = ("_attempts", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._attempts: deque[float] = deque()

    def wait_before_next(self, now: float) -> float:
        """Seconds to wait from ``now`` before another attempt stays within the limit."""
        self._forget(now)
        if len(self._attempts) < self.limit:
            return 0.0
        # Never zero while full: float rounding must not let one more attempt in.
        return max(self._attempts[0] + self.window - now, 0.001)

    def record(self, now: float) -> None:
        self._forget(now)
        self._attempts.append(now)

    def _forget(self, now: float) -> None:
        while self._attempts and self._attempts[0] + self.window <= now:
            self._attempts.popleft()
