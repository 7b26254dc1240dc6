"""Broker failures as the operator sees them: the right kind, the broker's address, no password."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ssl
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

import adapters.kafka.errors
from adapters.kafka.connection import KafkaConnection
from adapters.kafka.errors import classify_kafka_error, diagnose
from domain.errors import (
    BrokerAuthenticationError,
    BrokerAuthorizationError,
    BrokerTlsError,
    BrokerUnavailableError,
    LoaderError,
    PermanentFailure,
    TransientFailure,
    UnknownSymbolError,
)

SECRET = "s3cr3t-Pa55w0rd-never-shown"  # noqa: S105 - a test value to search the messages for
ADDRESS = "broker-1.kafka.example:9093"

CONNECTION = KafkaConnection(
    bootstrap_servers=ADDRESS,
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    username="producer",
    password=SECRET,
    ca_path="/etc/kafka/ca.crt",
)


def cert_error(
    verify_message: str = "self-signed certificate in certificate chain",
) -> ssl.SSLCertVerificationError:
    """The error the ssl module raises when the broker's certificate fails verification."""
    error = ssl.SSLCertVerificationError(
        1,
        f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {verify_message} "
        "(_ssl.c:1006)",
    )
    error.verify_message = verify_message
    error.verify_code = 19
    return error


