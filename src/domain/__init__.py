"""The pure model of the loader: trades, the run's state machine, trade-id sequencing, errors."""
