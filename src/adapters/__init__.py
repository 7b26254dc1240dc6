"""Adapters: the exchange, the broker, monitoring, and in-memory stand-ins for tests."""
