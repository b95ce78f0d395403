"""The per-pile upgrade state machine of a firmware task.

::

    pending ──▶ sent ──▶ downloading ──▶ downloaded ──▶ installing ──▶ installed
                 (forward jumps allowed: chargers skip statuses)           │ boot
    pending ──▶ waiting      offline or charging when reached             ├─ target ──▶ verified
    pending ──▶ skipped      already at (or past) the target              └─ other ───▶ failed
    in flight ──▶ retry_wait ──backoff──▶ pending     a failure, attempts left
    in flight ──▶ failed     a failure of the last attempt
    pending, waiting, retry_wait ──▶ cancelled

A pile counts as done only when it *boots reporting the target version*;
the charger's own "Installed" is a promise, not a proof. One step function,
:func:`step`, takes the task, the pile's current :class:`PileUpgrade` (a
frozen value, also its persisted form) and one event, and returns the new
value and the actions to execute. Time comes in on every event; timers go
out as :class:`ArmTimer` and come back as :class:`StageTimeout`.

How an event becomes a transition: :func:`classify` turns the event plus
the guards (attempts left? is this the target version? did we ever send?)
into a :class:`Trigger`; the single table :data:`TRANSITIONS` maps
(state, trigger) to the next state, and a missing pair raises
:class:`IllegalTransition`. So every decision is either a guard in
``classify`` or a row of the table, nowhere else.

What raises and what is tolerated: events the *gateway* originates in the
wrong state are bugs and raise (dispatching a pile already in flight,
which is how a double UpdateFirmware would happen; a reply to a command
never sent; cancelling a finished pile). What *chargers* send is not
trusted to be orderly, so firmware statuses and boots are legal in every
state: a stale or backwards status is recorded but moves nothing, and a
timer that fires after its stage ended is ignored (a race, not a bug).

Retries: a failed attempt with attempts left goes to ``retry_wait`` (a
state of its own rather than "failed, but not really", so ``failed`` is
always final) and back to ``pending`` when the backoff timer fires; the
rollout then dispatches it again. Failures that a retry cannot fix are
final at once: the charger says it does not support the update, or it
installed the image and still booted another version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

from .task import FirmwareTask, PileFacts, require_aware
from .version import FirmwareVersion, Version, VersionError, parse_version

__all__ = [
    "DISPATCHABLE",
    "FINAL",
    "IN_FLIGHT",
    "STAGE_OF",
    "TRANSITIONS",
    "ArmTimer",
    "BootReported",
    "Cancel",
    "ChargingEnded",
    "ChargingStarted",
    "DispatchPossible",
    "FirmwareStatus",
    "IllegalTransition",
    "PileAction",
    "PileEvent",
    "PileOffline",
    "PileOnline",
    "PileState",
    "PileUpgrade",
    "Record",
    "RecordError",
    "RejectReason",
    "SendUpdate",
    "Sent",
    "Stage",
    "StageTimeout",
    "StatusReported",
    "Trigger",
    "UpdateRejected",
    "UpgradeError",
    "classify",
    "next_state",
    "step",
]


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
class UpgradeError(Exception):
    """A call the upgrade machine does not allow."""


class IllegalTransition(UpgradeError):
    """The event is not allowed in the pile's current state."""

    def __init__(self, pile_id: str, state: PileState, trigger: Trigger) -> None:
        super().__init__(
            f"firmware: pile {pile_id}: {trigger.value!r} is illegal in state {state.value!r}"
        )
        self.pile_id = pile_id
        self.state = state
        self.trigger = trigger


