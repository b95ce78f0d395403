"""Presence: dead-link detection for every connection of one gateway node.

A charger whose SIM is cut does not close its TCP connection: no FIN ever
arrives, the socket stays "open" and, without active detection, the pile stays
"online" for as long as the kernel's TCP keepalive allows (hours by default).
This module decides, from what arrives and when, that such a link is dead.

Two independent detectors, both per connection:

* **Ping/pong** (WebSocket links): a link that has been quiet for
  ``ping_interval`` gets a ping; if neither a pong nor any frame arrives within
  ``pong_timeout``, the link is declared offline (``ping_timeout``). This is
  what gives the short bound: it proves the transport end to end.
* **Heartbeat watchdog** (every link): if no *frame* arrived for
  ``max(heartbeat_multiple × heartbeat_interval, min_silence)``, the pile is
  declared offline (``heartbeat_timeout``). Pongs deliberately do not feed
  this watchdog: a pong is produced by the charger's WebSocket/TCP stack,
  so a charger whose application hung keeps answering pings while it sends
  no heartbeat, status or transaction - for the operator it is offline. It is
  also the only detector on the cloud-board protocol, which has no pings.

Shape (see the design notes): a pure state machine. Time is a
float of a monotonic clock passed in by the caller; nothing here reads a
clock, sleeps, logs or touches a socket. The asyncio layer runs *one* ticker
task per node that calls :meth:`PresenceTracker.tick` about once a second and
executes the returned actions (send a ping; close the connection and record
the offline event).

Cost model (10,000 mostly idle chargers per node must stay cheap):

* :meth:`PresenceTracker.frame_received` runs for every message, so it is
  O(1) and allocation-free: it only records ``last_rx``. It never touches the
  heap.
* Every connection has exactly one *live* entry in a min-heap of deadlines.
  Invariant: the entry's time is never later than the connection's true next
  deadline, whatever arrives before it pops; it may be earlier, because
  frames move deadlines later without touching the heap. When such an early
  entry pops, the true deadline is recomputed and the entry pushed back
  (lazy rescheduling): at most one heap operation per connection per
  ``ping_interval``, whatever the message rate. The one arrival that can
  move a deadline *earlier* is the answer to a ping (the next ping is then
  due P after the answer, possibly before the pong deadline), so while a
  ping is outstanding the entry is never set more than P ahead.
* Entries carry a generation number; a removed connection, or one whose
  entry was replaced by an earlier one, leaves a dead entry that is skipped
  when it pops (lazy invalidation), and the heap is compacted when dead
  entries outnumber live ones.
* So :meth:`PresenceTracker.tick` does work proportional to what is due (plus
  the skipped entries), and a tick with nothing due only looks at the top of
  the heap. :attr:`PresenceTracker.stats` exposes the counters that prove it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Generic, TypeAlias, TypeVar

__all__ = [
    "DEFAULT_POLICY",
    "TRANSITIONS",
    "Action",
    "DeclareOffline",
    "DuplicateConnection",
    "IllegalTransition",
    "LinkEvent",
    "LinkState",
    "OfflineReason",
    "PresenceError",
    "PresencePolicy",
    "PresenceState",
    "PresenceTracker",
    "SendPing",
    "TrackerStats",
    "UnknownConnection",
    "next_state",
]

K = TypeVar("K", bound=Hashable)

# Compact the heap only past this many dead entries: below it the dead
# entries cost less memory than a rebuild costs time, and a small tracker
# with connection churn should not rebuild on every removal.
_COMPACT_MIN_DEAD = 1024


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
class PresenceError(Exception):
    """A call the presence state machine does not allow."""


class IllegalTransition(PresenceError):
    """The event is not allowed in the connection's current state."""

    def __init__(self, state: LinkState, event: LinkEvent) -> None:
        super().__init__(f"presence: event {event.value!r} is illegal in state {state.value!r}")
        self.state = state
        self.event = event


class UnknownConnection(PresenceError):
    """The key is not tracked (never added, removed, or already declared offline)."""

    def __init__(self, key: object) -> None:
        super().__init__(f"presence: connection {key!r} is not tracked")
        self.key = key


