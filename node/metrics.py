"""A small Prometheus-style metrics registry, rendered as the text exposition format 0.0.4.

Three kinds, each rendered with its own ``# TYPE`` line:

* **counters** only go up: ``inc(name, amount, **labels)``, or ``counter(name, read)`` for
  a count kept elsewhere (read when rendered). Their names end in ``_total``.
* **gauges** go up and down: ``gauge(name, read)`` reads the value when rendered.
* **histograms**: ``observe(name, value, **labels)`` into the buckets given to
  ``histogram(name, text, buckets)``; rendered as cumulative ``_bucket{le=...}`` series
  with ``_sum`` and ``_count``.

Label values must come from fixed sets (a route area, a status code, a configured peer's
label, an executor name), never from text a client chose: every distinct label set is a
series kept for the life of the process.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

Labels = tuple[tuple[str, str], ...]

#: request durations, seconds: from a cached lookup to a multi-GiB transfer
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)
#: job durations, seconds: from a cached result to a long computation
JOB_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0
)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    #: per label set: counts per bucket (not cumulative; the last one is +Inf), sum
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._counter_reads: dict[str, Callable[[], float]] = {}
        self._histograms: dict[str, _Histogram] = {}

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._counters[name][_key(labels)] += amount

    def counter(self, name: str, read: Callable[[], float], text: str = "") -> None:
        """A counter kept elsewhere (it must never go down), read when rendered."""
        self._counter_reads[name] = read
        if text:
            self._help[name] = text

    def gauge(self, name: str, read: Callable[[], float], text: str = "") -> None:
        self._gauges[name] = read
        if text:
            self._help[name] = text

    def histogram(self, name: str, text: str, buckets: tuple[float, ...]) -> None:
        """Declare a histogram (observations before the declaration are an error)."""
        if name not in self._histograms:
            self._histograms[name] = _Histogram(tuple(sorted(buckets)))
        self._help[name] = text

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._histograms[name].observe(_key(labels), value)

    def value(self, name: str, **labels: str) -> float:
        if not labels and name in self._counter_reads:
            return _read(self._counter_reads[name])
        return self._counters.get(name, {}).get(_key(labels), 0.0)

    def series_total(self, name: str) -> list[float]:
        """The values of every label set of a counter."""
        return list(self._counters.get(name, {}).values())

    def observations(self, name: str, **labels: str) -> int:
        """How many values a histogram has seen for *labels* (for tests)."""
        counts = self._histograms[name].counts.get(_key(labels))
        return sum(counts) if counts else 0

    def render(self) -> str:
        lines: list[str] = []
        counters = {name: dict(series) for name, series in self._counters.items()}
        for name, read in self._counter_reads.items():
            counters.setdefault(name, {})[()] = _read(read)
        for name in sorted(counters):
            self._head(lines, name, "counter")
            for labels, value in sorted(counters[name].items()):
                lines.append(_sample(name, labels, value))
        for name in sorted(self._gauges):
            self._head(lines, name, "gauge")
            lines.append(_sample(name, (), _read(self._gauges[name])))
        for name in sorted(self._histograms):
            self._head(lines, name, "histogram")
            hist = self._histograms[name]
            for labels, counts in sorted(hist.counts.items()):
                running = 0
                for bound, count in zip((*hist.buckets, float("inf")), counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(float(bound))
                    lines.append(_sample(f"{name}_bucket", (*labels, ("le", le)), running))
                lines.append(_sample(f"{name}_sum", labels, hist.sums[labels]))
                lines.append(_sample(f"{name}_count", labels, running))
        return "\n".join(lines) + "\n"

    def _head(self, lines: list[str], name: str, kind: str) -> None:
        if name in self._help:
            lines.append(f"# HELP {name} {_escape_help(self._help[name])}")
        lines.append(f"# TYPE {name} {kind}")


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _read(read: Callable[[], float]) -> float:
    """A gauge's value; NaN when reading it fails (a scrape must never fail)."""
    try:
        return float(read())
    except Exception:
        return float("nan")


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{label_text}}} {_number(value)}"


def _number(value: float) -> str:
    """Whole numbers in full (byte counters must not lose digits), others as repr."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer():
        return str(int(value))
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
