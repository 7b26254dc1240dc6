"""Integration fixtures: the real local broker, the exchange simulator, the service process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from testkit.kafka_broker import BrokerEnv, LocalBroker
from testkit.service import LoaderProcess
from testkit.simulator import Simulator
from testkit.topics import TopicSet

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this directory ``integration`` (a conftest's ``pytestmark`` would not)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> BrokerEnv:
    """The shared local broker; started if it is not running (CI starts it before the tests)."""
    local = LocalBroker("main", 19092)
    local.up()
    return local.env


@pytest.fixture
async def topics(broker: BrokerEnv) -> TopicSet:
    return await TopicSet.created(broker.plaintext)


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def start(*args: str) -> Simulator:
        sim = Simulator(*args)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
async def loader(tmp_path: Path) -> AsyncIterator[Callable[..., LoaderProcess]]:
    """Builds loader processes; each is killed at the end of the test if still running."""
    processes: list[LoaderProcess] = []

    def build(env: dict[str, str]) -> LoaderProcess:
        process = LoaderProcess(env, tmp_path / f"loader-{len(processes)}.log")
        processes.append(process)
        return process

    yield build
    for process in processes:
        await process.kill()
