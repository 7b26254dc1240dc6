"""Runs schedules by seed, shrinks a failing one, and says how to replay it."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from simulation.invariants import Violation, check, summary
from simulation.schedule import Schedule, generate
from simulation.world import LogLine, simulate


@dataclass
class Verdict:
    seed: int
    violations: list[Violation]
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    digest: str = ""
    logs: list[LogLine] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def replay_command(seed: int) -> str:
    return f"make simulate SEED={seed}"


def judge(schedule: Schedule) -> Verdict:
    started = time.perf_counter()
    world = simulate(schedule)
    violations = check(world)
    return Verdict(
        schedule.seed,
        violations,
        summary(world),
        time.perf_counter() - started,
        world.digest,
        world.logs,
    )


def quiet() -> None:
    """No log output but what the simulation collects (a worker process starts with stderr)."""
    logger.remove()


def run_seed(seed: int) -> Verdict:
    return judge(generate(seed))


def run_seeds(seeds: Iterable[int], jobs: int = 1) -> Iterator[Verdict]:
    """Each seed's verdict, in seed order; ``jobs`` processes share the work."""
    if jobs <= 1:
        for seed in seeds:
            yield run_seed(seed)
        return
    # Spawned, not forked: the parent may run threads (a test runner's), and fork would copy them.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=quiet) as pool:
        yield from pool.map(run_seed, seeds, chunksize=16)


def still_breaks(invariant: str) -> Callable[[Schedule], bool]:
    """Whether a schedule still breaks ``invariant`` when run."""

    def breaks(candidate: Schedule) -> bool:
        return any(v.invariant == invariant for v in judge(candidate).violations)

    return breaks


def shrink(schedule: Schedule, fails: Callable[[Schedule], bool], budget: int = 200) -> Schedule:
    """A smaller schedule that still ``fails``: events removed, in halving chunks, while it does.

    At most ``budget`` candidates are run (a schedule runs in a fraction of a second).
    """
    tries = 0
    current = schedule
    chunk = max(1, len(current.events) // 2)
    while chunk >= 1 and tries < budget:
        removed = False
        start = 0
        while start < len(current.events) and tries < budget:
            candidate = current.without(set(range(start, start + chunk)))
            tries += 1
            if fails(candidate):
                current = candidate
                removed = True
            else:
                start += chunk
        if not removed:
            chunk //= 2
    return current


def explain(verdict: Verdict, *, shrunk: bool = True) -> str:
    """What failed, how to replay it, and the smallest schedule found that still fails."""
    lines = [f"seed {verdict.seed} broke {len(verdict.violations)} invariant(s):"]
    lines.extend(f"  - {v}" for v in verdict.violations[:12])
    lines.append(f"replay: {replay_command(verdict.seed)}")
    if shrunk and verdict.violations:
        invariant = verdict.violations[0].invariant
        small = shrink(generate(verdict.seed), still_breaks(invariant))
        lines.append(f"shrunk schedule, still breaking {invariant!r}:")
        lines.append(small.describe())
    return "\n".join(lines)
