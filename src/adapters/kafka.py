"""Kafka adapters on aiokafka: trade and event publishers, the control channel, the topic tail."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from loguru import logger

from adapters.kafka_codec import (
    decode_command,
    decode_event,
    decode_trade_position,
    encode_command,
    encode_event,
    encode_trade,
)
from adapters.metrics import RunStats
from application.ports import (
    Clock,
    ControlChannel,
    EventPublisher,
    LastPublished,
    TopicTail,
    TradePublisher,
)
from domain.errors import (
    BrokerAuthenticationError,
    BrokerAuthorizationError,
    BrokerTlsError,
    BrokerUnavailableError,
    LoaderError,
)
from domain.messages import ControlCommand, TelemetryEvent
from domain.sequence import Gap
from domain.trade import Trade


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """How to reach and authenticate to the brokers; ``password`` is never logged."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    ca_path: str | None = None
    client_id: str = "loader-ws-trades"

    def __repr__(self) -> str:
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, sasl_mechanism="
            f"{self.sasl_mechanism!r}, username={self.username!r}, password='**********', "
            f"ca_path={self.ca_path!r})"
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options

    def ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = create_ssl_context(cafile=self.ca_path)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def who(self) -> str:
        user = f" as {self.username!r}" if self.username else ""
        return f"{self.bootstrap_servers} ({self.security_protocol}{user})"


@dataclass(frozen=True, slots=True)
class ProducerTuning:
    """Producer settings users tune; acks=all and idempotence are not among them."""

    linger_ms: int = 5
    max_batch_bytes: int = 1024 * 1024
    compression: str | None = None
    request_timeout_ms: int = 30_000
    max_in_flight_trades: int = 100_000
    outage_timeout: float = 120.0
    connect_timeout: float = 60.0


def classify_kafka_error(error: BaseException, connection: KafkaConnection) -> LoaderError:
    """The operator-facing failure behind an aiokafka or socket error."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for cause in chain:
        if isinstance(
            cause,
            kafka_errors.SaslAuthenticationFailed
            | kafka_errors.AuthenticationFailedError
            | kafka_errors.IllegalSaslStateError
            | kafka_errors.UnsupportedSaslMechanismError
            | kafka_errors.AuthenticationMethodNotSupported,
        ):
            return BrokerAuthenticationError(
                f"Kafka authentication failed at {connection.who}: {_describe(cause)}"
            )
        if isinstance(
            cause,
            kafka_errors.TopicAuthorizationFailedError
            | kafka_errors.ClusterAuthorizationFailedError
            | kafka_errors.GroupAuthorizationFailedError
            | kafka_errors.TransactionalIdAuthorizationFailed,
        ):
            hint = ""
            if isinstance(cause, kafka_errors.ClusterAuthorizationFailedError):
                hint = (
                    " (an idempotent producer needs IdempotentWrite on the cluster "
                    "or Write on its topics)"
                )
            return BrokerAuthorizationError(
                f"Kafka authorisation refused at {connection.who}: {_describe(cause)}{hint}"
            )
        if isinstance(cause, ssl.SSLCertVerificationError):
            # ssl.CertificateError raised by name-checking code carries no verify_message.
            reason = getattr(cause, "verify_message", None) or cause
            return BrokerTlsError(
                f"the Kafka broker's TLS certificate was not trusted at {connection.who}: "
                f"{reason} (check CA_PATH and the broker address)"
            )
        if isinstance(cause, ssl.SSLError):
            return BrokerTlsError(f"TLS with the Kafka broker failed at {connection.who}: {cause}")
    if isinstance(error, LoaderError):
        return error
    return BrokerUnavailableError(
        f"Kafka broker unreachable at {connection.who}: {_describe(error)}"
    )


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    if not text:
        return name
    # aiokafka's messages already begin with the error's name ("[Error 58] Sasl...").
    return text if name in text.split(":", 1)[0] else f"{name}: {text}"


async def diagnose(connection: KafkaConnection, timeout: float = 10.0) -> LoaderError | None:
    """Connect to each bootstrap server directly to learn why bootstrapping failed.

    aiokafka reports only "Unable to bootstrap"; a direct connection surfaces the TLS or SASL
    error an operator can act on.
    """
    options = connection.options()
    failure: LoaderError | None = None
    for server in options.pop("bootstrap_servers"):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host or "localhost",
                    int(port),
                    request_timeout_ms=int(timeout * 1000),
                    **options,
                ),
                timeout,
            )
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            failure = classify_kafka_error(error, connection)
            if not isinstance(failure, BrokerUnavailableError):
                return failure
        else:
            conn.close()
            return None
    return failure


async def start_producer(
    connection: KafkaConnection, tuning: ProducerTuning, stats: RunStats
) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer, started within ``tuning.connect_timeout``."""
    deadline = time.monotonic() + tuning.connect_timeout
    delay = 0.5
    while True:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=tuning.linger_ms,
            max_batch_size=tuning.max_batch_bytes,
            max_request_size=max(tuning.max_batch_bytes, 1024 * 1024),
            compression_type=tuning.compression,
            request_timeout_ms=tuning.request_timeout_ms,
            **connection.options(),
        )
        try:
            await asyncio.wait_for(producer.start(), max(1.0, deadline - time.monotonic()))
        except asyncio.CancelledError:
            await _stop_quietly(producer)  # a stop during start-up
            raise
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            await _stop_quietly(producer)
            failure = await diagnose(connection) or classify_kafka_error(error, connection)
            if not isinstance(failure, BrokerUnavailableError) or time.monotonic() >= deadline:
                raise failure from None
            logger.warning(
                "Kafka not reachable yet at {who}: {error}; retrying",
                who=connection.who,
                error=str(failure),
            )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
            continue
        stats.broker_reachable = True
        logger.info("Connected to Kafka at {who}", who=connection.who)
        return producer


