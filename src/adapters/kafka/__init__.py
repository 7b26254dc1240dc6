"""Kafka adapters on aiokafka, one module per port or concern (see each module)."""
