"""Deterministic simulation of whole runs: seeded fault schedules, a virtual clock, invariants."""