async def stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop the producer; its own ``stop()`` can wait forever on an unreachable broker."""
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except TimeoutError:
        logger.error(
            "Kafka producer did not stop within {timeout:g} s; abandoning it", timeout=timeout
        )
    except kafka_errors.KafkaError as error:
        logger.warning("Kafka producer stopped with an error: {error}", error=str(error))


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    """The partitions of ``topic`` as the broker sees them now, or None if it does not exist.

    Raises ``TopicAuthorizationFailedError`` when the user may not see the topic at all.
    """
    # consumer.topics() fetches fresh metadata but does not store it, so partitions_for_topic()
    # would go on answering from a cache that never learns of the topic; and a full listing
    # hides the topics the user may not describe, which must be told apart from missing ones.
    cluster = ClusterMetadata()
    client = consumer._client  # no public call asks for one topic's metadata
    if not await client._metadata_update(cluster, [topic]):
        raise kafka_errors.KafkaConnectionError(f"no metadata for {topic}")
    if topic in cluster.unauthorized_topics:
        raise kafka_errors.TopicAuthorizationFailedError(topic)
    partitions: set[int] | None = cluster.partitions_for_topic(topic)
    return partitions


async def _stop_quietly(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.stop(), 5.0)


class BatchProducer(Protocol):
    """What the trade publisher uses of ``AIOKafkaProducer``."""

    async def partitions_for(self, topic: str) -> set[int]:
        """The topic's partitions (creating the topic where the broker does that)."""
        ...

    def create_batch(self) -> BatchBuilder:
        """An empty record batch."""
        ...

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        """Queue a closed batch; the future completes with the broker's answer."""
        ...


class _OpenBatch:
    """A record batch of one symbol being filled, and when each of its trades arrived."""

    __slots__ = ("builder", "first_id", "last_id", "received", "sealed", "symbol")

    def __init__(self, builder: BatchBuilder, symbol: str) -> None:
        self.builder = builder
        self.symbol = symbol
        self.received: list[float] = []
        self.sealed = False
        self.first_id = -1
        self.last_id = -1

    @property
    def trades(self) -> Gap:
        return Gap(self.symbol, self.first_id, self.last_id)