class RecordError(UpgradeError, ValueError):
    """A persisted pile record cannot be read back; ``key`` names the field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"firmware pile record: {key}: {message}")
        self.key = key


# --------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------
class PileState(StrEnum):
    PENDING = "pending"  # not reached yet, or ready for a retry
    WAITING = "waiting"  # reached while offline or charging: deferred
    SENT = "sent"  # UpdateFirmware sent (persisted before it leaves)
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"  # the charger says so; waiting for its boot
    VERIFIED = "verified"  # booted reporting the target version
    FAILED = "failed"
    SKIPPED = "skipped"  # already at (or beyond) the target
    CANCELLED = "cancelled"
    RETRY_WAIT = "retry_wait"  # an attempt failed; backoff before the next


_S = PileState
IN_FLIGHT: frozenset[PileState] = frozenset(
    {_S.SENT, _S.DOWNLOADING, _S.DOWNLOADED, _S.INSTALLING, _S.INSTALLED}
)
FINAL: frozenset[PileState] = frozenset({_S.VERIFIED, _S.FAILED, _S.SKIPPED, _S.CANCELLED})
DISPATCHABLE: frozenset[PileState] = frozenset({_S.PENDING, _S.WAITING})


class Stage(StrEnum):
    """What a timer guards; each in-flight state belongs to exactly one stage."""

    DOWNLOAD = "download"
    INSTALL = "install"
    REBOOT = "reboot"
    BACKOFF = "backoff"


STAGE_OF: Mapping[PileState, Stage] = MappingProxyType(
    {
        _S.SENT: Stage.DOWNLOAD,
        _S.DOWNLOADING: Stage.DOWNLOAD,
        _S.DOWNLOADED: Stage.INSTALL,
        _S.INSTALLING: Stage.INSTALL,
        _S.INSTALLED: Stage.REBOOT,
        _S.RETRY_WAIT: Stage.BACKOFF,
    }
)


class FirmwareStatus(StrEnum):
    """Protocol-neutral firmware status (OCPP 1.6 FirmwareStatusNotification, CBP/1 0x95)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    CHECKSUM_FAILED = "checksum_failed"  # CBP/1 only: OCPP 1.6 has no checksum
    INSTALLING = "installing"
    INSTALLED = "installed"
    INSTALL_FAILED = "install_failed"

    @classmethod
    def from_ocpp16(cls, status: str) -> FirmwareStatus:
        """OCPP 1.6 FirmwareStatus (§7.25); ValueError for anything else."""
        try:
            return _OCPP16_STATUS[status]
        except KeyError:
            raise ValueError(f"not an OCPP 1.6 firmware status: {status!r}") from None

    @classmethod
    def from_cbp1(cls, code: int) -> FirmwareStatus:
        """CBP/1 0x95 status byte (1..7); ValueError for anything else."""
        try:
            return _CBP1_STATUS[code]
        except KeyError:
            raise ValueError(f"not a CBP/1 firmware status: {code!r}") from None

    @property
    def is_failure(self) -> bool:
        return self in _FAILURE_STATUS


_FS = FirmwareStatus
_OCPP16_STATUS: Mapping[str, FirmwareStatus] = MappingProxyType(
    {
        "Idle": _FS.IDLE,
        "Downloading": _FS.DOWNLOADING,
        "Downloaded": _FS.DOWNLOADED,
        "DownloadFailed": _FS.DOWNLOAD_FAILED,
        "Installing": _FS.INSTALLING,
        "Installed": _FS.INSTALLED,
        "InstallationFailed": _FS.INSTALL_FAILED,
    }
)
_CBP1_STATUS: Mapping[int, FirmwareStatus] = MappingProxyType(
    {
        1: _FS.DOWNLOADING,
        2: _FS.DOWNLOADED,
        3: _FS.DOWNLOAD_FAILED,
        4: _FS.CHECKSUM_FAILED,
        5: _FS.INSTALLING,
        6: _FS.INSTALLED,
        7: _FS.INSTALL_FAILED,
    }
)
_FAILURE_STATUS: Mapping[FirmwareStatus, str] = MappingProxyType(
    {
        _FS.DOWNLOAD_FAILED: "download failed",
        _FS.CHECKSUM_FAILED: "checksum failed",
        _FS.INSTALL_FAILED: "installation failed",
    }
)


class RejectReason(StrEnum):
    """Why the charger refused UpdateFirmware (CBP/1 0x93 result, or a CALLERROR)."""

    CHARGING = "charging"  # deferred, not failed: it will be re-sent when idle
    UNSUPPORTED = "unsupported"  # final: no retry will change it
    ALREADY_AT_TARGET = "already_at_target"  # skipped
    ERROR = "error"  # OCPP CALLERROR and the like: a failed attempt, retried

    @classmethod
    def from_cbp1(cls, result: int) -> RejectReason:
        """CBP/1 0x93 result 1..3 (0 is "accepted": report :class:`Sent` instead)."""
        try:
            return _CBP1_REJECT[result]
        except KeyError:
            raise ValueError(f"not a CBP/1 rejection result: {result!r}") from None


