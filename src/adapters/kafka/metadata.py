"""A topic's partitions as the broker sees them, and the partition a symbol's key maps to."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka import errors as kafka_errors
from aiokafka.cluster import ClusterMetadata
from aiokafka.partitioner import DefaultPartitioner


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


def partition_for(symbol: str, partitions: Sequence[int]) -> int:
    """The partition a symbol's trades go to: its key hashed as by every Kafka client."""
    ordered = sorted(partitions)
    partition: int = DefaultPartitioner()(symbol.encode(), ordered, ordered)
    return partition