class KafkaTradePublisher(TradePublisher):
    """Publishes trades keyed by symbol, building record batches itself, many in flight.

    Appending to a batch costs a fraction of a per-message ``send()``. A batch is sealed when
    full or ``linger_ms`` after its first trade, then shipped by one task in sealing order, so
    each symbol's trades reach its partition in order; the idempotent producer keeps them free
    of duplicates across retries. Acknowledgements are counted per batch.
    """

    def __init__(
        self,
        producer: BatchProducer,
        topic: str,
        connection: KafkaConnection,
        tuning: ProducerTuning,
        stats: RunStats,
        clock: Clock,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._connection = connection
        self._tuning = tuning
        self._stats = stats
        self._clock = clock
        self._linger = tuning.linger_ms / 1000
        self._partitions: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}
        self._open: dict[str, _OpenBatch] = {}
        self._sealed: deque[_OpenBatch] = deque()
        self._has_sealed = asyncio.Event()
        self._shipper: asyncio.Task[None] | None = None
        self._pending = 0
        self._acked = 0
        self._failure: LoaderError | None = None
        self._unwritten: list[Gap] = []
        self._last_progress = clock.monotonic()
        self._window_open = asyncio.Event()
        self._window_open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Trades handed to the producer and not yet acknowledged or failed."""
        return self._pending

    async def start(self, symbols: Sequence[str]) -> None:
        """Look up the topic's partitions: fails early on a missing permission."""
        try:
            partitions = await asyncio.wait_for(
                self._producer.partitions_for(self._topic), self._tuning.connect_timeout
            )
        except (kafka_errors.KafkaError, TimeoutError) as error:
            raise classify_kafka_error(error, self._connection) from None
        ordered = sorted(partitions)
        for symbol in symbols:
            self._keys[symbol] = symbol.encode()
            # The key decides the partition as in every Kafka client; computed once per symbol.
            self._partitions[symbol] = partition_for(symbol, ordered)
        if self._shipper is None:
            self._shipper = asyncio.create_task(self._ship_forever(), name="kafka-shipper")

    async def publish(self, trade: Trade, received_at: float) -> None:
        if self._failure is not None:
            raise self._failure
        if self._pending:
            self._check_outage()
            if self._pending >= self._tuning.max_in_flight_trades:
                await self._wait(self._window_open, "in-flight window to free up")
        symbol = trade.symbol
        batch = self._open.get(symbol)
        if batch is None:
            if symbol not in self._partitions:
                await self.start([symbol])
            batch = self._start(symbol)
        value = encode_trade(trade)
        if batch.builder.append(timestamp=None, key=self._keys[symbol], value=value) is None:
            self._seal(batch)
            batch = self._start(symbol)
            if batch.builder.append(timestamp=None, key=self._keys[symbol], value=value) is None:
                raise BrokerUnavailableError(f"a trade message of {len(value)} bytes fits no batch")
        if not batch.received:
            batch.first_id = trade.trade_id
        batch.last_id = trade.trade_id
        batch.received.append(received_at)
        if self._pending == 0:
            self._last_progress = self._clock.monotonic()
            self._idle.clear()
        self._pending += 1
        if self._pending >= self._tuning.max_in_flight_trades:
            self._window_open.clear()

    def _start(self, symbol: str) -> _OpenBatch:
        batch = _OpenBatch(self._producer.create_batch(), symbol)
        self._open[symbol] = batch
        asyncio.get_running_loop().call_later(self._linger, self._seal, batch)
        return batch

    def _seal(self, batch: _OpenBatch) -> None:
        if batch.sealed:
            return
        batch.sealed = True
        if self._open.get(batch.symbol) is batch:
            del self._open[batch.symbol]
        if batch.received:
            # Closed, the accumulator sends it as soon as the partition is free.
            batch.builder.close()
            self._sealed.append(batch)
            self._has_sealed.set()

    async def _ship_forever(self) -> None:
        try:
            # After a failure nothing more is sent: a later batch landing would leave a hole.
            while self._failure is None:
                while not self._sealed:
                    self._has_sealed.clear()
                    await self._has_sealed.wait()
                batch = self._sealed.popleft()
                future = await self._send(batch)
                future.add_done_callback(partial(self._on_done, batch))
        except LoaderError as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001 - a bug in the client must end the run, not hang it
            logger.opt(exception=error).error("The Kafka client failed unexpectedly")
            self._fail(BrokerUnavailableError(f"the Kafka client failed unexpectedly: {error!r}"))

    async def _send(self, batch: _OpenBatch) -> asyncio.Future[Any]:
        partition = self._partitions[batch.symbol]
        while True:
            try:
                future: asyncio.Future[Any] = await self._producer.send_batch(
                    batch.builder, self._topic, partition=partition
                )
            except kafka_errors.KafkaTimeoutError:
                # Nothing was queued: the broker is slow or away. Retrying keeps the order.
                self._check_outage()
            except kafka_errors.KafkaError as error:
                raise classify_kafka_error(error, self._connection) from None
            else:
                return future

    def _on_done(self, batch: _OpenBatch, future: asyncio.Future[Any]) -> None:
        count = len(batch.received)
        self._pending -= count
        if self._pending < self._tuning.max_in_flight_trades:
            self._window_open.set()
        if self._pending == 0:
            self._idle.set()
        if future.cancelled():
            self._refused(batch, BrokerUnavailableError("Kafka dropped a batch of trades unsent"))
            return
        error = future.exception()
        if error is not None:
            self._refused(batch, classify_kafka_error(error, self._connection))
            return
        now = self._clock.monotonic()
        self._acked += count
        self._last_progress = now
        if not self._stats.broker_reachable:
            self._stats.broker_reachable = True
        self._stats.published[batch.symbol] += count
        observe = self._stats.latency.observe
        for received_at in batch.received:
            observe(now - received_at)

    def _refused(self, batch: _OpenBatch, error: LoaderError) -> None:
        lost = batch.trades
        self._unwritten.append(lost)
        failure = type(error)(
            f"{error}; {lost.symbol} trades {lost.first_id}..{lost.last_id} "
            f"({len(batch.received)}) were not written"
        )
        if self._failure is not None:
            # The run is failing already; each batch lost is still told, by its trades.
            logger.error("Kafka refused trades: {error}", error=str(failure))
        self._fail(failure)

    def _fail(self, error: LoaderError) -> None:
        if self._failure is None:
            self._failure = error
            logger.error("Kafka refused trades: {error}", error=str(error))
        self._window_open.set()
        self._idle.set()

    def acknowledged(self) -> int:
        return self._acked

    def unwritten(self) -> Sequence[Gap]:
        return list(self._unwritten)

    async def flush(self, timeout: float) -> None:
        for batch in list(self._open.values()):
            self._seal(batch)
        if self._pending and self._failure is None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                raise BrokerUnavailableError(
                    f"{self._pending} trades were not acknowledged by Kafka within {timeout:g} s"
                ) from None
        if self._failure is not None:
            raise self._failure

    def _check_outage(self) -> None:
        silent = self._clock.monotonic() - self._last_progress
        if silent > self._tuning.outage_timeout:
            self._stats.broker_reachable = False
            raise BrokerUnavailableError(
                f"Kafka has not acknowledged trades for {silent:.0f} s "
                f"(KAFKA_OUTAGE_TIMEOUT_SEC={self._tuning.outage_timeout:g}) "
                f"at {self._connection.who}"
            )

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        while not event.is_set():
            if self._failure is not None:
                raise self._failure
            silent = self._clock.monotonic() - self._last_progress
            remaining = self._tuning.outage_timeout - silent
            try:
                await asyncio.wait_for(event.wait(), max(0.05, min(remaining, 1.0)))
            except TimeoutError:
                self._stats.broker_reachable = False
                self._check_outage()
                logger.warning(
                    "Waiting for Kafka: {what} ({n} pending)", what=what, n=self._pending
                )
            else:
                self._stats.broker_reachable = True
        if self._failure is not None:
            raise self._failure


