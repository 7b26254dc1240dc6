"""Domain errors, split by whether a retry of the run can cure them."""

from __future__ import annotations


class LoaderError(Exception):
    """Base of every failure the loader reports to its operator."""

    retryable: bool = False


class PermanentFailure(LoaderError):
    """No retry cures it: configuration, unknown symbol, refused credentials or permissions."""

    retryable = False


class TransientFailure(LoaderError):
    """A retry of the run may cure it: an unreachable broker or exchange."""

    retryable = True


class UnknownSymbolError(PermanentFailure):
    """The exchange does not list one or more of the configured symbols."""

    def __init__(self, symbols: tuple[str, ...]) -> None:
        self.symbols = symbols
        names = ", ".join(symbols)
        super().__init__(f"unknown symbol(s) on the exchange: {names}")


class BrokerAuthenticationError(PermanentFailure):
    """The broker refused the SASL credentials."""


class BrokerAuthorizationError(PermanentFailure):
    """The broker refused an operation on a topic for lack of permission."""


class BrokerTlsError(PermanentFailure):
    """The broker's TLS certificate was not trusted or did not match its address."""


class BrokerUnavailableError(TransientFailure):
    """The broker could not be reached, or stopped acknowledging, for longer than allowed."""


class ExchangeUnavailableError(TransientFailure):
    """The exchange could not be reached for longer than allowed."""


class IllegalTransitionError(LoaderError):
    """A state change the loader's state machine does not allow (a programming error)."""
