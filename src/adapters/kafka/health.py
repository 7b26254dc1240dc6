"""What the Kafka adapters know of the broker right now, shared between them."""

from __future__ import annotations


class BrokerHealth:
    """Whether the broker answers: set by whoever last heard from it (or waited for it in vain).

    The producer's start, the trade publisher's acknowledgements and the telemetry events
    write it; the event publisher's time-outs, the producer's stop and readiness read it.
    """

    __slots__ = ("reachable",)

    def __init__(self) -> None:
        self.reachable = False
