"""sessions.uptime: online intervals and uptime ratio from presence events (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.uptime import Interval, PresenceChange, Uptime, uptime

START = datetime(2024, 6, 1, 0, 0, 0, tzinfo=UTC)
END = START + timedelta(hours=24)
SPAN = (END - START).total_seconds()


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


def on(minutes: float, reason: str = "connected") -> PresenceChange:
    return PresenceChange(at(minutes), True, reason)


def off(minutes: float, reason: str = "ping_timeout") -> PresenceChange:
    return PresenceChange(at(minutes), False, reason)


def duration(i: Interval, window_end: datetime) -> float:
    return ((i.end if i.end is not None else window_end) - i.start).total_seconds()


# --- whole window ------------------------------------------------------------------------
def test_online_for_the_whole_window() -> None:
    result = uptime(True, [], START, END)
    assert result == Uptime(
        START, END, SPAN, 1.0, (Interval(START, None, "online at window start", None),)
    )


def test_offline_for_the_whole_window() -> None:
    result = uptime(False, [], START, END)
    assert result == Uptime(START, END, 0.0, 0.0, ())


# --- several intervals -------------------------------------------------------------------
def test_several_intervals() -> None:
    changes = [
        on(60),
        off(120, "ping_timeout"),
        on(180),
        off(300, "heartbeat_timeout"),
        on(1380),  # 23:00, still online at the end
    ]
    result = uptime(False, changes, START, END)
    assert result.intervals == (
        Interval(at(60), at(120), "connected", "ping_timeout"),
        Interval(at(180), at(300), "connected", "heartbeat_timeout"),
        Interval(at(1380), None, "connected", None),
    )
    online = (60 + 120 + 60) * 60.0
    assert result.online_seconds == online
    assert result.ratio == pytest.approx(online / SPAN)
    assert result.ratio == pytest.approx(1 / 6)


def test_online_at_start_then_lost_and_back() -> None:
    changes = [off(360, "closed_abnormal"), on(480)]
    result = uptime(True, changes, START, END)
    assert result.intervals == (
        Interval(START, at(360), "online at window start", "closed_abnormal"),
        Interval(at(480), None, "connected", None),
    )
    assert result.online_seconds == SPAN - 120 * 60


def test_interval_ending_exactly_at_window_end_is_closed() -> None:
    result = uptime(True, [off(1440, "gateway_shutdown")], START, END)
    assert result.intervals == (Interval(START, END, "online at window start", "gateway_shutdown"),)
    assert result.ratio == 1.0


def test_connect_exactly_at_window_end_is_an_empty_open_interval() -> None:
    result = uptime(False, [on(1440)], START, END)
    assert result.intervals == (Interval(END, None, "connected", None),)
    assert result.online_seconds == 0.0


# --- folding -------------------------------------------------------------------------------
# What the OCPP listener records when a pile reconnects before its old link
# was seen dead: "replaced" (offline) for the old connection, then
# "connected" for the new one, stamped a moment later.
def test_replaced_then_connected_at_the_same_instant_is_one_interval() -> None:
    changes = [off(600, "replaced"), on(600, "connected")]
    result = uptime(True, changes, START, END)
    assert result.intervals == (Interval(START, None, "online at window start", None),)
    assert result.online_seconds == SPAN
    assert result.ratio == 1.0


def test_replaced_then_connected_a_moment_later_is_no_downtime() -> None:
    replaced = off(600, "replaced")
    connected = PresenceChange(replaced.at + timedelta(milliseconds=3), True, "connected")
    result = uptime(False, [on(60), replaced, connected], START, END)
    assert result.intervals == (Interval(at(60), None, "connected", None),)
    assert result.online_seconds == SPAN - 60 * 60


def test_replaced_as_the_last_event_of_the_window_stays_online() -> None:
    # The new connection's "connected" falls after the window end.
    result = uptime(True, [off(1440, "replaced")], START, END)
    assert result.intervals == (Interval(START, None, "online at window start", None),)
    assert result.ratio == 1.0


def test_replaced_while_offline_changes_nothing() -> None:
    result = uptime(False, [off(600, "replaced")], START, END)
    assert result.intervals == ()
    assert result.online_seconds == 0.0


def test_other_offline_reasons_at_the_same_instant_are_not_folded() -> None:
    changes = [off(600, "closed_abnormal"), on(600, "connected")]
    result = uptime(True, changes, START, END)
    assert result.intervals == (
        Interval(START, at(600), "online at window start", "closed_abnormal"),
        Interval(at(600), None, "connected", None),
    )
    assert result.online_seconds == SPAN


def test_repeated_events_of_the_same_state_are_folded() -> None:
    changes = [
        on(60, "connected"),
        on(61, "connected"),  # e.g. a second node reporting the same pile
        off(120, "closed_clean"),
        off(121, "closed_abnormal"),  # already offline: ignored
        on(180, "connected"),
    ]
    result = uptime(False, changes, START, END)
    assert result.intervals == (
        Interval(at(60), at(120), "connected", "closed_clean"),
        Interval(at(180), None, "connected", None),
    )


def test_online_event_while_online_at_start_keeps_the_window_start() -> None:
    result = uptime(True, [on(30)], START, END)
    assert result.intervals == (Interval(START, None, "online at window start", None),)
    assert result.online_seconds == SPAN


# --- window --------------------------------------------------------------------------------
def test_state_before_the_window_comes_only_from_state_at_start() -> None:
    # The caller passes the events inside the window only; what happened
    # before is summed up by state_at_start. An interval that began before
    # the window is clipped to the window start.
    result = uptime(True, [off(90)], START, END)
    assert result.intervals[0].start == START
    assert result.online_seconds == 90 * 60.0
    # The same history seen from a window that starts after the drop.
    later = uptime(False, [], at(100), END)
    assert later.online_seconds == 0.0 and later.intervals == ()


def test_short_window() -> None:
    end = START + timedelta(microseconds=1)
    result = uptime(True, [], START, end)
    assert result.online_seconds == pytest.approx(1e-6)
    assert result.ratio == 1.0


@pytest.mark.parametrize("end", [START, START - timedelta(seconds=1)], ids=["empty", "reversed"])
def test_empty_or_reversed_window_is_an_error(end: datetime) -> None:
    with pytest.raises(ValueError, match="window_end must be after window_start"):
        uptime(True, [], START, end)


# --- properties ------------------------------------------------------------------------------
REASONS_ON = ["connected"]
REASONS_OFF = [
    "closed_clean",
    "closed_abnormal",
    "ping_timeout",
    "heartbeat_timeout",
    "replaced",
    "gateway_shutdown",
    "bad_messages",
]


@st.composite
def histories(draw: st.DrawFn) -> tuple[bool, list[PresenceChange], datetime, datetime]:
    span_us = draw(st.integers(1, 400 * 86400 * 10**6))
    start = START + timedelta(microseconds=draw(st.integers(-(10**12), 10**12)))
    end = start + timedelta(microseconds=span_us)
    if draw(st.booleans()):
        offsets = draw(st.lists(st.integers(0, span_us), max_size=30))
    else:
        # Few distinct instants: several events at the same time, as when a
        # "replaced" and the next "connected" are stamped alike.
        pool = draw(st.lists(st.integers(0, span_us), min_size=1, max_size=4))
        offsets = draw(st.lists(st.sampled_from(pool), max_size=30))
    offsets.sort()
    changes = []
    for offset in offsets:
        online = draw(st.booleans())
        reason = draw(st.sampled_from(REASONS_ON if online else REASONS_OFF))
        changes.append(PresenceChange(start + timedelta(microseconds=offset), online, reason))
    return draw(st.booleans()), changes, start, end


@given(histories())
def test_online_seconds_is_the_sum_of_the_intervals(
    history: tuple[bool, list[PresenceChange], datetime, datetime],
) -> None:
    state, changes, start, end = history
    result = uptime(state, changes, start, end)
    exact = sum(
        ((i.end if i.end is not None else end) - i.start for i in result.intervals), timedelta()
    )
    assert result.online_seconds == pytest.approx(exact.total_seconds(), rel=1e-12, abs=1e-9)
    assert result.online_seconds == pytest.approx(
        sum(duration(i, end) for i in result.intervals), rel=1e-12, abs=1e-9
    )
    # The intervals are ordered, inside the window, and only the last may be open.
    bounds = [start]
    for i in result.intervals:
        assert bounds[-1] <= i.start
        assert i.end is None or i.start <= i.end <= end
        bounds.append(i.end if i.end is not None else end)
    assert all(i.end is not None for i in result.intervals[:-1])
    # A "replaced" offline is folded into the connection that follows it.
    effective = [ch for ch in changes if ch.online or ch.reason != "replaced"]
    final = effective[-1].online if effective else state
    assert (bool(result.intervals) and result.intervals[-1].end is None) == final


@given(histories())
def test_ratio_is_within_zero_and_one(
    history: tuple[bool, list[PresenceChange], datetime, datetime],
) -> None:
    state, changes, start, end = history
    result = uptime(state, changes, start, end)
    assert result.window_start == start and result.window_end == end
    assert result.online_seconds >= 0.0
    assert 0.0 <= result.ratio <= 1.0
    span = (end - start).total_seconds()
    assert result.ratio == pytest.approx(result.online_seconds / span)


def test_ratio_never_exceeds_one() -> None:
    # online_seconds is a sum of float durations: 0.1 s + 0.2 s covering a
    # 0.3 s window add up to 0.30000000000000004 s; the ratio is clamped.
    end = START + timedelta(seconds=0.3)
    t = START + timedelta(seconds=0.1)
    changes = [PresenceChange(t, False, "closed_abnormal"), PresenceChange(t, True, "connected")]
    result = uptime(True, changes, START, end)
    assert result.online_seconds == pytest.approx(0.3)
    assert result.ratio == 1.0