class DuplicateConnection(PresenceError):
    """``add`` for a key that is already tracked.

    Raised rather than overwritten: the asyncio layer must first remove the
    connection being replaced (and record it as ``replaced``), otherwise the
    old connection's deadlines would silently carry over to the new one.
    """

    def __init__(self, key: object) -> None:
        super().__init__(f"presence: connection {key!r} is already tracked")
        self.key = key


# --------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------
def _check_number(name: str, value: float, *, minimum: float, inclusive: bool, hint: str) -> None:
    # bool is an int subclass; True as a timeout is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        op = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum:g}{hint}, got {value!r}")


def _check_heartbeat_interval(value: float) -> None:
    _check_number("heartbeat_interval", value, minimum=0, inclusive=False, hint="")


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """Timing of dead-link detection, shared by every connection of a node.

    ``ping_interval`` (P): seconds of silence after which a ping is sent;
    0 disables pings for the whole node. ``pong_timeout`` (T): how long a ping
    may stay unanswered. ``heartbeat_multiple`` (M) and ``min_silence``: the
    watchdog declares a pile offline when no frame at all arrived for
    ``max(M × heartbeat_interval, min_silence)``.

    Defaults: P = 10 s and T = 10 s put a silently dead WebSocket link offline
    within 20 s (the requirement is 30 s). M = 3 is the cloud-board protocol's
    presence rule (three missed heartbeats). ``min_silence`` = 15 s is
    3 × the smallest heartbeat interval the gateway configuration hands out
    (5 s), so it changes nothing for those and only guards a smaller interval
    (a cloud-board login reply may say 1 s), where a 4G hiccup of a few
    seconds would otherwise take the pile offline.
    """

    ping_interval: float = 10.0
    pong_timeout: float = 10.0
    heartbeat_multiple: float = 3.0
    min_silence: float = 15.0

    def __post_init__(self) -> None:
        _check_number(
            "ping_interval",
            self.ping_interval,
            minimum=0,
            inclusive=True,
            hint=" (0 disables pings)",
        )
        _check_number("pong_timeout", self.pong_timeout, minimum=0, inclusive=False, hint="")
        _check_number(
            "heartbeat_multiple",
            self.heartbeat_multiple,
            minimum=1,
            inclusive=False,
            hint=" (at 1 or less, one heartbeat a moment late would take the pile offline)",
        )
        _check_number(
            "min_silence", self.min_silence, minimum=0, inclusive=True, hint=" (0 = no floor)"
        )

    @property
    def pings_enabled(self) -> bool:
        return self.ping_interval > 0

    def watchdog_window(self, heartbeat_interval: float) -> float:
        """Silence (no frame at all) after which the watchdog declares the pile offline."""
        _check_heartbeat_interval(heartbeat_interval)
        return max(self.heartbeat_multiple * heartbeat_interval, self.min_silence)

    def detection_bound(
        self, heartbeat_interval: float, *, pings: bool = True, tick_interval: float = 0.0
    ) -> float:
        """Worst-case time from a silent link death (no FIN) to the offline verdict.

        With W = ``watchdog_window(heartbeat_interval)``:

        * pings on:  ``min(P + T, W)``
        * pings off: ``W``

        Why: the link may die right after the last thing it delivered (a frame
        or a pong); that is the worst moment, because anything received
        restarts the idle clock. Nothing arrives afterwards, so the next ping
        goes out at most P later and, unanswered, is judged T after that:
        P + T. Independently the watchdog fires W after the last frame, which
        is no later than W after the death (pongs do not feed the watchdog,
        but the last frame cannot be later than the last thing received).
        Whichever detector fires first wins, hence the ``min``.

        ``tick_interval`` (τ) adds the discreteness of the ticker: a deadline
        is noticed by the first tick at or after it, so up to τ late. The ping
        path has two deadlines in sequence (send the ping, then judge it) and
        the ping's own timeout starts only when it is actually sent, so it
        gains 2τ: ``min(P + T + 2τ, W + τ)``; pings off: ``W + τ``.
        """
        window = self.watchdog_window(heartbeat_interval)
        _check_number("tick_interval", tick_interval, minimum=0, inclusive=True, hint="")
        if pings and self.pings_enabled:
            return min(
                self.ping_interval + self.pong_timeout + 2 * tick_interval,
                window + tick_interval,
            )
        return window + tick_interval


DEFAULT_POLICY = PresencePolicy()


