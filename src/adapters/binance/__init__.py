"""Binance adapters: the live trade stream, its frames, and the REST API for symbols and history."""
