"""``python -m simulation``: run many seeded schedules, or replay one (``make simulate``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from loguru import logger

from simulation.runner import explain, run_seed, run_seeds
from simulation.schedule import generate


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation", description=__doc__)
    parser.add_argument("--seeds", type=int, default=200, help="how many schedules to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="replay this one seed, in detail")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-shrink", action="store_true", help="do not shrink failing seeds")
    parser.add_argument(
        "--logs", action="store_true", help="with --seed: print the loader's warnings and errors"
    )
    args = parser.parse_args()
    out = sys.stdout
    logger.remove()
    if args.seed is not None:
        verdict = run_seed(args.seed)
        out.write(generate(args.seed).describe() + "\n")
        if args.logs:
            for line in verdict.logs:
                out.write(f"  {line.at:10.3f} s run {line.run} {line.level:<7} {line.message}\n")
        out.write(f"figures: {verdict.figures}  digest {verdict.digest}\n")
        if verdict.ok:
            out.write(f"seed {args.seed}: every invariant holds ({verdict.seconds:.2f} s)\n")
            return 0
        out.write(explain(verdict, shrunk=not args.no_shrink) + "\n")
        return 1
    seeds = range(args.start, args.start + args.seeds)
    out.write(f"simulating seeds {seeds.start}..{seeds.stop - 1} on {args.jobs} process(es)\n")
    started = time.perf_counter()
    failed = []
    for done, verdict in enumerate(run_seeds(seeds, args.jobs), 1):
        if not verdict.ok:
            failed.append(verdict)
            out.write(f"FAIL seed {verdict.seed}: {verdict.violations[0]}\n")
        if done % 500 == 0:
            elapsed = time.perf_counter() - started
            out.write(f"  {done} schedules, {len(failed)} failing, {elapsed:.0f} s\n")
        out.flush()
    elapsed = time.perf_counter() - started
    out.write(
        f"{len(seeds)} schedules in {elapsed:.1f} s: {len(seeds) - len(failed)} passed, "
        f"{len(failed)} failed\n"
    )
    for verdict in failed[:3]:
        out.write(explain(verdict, shrunk=not args.no_shrink) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