# --------------------------------------------------------------------------
# states, events, transition table
# --------------------------------------------------------------------------
class LinkState(StrEnum):
    IDLE = "idle"  # nothing outstanding: waiting for the next deadline
    AWAITING_PONG = "awaiting_pong"  # a ping went out at ping_sent_at
    OFFLINE = "offline"  # terminal: the tracker forgets the key right away


class LinkEvent(StrEnum):
    FRAME = "frame"  # any frame/bytes from the charger
    PONG = "pong"
    PING_SENT = "ping_sent"  # tick() asked for a ping
    PONG_TIMEOUT = "pong_timeout"
    WATCHDOG_TIMEOUT = "watchdog_timeout"
    HEARTBEAT_SET = "heartbeat_set"  # the interval was (re)negotiated


class OfflineReason(StrEnum):
    """Why a pile went offline, as recorded in its presence events.

    The tracker itself produces the first two; the asyncio layer uses the
    others when it reports a connection it closed or saw closed, so that all
    presence events share one vocabulary. Values fit ``presence_events.reason``
    (32 characters).
    """

    PING_TIMEOUT = "ping_timeout"  # no pong (nor any frame) within pong_timeout of a ping
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # no frame for the watchdog window
    CLOSED_CLEAN = "closed_clean"  # close handshake / FIN from the charger
    CLOSED_ABNORMAL = "closed_abnormal"  # RST, protocol error, close code 1006 ...
    REPLACED = "replaced"  # the same pile connected again; the old link is dropped
    GATEWAY_SHUTDOWN = "gateway_shutdown"  # this node is stopping


_S = LinkState
_E = LinkEvent

# The whole per-connection state machine. A pair that is absent is illegal.
# Absent on purpose: IDLE × PONG_TIMEOUT (no ping is outstanding),
# AWAITING_PONG × PING_SENT (one ping at a time, so its timeout is
# meaningful), and everything out of OFFLINE (terminal).
_TABLE: dict[tuple[LinkState, LinkEvent], LinkState] = {
    (_S.IDLE, _E.FRAME): _S.IDLE,
    # Unsolicited pongs are legal WebSocket traffic (RFC 6455 §5.5.3, used as
    # a unidirectional heartbeat); they prove the transport is alive.
    (_S.IDLE, _E.PONG): _S.IDLE,
    (_S.IDLE, _E.PING_SENT): _S.AWAITING_PONG,
    (_S.IDLE, _E.HEARTBEAT_SET): _S.IDLE,
    (_S.IDLE, _E.WATCHDOG_TIMEOUT): _S.OFFLINE,
    # Any frame after the ping proves the link as well as the pong would.
    (_S.AWAITING_PONG, _E.FRAME): _S.IDLE,
    (_S.AWAITING_PONG, _E.PONG): _S.IDLE,
    (_S.AWAITING_PONG, _E.HEARTBEAT_SET): _S.AWAITING_PONG,
    (_S.AWAITING_PONG, _E.PONG_TIMEOUT): _S.OFFLINE,
    (_S.AWAITING_PONG, _E.WATCHDOG_TIMEOUT): _S.OFFLINE,
}

TRANSITIONS: Mapping[tuple[LinkState, LinkEvent], LinkState] = MappingProxyType(_TABLE)


def next_state(state: LinkState, event: LinkEvent) -> LinkState:
    """Look the transition up in the table; raise :class:`IllegalTransition` if absent."""
    try:
        return _TABLE[state, event]
    except KeyError:
        raise IllegalTransition(state, event) from None


# --------------------------------------------------------------------------
# actions and snapshots
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendPing(Generic[K]):
    """Send a WebSocket ping on this connection and report its pong."""

    key: K


@dataclass(frozen=True, slots=True)
class DeclareOffline(Generic[K]):
    """The link is dead: close it (code 1011, or abort the TCP connection)
    and record the offline event. The tracker has already forgotten the key.

    ``silent_for`` is the silence that triggered the verdict: since anything
    at all (frame or pong) for ``ping_timeout``, since the last frame for
    ``heartbeat_timeout``.
    """

    key: K
    reason: OfflineReason
    silent_for: float
    detail: str


Action: TypeAlias = SendPing[K] | DeclareOffline[K]