class StoredRecord(NamedTuple):
    """A message value as the topic holds it, with the record's timestamp."""

    value: bytes | None
    timestamp_ms: int
    """When it was published (the producer's clock, as Kafka's ``CreateTime``)."""


class PartitionLog(Protocol):
    """Read access to the partitions of one topic."""

    async def partitions(self) -> set[int] | None:
        """The topic's partitions, or None when the topic does not exist."""
        ...

    async def offsets(self, partition: int) -> tuple[int, int]:
        """The partition's first retained offset and its end (the next offset to be written)."""
        ...

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        """The records at offsets ``start`` up to ``stop`` (exclusive), oldest first."""
        ...


CLOCK_SKEW_MS = 10_000
"""How far apart the clocks of two producers of the topic may be: record times are theirs."""


def partition_for(symbol: str, partitions: Sequence[int]) -> int:
    """The partition a symbol's trades go to: its key hashed as by every Kafka client."""
    ordered = sorted(partitions)
    partition: int = DefaultPartitioner()(symbol.encode(), ordered, ordered)
    return partition


@dataclass(frozen=True, slots=True)
class _Newest:
    last: LastPublished
    published_ms: int

    @property
    def horizon_ms(self) -> int:
        """Records published before this cannot hold a newer trade of the symbol."""
        return self.published_ms - CLOCK_SKEW_MS


