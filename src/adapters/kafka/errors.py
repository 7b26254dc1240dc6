"""What an aiokafka or socket error means for an operator, and why bootstrapping failed."""

from __future__ import annotations

import asyncio
import ssl

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn

from adapters.kafka.connection import KafkaConnection
from domain.errors import (
    BrokerAuthenticationError,
    BrokerAuthorizationError,
    BrokerTlsError,
    BrokerUnavailableError,
    LoaderError,
)


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
            async with asyncio.timeout(timeout):
                conn = await create_conn(
                    host or "localhost",
                    int(port),
                    request_timeout_ms=int(timeout * 1000),
                    **options,
                )
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            failure = classify_kafka_error(error, connection)
            if not isinstance(failure, BrokerUnavailableError):
                return failure
        else:
            conn.close()
            return None
    return failure
