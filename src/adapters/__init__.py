"""Adapters: the exchange (binance/), the broker (kafka/), metrics, monitoring and the clock."""
