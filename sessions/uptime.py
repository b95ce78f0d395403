"""Connection history and uptime from presence events (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PresenceChange:
    at: datetime
    online: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Interval:
    """One online period, clipped to the window; ``end`` None = still online."""

    start: datetime
    end: datetime | None
    start_reason: str
    end_reason: str | None


@dataclass(frozen=True, slots=True)
class Uptime:
    window_start: datetime
    window_end: datetime
    online_seconds: float
    ratio: float
    intervals: tuple[Interval, ...]


def uptime(
    state_at_start: bool,
    changes: Sequence[PresenceChange],
    window_start: datetime,
    window_end: datetime,
) -> Uptime:
    """Online intervals and the online share of [window_start, window_end].

    ``changes`` are the events inside the window, oldest first. Repeated
    events of the same state (a "replaced" offline directly followed by a
    "connected") are folded: a replaced connection is not downtime when the
    new one follows at the same instant.
    """
    if window_end <= window_start:
        raise ValueError("window_end must be after window_start")
    intervals: list[Interval] = []
    online = state_at_start
    since = window_start
    since_reason = "online at window start" if online else ""
    total = 0.0
    for ch in changes:
        if ch.online == online or (not ch.online and ch.reason == "replaced"):
            continue
        if online:
            total += (ch.at - since).total_seconds()
            intervals.append(Interval(since, ch.at, since_reason, ch.reason))
        online = ch.online
        since = ch.at
        since_reason = ch.reason
    if online:
        total += (window_end - since).total_seconds()
        intervals.append(Interval(since, None, since_reason, None))
    span = (window_end - window_start).total_seconds()
    # Float sums of interval lengths may exceed the span by an ulp.
    return Uptime(window_start, window_end, total, min(1.0, total / span), tuple(intervals))
