"""Reading the Prometheus text format (with prometheus_client's parser): samples, histograms
and their quantiles."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named ``name`` (``…_total``, ``…_bucket``, …)."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name:
                yield item.labels, item.value


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with these labels (0 when absent)."""
    for found, value in samples(text, name):
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return value
    return 0.0


def by_label(text: str, name: str, label: str) -> dict[str, float]:
    """The samples named ``name``, by the value of their ``label``."""
    return {labels[label]: value for labels, value in samples(text, name)}


def metric_total(text: str, name: str) -> float:
    """The sum of every sample named ``name``."""
    return sum(value for _, value in samples(text, name))


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram, ordered by bound."""
    buckets = [(float(labels["le"]), value) for labels, value in samples(text, f"{name}_bucket")]
    return sorted(buckets)


def histogram_delta(
    later: list[tuple[float, float]], earlier: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The buckets of what was observed between two scrapes."""
    before = dict(earlier)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in later]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket holding q."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