_CBP1_REJECT: Mapping[int, RejectReason] = MappingProxyType(
    {1: RejectReason.CHARGING, 2: RejectReason.UNSUPPORTED, 3: RejectReason.ALREADY_AT_TARGET}
)


class Trigger(StrEnum):
    """An event after its guards were evaluated: what the table is keyed on."""

    DISPATCH = "dispatch"  # the rollout's turn, pile reachable, not at target
    DEFER = "defer"  # the rollout's turn, but offline or charging
    AT_TARGET = "at_target"  # already runs the target (never sent): skip
    NEWER_THAN_TARGET = "newer_than_target"  # same product line, newer: skip
    ACCEPTED = "accepted"  # the charger acknowledged UpdateFirmware
    LATE_REPLY = "late_reply"  # a reply to an earlier attempt's command
    REJECTED_BUSY = "rejected_busy"
    REJECTED_AT_TARGET = "rejected_at_target"
    REJECTED_UNSUPPORTED = "rejected_unsupported"
    STATUS_DOWNLOADING = "status_downloading"
    STATUS_DOWNLOADED = "status_downloaded"
    STATUS_INSTALLING = "status_installing"
    STATUS_INSTALLED = "status_installed"
    STATUS_INFO = "status_info"  # Idle, or a status outside an attempt: noted only
    ATTEMPT_FAILED = "attempt_failed"  # a failure with attempts left
    GAVE_UP = "gave_up"  # a failure of the last attempt
    VERSION_UNCHANGED = "version_unchanged"  # installed, then booted the old version
    UNEXPECTED_VERSION = "unexpected_version"  # installed, then booted a third version
    BOOT_VERIFIED = "boot_verified"  # booted with the target after a send
    BOOT_INFO = "boot_info"  # any other boot: the version is noted
    RETRY_DUE = "retry_due"
    STALE_TIMER = "stale_timer"  # a timer of a stage already left
    CANCEL = "cancel"
    PRESENCE = "presence"  # online/offline/charging flags changed


# --------------------------------------------------------------------------
# the transition table: the whole machine
# --------------------------------------------------------------------------
_T = Trigger
_P, _W, _SENT, _DL, _DD, _IN, _ID = (
    _S.PENDING,
    _S.WAITING,
    _S.SENT,
    _S.DOWNLOADING,
    _S.DOWNLOADED,
    _S.INSTALLING,
    _S.INSTALLED,
)
_V, _F, _SK, _C, _R = _S.VERIFIED, _S.FAILED, _S.SKIPPED, _S.CANCELLED, _S.RETRY_WAIT

_TABLE: dict[tuple[PileState, Trigger], PileState] = {}


def _rows(states: tuple[PileState, ...], trigger: Trigger, to: PileState | None) -> None:
    """``to=None``: a self-loop (the event is noted, the state stays)."""
    for state in states:
        _TABLE[state, trigger] = state if to is None else to


_ALL = tuple(PileState)
_ATTEMPT = (_SENT, _DL, _DD, _IN, _ID)  # == IN_FLIGHT, in order of progress