async def newest_trades(
    log: PartitionLog, symbols: Sequence[str], max_scan: int = 1_000_000
) -> list[LastPublished]:
    """The newest trade of each symbol in the log, read backwards from the partitions' ends.

    A symbol's trades go to the partition its key maps to, so that partition is read first,
    until the symbol is found. After the topic grew, a symbol's key mapped elsewhere for a while,
    and may map back to where its older trades are: unless the newest partition already held
    records when the trade found was published (the topic has not grown since), every other
    partition is read back to that moment (less the producers' clock skew), and for a symbol not
    found at all, as far as ``max_scan``. The highest trade id wins.
    """
    partitions = await log.partitions()
    if not partitions:
        return []
    ordered = sorted(partitions)
    everyone = set(symbols)
    home = {symbol: partition_for(symbol, ordered) for symbol in symbols}
    found: dict[str, _Newest] = {}
    done: dict[int, set[str]] = {}
    for partition in ordered:
        wanted = {symbol for symbol, p in home.items() if p == partition}
        if wanted:
            done[partition] = wanted & await _scan_back(
                log, partition, wanted, everyone, found, lambda _: None, max_scan
            )
    grown_after = await _first_record_time(log, ordered[-1])

    def horizon(symbol: str) -> int | None:
        newest = found.get(symbol)
        return None if newest is None else newest.horizon_ms

    # The newest partition held records before then: the topic has not grown since.
    settled = {
        symbol
        for symbol, newest in found.items()
        if grown_after is not None and grown_after < newest.horizon_ms
    }
    for partition in ordered:
        wanted = everyone - settled - done.get(partition, set())
        if wanted:
            await _scan_back(log, partition, wanted, everyone, found, horizon, max_scan)
    return [newest.last for newest in found.values()]


async def _first_record_time(log: PartitionLog, partition: int) -> int | None:
    begin, end = await log.offsets(partition)
    if end <= begin:
        return None
    records = await log.read(partition, begin, begin + 1)
    return records[0].timestamp_ms if records else None


