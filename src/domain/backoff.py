"""Reconnect pacing: jittered exponential backoff and a cap on attempts per time window."""

from __future__ import annotations

import math
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
    """At most ``limit`` attempts in any ``window`` seconds: the exchange bans clients beyond it.

    Within that, attempts are paced: a ``burst`` may go at once (every connection shard lost
    at the same moment), then no faster than ``limit`` per ``window`` on average. Many
    connections failing together then cannot spend the whole window in a minute, and leave
    room for the process that replaces this one (the exchange counts per address, not per
    process).
    """

    __slots__ = ("_attempts", "_last", "_tokens", "burst", "limit", "window")

    def __init__(self, limit: int, window: float, burst: int = 10) -> None:
        if limit < 1 or window <= 0 or burst < 1:
            raise ValueError("limit and burst must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.burst = min(burst, limit)
        self._attempts: deque[float] = deque()
        self._tokens = float(self.burst)
        self._last = -math.inf

    def wait_before_next(self, now: float) -> float:
        """Seconds to wait from ``now`` before another attempt stays within the limit."""
        self._forget(now)
        tokens = self._refilled(now)
        wait = 0.0 if tokens >= 1 else (1 - tokens) * self.window / self.limit
        if len(self._attempts) >= self.limit:
            wait = max(wait, self._attempts[0] + self.window - now)
        # Never zero while short: float rounding must not let one more attempt in.
        return max(wait, 0.001) if wait > 0 else 0.0

    def record(self, now: float) -> None:
        self._forget(now)
        self._tokens = self._refilled(now) - 1
        self._last = now
        self._attempts.append(now)

    def _refilled(self, now: float) -> float:
        if self._last == -math.inf:
            return self._tokens
        return min(self.burst, self._tokens + (now - self._last) * self.limit / self.window)

    def _forget(self, now: float) -> None:
        while self._attempts and self._attempts[0] + self.window <= now:
            self._attempts.popleft()