# The rollout reaches a pile.
_rows((_P, _W), _T.DISPATCH, _SENT)
_rows((_P, _W), _T.DEFER, _W)
_rows((_P, _W), _T.AT_TARGET, _SK)
_rows((_P, _W), _T.NEWER_THAN_TARGET, _SK)
# The charger's reply to UpdateFirmware.
_rows((_SENT,), _T.ACCEPTED, None)
_rows((_SENT,), _T.REJECTED_BUSY, _W)
_rows((_SENT,), _T.REJECTED_AT_TARGET, _SK)
_rows((_SENT,), _T.REJECTED_UNSUPPORTED, _F)
# Progress: forward, possibly skipping statuses a charger does not send;
# a status that would go backwards (a late or repeated one) is a self-loop.
_rows((_SENT,), _T.STATUS_DOWNLOADING, _DL)
_rows((_DL, _DD, _IN, _ID), _T.STATUS_DOWNLOADING, None)
_rows((_SENT, _DL), _T.STATUS_DOWNLOADED, _DD)
_rows((_DD, _IN, _ID), _T.STATUS_DOWNLOADED, None)
_rows((_SENT, _DL, _DD), _T.STATUS_INSTALLING, _IN)
_rows((_IN, _ID), _T.STATUS_INSTALLING, None)
_rows((_SENT, _DL, _DD, _IN), _T.STATUS_INSTALLED, _ID)
_rows((_ID,), _T.STATUS_INSTALLED, None)
# Failures of an attempt (status, timeout, error reply).
_rows(_ATTEMPT, _T.ATTEMPT_FAILED, _R)
_rows(_ATTEMPT, _T.GAVE_UP, _F)
_rows((_ID,), _T.VERSION_UNCHANGED, _F)
_rows((_ID,), _T.UNEXPECTED_VERSION, _F)
# The proof: a boot with the target, at any point after a send, even after
# the machine had given up (a late truth beats an early verdict).
_rows((_P, _W, *_ATTEMPT, _R, _F, _SK, _C), _T.BOOT_VERIFIED, _V)
# Backoff and cancel. An UpdateFirmware already sent cannot be recalled
# (OCPP 1.6 has no cancel): a pile in flight keeps being followed to its end.
_rows((_R,), _T.RETRY_DUE, _P)
_rows((_P, _W, _R), _T.CANCEL, _C)
_rows(_ATTEMPT, _T.CANCEL, None)
# Noted everywhere, never a state change. (installed x boot_info is absent:
# every boot in installed is a verdict.)
_rows(_ALL, _T.STATUS_INFO, None)
_rows(_ALL, _T.LATE_REPLY, None)
_rows(_ALL, _T.STALE_TIMER, None)
_rows(_ALL, _T.PRESENCE, None)
_rows(tuple(s for s in _ALL if s is not _ID), _T.BOOT_INFO, None)

TRANSITIONS: Mapping[tuple[PileState, Trigger], PileState] = MappingProxyType(_TABLE)


def next_state(pile_id: str, state: PileState, trigger: Trigger) -> PileState:
    """Look the transition up in the table; raise :class:`IllegalTransition` if absent."""
    try:
        return _TABLE[state, trigger]
    except KeyError:
        raise IllegalTransition(pile_id, state, trigger) from None


# --------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DispatchPossible:
    """The rollout's turn for this pile, with the freshest presence/charging view."""

    online: bool
    charging: bool
    now: datetime


@dataclass(frozen=True, slots=True)
class Sent:
    """The charger acknowledged UpdateFirmware (OCPP CALLRESULT, CBP/1 0x93 result 0).

    Report no event when the reply simply never comes: the command may
    have arrived, and the download timeout settles it without risking a
    second UpdateFirmware on a charger that is already downloading.
    """

    now: datetime


@dataclass(frozen=True, slots=True)
class UpdateRejected:
    reason: RejectReason
    now: datetime
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StatusReported:
    """A firmware status from the charger (``firmware_status``)."""

    status: FirmwareStatus
    now: datetime


@dataclass(frozen=True, slots=True)
class BootReported:
    """A BootNotification / CBP/1 login, with the firmware version it reports."""

    version: Version
    now: datetime


@dataclass(frozen=True, slots=True)
class StageTimeout:
    """A timer armed by :class:`ArmTimer` fired (any stage, backoff included).

    The machine checks it against its own deadline, so the gateway never
    has to cancel timers: one that fires late or for a stage already left
    is ignored.
    """

    now: datetime


@dataclass(frozen=True, slots=True)
class Cancel:
    now: datetime


@dataclass(frozen=True, slots=True)
class PileOnline:
    now: datetime


@dataclass(frozen=True, slots=True)
class PileOffline:
    now: datetime


@dataclass(frozen=True, slots=True)
class ChargingStarted:
    now: datetime


@dataclass(frozen=True, slots=True)
class ChargingEnded:
    now: datetime


PileEvent: TypeAlias = (
    DispatchPossible
    | Sent
    | UpdateRejected
    | StatusReported
    | BootReported
    | StageTimeout
    | Cancel
    | PileOnline
    | PileOffline
    | ChargingStarted
    | ChargingEnded
)