async def _scan_back(
    log: PartitionLog,
    partition: int,
    wanted: set[str],
    everyone: set[str],
    found: dict[str, _Newest],
    horizon: Callable[[str], int | None],
    max_scan: int,
) -> set[str]:
    """Read ``partition`` backwards, in doubling spans, until every ``wanted`` symbol is seen
    or the records are older than its ``horizon``.

    The newest trade of any of ``everyone`` seen on the way is kept in ``found`` when it is
    newer than what is there. Returns the symbols seen.
    """
    begin, end = await log.offsets(partition)
    seen: set[str] = set()
    span = 1000
    stop = end
    while stop > begin and end - stop < max_scan:
        start = max(begin, stop - span)
        records = await log.read(partition, start, stop)
        for symbol, newest in _newest_in(records, everyone).items():
            seen.add(symbol)
            current = found.get(symbol)
            if current is None or newest.last.trade_id > current.last.trade_id:
                found[symbol] = newest
        stop = start
        span *= 2
        oldest = records[0].timestamp_ms if records else None
        if all(
            symbol in seen
            or (oldest is not None and (limit := horizon(symbol)) is not None and oldest < limit)
            for symbol in wanted
        ):
            break
    return seen


def _newest_in(records: list[StoredRecord], wanted: set[str]) -> dict[str, _Newest]:
    newest: dict[str, _Newest] = {}
    for record in records:
        decoded = decode_trade_position(record.value)
        if decoded is None or decoded[0] not in wanted:
            continue
        symbol, trade_id, timestamp = decoded
        current = newest.get(symbol)
        if current is None or trade_id > current.last.trade_id:
            newest[symbol] = _Newest(
                LastPublished(symbol, trade_id, timestamp), record.timestamp_ms
            )
    return newest


class _ConsumerLog(PartitionLog):
    """A topic's partitions read through an assigned consumer without a group."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._assigned: TopicPartition | None = None

    def _assign(self, partition: int) -> TopicPartition:
        tp = TopicPartition(self._topic, partition)
        if tp != self._assigned:
            self._consumer.assign([tp])
            self._assigned = tp
        return tp

    async def partitions(self) -> set[int] | None:
        return await topic_partitions(self._consumer, self._topic)

    async def offsets(self, partition: int) -> tuple[int, int]:
        tp = self._assign(partition)
        begin = (await self._consumer.beginning_offsets([tp]))[tp]
        end = (await self._consumer.end_offsets([tp]))[tp]
        return begin, end

    async def read(self, partition: int, start: int, stop: int) -> list[StoredRecord]:
        consumer = self._consumer
        tp = self._assign(partition)
        consumer.seek(tp, start)
        records: list[StoredRecord] = []
        while True:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            for record in batches.get(tp, []):
                if record.offset >= stop:
                    return records
                records.append(StoredRecord(record.value, record.timestamp))
            if await consumer.position(tp) >= stop:
                return records


class KafkaTopicTail(TopicTail):
    """Finds the newest trade of each symbol at the end of the trade topic."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        timeout: float,
        max_scan: int = 1_000_000,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._timeout = timeout
        self._max_scan = max_scan

    async def last_published(self, symbols: Sequence[str]) -> Sequence[LastPublished]:
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._connection.options(),
        )
        try:
            await asyncio.wait_for(consumer.start(), self._timeout)
            log = _ConsumerLog(consumer, self._topic)
            return await asyncio.wait_for(
                newest_trades(log, symbols, self._max_scan), self._timeout * 5
            )
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            raise classify_kafka_error(error, self._connection) from None
        finally:
            await _stop_quietly(consumer)


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
        stats: RunStats,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._connection = connection
        self._timeout = timeout
        self._stats = stats
        self._unacknowledged = False

    async def publish(self, event: TelemetryEvent, timeout: float | None = None) -> None:
        # Once the broker is known to be away, the event (the terminal one, as the run ends)
        # gets a short bound: the run must not wait out the outage bound a second time.
        known_down = self._unacknowledged or not self._stats.broker_reachable
        limit = min(self._timeout, 3.0) if known_down else self._timeout
        if timeout is not None:
            limit = min(limit, timeout)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topic, encode_event(event), key=event.queue_id.encode()
                ),
                limit,
            )
            self._unacknowledged = False
        except TimeoutError:
            self._unacknowledged = True
            self._stats.broker_reachable = False
            raise BrokerUnavailableError(
                f"Kafka did not acknowledge a telemetry event within {limit:g} s "
                f"at {self._connection.who}"
            ) from None
        except kafka_errors.KafkaError as error:
            raise classify_kafka_error(error, self._connection) from None


