"""sessions.presence: dead-link detection, driven by fed times (no clock, no sleeping)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sessions.presence import (
    TRANSITIONS,
    Action,
    DeclareOffline,
    DuplicateConnection,
    IllegalTransition,
    LinkEvent,
    LinkState,
    OfflineReason,
    PresenceError,
    PresencePolicy,
    PresenceTracker,
    SendPing,
    UnknownConnection,
    next_state,
)

K = TypeVar("K", str, int)
TICK = 1.0  # the asyncio ticker's period
HOUR = 3600.0


def offline(actions: list[Action[K]]) -> list[DeclareOffline[K]]:
    return [a for a in actions if isinstance(a, DeclareOffline)]


def pings(actions: list[Action[K]]) -> list[SendPing[K]]:
    return [a for a in actions if isinstance(a, SendPing)]


def run(
    tracker: PresenceTracker[str],
    start: float,
    end: float,
    on_action: Callable[[float, Action[str]], None] | None = None,
    each_second: Callable[[float], None] | None = None,
) -> list[tuple[float, Action[str]]]:
    """Tick every TICK seconds from start to end (inclusive); collect (time, action)."""
    seen: list[tuple[float, Action[str]]] = []
    for i in itertools.count():
        now = start + i * TICK
        if now > end:
            return seen
        if each_second is not None:
            each_second(now)
        for action in tracker.tick(now):
            seen.append((now, action))
            if on_action is not None:
                on_action(now, action)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------
def test_defaults_and_detection_bound() -> None:
    p = PresencePolicy()
    assert (p.ping_interval, p.pong_timeout, p.heartbeat_multiple, p.min_silence) == (
        10.0,
        10.0,
        3.0,
        15.0,
    )
    # pings on: min(P + T, max(M*H, floor)) - the 30 s requirement is met.
    assert p.detection_bound(60) == 20.0
    assert p.detection_bound(5) == 15.0  # watchdog beats the ping: 3 × 5 = 15
    assert p.detection_bound(2) == 15.0  # floor: max(6, 15)
    # pings off (cloud-board): the watchdog alone.
    assert p.detection_bound(60, pings=False) == 180.0
    assert PresencePolicy(ping_interval=0).detection_bound(60) == 180.0
    # with ticker granularity: two deadlines in sequence on the ping path.
    assert p.detection_bound(60, tick_interval=1.0) == 22.0
    assert p.detection_bound(5, tick_interval=1.0) == 16.0
    assert p.watchdog_window(60) == 180.0


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("ping_interval", -1.0),
        ("ping_interval", math.nan),
        ("pong_timeout", 0.0),
        ("pong_timeout", -3.0),
        ("pong_timeout", math.inf),
        ("heartbeat_multiple", 1.0),
        ("heartbeat_multiple", 0.0),
        ("min_silence", -0.5),
    ],
)
def test_policy_validation_names_the_field(field_name: str, value: float) -> None:
    with pytest.raises(ValueError, match=field_name):
        PresencePolicy(**{field_name: value})


def test_policy_rejects_non_numbers() -> None:
    with pytest.raises(ValueError, match="pong_timeout"):
        PresencePolicy(pong_timeout=True)
    with pytest.raises(ValueError, match="ping_interval"):
        PresencePolicy(ping_interval="10")  # type: ignore[arg-type]


def test_heartbeat_interval_is_validated() -> None:
    p = PresencePolicy()
    with pytest.raises(ValueError, match="heartbeat_interval"):
        p.detection_bound(0)
    tracker: PresenceTracker[str] = PresenceTracker(p)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        tracker.add("a", 0.0, -5)
    assert "a" not in tracker
    tracker.add("a", 0.0, 60)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        tracker.set_heartbeat_interval("a", math.inf)
    assert tracker.snapshot("a").heartbeat_interval == 60


def test_zero_ping_interval_disables_pings() -> None:
    assert not PresencePolicy(ping_interval=0).pings_enabled
    assert PresencePolicy().pings_enabled


def test_offline_reasons_are_the_recorded_strings() -> None:
    assert [r.value for r in OfflineReason] == [
        "ping_timeout",
        "heartbeat_timeout",
        "closed_clean",
        "closed_abnormal",
        "replaced",
        "gateway_shutdown",
    ]
    assert all(len(r.value) <= 32 for r in OfflineReason)  # presence_events.reason
    assert OfflineReason("ping_timeout") is OfflineReason.PING_TIMEOUT
    assert f"{OfflineReason.REPLACED}" == "replaced"


# --------------------------------------------------------------------------
# transition table
# --------------------------------------------------------------------------
def test_transition_table_is_total_or_raises() -> None:
    for state, ev in itertools.product(LinkState, LinkEvent):
        if (state, ev) in TRANSITIONS:
            assert next_state(state, ev) is TRANSITIONS[state, ev]
        else:
            with pytest.raises(IllegalTransition) as exc:
                next_state(state, ev)
            assert isinstance(exc.value, PresenceError)
            assert (exc.value.state, exc.value.event) == (state, ev)


def test_transition_table_shape() -> None:
    assert not any(s is LinkState.OFFLINE for s, _ in TRANSITIONS)  # terminal
    assert (LinkState.IDLE, LinkEvent.PONG_TIMEOUT) not in TRANSITIONS
    assert (LinkState.AWAITING_PONG, LinkEvent.PING_SENT) not in TRANSITIONS
    assert next_state(LinkState.IDLE, LinkEvent.PING_SENT) is LinkState.AWAITING_PONG
    assert next_state(LinkState.AWAITING_PONG, LinkEvent.FRAME) is LinkState.IDLE
    assert next_state(LinkState.AWAITING_PONG, LinkEvent.PONG_TIMEOUT) is LinkState.OFFLINE
    with pytest.raises(TypeError):
        TRANSITIONS[LinkState.IDLE, LinkEvent.FRAME] = LinkState.OFFLINE  # type: ignore[index]


# --------------------------------------------------------------------------
# the paths
# --------------------------------------------------------------------------
def test_healthy_websocket_link_never_goes_offline() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("ws", 0.0, 60)

    def heartbeat(now: float) -> None:
        if now > 0 and now % 60 == 0:
            assert tracker.frame_received("ws", now + 0.5)

    def answer(now: float, action: Action[str]) -> None:
        if isinstance(action, SendPing):
            assert tracker.pong_received(action.key, now + 0.2)

    seen = run(tracker, 0.0, 6 * HOUR, answer, heartbeat)
    assert not offline([a for _, a in seen])
    assert len(pings([a for _, a in seen])) > 1000  # it was pinged all along
    assert "ws" in tracker


def test_healthy_link_without_pings_never_goes_offline() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("cbp", 0.0, 10, pings=False)

    def heartbeat(now: float) -> None:
        if now > 0 and now % 10 == 0:
            tracker.frame_received("cbp", now)

    assert run(tracker, 0.0, 6 * HOUR, each_second=heartbeat) == []
    assert tracker.stats.pings_sent == 0


def test_pong_answering_link_without_frames_is_caught_by_the_watchdog() -> None:
    # A hung application on a live TCP stack: pongs keep coming, frames do
    # not. Pongs prove the transport, not the charger, so the watchdog fires.
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("hung", 0.0, 60)

    def answer(now: float, action: Action[str]) -> None:
        if isinstance(action, SendPing):
            tracker.pong_received(action.key, now + 0.2)

    seen = run(tracker, 0.0, HOUR, answer)
    (when, verdict), *_ = [(t, a) for t, a in seen if isinstance(a, DeclareOffline)]
    assert isinstance(verdict, DeclareOffline)
    assert verdict.reason is OfflineReason.HEARTBEAT_TIMEOUT
    assert when == 180.0  # 3 × 60 after the handshake
    assert verdict.silent_for == 180.0
    assert "3 × heartbeat interval 60 s" in verdict.detail
    assert "answered a ping" in verdict.detail
    assert len(pings([a for _, a in seen])) >= 16  # never a ping timeout before that
    assert "hung" not in tracker
    assert [a for t, a in seen if t > when] == []


def test_half_open_link_goes_offline_by_ping_timeout_within_the_bound() -> None:
    policy = PresencePolicy()
    tracker: PresenceTracker[str] = PresenceTracker(policy)
    tracker.add("sim-cut", 0.0, 60)
    tracker.frame_received("sim-cut", 3.0)  # the last frame; then the SIM is cut
    seen = run(tracker, 0.0, 100.0)
    assert seen[0] == (13.0, SendPing("sim-cut"))
    when, verdict = seen[1]
    assert isinstance(verdict, DeclareOffline)
    assert verdict.reason is OfflineReason.PING_TIMEOUT
    assert when == 23.0
    assert verdict.silent_for == 20.0
    assert when - 3.0 <= policy.detection_bound(60)
    assert len(seen) == 2
    assert "sim-cut" not in tracker


def test_late_ticks_stay_within_the_granular_bound() -> None:
    policy = PresencePolicy()
    tracker: PresenceTracker[str] = PresenceTracker(policy)
    tracker.add("a", 0.4, 60)  # due times fall between integer ticks
    seen = run(tracker, 0.0, 100.0)
    assert [t for t, _ in seen] == [11.0, 21.0]
    assert seen[1][0] - 0.4 <= policy.detection_bound(60, tick_interval=TICK)


def test_watchdog_can_beat_the_pong_deadline() -> None:
    # H = 5: the watchdog window 15 s ends before the pong deadline (10 + 10).
    policy = PresencePolicy(min_silence=0)
    tracker: PresenceTracker[str] = PresenceTracker(policy)
    tracker.add("a", 0.0, 5)
    seen = run(tracker, 0.0, 60.0)
    assert seen[0] == (10.0, SendPing("a"))
    when, verdict = seen[1]
    assert isinstance(verdict, DeclareOffline)
    assert (when, verdict.reason) == (15.0, OfflineReason.HEARTBEAT_TIMEOUT)
    assert when == policy.detection_bound(5)


def test_both_overdue_reports_the_earlier_deadline_and_ties_go_to_the_ping() -> None:
    policy = PresencePolicy(min_silence=0)
    # ping at 10, pong deadline 20, watchdog 15; a stalled ticker comes back at 30
    tracker: PresenceTracker[str] = PresenceTracker(policy)
    tracker.add("a", 0.0, 5)
    assert tracker.tick(10.0) == [SendPing("a")]
    (verdict,) = offline(tracker.tick(30.0))
    assert verdict.reason is OfflineReason.HEARTBEAT_TIMEOUT
    # ping at 10, pong deadline 20, watchdog 20: a tie
    tracker = PresenceTracker(policy)
    tracker.add("b", 0.0, 20 / 3)
    assert policy.watchdog_window(20 / 3) == 20.0
    assert tracker.tick(10.0) == [SendPing("b")]
    (verdict,) = offline(tracker.tick(20.0))
    assert verdict.reason is OfflineReason.PING_TIMEOUT


@pytest.mark.parametrize("policy_off", [True, False])
def test_pings_disabled_go_offline_by_heartbeat_timeout(policy_off: bool) -> None:
    if policy_off:
        tracker: PresenceTracker[str] = PresenceTracker(PresencePolicy(ping_interval=0))
        tracker.add("cbp", 0.0, 10)
    else:
        tracker = PresenceTracker()
        tracker.add("cbp", 0.0, 10, pings=False)
    assert tracker.snapshot("cbp").pings is False
    tracker.frame_received("cbp", 7.0)
    seen = run(tracker, 0.0, 200.0)
    assert len(seen) == 1
    when, verdict = seen[0]
    assert isinstance(verdict, DeclareOffline)
    assert verdict.reason is OfflineReason.HEARTBEAT_TIMEOUT
    assert when == 37.0  # 3 × 10 after the last frame
    assert verdict.silent_for == 30.0


def test_min_silence_floor() -> None:
    tracker: PresenceTracker[str] = PresenceTracker(PresencePolicy(min_silence=15))
    tracker.add("fast", 0.0, 1, pings=False)  # 3 × 1 s would be 3 s
    seen = run(tracker, 0.0, 60.0)
    assert [(t, a.reason) for t, a in seen if isinstance(a, DeclareOffline)] == [
        (15.0, OfflineReason.HEARTBEAT_TIMEOUT)
    ]
    assert "floor 15 s" in offline([a for _, a in seen])[0].detail


def test_frame_after_ping_cancels_the_timeout() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    assert tracker.tick(10.0) == [SendPing("a")]
    assert tracker.snapshot("a").state is LinkState.AWAITING_PONG
    assert tracker.snapshot("a").ping_sent_at == 10.0
    assert tracker.frame_received("a", 15.0)
    snap = tracker.snapshot("a")
    assert (snap.state, snap.ping_sent_at, snap.last_rx) == (LinkState.IDLE, None, 15.0)
    assert tracker.tick(20.0) == []  # the pong deadline passes harmlessly
    assert tracker.tick(24.0) == []
    assert tracker.tick(25.0) == [SendPing("a")]  # idle P after the frame


def test_pong_cancels_the_timeout_and_postpones_the_next_ping() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    assert tracker.tick(10.0) == [SendPing("a")]
    assert tracker.pong_received("a", 10.5)
    snap = tracker.snapshot("a")
    assert (snap.state, snap.last_pong, snap.last_rx) == (LinkState.IDLE, 10.5, 0.0)
    assert tracker.tick(20.0) == []
    assert tracker.tick(20.5) == [SendPing("a")]


def test_quick_answer_with_pings_more_frequent_than_the_pong_timeout() -> None:
    # P < T: the answer makes the next ping due before the old pong deadline.
    tracker: PresenceTracker[str] = PresenceTracker(PresencePolicy(ping_interval=2))
    tracker.add("a", 0.0, 60)
    assert tracker.tick(2.0) == [SendPing("a")]
    assert tracker.pong_received("a", 2.1)
    assert tracker.tick(4.0) == []
    assert tracker.tick(5.0) == [SendPing("a")]  # due at 4.1, not at the 12.0 deadline
    assert tracker.tick(6.0) == []  # outstanding: re-checked every P, not per frame
    assert tracker.frame_received("a", 6.5)
    assert tracker.tick(8.0) == []
    assert tracker.tick(9.0) == [SendPing("a")]
    assert tracker.tick(11.0) == []  # still outstanding at 11: look again at 13
    assert tracker.pong_received("a", 11.5)
    assert tracker.tick(13.0) == []
    assert tracker.tick(14.0) == [SendPing("a")]  # due at 13.5, not at the 19.0 deadline


def test_unsolicited_pong_is_accepted_and_counts_for_the_transport() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    assert tracker.pong_received("a", 5.0)
    assert tracker.snapshot("a").state is LinkState.IDLE
    assert tracker.tick(10.0) == []
    assert tracker.tick(15.0) == [SendPing("a")]


def test_answer_stamped_before_the_ping_does_not_answer_it() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    assert tracker.tick(10.0) == [SendPing("a")]
    assert tracker.frame_received("a", 9.5)  # read before the ping, reported after
    assert tracker.snapshot("a").state is LinkState.AWAITING_PONG
    assert tracker.snapshot("a").last_rx == 9.5
    (verdict,) = offline(tracker.tick(20.0))
    assert verdict.reason is OfflineReason.PING_TIMEOUT


def test_last_rx_never_moves_backwards() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    tracker.frame_received("a", 8.0)
    tracker.frame_received("a", 7.0)
    assert tracker.snapshot("a").last_rx == 8.0


def test_remove_prevents_any_later_action() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    tracker.add("b", 0.0, 60)
    assert tracker.tick(10.0) == [SendPing("a"), SendPing("b")]
    assert tracker.remove("a") is True  # while awaiting its pong
    assert tracker.remove("a") is False  # idempotent
    assert "a" not in tracker and len(tracker) == 1
    seen = run(tracker, 11.0, HOUR)
    assert {a.key for _, a in seen} == {"b"}
    assert tracker.stats.dead_skips == 1
    # a closed connection's late reports are ignored, not errors
    assert tracker.frame_received("a", 12.0) is False
    assert tracker.pong_received("a", 12.0) is False


def test_readding_a_removed_key_starts_afresh() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    tracker.remove("a")
    tracker.add("a", 5.0, 60)
    assert tracker.tick(10.0) == []  # the old connection's entry is dead
    assert tracker.stats.dead_skips == 1
    assert tracker.tick(15.0) == [SendPing("a")]
    assert tracker.stats.heap_pops == 2


def test_a_stalled_ticker_still_gives_the_pong_its_full_timeout() -> None:
    # The event loop was blocked for 25 s: the ping goes out late, and the
    # charger still gets T from when it really went out.
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 0.0, 60)
    assert tracker.tick(25.0) == [SendPing("a")]
    assert tracker.snapshot("a").ping_sent_at == 25.0
    assert tracker.tick(34.0) == []
    assert tracker.pong_received("a", 34.5)
    assert tracker.tick(35.0) == []
    assert "a" in tracker


def test_set_heartbeat_interval_changes_the_watchdog() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("short", 0.0, 60, pings=False)
    tracker.add("long", 0.0, 10, pings=False)
    tracker.frame_received("short", 2.0)  # BootNotification
    tracker.set_heartbeat_interval("short", 10)
    tracker.frame_received("long", 2.0)
    tracker.set_heartbeat_interval("long", 300)
    assert tracker.snapshot("short").heartbeat_interval == 10
    assert tracker.snapshot("long").watchdog_window == 900
    seen = run(tracker, 0.0, 2 * HOUR)
    assert [(t, a.key) for t, a in seen] == [(32.0, "short"), (902.0, "long")]


def test_shrinking_the_interval_below_the_silence_fires_at_the_next_tick() -> None:
    tracker: PresenceTracker[str] = PresenceTracker(PresencePolicy(min_silence=0))
    tracker.add("a", 0.0, 60, pings=False)
    tracker.frame_received("a", 1.0)
    assert tracker.tick(100.0) == []
    tracker.set_heartbeat_interval("a", 10)  # window 30 s, silent for 99 s already
    (verdict,) = offline(tracker.tick(101.0))
    assert verdict.silent_for == 100.0
    assert "3 × heartbeat interval 10 s = 30 s" in verdict.detail


def test_errors_for_unknown_and_duplicate_keys() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    with pytest.raises(UnknownConnection):
        tracker.set_heartbeat_interval("x", 60)
    with pytest.raises(UnknownConnection):
        tracker.snapshot("x")
    assert tracker.frame_received("x", 1.0) is False
    assert tracker.pong_received("x", 1.0) is False
    tracker.add("x", 0.0, 60)
    with pytest.raises(DuplicateConnection):
        tracker.add("x", 1.0, 60)
    with pytest.raises(ValueError, match="now"):
        tracker.add("y", math.nan, 60)
    # an offline key is forgotten: same as unknown
    tracker.remove("x")
    tracker.add("z", 0.0, 60, pings=False)
    assert offline(tracker.tick(180.0))
    assert tracker.pong_received("z", 181.0) is False
    with pytest.raises(UnknownConnection):
        tracker.set_heartbeat_interval("z", 60)
    assert issubclass(UnknownConnection, PresenceError)
    assert issubclass(DuplicateConnection, PresenceError)


def test_snapshot_and_iteration() -> None:
    tracker: PresenceTracker[str] = PresenceTracker()
    tracker.add("a", 100.0, 60)
    tracker.add("b", 100.0, 30, pings=False)
    assert sorted(tracker) == ["a", "b"]
    snap = tracker.snapshot("a")
    assert snap.state is LinkState.IDLE
    assert (snap.last_rx, snap.ping_sent_at, snap.last_pong) == (100.0, None, None)
    assert (snap.heartbeat_interval, snap.watchdog_window, snap.pings) == (60, 180, True)
    assert tracker.next_deadline == 110.0


# --------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------
def test_tick_work_is_proportional_to_what_is_due() -> None:
    tracker: PresenceTracker[int] = PresenceTracker()
    tracker.add(-1, 0.0, 60)  # the one connection that will be due first
    for key in range(10_000):
        tracker.add(key, 5.0, 60)
    assert tracker.stats.heap_size == 10_001

    assert tracker.tick(9.0) == []
    assert tracker.stats.heap_pops == 0  # nothing due: only the heap top was looked at

    assert tracker.tick(10.0) == [SendPing(-1)]
    assert tracker.stats.heap_pops == 1
    tracker.remove(-1)  # leaves one dead entry behind

    # The hot path never touches the heap, however many frames arrive.
    for t in (11.0, 12.0, 13.0):
        for key in range(10_000):
            assert tracker.frame_received(key, t)
    assert tracker.stats.heap_size == 10_001
    assert tracker.tick(14.0) == []
    assert tracker.stats.heap_pops == 1

    # When the (now early) entries pop they are pushed back once, not per frame.
    assert tracker.tick(15.0) == []
    stats = tracker.stats
    assert stats.heap_pops == 10_001
    assert stats.reschedules == 10_000
    assert stats.heap_size == 10_001
    assert tracker.tick(22.0) == []
    stats = tracker.stats
    assert (stats.heap_pops, stats.dead_skips, stats.heap_size) == (10_002, 1, 10_000)
    assert len(pings(tracker.tick(23.0))) == 10_000
    assert tracker.stats.heap_pops == 20_002


def test_dead_entries_are_compacted() -> None:
    tracker: PresenceTracker[int] = PresenceTracker()
    for key in range(5_000):
        tracker.add(key, 0.0, 60)
    for key in range(4_000):
        tracker.remove(key)
    stats = tracker.stats
    assert stats.compactions >= 1
    assert stats.heap_size < 2 * stats.connections + 1024
    assert tracker.stats.connections == 1_000
    assert {a.key for a in tracker.tick(10.0)} == set(range(4_000, 5_000))


# --------------------------------------------------------------------------
# property: random interleavings
# --------------------------------------------------------------------------
KEYS = ["a", "b", "c", "d"]
EPS = 1e-9


@dataclass
class Model:
    """What the test knows about one live connection."""

    pings: bool
    heartbeat_interval: float
    window: float
    last_rx: float
    last_heard: float
    window_set_at: float
    ping_sent_at: float | None = None


policies = st.builds(
    PresencePolicy,
    # one policy in five disables pings for the whole node
    ping_interval=st.sampled_from([0.0, 1.0, 1.0, 1.0, 1.0]).flatmap(
        lambda on: st.floats(0.5, 20) if on else st.just(0.0)
    ),
    pong_timeout=st.floats(0.5, 20),
    heartbeat_multiple=st.floats(1.1, 5),
    min_silence=st.floats(0, 30),
)
intervals = st.floats(1, 60)
ping_flags = st.sampled_from([True, True, True, False])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, TICK)),
        # a stretch of silence, ticked every second: lets pings, pong
        # deadlines and watchdogs actually come due
        st.tuples(st.just("idle"), st.integers(1, 40)),
        st.tuples(st.just("frame"), st.sampled_from(KEYS)),
        st.tuples(st.just("pong"), st.sampled_from(KEYS)),
        st.tuples(st.just("remove"), st.sampled_from(KEYS)),
        st.tuples(st.just("add"), st.sampled_from(KEYS), intervals, ping_flags),
        st.tuples(st.just("heartbeat"), st.sampled_from(KEYS), intervals),
    ),
    min_size=1,
    max_size=150,
)
# the connections that exist at t = 0: (heartbeat interval, pings)
initial = st.lists(st.tuples(intervals, ping_flags), min_size=1, max_size=len(KEYS))


# None: pings are never answered (a half-open link); else how (a pong, or any
# frame, which answers as well) and after what delay, which may exceed the
# pong timeout (then the answer races with the verdict)
answers = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(st.sampled_from([0.0, 0.3, 1.5]), st.floats(0, 3), st.floats(0, 25)),
        st.sampled_from(["pong", "frame"]),
    ),
)


@settings(max_examples=1000, deadline=None)
@given(policy=policies, first=initial, script=steps, answer=answers)
def test_random_interleavings(
    policy: PresencePolicy,
    first: list[tuple[float, bool]],
    script: list[tuple[object, ...]],
    answer: tuple[float, str] | None,
) -> None:
    tracker: PresenceTracker[str] = PresenceTracker(policy)
    live: dict[str, Model] = {}
    now = 0.0
    P, T = policy.ping_interval, policy.pong_timeout

    def latest_offline(m: Model) -> float:
        """When a silent connection must be offline at the latest (ticks <= TICK apart)."""
        bound = max(m.last_rx + m.window, m.window_set_at) + TICK
        if m.pings:
            bound = min(bound, m.last_heard + P + T + 2 * TICK)
        return bound

    answers_due: dict[str, float] = {}  # key -> when the answer to its ping arrives

    def deliver_answers() -> None:
        assert answer is not None or not answers_due
        for key, at in list(answers_due.items()):
            if at > now:
                continue
            del answers_due[key]
            assert answer is not None
            m = live.get(key)
            if answer[1] == "pong":
                assert tracker.pong_received(key, now) is (m is not None)
            else:
                assert tracker.frame_received(key, now) is (m is not None)
            if m is None:
                event("answer after the verdict")
                continue
            if m.ping_sent_at is not None:
                event(f"{answer[1]} answers a ping")
            m.last_heard = now
            if answer[1] == "frame":
                m.last_rx = now
            m.ping_sent_at = None

    def do_tick() -> None:
        deliver_answers()
        for action in tracker.tick(now):
            key = action.key
            # never an action for a removed or already-offline key
            assert key in live, (action, now)
            m = live[key]
            if isinstance(action, SendPing):
                event("ping sent")
                assert m.pings and m.ping_sent_at is None
                assert now - m.last_heard >= P - EPS
                m.ping_sent_at = now
                if answer is not None:
                    answers_due[key] = now + answer[0]
                continue
            event(f"offline: {action.reason}")
            del live[key]
            assert key not in tracker
            # never offline with a recent frame: the required min(P, M × H)
            # holds in its stronger form min(P + T, window)
            silence = now - m.last_rx
            floor = min(P + T, m.window) if m.pings else m.window
            assert silence >= floor - EPS
            # (and so, literally: no frame within min(P, M × H) before the tick)
            hb_floor = policy.heartbeat_multiple * m.heartbeat_interval
            assert silence >= (min(P, hb_floor) if m.pings else hb_floor) - EPS
            if action.reason is OfflineReason.PING_TIMEOUT:
                assert m.pings and m.ping_sent_at is not None
                assert now - m.ping_sent_at >= T - EPS
                assert now - m.last_heard >= P + T - EPS
                assert action.silent_for == pytest.approx(now - m.last_heard)
            else:
                assert action.reason is OfflineReason.HEARTBEAT_TIMEOUT
                assert silence >= m.window - EPS
                assert action.silent_for == pytest.approx(silence)
        for key, m in live.items():
            assert key in tracker
            # nothing that was due at this tick is left undone (same float
            # expressions as the tracker, so exact comparisons are fair)
            assert not m.last_rx + m.window <= now, ("watchdog missed", key, m, now)
            if m.ping_sent_at is not None:
                assert not m.ping_sent_at + T <= now, ("pong deadline missed", key, m, now)
            elif m.pings:
                assert not m.last_heard + P <= now, ("ping missed", key, m, now)
            # hence: every silent connection is offline no later than its bound
            assert now <= latest_offline(m) + EPS, (key, m, now)
            # which is the advertised detection_bound, counted from the last
            # thing received (unless the watchdog was shortened since)
            if m.window_set_at <= m.last_heard:
                bound = policy.detection_bound(
                    m.heartbeat_interval, pings=m.pings, tick_interval=TICK
                )
                assert now - m.last_heard <= bound + EPS, (key, m, now)

    script = [
        ("add", k, interval, flag) for (interval, flag), k in zip(first, KEYS, strict=False)
    ] + script

    for step in script:
        kind = step[0]
        if kind == "advance":
            assert isinstance(step[1], float)
            now += step[1]
            do_tick()
            continue
        if kind == "idle":
            assert isinstance(step[1], int)
            for _ in range(step[1]):
                now += TICK
                do_tick()
            continue
        key = step[1]
        assert isinstance(key, str)
        m_or_none = live.get(key)
        if kind == "frame":
            assert tracker.frame_received(key, now) is (m_or_none is not None)
            if m_or_none is not None:
                if m_or_none.ping_sent_at is not None:
                    event("frame answers a ping")
                m_or_none.last_rx = m_or_none.last_heard = now
                m_or_none.ping_sent_at = None
        elif kind == "pong":
            assert tracker.pong_received(key, now) is (m_or_none is not None)
            if m_or_none is not None:
                if m_or_none.ping_sent_at is not None:
                    event("pong answers a ping")
                m_or_none.last_heard = now
                m_or_none.ping_sent_at = None
        elif kind == "remove":
            assert tracker.remove(key) is (m_or_none is not None)
            live.pop(key, None)
            answers_due.pop(key, None)
        elif kind == "add":
            hb, with_pings = step[2], step[3]
            assert isinstance(hb, float) and isinstance(with_pings, bool)
            if m_or_none is not None:
                with pytest.raises(DuplicateConnection):
                    tracker.add(key, now, hb, pings=with_pings)
            else:
                tracker.add(key, now, hb, pings=with_pings)
                live[key] = Model(
                    pings=with_pings and policy.pings_enabled,
                    heartbeat_interval=hb,
                    window=policy.watchdog_window(hb),
                    last_rx=now,
                    last_heard=now,
                    window_set_at=now,
                )
        else:
            assert kind == "heartbeat"
            hb = step[2]
            assert isinstance(hb, float)
            if m_or_none is None:
                with pytest.raises(UnknownConnection):
                    tracker.set_heartbeat_interval(key, hb)
            else:
                tracker.set_heartbeat_interval(key, hb)
                if policy.watchdog_window(hb) < m_or_none.window:
                    event("watchdog shortened")
                m_or_none.heartbeat_interval = hb
                m_or_none.window = policy.watchdog_window(hb)
                m_or_none.window_set_at = now
        assert len(tracker) == len(live)

    # Then the links fall silent (no more answers either): ticking on, every
    # remaining connection must go offline, each within its bound.
    answer = None
    answers_due.clear()
    deadline = max((latest_offline(m) + TICK for m in live.values()), default=now)
    while live and now < deadline:
        now += TICK
        do_tick()
    assert not live
    assert len(tracker) == 0