# --------------------------------------------------------------------------
# actions
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendUpdate:
    """Send UpdateFirmware (OCPP: location + retrieveDate; CBP/1 0x94: all fields).

    ``retrieve_at`` is the dispatch time: the rollout already waited for
    the window. OCPP's own ``retries``/``retryInterval`` are meant to be
    left out: retries are this machine's, counted and visible.
    """

    task_id: int
    pile_id: str
    url: str
    sha256: str
    size: int
    target_version: str
    retrieve_at: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Report :class:`StageTimeout` for this pile at ``at`` (or at once if past)."""

    task_id: int
    pile_id: str
    at: datetime
    stage: Stage


@dataclass(frozen=True, slots=True)
class Record:
    """One line of the audit log: a state change of a pile, with its cause."""

    task_id: int
    pile_id: str
    at: datetime
    from_state: PileState
    to_state: PileState
    trigger: Trigger
    reason: str | None
    attempt: int


PileAction: TypeAlias = SendUpdate | ArmTimer | Record


# --------------------------------------------------------------------------
# the per-pile value (also its persisted form)
# --------------------------------------------------------------------------
# Fields that are the live view of the pile, not part of the task's record:
# after a restart nothing is connected yet, so they are never persisted.
_LIVE_FIELDS = frozenset({"online", "charging"})
_VERSION_FIELDS = frozenset({"from_version", "reported_version"})
_TIME_FIELDS = frozenset(
    {
        "last_status_at",
        "deadline",
        "state_since",
        "first_sent_at",
        "last_sent_at",
        "accepted_at",
        "finished_at",
    }
)


@dataclass(frozen=True, slots=True)
class PileUpgrade:
    """Where one pile stands in one task.

    ``attempts`` counts attempts against the retry budget (a "busy
    charging" rejection gives its attempt back); ``sends`` counts every
    UpdateFirmware sent. ``wave`` is set by the rollout at the first
    dispatch. ``deadline`` is the pending timer of the current stage.
    ``reason`` explains the current state; ``last_error`` keeps the last
    failure even after a successful retry.
    """

    pile_id: str
    state: PileState = PileState.PENDING
    wave: int | None = None
    attempts: int = 0
    sends: int = 0
    reason: str | None = None
    last_error: str | None = None
    from_version: Version | None = None
    reported_version: Version | None = None
    last_status: FirmwareStatus | None = None
    last_status_at: datetime | None = None
    deadline: datetime | None = None
    state_since: datetime | None = None
    first_sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    accepted_at: datetime | None = None
    finished_at: datetime | None = None
    online: bool = False
    charging: bool = False

    @classmethod
    def new(cls, facts: PileFacts) -> PileUpgrade:
        return cls(
            pile_id=facts.pile_id,
            reported_version=facts.version,
            online=facts.online,
            charging=facts.charging,
        )

    @property
    def stage(self) -> Stage | None:
        return STAGE_OF.get(self.state)

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def blocked(self) -> bool:
        return not self.online or self.charging

    def durable_equals(self, other: PileUpgrade) -> bool:
        """Equal in everything that is persisted (the live flags aside)."""
        return replace(self, online=other.online, charging=other.charging) == other

    # --- persistence ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the durable fields (versions as the charger wrote
        them, times as ISO 8601, enums as their values)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _LIVE_FIELDS:
                continue
            value = getattr(self, f.name)
            if isinstance(value, StrEnum):
                out[f.name] = value.value
            elif value is None or isinstance(value, str | int):
                out[f.name] = value
            elif isinstance(value, datetime):
                out[f.name] = value.isoformat()
            else:  # a version
                out[f.name] = value.raw
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, online: bool = False, charging: bool = False
    ) -> PileUpgrade:
        """Read back :meth:`to_dict`. Unknown keys are refused (a record from a
        newer schema must not be half-read); missing optional keys default."""
        names = {f.name for f in fields(cls)} - _LIVE_FIELDS
        unknown = set(data) - names
        if unknown:
            raise RecordError(sorted(unknown)[0], "unknown field")
        values: dict[str, Any] = {"online": online, "charging": charging}
        for name in names:
            if name not in data:
                if name == "pile_id":
                    raise RecordError(name, "missing")
                continue
            values[name] = _read(name, data[name])
        return cls(**values)


def _read(name: str, raw: Any) -> Any:
    if raw is None:
        if name in ("pile_id", "state", "attempts", "sends"):
            raise RecordError(name, "must not be null")
        return None
    try:
        if name in _TIME_FIELDS:
            if not isinstance(raw, str):
                raise ValueError("not an ISO 8601 string")
            return require_aware(name, datetime.fromisoformat(raw))
        if name in _VERSION_FIELDS:
            return parse_version(_string(raw))
        if name == "state":
            return PileState(raw)
        if name == "last_status":
            return FirmwareStatus(raw)
        if name == "pile_id":
            return PileFacts(_string(raw)).pile_id  # the same check as everywhere
        if name in ("wave", "attempts", "sends"):
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ValueError("not a non-negative integer")
            return raw
        return _string(raw)
    except (ValueError, VersionError) as exc:  # TaskSpecError is a ValueError
        raise RecordError(name, f"{raw!r}: {exc}") from None


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("not a string")
    return raw


# --------------------------------------------------------------------------
# classify: events + guards -> trigger (with the reason to record)
# --------------------------------------------------------------------------
def _failure(task: FirmwareTask, upgrade: PileUpgrade, what: str) -> tuple[Trigger, str]:
    """A failed attempt: retried while the budget lasts."""
    n, budget = upgrade.attempts, task.retries.max_attempts
    if n < budget:
        return _T.ATTEMPT_FAILED, f"{what} (attempt {n} of {budget})"
    return _T.GAVE_UP, f"{what} (attempt {n} of {budget}, none left)"


def _timeout_of(task: FirmwareTask, stage: Stage, upgrade: PileUpgrade) -> timedelta:
    if stage is Stage.DOWNLOAD:
        return task.timeouts.download
    if stage is Stage.INSTALL:
        return task.timeouts.install
    if stage is Stage.REBOOT:
        return task.timeouts.reboot
    return task.retries.delay_after(max(1, upgrade.attempts))


def classify(task: FirmwareTask, upgrade: PileUpgrade, event: PileEvent) -> tuple[Trigger, str]:
    """Evaluate the guards: which :class:`Trigger` this event is, and why."""
    state = upgrade.state
    target = task.target
    if isinstance(event, DispatchPossible):
        version = upgrade.reported_version
        if version == target:
            return _T.AT_TARGET, f"already runs the target version {target}"
        if (
            not task.allow_downgrade
            and isinstance(version, FirmwareVersion)
            and isinstance(target, FirmwareVersion)
            and version.same_line(target)
            and version > target
        ):
            return _T.NEWER_THAN_TARGET, f"runs {version}, newer than the target {target}"
        if not event.online:
            return _T.DEFER, "offline"
        if event.charging:
            return _T.DEFER, "charging: deferred until idle"
        return _T.DISPATCH, f"UpdateFirmware to {target} (attempt {upgrade.attempts + 1})"
    if isinstance(event, Sent | UpdateRejected):
        if state is not _SENT and upgrade.sends > 0:
            return _T.LATE_REPLY, "reply to an earlier UpdateFirmware"
        if isinstance(event, Sent):
            return _T.ACCEPTED, "charger accepted UpdateFirmware"
        detail = f": {event.detail}" if event.detail else ""
        if event.reason is RejectReason.CHARGING:
            return _T.REJECTED_BUSY, f"charger busy charging{detail}: deferred until idle"
        if event.reason is RejectReason.ALREADY_AT_TARGET:
            return _T.REJECTED_AT_TARGET, f"charger reports it already runs the target{detail}"
        if event.reason is RejectReason.UNSUPPORTED:
            return _T.REJECTED_UNSUPPORTED, f"charger does not support the update{detail}"
        return _failure(task, upgrade, f"charger rejected UpdateFirmware{detail}")
    if isinstance(event, StatusReported):
        status = event.status
        if state not in IN_FLIGHT or status is _FS.IDLE:
            return _T.STATUS_INFO, f"status {status.value} noted"
        if status.is_failure:
            return _failure(task, upgrade, _FAILURE_STATUS[status])
        return _STATUS_TRIGGER[status], f"charger reports {status.value}"
    if isinstance(event, BootReported):
        version = event.version
        if version == target:
            if state is _V:
                return _T.BOOT_INFO, f"booted with {version}"
            if upgrade.sends > 0:
                return _T.BOOT_VERIFIED, f"booted with the target version {version}"
            if state in DISPATCHABLE:
                return _T.AT_TARGET, f"booted with the target version {version} before any send"
            return _T.BOOT_INFO, f"booted with {version}"
        if state is _ID:
            if upgrade.from_version is not None and version == upgrade.from_version:
                return _T.VERSION_UNCHANGED, f"version unchanged: booted with {version} again"
            return _T.UNEXPECTED_VERSION, f"booted with {version}, not the target {target}"
        return _T.BOOT_INFO, f"booted with {version}"
    if isinstance(event, StageTimeout):
        stage = STAGE_OF.get(state)
        if stage is None or upgrade.deadline is None or event.now < upgrade.deadline:
            return _T.STALE_TIMER, "timer of a stage already left"
        if stage is Stage.BACKOFF:
            return _T.RETRY_DUE, "backoff over: ready for the next attempt"
        limit = _timeout_of(task, stage, upgrade).total_seconds()
        return _failure(task, upgrade, f"{stage.value} timed out after {limit:g} s")
    if isinstance(event, Cancel):
        return _T.CANCEL, "cancelled"
    return _T.PRESENCE, type(event).__name__


_FAILURES = frozenset(
    {
        _T.ATTEMPT_FAILED,
        _T.GAVE_UP,
        _T.VERSION_UNCHANGED,
        _T.UNEXPECTED_VERSION,
        _T.REJECTED_UNSUPPORTED,
    }
)
_STATUS_TRIGGER: Mapping[FirmwareStatus, Trigger] = MappingProxyType(
    {
        _FS.DOWNLOADING: _T.STATUS_DOWNLOADING,
        _FS.DOWNLOADED: _T.STATUS_DOWNLOADED,
        _FS.INSTALLING: _T.STATUS_INSTALLING,
        _FS.INSTALLED: _T.STATUS_INSTALLED,
    }
)


# --------------------------------------------------------------------------
# step: trigger -> new value + actions
# --------------------------------------------------------------------------
def step(
    task: FirmwareTask, upgrade: PileUpgrade, event: PileEvent
) -> tuple[PileUpgrade, tuple[PileAction, ...]]:
    """Apply one event. Returns the new value and the actions, to execute in
    order (a :class:`SendUpdate` always comes last, so the caller can make
    the new state durable before the command leaves)."""
    now = require_aware("now", event.now)
    trigger, why = classify(task, upgrade, event)
    before = upgrade.state
    after = next_state(upgrade.pile_id, before, trigger)

    changes: dict[str, Any] = {}
    # The live view, whatever the state.
    if isinstance(event, DispatchPossible):
        changes.update(online=event.online, charging=event.charging)
    elif isinstance(event, PileOnline | StatusReported | BootReported | Sent):
        changes["online"] = True  # a charger that talks is connected
    elif isinstance(event, PileOffline):
        changes["online"] = False
    elif isinstance(event, ChargingStarted):
        changes["charging"] = True
    elif isinstance(event, ChargingEnded):
        changes["charging"] = False
    if isinstance(event, BootReported):
        changes["reported_version"] = event.version
    elif isinstance(event, StatusReported):
        changes.update(last_status=event.status, last_status_at=now)

    attempts = upgrade.attempts
    send: SendUpdate | None = None
    if trigger is _T.DISPATCH:
        attempts += 1
        changes.update(
            attempts=attempts,
            sends=upgrade.sends + 1,
            from_version=upgrade.reported_version,
            first_sent_at=upgrade.first_sent_at or now,
            last_sent_at=now,
            accepted_at=None,
        )
        send = SendUpdate(
            task_id=task.task_id,
            pile_id=upgrade.pile_id,
            url=task.image.url,
            sha256=task.image.sha256,
            size=task.image.size,
            target_version=task.target.raw,
            retrieve_at=now,
            attempt=attempts,
        )
    elif trigger is _T.ACCEPTED:
        changes["accepted_at"] = now
    elif trigger is _T.REJECTED_BUSY:
        # Not the charger's fault nor the image's: the attempt is given back.
        attempts -= 1
        changes.update(attempts=attempts, charging=True)
    if trigger in _FAILURES:
        changes["last_error"] = why

    actions: list[PileAction] = []
    if after is not before:
        changes.update(state=after, reason=why, state_since=now)
        changes["finished_at"] = now if after in FINAL else None
        actions.append(
            Record(task.task_id, upgrade.pile_id, now, before, after, trigger, why, attempts)
        )
        # Timers follow stages, not states: a stage's deadline survives the
        # moves inside it (sent -> downloading keeps the download deadline).
        stage = STAGE_OF.get(after)
        if stage is None:
            changes["deadline"] = None
        elif stage is not STAGE_OF.get(before):
            new = replace(upgrade, attempts=attempts)
            deadline = now + _timeout_of(task, stage, new)
            changes["deadline"] = deadline
            actions.append(ArmTimer(task.task_id, upgrade.pile_id, deadline, stage))
    if send is not None:
        actions.append(send)
    return replace(upgrade, **changes), tuple(actions)