async def read_from_start(
    connection: KafkaConnection,
    topic: str,
    timeout: float,
    poll_interval: float = 2.0,
    caught_up: asyncio.Event | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of every partition of ``topic`` from the earliest retained one, then live.

    No consumer group: nothing is committed and no other reader can take records away. A topic
    that does not exist yet is waited for. ``caught_up`` is set once every record retained
    when reading began has been yielded (at once when the topic does not exist).
    """
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **connection.options(),
    )
    backlog_read = caught_up or asyncio.Event()
    try:
        try:
            await asyncio.wait_for(consumer.start(), timeout)
            ends = await _assign_from_start(consumer, topic, poll_interval, backlog_read)
        except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
            raise classify_kafka_error(error, connection) from None
        while True:
            if not backlog_read.is_set() and await _reached(consumer, ends):
                backlog_read.set()
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except kafka_errors.KafkaError as error:
                failure = classify_kafka_error(error, connection)
                if isinstance(failure, BrokerUnavailableError):
                    logger.warning("Reading {topic} failed: {e}", topic=topic, e=str(failure))
                    await asyncio.sleep(poll_interval)
                    continue
                raise failure from None
            for records in batches.values():
                for record in records:
                    yield record
    finally:
        await _stop_quietly(consumer)


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _assign_from_start(
    consumer: AIOKafkaConsumer, topic: str, poll_interval: float, backlog_read: asyncio.Event
) -> dict[TopicPartition, int]:
    """Assign every partition from its start; the end offsets are the backlog's end."""
    waited = False
    while True:
        partitions = await topic_partitions(consumer, topic)
        if partitions:
            break
        if not waited:
            logger.warning("Topic {topic} does not exist yet; waiting for it", topic=topic)
            waited = True
            backlog_read.set()  # nothing was retained
        await asyncio.sleep(poll_interval)
    assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assignment)
    await consumer.seek_to_beginning(*assignment)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(assignment)
    logger.info(
        "Reading {topic} ({n} partitions) from the earliest offset", topic=topic, n=len(assignment)
    )
    return ends


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

    async def commands(self) -> AsyncIterator[ControlCommand]:
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
            await asyncio.wait_for(self._caught_up.wait(), self._timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"the commands retained in {self._topic} could not be read within "
                f"{self._timeout:g} s at {self._connection.who}"
            ) from None


async def send_command(
    connection: KafkaConnection, topic: str, command: ControlCommand, timeout: float
) -> None:
    """Publish one control command and wait for the broker's acknowledgement."""
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **connection.options())
    try:
        await asyncio.wait_for(producer.start(), timeout)
        await asyncio.wait_for(
            producer.send_and_wait(topic, encode_command(command), key=command.queue_id.encode()),
            timeout,
        )
    except (kafka_errors.KafkaError, OSError, TimeoutError) as error:
        failure = (
            await diagnose(connection)
            if isinstance(error, kafka_errors.KafkaConnectionError)
            else None
        )
        raise (failure or classify_kafka_error(error, connection)) from None
    finally:
        await _stop_quietly(producer)


async def follow_events(
    connection: KafkaConnection, topic: str, queue_id: str, timeout: float
) -> AsyncIterator[TelemetryEvent]:
    """The telemetry events of one queue, oldest first, then live as they come."""
    async for record in read_from_start(connection, topic, timeout):
        event = decode_event(record.value)
        if event is not None and event.queue_id == queue_id:
            yield event
