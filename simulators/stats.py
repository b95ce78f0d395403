"""Counters and a latency histogram shared by many simulated chargers (load
mode) or kept per charger. Pure and cheap: a bounded array of log-spaced
buckets, so 5,000 chargers sending for an hour cost a few kilobytes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

_MIN = 1e-5  # 10 µs
_GROWTH = 1.04  # 4 % relative bucket width
_BUCKETS = int(math.log(120.0 / _MIN) / math.log(_GROWTH)) + 2


@dataclass(slots=True)
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * _BUCKETS, repr=False)
    total: int = 0
    max: float = 0.0

    def observe(self, seconds: float) -> None:
        if seconds <= _MIN:
            index = 0
        else:
            index = min(_BUCKETS - 1, int(math.log(seconds / _MIN) / math.log(_GROWTH)) + 1)
        self.counts[index] += 1
        self.total += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, p: float) -> float | None:
        """Upper edge of the bucket holding the ``p``-th percentile (seconds);
        None when nothing was observed."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(self.total * p / 100.0))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.max, _MIN * _GROWTH**index)
        return self.max

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.max = max(self.max, other.max)


@dataclass(slots=True)
class Stats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    frames_out: int = 0
    frames_in: int = 0
    calls_sent: int = 0
    call_results: int = 0
    call_timeouts: int = 0
    calls_received: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_by_action: dict[str, LatencyHistogram] = field(default_factory=dict)

    def observe(self, action: str, seconds: float) -> None:
        self.call_results += 1
        self.latency.observe(seconds)
        hist = self.latency_by_action.get(action)
        if hist is None:
            hist = self.latency_by_action[action] = LatencyHistogram()
        hist.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())
