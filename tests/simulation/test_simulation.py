"""Whole runs under seeded fault schedules: every invariant, every time, the same way twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

from simulation.invariants import Violation
from simulation.runner import explain, replay_command, run_seed, run_seeds, shrink
from simulation.schedule import Event, Schedule, generate

SEEDS = int(os.environ.get("SIM_SEEDS", "500"))
"""Schedules CI runs: about a minute on two cores. ``make simulate`` runs as many as asked."""
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def quiet_logs() -> None:
    logger.remove()  # the simulation collects what the loader logs


def test_every_invariant_holds_for_every_seeded_schedule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = [v for v in run_seeds(range(SEEDS), jobs=os.cpu_count() or 1) if not v.ok]
    with capsys.disabled():
        sys.stdout.write(
            f"\nsimulation: seeds 0..{SEEDS - 1}, {SEEDS - len(failed)} passed, "
            f"{len(failed)} failed\n"
        )
    assert not failed, "\n\n".join(explain(v) for v in failed[:3])


def test_the_same_seed_gives_the_same_run_event_for_event() -> None:
    for seed in (3, 17, 42):
        assert run_seed(seed).digest == run_seed(seed).digest


def test_the_same_seed_gives_the_same_run_in_another_process() -> None:
    code = "from loguru import logger; logger.remove(); from simulation.runner import run_seed; "
    code += "print(run_seed(17).digest)"
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=TESTS,
            env={**os.environ, "PYTHONHASHSEED": hashseed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hashseed in ("1", "2")
    }
    assert digests == {run_seed(17).digest}


def test_schedules_differ_by_seed_and_cover_the_menu() -> None:
    kinds = {event.kind for seed in range(300) for event in generate(seed).events}
    assert kinds >= {
        "drop", "shutdown", "refuse", "accept_close", "silence", "half_open", "duplicate",
        "stale", "reorder", "malformed", "rest", "broker_outage", "broker_slow", "batch",
        "stop", "sigterm", "kill", "quiet", "burst",
    }  # fmt: skip
    assert generate(1).describe() != generate(2).describe()
    restarts = [s for s in range(300) if len(generate(s).runs) > 1]
    grown = [s for s in restarts if any(r.grow_partitions for r in generate(s).runs)]
    assert restarts
    assert grown


def test_a_failing_schedule_shrinks_to_the_events_that_make_it_fail() -> None:
    schedule = generate(7)
    culprit = Event(0, 1.0, "batch", (("fault", "cancel"),))
    noisy = Schedule(schedule.seed, schedule.setup, schedule.runs, (*schedule.events, culprit))

    def fails(candidate: Schedule) -> bool:
        return culprit in candidate.events

    small = shrink(noisy, fails)
    assert small.events == (culprit,)


def test_a_failing_seed_says_how_to_replay_it() -> None:
    verdict = run_seed(5)
    verdict.violations.append(Violation("an invariant", "what was seen"))
    text = explain(verdict, shrunk=False)
    assert "an invariant: what was seen" in text
    assert f"replay: {replay_command(5)}" in text
    assert replay_command(5) == "make simulate SEED=5"
