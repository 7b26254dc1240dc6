"""The one logging setup: JSON lines with the run's context, the libraries' records bridged."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from entrypoints.logs import configure_logging


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "json", {"queue_id": "q1"}, stream=stream)
    yield stream
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_topic_being_created_is_no_error_of_a_healthy_run(out: io.StringIO) -> None:
    # aiokafka says this at ERROR while the broker auto-creates the trade topic.
    logging.getLogger("aiokafka.cluster").error(
        "Topic %s not found in cluster metadata", "wf-ws-trades-data"
    )
    (line,) = lines(out)
    assert line["level"] == "WARNING"
    assert line["message"] == "Topic wf-ws-trades-data not found in cluster metadata"
    assert line["queue_id"] == "q1"


def test_other_library_errors_stay_errors(out: io.StringIO) -> None:
    logging.getLogger("aiokafka.cluster").error("Topic %s is not authorized for this client", "t")
    (line,) = lines(out)
    assert line["level"] == "ERROR"
