"""The telemetry topic: each event sent and awaited with a bound."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka import errors as kafka_errors

from adapters.kafka.codec import (
    encode_event,
)
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error
from adapters.kafka.health import BrokerHealth
from application.ports import (
    EventPublisher,
)
from domain.errors import (
    BrokerUnavailableError,
)
from domain.messages import TelemetryEvent


class EventProducer(Protocol):
    """What the event publisher uses of ``AIOKafkaProducer``."""

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes) -> Any:
        """Send one record and wait for the broker's answer."""
        ...


class KafkaEventPublisher(EventPublisher):
    """Sends telemetry events keyed by the queue id, each awaited with a bound."""

    def __init__(
        self,
        producer: EventProducer,
        topic: str,
        connection: KafkaConnection,
        timeout: float,
        health: BrokerHealth,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._connection = connection
        self._timeout = timeout
        self._health = health
        self._unacknowledged = False

    async def publish(self, event: TelemetryEvent, timeout: float | None = None) -> None:
        # Once the broker is known to be away, the event (the terminal one, as the run ends)
        # gets a short bound: the run must not wait out the outage bound a second time.
        known_down = self._unacknowledged or not self._health.reachable
        limit = min(self._timeout, 3.0) if known_down else self._timeout
        if timeout is not None:
            limit = min(limit, timeout)
        try:
            async with asyncio.timeout(limit):
                await self._producer.send_and_wait(
                    self._topic, encode_event(event), key=event.queue_id.encode()
                )
            self._unacknowledged = False
        except TimeoutError:
            self._unacknowledged = True
            self._health.reachable = False
            raise BrokerUnavailableError(
                f"Kafka did not acknowledge a telemetry event within {limit:g} s "
                f"at {self._connection.who}"
            ) from None
        except kafka_errors.KafkaError as error:
            raise classify_kafka_error(error, self._connection) from None
