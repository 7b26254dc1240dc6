"""The control topic: every command retained, then live ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from loguru import logger

from adapters.kafka.codec import (
    decode_command,
)
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.reader import read_from_start
from application.ports import (
    ControlChannel,
)
from domain.errors import (
    BrokerUnavailableError,
)
from domain.messages import ControlCommand


class KafkaControlChannel(ControlChannel):
    """Reads every partition of the control topic from the start, without a consumer group."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        timeout: float,
        poll_interval: float = 2.0,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._caught_up = asyncio.Event()

    async def commands(self) -> AsyncGenerator[ControlCommand, None]:
        records = read_from_start(
            self._connection, self._topic, self._timeout, self._poll_interval, self._caught_up
        )
        async for record in records:
            command = decode_command(record.value)
            if isinstance(command, str):
                logger.warning(
                    "Ignoring malformed control message at {tp}@{offset}: {reason}",
                    tp=f"{record.topic}/{record.partition}",
                    offset=record.offset,
                    reason=command,
                )
                continue
            yield command

    async def caught_up(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._caught_up.wait()
        except TimeoutError:
            raise BrokerUnavailableError(
                f"the commands retained in {self._topic} could not be read within "
                f"{self._timeout:g} s at {self._connection.who}"
            ) from None
