"""The task-level orchestrator: which piles get UpdateFirmware next, and when to stop.

Pure like the per-pile machine: the caller passes ``now`` and executes the
returned actions, in order. One :class:`Rollout` per task holds the task's
:class:`~firmware.pile_upgrade.PileUpgrade` values and drives each with
:func:`~firmware.pile_upgrade.step`; it alone decides dispatches, so the
gateway never sends :class:`~firmware.pile_upgrade.DispatchPossible`
itself.

Rules, in the order they are applied on every call (:meth:`Rollout.tick`,
and after every :meth:`Rollout.handle`, so a freed slot is refilled at once):

1. ``scheduled`` becomes ``running`` at ``schedule.start_at``.
2. Only a ``running`` task dispatches, and only inside the maintenance
   window. Piles already in flight are followed whatever the task state:
   an UpdateFirmware cannot be recalled.
3. Waves. Wave 0 is the canary (if any), then waves 1, 2, ... A pile joins
   the current wave when it is *dispatched* (not when it is listed), so
   piles that are offline, charging or already at the target take no place
   in a wave and do not dilute its failure rate. A wave *closes* when
   (a) it has members, (b) they are all final (for the canary) or final or
   waiting (for the others: a member deferred while charging must not hold
   the fleet hostage), and (c) it is full, or nothing else could join it
   right now (every remaining pile is offline or charging). Closing
   evaluates it: the canary passes only if no member failed; another wave
   passes if its failure rate failed / (verified + failed) is not above
   ``rollout.failure_threshold``. A failing wave stops the task
   (``stopped``, with the reason); a passing one opens the next.
4. Dispatch order: first members of earlier or current waves that are
   ready again (retries after backoff, piles deferred while charging), then
   new piles in the task's order until the current wave is full; never more
   than ``rollout.max_concurrent`` piles in flight (sent .. installed).
   A pile reached while offline or charging becomes ``waiting`` and is
   dispatched when it is back (it joins whichever wave is current then).
5. ``completed`` when every pile is final (after the last wave's check).

Persistence and restart: every change to a pile's durable fields comes out
as :class:`SavePile` *before* the actions it causes, so a gateway that
executes actions in order has the pile durably ``sent`` before its
UpdateFirmware leaves; a crash in between leaves a pile ``sent`` that never
got the command, which its download timeout turns into a retry: at most
once, never twice. :meth:`Rollout.restore` rebuilds the orchestrator from
the saved :class:`RolloutRecord`; piles in flight stay in flight (their
timers are re-armed), so nothing is dispatched twice.

Cost: counts per (wave, state, blocked) are kept incrementally, so the
checks on every call are O(number of states × waves); the list of piles is
scanned only when a slot is free and there is something to dispatch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

from .pile_upgrade import (
    FINAL,
    IN_FLIGHT,
    STAGE_OF,
    ArmTimer,
    Cancel,
    DispatchPossible,
    PileAction,
    PileEvent,
    PileState,
    PileUpgrade,
    RecordError,
    step,
)
from .task import FirmwareTask, PileFacts, require_aware

__all__ = [
    "TASK_TRANSITIONS",
    "Action",
    "IllegalTaskTransition",
    "Rollout",
    "RolloutError",
    "RolloutRecord",
    "SavePile",
    "SaveTask",
    "TaskProgress",
    "TaskRecord",
    "TaskState",
    "TaskTrigger",
    "UnknownPile",
    "WaveResult",
    "next_task_state",
]


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
class RolloutError(Exception):
    """A call the rollout does not allow."""


class IllegalTaskTransition(RolloutError):
    def __init__(self, task_id: int, state: TaskState, trigger: TaskTrigger) -> None:
        super().__init__(
            f"firmware task {task_id}: {trigger.value!r} is illegal in state {state.value!r}"
        )
        self.task_id = task_id
        self.state = state
        self.trigger = trigger


class UnknownPile(RolloutError, KeyError):
    """An event for a pile that is not part of the task."""

    def __init__(self, task_id: int, pile_id: str) -> None:
        super().__init__(f"firmware task {task_id}: pile {pile_id} is not a target")
        self.task_id = task_id
        self.pile_id = pile_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# --------------------------------------------------------------------------
# task states and their table
# --------------------------------------------------------------------------
class TaskState(StrEnum):
    SCHEDULED = "scheduled"  # before schedule.start_at
    RUNNING = "running"
    PAUSED = "paused"  # by an operator: nothing new is dispatched
    STOPPED = "stopped"  # by a failing wave: an operator may only cancel it
    COMPLETED = "completed"  # every pile final
    CANCELLED = "cancelled"


class TaskTrigger(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    RESUME_EARLY = "resume_early"  # resumed before start_at: back to waiting for it
    STOP = "stop"
    FINISH = "finish"
    CANCEL = "cancel"


_TS, _TT = TaskState, TaskTrigger
# A stopped task does not resume: its remaining piles deserve a new task,
# created after someone looked at why the wave failed. Completed and
# cancelled are terminal.
_TASK_TABLE: dict[tuple[TaskState, TaskTrigger], TaskState] = {
    (_TS.SCHEDULED, _TT.START): _TS.RUNNING,
    (_TS.SCHEDULED, _TT.PAUSE): _TS.PAUSED,
    (_TS.SCHEDULED, _TT.CANCEL): _TS.CANCELLED,
    (_TS.RUNNING, _TT.PAUSE): _TS.PAUSED,
    (_TS.RUNNING, _TT.STOP): _TS.STOPPED,
    (_TS.RUNNING, _TT.FINISH): _TS.COMPLETED,
    (_TS.RUNNING, _TT.CANCEL): _TS.CANCELLED,
    (_TS.PAUSED, _TT.RESUME): _TS.RUNNING,
    (_TS.PAUSED, _TT.RESUME_EARLY): _TS.SCHEDULED,
    (_TS.PAUSED, _TT.CANCEL): _TS.CANCELLED,
    (_TS.STOPPED, _TT.CANCEL): _TS.CANCELLED,
}
TASK_TRANSITIONS: Mapping[tuple[TaskState, TaskTrigger], TaskState] = MappingProxyType(_TASK_TABLE)


def next_task_state(task_id: int, state: TaskState, trigger: TaskTrigger) -> TaskState:
    try:
        return _TASK_TABLE[state, trigger]
    except KeyError:
        raise IllegalTaskTransition(task_id, state, trigger) from None


# --------------------------------------------------------------------------
# persisted task-level values
# --------------------------------------------------------------------------
def _time(key: str, raw: Any) -> datetime:
    if not isinstance(raw, str):
        raise RecordError(key, f"{raw!r} is not an ISO 8601 string")
    try:
        return require_aware(key, datetime.fromisoformat(raw))
    except ValueError as exc:
        raise RecordError(key, str(exc)) from None


def _count(key: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise RecordError(key, f"{raw!r} is not a non-negative integer")
    return raw


def _get(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise RecordError(key, "missing") from None


@dataclass(frozen=True, slots=True)
class WaveResult:
    """A closed wave and its verdict. ``members`` counts every pile dispatched
    in it; ``other`` those neither verified nor failed (skipped after the
    send, cancelled, or still waiting when it closed)."""

    index: int
    members: int
    verified: int
    failed: int
    other: int
    failure_rate: float
    passed: bool
    closed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "members": self.members,
            "verified": self.verified,
            "failed": self.failed,
            "other": self.other,
            "failure_rate": self.failure_rate,
            "passed": self.passed,
            "closed_at": self.closed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WaveResult:
        rate = _get(data, "failure_rate")
        passed = _get(data, "passed")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise RecordError("failure_rate", f"{rate!r} is not a fraction")
        if not isinstance(passed, bool):
            raise RecordError("passed", f"{passed!r} is not a boolean")
        return cls(
            index=_count("index", _get(data, "index")),
            members=_count("members", _get(data, "members")),
            verified=_count("verified", _get(data, "verified")),
            failed=_count("failed", _get(data, "failed")),
            other=_count("other", _get(data, "other")),
            failure_rate=float(rate),
            passed=passed,
            closed_at=_time("closed_at", _get(data, "closed_at")),
        )


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """The task's own durable state (the piles are saved one by one)."""

    task_id: int
    state: TaskState
    reason: str | None
    waves: tuple[WaveResult, ...]
    since: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "reason": self.reason,
            "waves": [w.to_dict() for w in self.waves],
            "since": None if self.since is None else self.since.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskProgress:
        raw_state = _get(data, "state")
        try:
            state = TaskState(raw_state)
        except ValueError:
            raise RecordError("state", f"{raw_state!r} is not a task state") from None
        reason = _get(data, "reason")
        if reason is not None and not isinstance(reason, str):
            raise RecordError("reason", f"{reason!r} is not a string")
        waves = _get(data, "waves")
        if not isinstance(waves, list | tuple):
            raise RecordError("waves", "is not a list")
        since = _get(data, "since")
        return cls(
            task_id=_count("task_id", _get(data, "task_id")),
            state=state,
            reason=reason,
            waves=tuple(WaveResult.from_dict(w) for w in waves),
            since=None if since is None else _time("since", since),
        )


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """Everything :meth:`Rollout.restore` needs besides the task spec."""

    progress: TaskProgress
    piles: tuple[PileUpgrade, ...]  # in rollout order

    def to_dict(self) -> dict[str, Any]:
        return {
            "progress": self.progress.to_dict(),
            "piles": [p.to_dict() for p in self.piles],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutRecord:
        piles = _get(data, "piles")
        if not isinstance(piles, list | tuple):
            raise RecordError("piles", "is not a list")
        return cls(
            progress=TaskProgress.from_dict(_get(data, "progress")),
            piles=tuple(PileUpgrade.from_dict(p) for p in piles),
        )


# --------------------------------------------------------------------------
# actions (besides the per-pile ones)
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SavePile:
    """Persist this pile's record (:meth:`PileUpgrade.to_dict`) before what follows."""

    task_id: int
    upgrade: PileUpgrade


@dataclass(frozen=True, slots=True)
class SaveTask:
    progress: TaskProgress


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """Audit-log line of a task state change."""

    task_id: int
    at: datetime
    from_state: TaskState
    to_state: TaskState
    trigger: TaskTrigger
    reason: str | None


Action: TypeAlias = PileAction | SavePile | SaveTask | TaskRecord

_Key: TypeAlias = tuple[int | None, PileState, bool]  # (wave, state, blocked)


# --------------------------------------------------------------------------
# the orchestrator
# --------------------------------------------------------------------------
class Rollout:
    """One firmware task in progress. Mutable (it replaces its frozen pile
    values as events arrive); every public value it hands out is frozen."""

    __slots__ = ("_counts", "_piles", "_reason", "_since", "_spec", "_state", "_waves")

    def __init__(self, spec: FirmwareTask, piles: Iterable[PileFacts]) -> None:
        """A new task over ``piles`` (in rollout order; see :meth:`FirmwareTask.select`)."""
        self._setup(spec, [PileUpgrade.new(facts) for facts in piles])
        self._state = TaskState.SCHEDULED
        self._reason: str | None = None
        self._waves: list[WaveResult] = []
        self._since: datetime | None = None

    def _setup(self, spec: FirmwareTask, upgrades: list[PileUpgrade]) -> None:
        self._spec = spec
        self._piles: dict[str, PileUpgrade] = {}
        self._counts: Counter[_Key] = Counter()
        for upgrade in upgrades:
            if upgrade.pile_id in self._piles:
                raise RolloutError(
                    f"firmware task {spec.task_id}: pile {upgrade.pile_id} is listed twice"
                )
            self._piles[upgrade.pile_id] = upgrade
            self._counts[_key(upgrade)] += 1
        # An explicit list is the task's whole pile set (select() keeps even
        # unknown piles), so anything else is a caller's mix-up. A selector's
        # matches may drift with the facts, so the set it gave is taken as is.
        if isinstance(spec.targets, tuple) and set(spec.targets) != set(self._piles):
            extra = sorted(set(self._piles) - set(spec.targets))
            missing = sorted(set(spec.targets) - set(self._piles))
            raise RolloutError(
                f"firmware task {spec.task_id}: piles do not match the target list "
                f"(not listed: {extra[:3]}, missing: {missing[:3]})"
            )

    @classmethod
    def restore(
        cls,
        spec: FirmwareTask,
        record: RolloutRecord,
        now: datetime,
        facts: Mapping[str, PileFacts] | None = None,
    ) -> tuple[Rollout, list[Action]]:
        """Rebuild after a gateway restart.

        ``facts`` refreshes each pile's live view (online, charging); a pile
        without facts is taken as offline, which is what it is until it
        reconnects. The pile set is the record's: a selector that would now
        match more piles does not grow a running task. The returned actions
        re-arm the timers of piles in flight or in backoff (a deadline already
        past fires at once). Nothing is dispatched here; call :meth:`tick`.
        """
        require_aware("now", now)
        if record.progress.task_id != spec.task_id:
            raise RolloutError(
                f"record of task {record.progress.task_id} given for task {spec.task_id}"
            )
        facts = facts or {}
        upgrades = []
        for upgrade in record.piles:
            live = facts.get(upgrade.pile_id)
            upgrades.append(
                replace(
                    upgrade,
                    online=live is not None and live.online,
                    charging=live is not None and live.charging,
                )
            )
        rollout = cls.__new__(cls)
        rollout._setup(spec, upgrades)
        rollout._state = record.progress.state
        rollout._reason = record.progress.reason
        rollout._waves = list(record.progress.waves)
        rollout._since = record.progress.since
        actions: list[Action] = []
        for upgrade in upgrades:
            stage = STAGE_OF.get(upgrade.state)
            if stage is not None and upgrade.deadline is not None:
                actions.append(ArmTimer(spec.task_id, upgrade.pile_id, upgrade.deadline, stage))
        return rollout, actions

    # --- introspection ----------------------------------------------------
    @property
    def spec(self) -> FirmwareTask:
        return self._spec

    @property
    def task_id(self) -> int:
        return self._spec.task_id

    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def waves(self) -> tuple[WaveResult, ...]:
        """The closed waves, in order."""
        return tuple(self._waves)

    @property
    def current_wave(self) -> int:
        return self._spec.rollout.first_wave + len(self._waves)

    def __len__(self) -> int:
        return len(self._piles)

    def __contains__(self, pile_id: object) -> bool:
        return pile_id in self._piles

    def upgrade(self, pile_id: str) -> PileUpgrade:
        try:
            return self._piles[pile_id]
        except KeyError:
            raise UnknownPile(self.task_id, pile_id) from None

    def upgrades(self) -> tuple[PileUpgrade, ...]:
        """Every pile, in rollout order."""
        return tuple(self._piles.values())

    def in_flight(self) -> int:
        return sum(n for (_, state, _), n in self._counts.items() if state in IN_FLIGHT)

    def progress(self) -> TaskProgress:
        waves = tuple(self._waves)
        return TaskProgress(self.task_id, self._state, self._reason, waves, self._since)

    def snapshot(self) -> RolloutRecord:
        """The full persisted form (for the first save, or a consistency check)."""
        return RolloutRecord(self.progress(), self.upgrades())

    def next_wakeup(self, now: datetime) -> datetime | None:
        """When :meth:`tick` next has time-driven work (start time, window
        opening), or None. Pile deadlines come separately as ArmTimer."""
        schedule = self._spec.schedule
        if self._state is TaskState.SCHEDULED:
            return schedule.start_at
        if self._state is TaskState.RUNNING and self._dispatch_work():
            return schedule.next_opening(now)
        return None

    # --- driving ----------------------------------------------------------
    def tick(self, now: datetime) -> list[Action]:
        """Start, close waves, dispatch, complete: whatever ``now`` allows."""
        require_aware("now", now)
        actions: list[Action] = []
        self._advance(now, actions)
        return actions

    def handle(self, pile_id: str, event: PileEvent) -> list[Action]:
        """Feed one event of a pile (status, boot, reply, timer, presence, cancel)."""
        if isinstance(event, DispatchPossible):
            raise RolloutError("dispatching is the rollout's decision: call tick()")
        if pile_id not in self._piles:
            raise UnknownPile(self.task_id, pile_id)
        actions: list[Action] = []
        self._apply(pile_id, event, actions)
        upgrade = self._piles[pile_id]
        # A cancelled task retries nothing: a pile that just came back from
        # flight with attempts left is cancelled instead.
        if self._state is TaskState.CANCELLED and upgrade.state in _CANCELLABLE:
            self._apply(pile_id, Cancel(event.now), actions)
        self._advance(event.now, actions)
        return actions

    def pause(self, now: datetime) -> list[Action]:
        """Dispatch nothing new; piles in flight are still followed."""
        actions: list[Action] = []
        self._transition(TaskTrigger.PAUSE, require_aware("now", now), "paused", actions)
        return actions

    def resume(self, now: datetime) -> list[Action]:
        require_aware("now", now)
        actions: list[Action] = []
        early = now < self._spec.schedule.start_at
        trigger = TaskTrigger.RESUME_EARLY if early else TaskTrigger.RESUME
        self._transition(trigger, now, None, actions)
        self._advance(now, actions)
        return actions

    def cancel(self, now: datetime) -> list[Action]:
        """Cancel every pile not yet in flight; those in flight are followed to their end."""
        require_aware("now", now)
        actions: list[Action] = []
        self._transition(TaskTrigger.CANCEL, now, "cancelled", actions)
        for pile_id, upgrade in list(self._piles.items()):
            if upgrade.state in _CANCELLABLE:
                self._apply(pile_id, Cancel(now), actions)
        return actions

    # --- internals --------------------------------------------------------
    def _store(self, upgrade: PileUpgrade) -> None:
        old = self._piles[upgrade.pile_id]
        self._counts[_key(old)] -= 1
        if not self._counts[_key(old)]:
            del self._counts[_key(old)]
        self._counts[_key(upgrade)] += 1
        self._piles[upgrade.pile_id] = upgrade

    def _apply(
        self, pile_id: str, event: PileEvent, actions: list[Action], wave: int | None = None
    ) -> PileUpgrade:
        old = self._piles[pile_id]
        new, pile_actions = step(self._spec, old, event)
        if wave is not None and new.state is PileState.SENT and new.wave is None:
            new = replace(new, wave=wave)
        self._store(new)
        if not new.durable_equals(old):
            actions.append(SavePile(self.task_id, new))
        actions.extend(pile_actions)
        return new

    def _transition(
        self, trigger: TaskTrigger, now: datetime, reason: str | None, actions: list[Action]
    ) -> None:
        before = self._state
        after = next_task_state(self.task_id, before, trigger)
        self._state = after
        self._reason = reason
        self._since = now
        actions.append(TaskRecord(self.task_id, now, before, after, trigger, reason))
        actions.append(SaveTask(self.progress()))

    def _advance(self, now: datetime, actions: list[Action]) -> None:
        if self._state is TaskState.SCHEDULED and now >= self._spec.schedule.start_at:
            self._transition(TaskTrigger.START, now, None, actions)
        while self._state is TaskState.RUNNING:
            while self._close_wave(now, actions):
                if self._state is not TaskState.RUNNING:
                    return
            if not any(state not in FINAL for (_, state, _) in self._counts):
                self._transition(TaskTrigger.FINISH, now, self._summary(), actions)
                return
            if not self._spec.schedule.may_dispatch(now) or not self._dispatch(now, actions):
                return

    def _summary(self) -> str:
        counts: Counter[PileState] = Counter()
        for (_, state, _), n in self._counts.items():
            counts[state] += n
        return ", ".join(
            f"{counts[s]} {s.value}"
            for s in (PileState.VERIFIED, PileState.FAILED, PileState.SKIPPED, PileState.CANCELLED)
        )

    def _candidates(self) -> int:
        """Piles that could join the current wave right now (not yet in any wave)."""
        return sum(
            n
            for (wave, state, blocked), n in self._counts.items()
            if wave is None
            and (state is PileState.PENDING or (state is PileState.WAITING and not blocked))
        )

    def _dispatch_work(self) -> bool:
        return any(_ready(state, blocked) for (_, state, blocked) in self._counts)

    def _close_wave(self, now: datetime, actions: list[Action]) -> bool:
        """Close the current wave if it may be; False if it stays open."""
        index = self.current_wave
        members: Counter[PileState] = Counter()
        for (wave, state, _), n in self._counts.items():
            if wave == index:
                members[state] += n
        total = sum(members.values())
        if not total:
            return False
        settled = FINAL if index == 0 else _SETTLED
        if any(state not in settled for state in members):
            return False
        if total < self._spec.rollout.wave_size(index, len(self._piles)) and self._candidates():
            return False
        verified, failed = members[PileState.VERIFIED], members[PileState.FAILED]
        rate = failed / (verified + failed) if verified + failed else 0.0
        threshold = self._spec.rollout.failure_threshold
        passed = failed == 0 if index == 0 else rate <= threshold
        self._waves.append(
            WaveResult(index, total, verified, failed, total - verified - failed, rate, passed, now)
        )
        if not passed:
            if index == 0:
                why = f"canary failed: {failed} of {total} canary piles failed"
            else:
                why = f"failure rate {rate:.0%} > threshold {threshold:.0%} in wave {index}"
            self._transition(TaskTrigger.STOP, now, why, actions)
        else:
            actions.append(SaveTask(self.progress()))
        return True

    def _dispatch(self, now: datetime, actions: list[Action]) -> bool:
        """Reach piles in order while slots (and the wave's quota) last. True if
        any pile changed state."""
        slots = self._spec.rollout.max_concurrent - self.in_flight()
        if slots <= 0 or not self._dispatch_work():
            return False
        changed = False
        index = self.current_wave
        members = sum(n for (wave, _, _), n in self._counts.items() if wave == index)
        quota = self._spec.rollout.wave_size(index, len(self._piles)) - members
        # Members first (retries, deferred ones), then new piles into the wave.
        for joining in (False, True):
            for pile_id, upgrade in list(self._piles.items()):
                if slots <= 0 or (joining and quota <= 0):
                    break
                if (upgrade.wave is None) is not joining or not _ready(
                    upgrade.state, upgrade.blocked
                ):
                    continue
                event = DispatchPossible(upgrade.online, upgrade.charging, now)
                new = self._apply(pile_id, event, actions, wave=index if joining else None)
                changed = changed or new.state is not upgrade.state
                if new.state is PileState.SENT:
                    slots -= 1
                    if joining:
                        quota -= 1
        return changed


_CANCELLABLE = frozenset({PileState.PENDING, PileState.WAITING, PileState.RETRY_WAIT})
# A non-canary wave may close with members waiting (deferred while charging).
_SETTLED = FINAL | {PileState.WAITING}


def _key(upgrade: PileUpgrade) -> _Key:
    return (upgrade.wave, upgrade.state, upgrade.blocked)


def _ready(state: PileState, blocked: bool) -> bool:
    """Worth a DispatchPossible: pending ones are reached even when blocked
    (they become waiting, visibly); waiting ones only once unblocked."""
    return state is PileState.PENDING or (state is PileState.WAITING and not blocked)