def caused_by(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised ``from inner``."""
    outer.__cause__ = inner
    return outer


def raised_while_handling(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised inside ``except`` of ``inner``, as Python records it."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit context is what this builds
    except BaseException as error:
        return error


def assert_operator_message(failure: LoaderError) -> None:
    text = str(failure)
    assert ADDRESS in text
    assert "'producer'" in text
    assert SECRET not in text
    assert SECRET not in repr(failure)


AUTHENTICATION = [
    kafka_errors.SaslAuthenticationFailed(
        "Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-512"
    ),
    kafka_errors.AuthenticationFailedError(),
    kafka_errors.IllegalSaslStateError(),
    kafka_errors.UnsupportedSaslMechanismError("SCRAM-SHA-512 is not enabled"),
    kafka_errors.AuthenticationMethodNotSupported(),
]
AUTHORIZATION = [
    kafka_errors.TopicAuthorizationFailedError("wf-trades"),
    kafka_errors.ClusterAuthorizationFailedError(),
    kafka_errors.GroupAuthorizationFailedError(),
    kafka_errors.TransactionalIdAuthorizationFailed(),
]
UNAVAILABLE = [
    kafka_errors.KafkaConnectionError(f"Unable to bootstrap from [('{ADDRESS}', 9093)]"),
    kafka_errors.KafkaTimeoutError(),
    kafka_errors.NodeNotReadyError(),
    kafka_errors.RequestTimedOutError(),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    TimeoutError(),
]


def ids(errors: list[BaseException]) -> list[str]:
    return [type(error).__name__ for error in errors]


@pytest.mark.parametrize("error", AUTHENTICATION, ids=ids(AUTHENTICATION))
def test_refused_credentials_are_an_authentication_failure(error: BaseException) -> None:
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerAuthenticationError
    assert isinstance(failure, PermanentFailure)
    assert str(failure).startswith("Kafka authentication failed at ")
    assert type(error).__name__ in str(failure)
    assert_operator_message(failure)


@pytest.mark.parametrize("error", AUTHORIZATION, ids=ids(AUTHORIZATION))
def test_missing_permissions_are_an_authorisation_failure(error: BaseException) -> None:
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerAuthorizationError
    assert isinstance(failure, PermanentFailure)
    assert str(failure).startswith("Kafka authorisation refused at ")
    assert type(error).__name__ in str(failure)
    assert_operator_message(failure)


def test_the_refused_topic_is_named() -> None:
    failure = classify_kafka_error(
        kafka_errors.TopicAuthorizationFailedError("other-topic-xyz"), CONNECTION
    )
    assert "other-topic-xyz" in str(failure)


def test_an_untrusted_certificate_is_a_tls_failure_that_points_at_ca_path() -> None:
    failure = classify_kafka_error(cert_error(), CONNECTION)
    assert type(failure) is BrokerTlsError
    assert isinstance(failure, PermanentFailure)
    text = str(failure)
    assert "TLS certificate was not trusted" in text
    assert "self-signed certificate in certificate chain" in text
    assert "CA_PATH" in text
    assert_operator_message(failure)


def test_a_certificate_for_another_name_is_a_tls_failure_that_says_so() -> None:
    error = cert_error("Hostname mismatch, certificate is not valid for 'broker-1.kafka.example'.")
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerTlsError
    assert "Hostname mismatch" in str(failure)
    assert "broker address" in str(failure)
    assert_operator_message(failure)


def test_a_certificate_error_raised_by_name_checking_code_is_a_tls_failure() -> None:
    # ssl.CertificateError (ssl.match_hostname and other code raise it) has no verify_message.
    error = ssl.CertificateError("hostname 'broker-1.kafka.example' doesn't match 'localhost'")
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerTlsError
    assert "TLS certificate was not trusted" in str(failure)
    assert "doesn't match 'localhost'" in str(failure)
    assert_operator_message(failure)


def test_another_tls_error_is_a_tls_failure() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerTlsError
    assert str(failure).startswith("TLS with the Kafka broker failed at ")
    assert "WRONG_VERSION_NUMBER" in str(failure)
    assert_operator_message(failure)


@pytest.mark.parametrize("error", UNAVAILABLE, ids=ids(UNAVAILABLE))
def test_everything_else_is_an_unreachable_broker_a_retry_may_cure(error: BaseException) -> None:
    failure = classify_kafka_error(error, CONNECTION)
    assert type(failure) is BrokerUnavailableError
    assert isinstance(failure, TransientFailure)
    assert str(failure).startswith("Kafka broker unreachable at ")
    assert type(error).__name__ in str(failure)
    assert_operator_message(failure)


@pytest.mark.parametrize("wrap", [caused_by, raised_while_handling], ids=["cause", "context"])
@pytest.mark.parametrize(
    ("inner", "kind"),
    [
        (AUTHENTICATION[0], BrokerAuthenticationError),
        (AUTHORIZATION[0], BrokerAuthorizationError),
        (cert_error(), BrokerTlsError),
        (ssl.SSLError(1, "[SSL] handshake failure"), BrokerTlsError),
    ],
    ids=["authentication", "authorisation", "certificate", "tls"],
)
def test_the_real_reason_is_found_behind_a_wrapping_error(
    wrap: Any, inner: BaseException, kind: type[LoaderError]
) -> None:
    outer = kafka_errors.KafkaConnectionError(f"Connection at {ADDRESS} closed")
    failure = classify_kafka_error(wrap(outer, inner), CONNECTION)
    assert type(failure) is kind
    assert_operator_message(failure)


def test_the_real_reason_is_found_several_levels_down() -> None:
    chain = caused_by(
        kafka_errors.KafkaConnectionError("Unable to bootstrap"),
        raised_while_handling(ConnectionError("Connection lost"), cert_error()),
    )
    assert type(classify_kafka_error(chain, CONNECTION)) is BrokerTlsError


def test_a_cycle_of_causes_ends() -> None:
    first = kafka_errors.KafkaConnectionError("first")
    second = OSError("second")
    first.__cause__ = second
    second.__context__ = first
    assert type(classify_kafka_error(first, CONNECTION)) is BrokerUnavailableError


def test_a_failure_already_told_in_the_operators_words_is_kept() -> None:
    for failure in (
        BrokerUnavailableError(f"Kafka has not acknowledged trades for 130 s at {ADDRESS}"),
        UnknownSymbolError(("NOSUCHCOIN",)),
    ):
        assert classify_kafka_error(failure, CONNECTION) is failure


def test_a_connection_never_shows_its_password() -> None:
    for shown in (repr(CONNECTION), str(CONNECTION), f"{CONNECTION}", CONNECTION.who):
        assert SECRET not in shown
    assert "**********" in repr(CONNECTION)
    assert ADDRESS in CONNECTION.who
    assert "'producer'" in CONNECTION.who


def test_a_connection_hands_the_password_to_the_client_only() -> None:
    options = dataclasses.replace(CONNECTION, ca_path=None).options()
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_plain_username"] == "producer"
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_plaintext_sends_no_credentials() -> None:
    options = KafkaConnection("localhost:9092").options()
    assert "sasl_plain_password" not in options
    assert "ssl_context" not in options


# diagnose: one direct connection per bootstrap server, to learn why bootstrapping failed.


class FakeConnections:
    """Stands in for aiokafka's ``create_conn``: answers per "host:port"."""

    def __init__(self, answers: dict[str, BaseException | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.closed = 0

    async def __call__(self, host: str, port: int, **options: Any) -> FakeConnections:
        self.calls.append((host, port, options))
        answer = self.answers[f"{host}:{port}"]
        if answer is None:
            return self
        if isinstance(answer, TimeoutError):
            await asyncio.sleep(3600)
        raise answer

    def close(self) -> None:
        self.closed += 1


def connection_to(*servers: str) -> KafkaConnection:
    return KafkaConnection(
        bootstrap_servers=",".join(servers),
        security_protocol="SASL_SSL",
        username="producer",
        password=SECRET,
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(answers: dict[str, BaseException | None]) -> FakeConnections:
        connections = FakeConnections(answers)
        monkeypatch.setattr(adapters.kafka.errors, "create_conn", connections)
        return connections

    return install


async def test_diagnose_reports_refused_credentials(fake: Any) -> None:
    connections = fake({"kafka-a:9093": AUTHENTICATION[0]})
    failure = await diagnose(connection_to("kafka-a:9093"))
    assert type(failure) is BrokerAuthenticationError
    assert "kafka-a:9093" in str(failure)
    assert SECRET not in str(failure)
    host, port, options = connections.calls[0]
    assert (host, port) == ("kafka-a", 9093)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


async def test_diagnose_returns_the_first_failure_no_retry_cures(fake: Any) -> None:
    fake(
        {
            "kafka-a:9093": ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "kafka-b:9093": cert_error(),
            "kafka-c:9093": AUTHENTICATION[0],
        }
    )
    failure = await diagnose(connection_to("kafka-a:9093", "kafka-b:9093", "kafka-c:9093"))
    assert type(failure) is BrokerTlsError


async def test_diagnose_finds_nothing_wrong_when_a_server_answers(fake: Any) -> None:
    connections = fake(
        {
            "kafka-a:9093": ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            "kafka-b:9093": None,
        }
    )
    assert await diagnose(connection_to("kafka-a:9093", "kafka-b:9093")) is None
    assert connections.closed == 1


async def test_diagnose_reports_an_unreachable_broker_within_its_bound(fake: Any) -> None:
    fake({"kafka-a:9093": TimeoutError(), "kafka-b:9093": OSError(errno.EHOSTUNREACH, "no route")})
    failure = await asyncio.wait_for(
        diagnose(connection_to("kafka-a:9093", "kafka-b:9093"), timeout=0.05), 5
    )
    assert type(failure) is BrokerUnavailableError
    assert SECRET not in str(failure)