@dataclass(frozen=True, slots=True)
class PresenceState:
    """One connection's presence, for the ops API."""

    state: LinkState
    last_rx: float  # last frame (the handshake/login counts as the first)
    ping_sent_at: float | None  # the outstanding ping, if any
    heartbeat_interval: float
    last_pong: float | None
    pings: bool  # whether this connection is pinged at all
    watchdog_window: float


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """Work counters since the tracker was created (plus current sizes)."""

    connections: int
    heap_size: int
    heap_pops: int  # every entry tick() took off the heap
    dead_skips: int  # popped entries of removed/superseded connections
    reschedules: int  # popped entries whose deadline had moved later: pushed back
    pings_sent: int
    offline_declared: int
    compactions: int


# --------------------------------------------------------------------------
# tracker
# --------------------------------------------------------------------------
# Mutable on purpose, unlike the public values: frame_received updates
# last_rx in place for every message, and allocating a new frozen record
# per frame would be the only cost on that path.
@dataclass(slots=True)
class _Link:
    state: LinkState
    last_rx: float
    last_heard: float  # last frame or pong: what the ping schedule follows
    last_pong: float | None
    ping_sent_at: float | None
    heartbeat_interval: float
    window: float
    pings: bool
    gen: int  # generation of this link's one live heap entry
    wake_at: float  # time of that entry; never later than the true next deadline


