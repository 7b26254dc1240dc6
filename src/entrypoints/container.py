"""The dependency-injector container: the one place that knows every concrete class."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from dependency_injector import containers, providers

from adapters.binance.codec import IGNORED_KINDS, REJECT_REASONS
from adapters.binance.connection import RECONNECT_REASONS
from adapters.binance.feed import BinanceTradeFeed
from adapters.binance.rest import BinanceRestClient
from adapters.clock import SystemClock
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.control import KafkaControlChannel
from adapters.kafka.health import BrokerHealth
from adapters.kafka.producer import ProducerTuning, start_producer, stop_producer
from adapters.kafka.tail import KafkaTopicTail
from adapters.kafka.telemetry import KafkaEventPublisher
from adapters.kafka.trades import KafkaTradePublisher
from adapters.metrics import Readings, RunStats, make_registry
from adapters.monitoring import MonitoringServer
from application.loader import TradeLoader
from entrypoints.settings import Settings


async def monitoring_server(
    settings: Settings,
    stats: RunStats,
    feed: BinanceTradeFeed,
    health: BrokerHealth,
    rest: BinanceRestClient,
) -> AsyncIterator[MonitoringServer | None]:
    if settings.metrics_port == 0:
        yield None
        return
    readings = Readings(
        queue_depth=feed.backlog,
        feed_connected=feed.connected,
        feed_connections=feed.connections,
        broker_reachable=lambda: health.reachable,
        rest_weight_used=rest.used_weight,
        rest_weight_budget=rest.weight_budget,
    )

    def ready() -> dict[str, bool]:
        return {
            "exchange_connected": readings.feed_connected(),
            "broker_reachable": readings.broker_reachable(),
        }

    server = MonitoringServer(
        settings.metrics_host, settings.metrics_port, make_registry(stats, readings), ready
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def kafka_producer(
    connection: KafkaConnection, tuning: ProducerTuning, health: BrokerHealth, stop_timeout: float
) -> AsyncIterator[AIOKafkaProducer]:
    producer = await start_producer(connection, tuning, health)
    try:
        yield producer
    finally:
        await stop_producer(producer, stop_timeout if health.reachable else 1.0)


async def rest_client(settings: Settings, clock: SystemClock) -> AsyncIterator[BinanceRestClient]:
    client = BinanceRestClient(settings.binance_rest_url, settings.rest_tuning(), clock)
    try:
        yield client
    finally:
        await client.close()


class Container(containers.DeclarativeContainer):
    """Real adapters for a production run, built from the settings."""

    settings = providers.Dependency(instance_of=Settings)

    stats = providers.Singleton(
        RunStats,
        settings.provided.symbols,
        reject_reasons=REJECT_REASONS,
        ignored_kinds=IGNORED_KINDS,
        reconnect_reasons=RECONNECT_REASONS,
    )
    clock = providers.Singleton(SystemClock)
    connection = providers.Singleton(settings.provided.kafka_connection.call())
    producer_tuning = providers.Singleton(settings.provided.producer_tuning.call())
    health = providers.Singleton(BrokerHealth)
    feed = providers.Singleton(
        BinanceTradeFeed,
        settings.provided.binance_ws_url,
        settings.provided.symbols,
        settings.provided.feed_tuning.call(),
        stats,
        clock,
    )

    rest = providers.Resource(rest_client, settings, clock)
    monitoring = providers.Resource(monitoring_server, settings, stats, feed, health, rest)
    # Stopping flushes nothing more (the use case flushed already), so a short bound suffices.
    producer = providers.Resource(kafka_producer, connection, producer_tuning, health, 5.0)

    trade_publisher = providers.Singleton(
        KafkaTradePublisher,
        producer,
        settings.provided.kafka_topic,
        connection,
        producer_tuning,
        health,
        stats,
        clock,
    )
    topic_tail = providers.Singleton(
        KafkaTopicTail,
        connection,
        settings.provided.kafka_topic,
        settings.provided.kafka_connect_timeout_sec,
    )
    event_publisher = providers.Singleton(
        KafkaEventPublisher,
        producer,
        settings.provided.queue_events_topic,
        connection,
        settings.provided.kafka_outage_timeout_sec,
        health,
    )
    control = providers.Singleton(
        KafkaControlChannel,
        connection,
        settings.provided.queue_control_topic,
        settings.provided.kafka_connect_timeout_sec,
    )
    loader = providers.Singleton(
        TradeLoader,
        settings.provided.loader_config.call(),
        feed=feed,
        directory=rest,
        history=rest,
        publisher=trade_publisher,
        tail=topic_tail,
        events=event_publisher,
        control=control,
        clock=clock,
        metrics=stats,
    )