class PresenceTracker(Generic[K]):
    """Presence of every connection of a node, keyed by ``K`` (e.g. a connection id).

    All ``now`` arguments are seconds of one monotonic clock. Slightly
    out-of-order times (stamped by one task, reported after another's) are
    tolerated: ``last_rx`` never moves backwards, and a frame or pong stamped
    before the outstanding ping was sent does not answer it. (An answer
    stamped before the latest tick may have its effect on the next ping
    noticed up to that delay late: harmless, the delay is one loop turn.)
    """

    __slots__ = (
        "_compactions",
        "_dead",
        "_dead_skips",
        "_gens",
        "_heap",
        "_links",
        "_offline",
        "_pings",
        "_policy",
        "_pops",
        "_reschedules",
    )

    def __init__(self, policy: PresencePolicy = DEFAULT_POLICY) -> None:
        self._policy = policy
        self._links: dict[K, _Link] = {}
        # (deadline, generation, key). Generations are unique, so the key is
        # never compared and need not be orderable.
        self._heap: list[tuple[float, int, K]] = []
        self._gens = itertools.count()
        self._dead = 0  # entries in the heap that no link owns any more
        self._pops = 0
        self._dead_skips = 0
        self._reschedules = 0
        self._pings = 0
        self._offline = 0
        self._compactions = 0

    # --- introspection ----------------------------------------------------
    @property
    def policy(self) -> PresencePolicy:
        return self._policy

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, key: object) -> bool:
        return key in self._links

    def __iter__(self) -> Iterator[K]:
        """The tracked keys (e.g. to declare them all ``gateway_shutdown``); copy before
        removing while iterating."""
        return iter(self._links)

    @property
    def stats(self) -> TrackerStats:
        return TrackerStats(
            connections=len(self._links),
            heap_size=len(self._heap),
            heap_pops=self._pops,
            dead_skips=self._dead_skips,
            reschedules=self._reschedules,
            pings_sent=self._pings,
            offline_declared=self._offline,
            compactions=self._compactions,
        )

    @property
    def next_deadline(self) -> float | None:
        """Earliest time at which :meth:`tick` may have work, or None when empty.

        Possibly earlier than needed (lazy entries), never later: a ticker may
        sleep until ``min(next_deadline, now + 1)`` instead of ticking blindly.
        """
        return self._heap[0][0] if self._heap else None

    def snapshot(self, key: K) -> PresenceState:
        link = self._get(key)
        return PresenceState(
            state=link.state,
            last_rx=link.last_rx,
            ping_sent_at=link.ping_sent_at,
            heartbeat_interval=link.heartbeat_interval,
            last_pong=link.last_pong,
            pings=link.pings,
            watchdog_window=link.window,
        )

    # --- connection lifecycle --------------------------------------------
    def add(self, key: K, now: float, heartbeat_interval: float, pings: bool = True) -> None:
        """Start tracking a connection that was just accepted at ``now``.

        The handshake/login counts as the first frame. ``heartbeat_interval``
        is the one the charger will be (or was) given; update it with
        :meth:`set_heartbeat_interval` once negotiated. ``pings=False`` for
        protocols without pings (cloud-board TCP); a policy with
        ``ping_interval == 0`` disables them for every connection.
        """
        if key in self._links:
            raise DuplicateConnection(key)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        window = self._policy.watchdog_window(heartbeat_interval)
        link = _Link(
            state=LinkState.IDLE,
            last_rx=now,
            last_heard=now,
            last_pong=None,
            ping_sent_at=None,
            heartbeat_interval=heartbeat_interval,
            window=window,
            pings=pings and self._policy.pings_enabled,
            gen=-1,
            wake_at=math.inf,
        )
        self._links[key] = link
        first = now + window
        if link.pings:
            first = min(first, now + self._policy.ping_interval)
        self._schedule(key, link, first)

    def remove(self, key: K) -> bool:
        """Forget a connection the asyncio layer closed (or saw closed).

        Idempotent: True if it was tracked. Nothing is ever returned for it
        again; its heap entry is left to be skipped when it pops.
        """
        if self._links.pop(key, None) is None:
            return False
        self._dead += 1
        self._maybe_compact()
        return True

    def set_heartbeat_interval(self, key: K, seconds: float) -> None:
        """The heartbeat interval was negotiated (BootNotification, cloud-board login)."""
        link = self._get(key)
        window = self._policy.watchdog_window(seconds)
        link.state = next_state(link.state, LinkEvent.HEARTBEAT_SET)
        link.heartbeat_interval = seconds
        link.window = window
        # A longer window needs nothing: the live entry is early, and early
        # entries reschedule themselves. A shorter one may need an earlier
        # entry, which supersedes (kills) the current one.
        deadline = link.last_rx + window
        if deadline < link.wake_at:
            self._dead += 1
            self._schedule(key, link, deadline)
            self._maybe_compact()

    # --- what arrives (hot path) -----------------------------------------
    def frame_received(self, key: K, now: float) -> bool:
        """Any frame (or, for byte streams, any bytes) from the charger.

        O(1) and touches no heap: it runs for every message. Returns False
        and ignores the call for an unknown key rather than raising, because
        the asyncio layer may legitimately report a frame it read just before
        the ticker declared the connection offline (and removed it) or while
        the connection is being closed: a race, not a bug.
        """
        link = self._links.get(key)
        if link is None:
            return False
        if now > link.last_rx:
            link.last_rx = now
        if now > link.last_heard:
            link.last_heard = now
        # A frame stamped before the ping went out cannot answer it.
        if link.ping_sent_at is None or now >= link.ping_sent_at:
            link.state = next_state(link.state, LinkEvent.FRAME)
            link.ping_sent_at = None
        return True

    def pong_received(self, key: K, now: float) -> bool:
        """A pong arrived. Proves the transport (answers the outstanding ping and
        postpones the next one) but not the application: the heartbeat
        watchdog ignores it. Unknown key: False, for the same race as
        :meth:`frame_received`."""
        link = self._links.get(key)
        if link is None:
            return False
        if link.last_pong is None or now > link.last_pong:
            link.last_pong = now
        if now > link.last_heard:
            link.last_heard = now
        if link.ping_sent_at is None or now >= link.ping_sent_at:
            link.state = next_state(link.state, LinkEvent.PONG)
            link.ping_sent_at = None
        return True

    # --- the ticker ------------------------------------------------------
    def tick(self, now: float) -> list[Action[K]]:
        """Process every deadline at or before ``now``; return what to do, in deadline order.

        Each connection is handled at most once per tick (its new deadline
        is always after ``now``), so the work is the number of due entries.
        """
        actions: list[Action[K]] = []
        heap = self._heap
        links = self._links
        while heap and heap[0][0] <= now:
            _, gen, key = heapq.heappop(heap)
            self._pops += 1
            link = links.get(key)
            if link is None or link.gen != gen:
                self._dead -= 1
                self._dead_skips += 1
                continue
            action = self._due(key, link, now)
            if action is not None:
                actions.append(action)
        return actions

    # --- internals -------------------------------------------------------
    def _get(self, key: K) -> _Link:
        link = self._links.get(key)
        if link is None:
            raise UnknownConnection(key)
        return link

    def _schedule(self, key: K, link: _Link, when: float) -> None:
        gen = next(self._gens)
        link.gen = gen
        link.wake_at = when
        heapq.heappush(self._heap, (when, gen, key))

    def _due(self, key: K, link: _Link, now: float) -> Action[K] | None:
        """The link's live entry popped: act on whatever is really due, else push it back."""
        policy = self._policy
        watchdog_at = link.last_rx + link.window
        if link.ping_sent_at is not None:
            pong_at = link.ping_sent_at + policy.pong_timeout
            # Both overdue (a late tick): report the one that expired first,
            # which is what a continuous clock would have said; a tie goes to
            # the ping, the more specific diagnosis (the transport is dead).
            if pong_at <= now and pong_at <= watchdog_at:
                return self._declare(key, link, now, LinkEvent.PONG_TIMEOUT)
            if watchdog_at <= now:
                return self._declare(key, link, now, LinkEvent.WATCHDOG_TIMEOUT)
            self._reschedules += 1
            # An answer arriving from now on makes the next ping due P after
            # it, i.e. no earlier than now + P: the entry must not be later.
            self._schedule(key, link, min(pong_at, watchdog_at, now + policy.ping_interval))
            return None
        if watchdog_at <= now:
            return self._declare(key, link, now, LinkEvent.WATCHDOG_TIMEOUT)
        if link.pings:
            ping_at = link.last_heard + policy.ping_interval
            if ping_at <= now:
                link.state = next_state(link.state, LinkEvent.PING_SENT)
                # The pong gets its full timeout from when the ping really
                # goes out (this tick), not from when it was due: a late
                # tick (a stalled loop) must not condemn healthy links.
                link.ping_sent_at = now
                self._pings += 1
                # Not later than now + P either: see the invariant above.
                wake = min(now + policy.pong_timeout, now + policy.ping_interval, watchdog_at)
                self._schedule(key, link, wake)
                return SendPing(key)
            watchdog_at = min(watchdog_at, ping_at)
        self._reschedules += 1
        self._schedule(key, link, watchdog_at)
        return None

    def _declare(self, key: K, link: _Link, now: float, event: LinkEvent) -> DeclareOffline[K]:
        link.state = next_state(link.state, event)
        del self._links[key]  # its entry was just popped: nothing left in the heap
        self._offline += 1
        if event is LinkEvent.PONG_TIMEOUT:
            silent = now - link.last_heard
            return DeclareOffline(
                key,
                OfflineReason.PING_TIMEOUT,
                silent,
                f"no pong or frame within {self._policy.pong_timeout:g} s of a ping; "
                f"nothing received for {silent:.1f} s",
            )
        silent = now - link.last_rx
        return DeclareOffline(
            key, OfflineReason.HEARTBEAT_TIMEOUT, silent, self._watchdog_detail(link, now, silent)
        )

    def _watchdog_detail(self, link: _Link, now: float, silent: float) -> str:
        policy = self._policy
        multiple = policy.heartbeat_multiple * link.heartbeat_interval
        if multiple >= policy.min_silence:
            limit = (
                f"{policy.heartbeat_multiple:g} × heartbeat interval "
                f"{link.heartbeat_interval:g} s = {multiple:g} s"
            )
        else:
            limit = (
                f"floor {policy.min_silence:g} s (heartbeat interval {link.heartbeat_interval:g} s)"
            )
        detail = f"no frame for {silent:.1f} s (limit: {limit})"
        if link.last_pong is not None and link.last_pong > link.last_rx:
            # The case a ping alone would miss: the TCP/WebSocket stack answers,
            # the charger's application does not.
            detail += f"; it still answered a ping {now - link.last_pong:.1f} s ago"
        return detail

    def _maybe_compact(self) -> None:
        """Drop dead entries once they outnumber live ones (amortised O(1) per removal)."""
        if self._dead < _COMPACT_MIN_DEAD or self._dead <= len(self._links):
            return
        links = self._links
        live = []
        for entry in self._heap:
            link = links.get(entry[2])
            if link is not None and link.gen == entry[1]:
                live.append(entry)
        heapq.heapify(live)
        self._heap = live
        self._dead = 0
        self._compactions += 1
