"""Firmware task specification: what to install, on which piles, when and how fast.

Pure values: validated once when built (an error names the field, e.g.
``rollout.max_concurrent``), immutable afterwards, so the per-pile machine
and the rollout never re-check them. Times are timezone-aware datetimes
(UTC by convention) and durations are timedeltas; nothing here reads a clock.

Limits that look arbitrary come from the wire (both protocols run the same
tasks, so a task must fit the narrower one): CBP/1 0x94 carries the task id
as u32, the target version as ASCII24, the image size as u32 and the URL in
at most 176 ASCII bytes, ``http://`` or ``https://``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, timezone
from urllib.parse import urlsplit

from pileid import Kind

from .version import FirmwareVersion, OpaqueVersion, Version

__all__ = [
    "MAX_TARGET_VERSION_LENGTH",
    "MAX_TASK_ID",
    "MAX_URL_LENGTH",
    "FirmwareTask",
    "ImageRef",
    "MaintenanceWindow",
    "PileFacts",
    "PileSelector",
    "RetryPolicy",
    "RolloutPolicy",
    "Schedule",
    "StageTimeouts",
    "TaskSpecError",
    "require_aware",
]

MAX_TASK_ID = 2**32 - 1  # CBP/1: u32
MAX_TARGET_VERSION_LENGTH = 24  # CBP/1: ASCII24
MAX_URL_LENGTH = 176  # CBP/1: URL length u8, at most 176 bytes
MAX_IMAGE_SIZE = 2**32 - 1  # CBP/1: u32
# A retry budget beyond this is a typo, and it keeps backoff arithmetic finite.
MAX_ATTEMPTS = 100

_PILE_ID_RE = re.compile(r"[0-9]{20}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_KINDS = {k.value: k for k in Kind}


class TaskSpecError(ValueError):
    """A firmware task (or one of its parts) is invalid; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"firmware task: {field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------------
# small checks (bool is an int subclass: True as a count is always a mistake)
# --------------------------------------------------------------------------
def _int(field: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskSpecError(field, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise TaskSpecError(field, f"must be {bound}, got {value}")
    return value


def _number(field: str, value: object, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskSpecError(field, f"must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise TaskSpecError(field, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _duration(field: str, value: object, *, allow_zero: bool = False) -> timedelta:
    if not isinstance(value, timedelta):
        raise TaskSpecError(field, f"must be a timedelta, got {value!r}")
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise TaskSpecError(field, f"must be {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def require_aware(field: str, value: object) -> datetime:
    """``value`` must be a timezone-aware datetime: naive ones are ambiguous
    across the gateway's nodes and the chargers' local clocks."""
    if not isinstance(value, datetime):
        raise TaskSpecError(field, f"must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TaskSpecError(field, f"must be timezone-aware, got naive {value.isoformat()}")
    return value


def _pile_id(field: str, value: object) -> str:
    if not isinstance(value, str) or _PILE_ID_RE.fullmatch(value) is None:
        raise TaskSpecError(field, f"must be a 20-digit pile ID, got {value!r}")
    if value[13:15] not in _KINDS:
        raise TaskSpecError(field, f"pile ID {value} has kind code {value[13:15]}, not 01/02")
    return value


# --------------------------------------------------------------------------
# image
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where the charger downloads the image, and what it must be.

    ``sha256`` is accepted in either case and kept lower-case (the form the
    image store computes).
    """

    sha256: str
    size: int
    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256.lower()):
            raise TaskSpecError("image.sha256", f"must be 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", self.sha256.lower())
        _int("image.size", self.size, minimum=1, maximum=MAX_IMAGE_SIZE)
        url = self.url
        if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
            raise TaskSpecError("image.url", f"must be printable ASCII without spaces: {url!r}")
        if len(url) > MAX_URL_LENGTH:
            raise TaskSpecError(
                "image.url", f"is {len(url)} characters; CBP/1 carries at most {MAX_URL_LENGTH}"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TaskSpecError("image.url", f"must be an http:// or https:// URL, got {url!r}")


# --------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A daily window of local wall-clock time, ``start`` inclusive, ``end`` exclusive.

    ``start > end`` means the window crosses midnight (22:00-04:00). Local
    time is UTC + ``utc_offset``, fixed: the fleet's regions (China, UTC+8)
    have no daylight saving, and a fixed offset keeps this module free of a
    time-zone database. ``start == end`` is refused: it could mean "never"
    or "always", and "always" is spelled "no window".
    """

    start: time
    end: time
    utc_offset: timedelta = timedelta(hours=8)

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time):
                raise TaskSpecError(f"schedule.window.{name}", f"must be a time, got {value!r}")
            if value.tzinfo is not None:
                raise TaskSpecError(
                    f"schedule.window.{name}", "must be a local wall-clock time (no tzinfo)"
                )
        if self.start == self.end:
            raise TaskSpecError(
                "schedule.window", "start equals end (for no restriction, give no window)"
            )
        offset = self.utc_offset
        if (
            not isinstance(offset, timedelta)
            or abs(offset) > timedelta(hours=14)
            or offset % timedelta(minutes=1)
        ):
            raise TaskSpecError(
                "schedule.window.utc_offset", f"must be whole minutes within ±14 h, got {offset!r}"
            )

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def _local(self, now: datetime) -> datetime:
        return require_aware("now", now).astimezone(timezone(self.utc_offset))

    def in_window(self, now: datetime) -> bool:
        t = self._local(now).time()
        if self.crosses_midnight:
            return t >= self.start or t < self.end
        return self.start <= t < self.end

    def next_window_start(self, now: datetime) -> datetime:
        """The first opening of the window strictly after ``now`` (in UTC).

        Inside a window this is the *next* day's opening; whether the window
        is open right now is :meth:`in_window`.
        """
        local = self._local(now)
        opening = datetime.combine(local.date(), self.start, local.tzinfo)
        if opening <= local:
            # A fixed offset has no DST, so one calendar day is always 24 h.
            opening += timedelta(days=1)
        return opening.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """No pile is dispatched before ``start_at``, nor outside ``window`` (if any).

    Piles already in progress are not interrupted when a window closes:
    a flash cannot be paused, and the charger is the one doing the work.
    """

    start_at: datetime
    window: MaintenanceWindow | None = None

    def __post_init__(self) -> None:
        require_aware("schedule.start_at", self.start_at)
        if self.window is not None and not isinstance(self.window, MaintenanceWindow):
            raise TaskSpecError(
                "schedule.window", f"must be a MaintenanceWindow, got {self.window!r}"
            )

    def may_dispatch(self, now: datetime) -> bool:
        return now >= self.start_at and (self.window is None or self.window.in_window(now))

    def next_opening(self, now: datetime) -> datetime | None:
        """When dispatching next becomes allowed, or None if it is allowed now."""
        if self.may_dispatch(now):
            return None
        at = max(now, self.start_at)
        if self.window is None or self.window.in_window(at):
            return at
        return self.window.next_window_start(at)


# --------------------------------------------------------------------------
# rollout, retries, timeouts
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How fast the task spreads.

    Wave 0 is the canary (``canary`` piles; 0 = no canary): every canary must
    be verified before wave 1 starts. Waves 1.. have the sizes in ``waves``
    (the last size repeats until every pile is covered), or each
    ``wave_percent`` % of the task's piles (rounded up); with neither, wave 1
    is everything after the canary. ``failure_threshold`` is a fraction: a
    closed wave whose failure rate (failed / (verified + failed)) is *above*
    it stops the task. ``max_concurrent`` bounds the piles in flight (sent
    to installed) across the whole task: it protects the image server and
    the chargers' 4G links, not just the wave.
    """

    canary: int = 1
    waves: tuple[int, ...] | None = None
    wave_percent: float | None = None
    max_concurrent: int = 10
    failure_threshold: float = 0.2

    def __post_init__(self) -> None:
        _int("rollout.canary", self.canary, minimum=0)
        if self.waves is not None and self.wave_percent is not None:
            raise TaskSpecError("rollout.waves", "give waves or wave_percent, not both")
        if self.waves is not None:
            if isinstance(self.waves, str | bytes) or not isinstance(self.waves, Sequence):
                raise TaskSpecError("rollout.waves", f"must be a list of sizes, got {self.waves!r}")
            waves = tuple(self.waves)
            if not waves:
                raise TaskSpecError("rollout.waves", "must not be empty (omit it for one wave)")
            for i, size in enumerate(waves):
                _int(f"rollout.waves[{i}]", size, minimum=1)
            object.__setattr__(self, "waves", waves)
        if self.wave_percent is not None:
            _number("rollout.wave_percent", self.wave_percent, low=0, high=100, low_open=True)
        _int("rollout.max_concurrent", self.max_concurrent, minimum=1)
        _number("rollout.failure_threshold", self.failure_threshold, low=0, high=1, low_open=False)

    @property
    def first_wave(self) -> int:
        return 0 if self.canary > 0 else 1

    def wave_size(self, index: int, total_piles: int) -> int:
        """How many piles wave ``index`` takes (0 = canary), for a task of ``total_piles``."""
        if index < self.first_wave:
            raise ValueError(f"there is no wave {index} (canary = {self.canary})")
        if index == 0:
            return self.canary
        if self.waves is not None:
            return self.waves[min(index, len(self.waves)) - 1]
        if self.wave_percent is not None:
            return max(1, math.ceil(total_piles * self.wave_percent / 100))
        return max(1, total_piles)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` UpdateFirmware attempts per pile in total (1 = no retry).

    After the n-th failed attempt the pile waits
    ``min(backoff × backoff_factor^(n-1), backoff_max)`` before it may be
    dispatched again. No jitter: a wave's retries are already spread by
    when each pile failed, and determinism keeps the machine testable.
    """

    max_attempts: int = 3
    backoff: timedelta = timedelta(minutes=5)
    backoff_factor: float = 2.0
    backoff_max: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        _int("retries.max_attempts", self.max_attempts, minimum=1, maximum=MAX_ATTEMPTS)
        _duration("retries.backoff", self.backoff, allow_zero=True)
        _number("retries.backoff_factor", self.backoff_factor, low=1, high=10, low_open=False)
        _duration("retries.backoff_max", self.backoff_max, allow_zero=True)
        if self.backoff_max < self.backoff:
            raise TaskSpecError("retries.backoff_max", "must be >= retries.backoff")

    def delay_after(self, failed_attempt: int) -> timedelta:
        """Backoff after failed attempt number ``failed_attempt`` (1-based)."""
        if failed_attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {failed_attempt}")
        seconds = self.backoff.total_seconds() * self.backoff_factor ** (failed_attempt - 1)
        return min(timedelta(seconds=seconds), self.backoff_max)


@dataclass(frozen=True, slots=True)
class StageTimeouts:
    """How long each stage may take before the attempt counts as failed.

    ``download``: from the UpdateFirmware until Downloaded (or Installing);
    ``install``: from then until Installed; ``reboot``: from Installed until
    the charger boots again.
    """

    download: timedelta = timedelta(minutes=30)
    install: timedelta = timedelta(minutes=20)
    reboot: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        for name in ("download", "install", "reboot"):
            _duration(f"timeouts.{name}", getattr(self, name))


# --------------------------------------------------------------------------
# piles and targeting
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PileFacts:
    """What the gateway knows about a pile when a task is built or restored.

    Region, operator and kind are read from the pile ID itself (the design
    derives the kind from the ID; a charger's own claim is a separate check
    at login). ``model`` and ``version`` are what its last boot/login said,
    ``None`` if it never connected. ``online``/``charging`` are the live
    view from presence and the gun statuses at that moment.
    """

    pile_id: str
    model: str | None = None
    version: Version | None = None
    online: bool = False
    charging: bool = False

    def __post_init__(self) -> None:
        _pile_id("pile_id", self.pile_id)

    @property
    def region_code(self) -> str:
        return self.pile_id[:6]

    @property
    def operator(self) -> str:
        return self.pile_id[6:10]

    @property
    def kind(self) -> Kind:
        return _KINDS[self.pile_id[13:15]]


@dataclass(frozen=True, slots=True)
class PileSelector:
    """Piles matching *every* given criterion.

    At least one criterion is required: a selector that matches the whole
    fleet by accident is the most expensive typo an operator can make.
    ``model`` compares case-insensitively (chargers report it in either
    case); ``current_versions`` compares by version equality, and a pile
    whose version is unknown does not match it.
    """

    operator: str | None = None
    region_prefix: str | None = None
    kind: Kind | None = None
    model: str | None = None
    current_versions: frozenset[Version] | None = None

    def __post_init__(self) -> None:
        if self.operator is not None and not re.fullmatch(r"[0-9]{4}", str(self.operator)):
            raise TaskSpecError("targets.operator", f"must be 4 digits, got {self.operator!r}")
        if self.region_prefix is not None and not re.fullmatch(
            r"[0-9]{1,6}", str(self.region_prefix)
        ):
            raise TaskSpecError(
                "targets.region_prefix", f"must be 1 to 6 digits, got {self.region_prefix!r}"
            )
        if self.kind is not None and not isinstance(self.kind, Kind):
            raise TaskSpecError("targets.kind", f"must be Kind.AC or Kind.DC, got {self.kind!r}")
        if self.model is not None and (
            not isinstance(self.model, str) or not 1 <= len(self.model.strip()) <= 16
        ):
            raise TaskSpecError("targets.model", f"must be 1 to 16 characters, got {self.model!r}")
        if self.current_versions is not None:
            versions = frozenset(self.current_versions)
            if not versions:
                raise TaskSpecError("targets.current_versions", "must not be empty")
            object.__setattr__(self, "current_versions", versions)
        if all(
            getattr(self, name) is None
            for name in ("operator", "region_prefix", "kind", "model", "current_versions")
        ):
            raise TaskSpecError(
                "targets", "a selector needs at least one criterion (it would match every pile)"
            )

    def matches(self, facts: PileFacts) -> bool:
        if self.operator is not None and facts.operator != self.operator:
            return False
        if self.region_prefix is not None and not facts.region_code.startswith(self.region_prefix):
            return False
        if self.kind is not None and facts.kind is not self.kind:
            return False
        if self.model is not None and (
            facts.model is None or facts.model.strip().upper() != self.model.strip().upper()
        ):
            return False
        return self.current_versions is None or (
            facts.version is not None and facts.version in self.current_versions
        )


# --------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FirmwareTask:
    """One firmware task. ``targets`` is an explicit list of pile IDs (kept in
    the given order, which is the rollout order) or a :class:`PileSelector`.

    ``allow_downgrade``: by default a pile that already runs a *newer*
    version of the same product line is skipped rather than flashed back.
    """

    task_id: int
    target: Version
    image: ImageRef
    targets: tuple[str, ...] | PileSelector
    schedule: Schedule
    rollout: RolloutPolicy = RolloutPolicy()
    retries: RetryPolicy = RetryPolicy()
    timeouts: StageTimeouts = StageTimeouts()
    allow_downgrade: bool = False

    def __post_init__(self) -> None:
        _int("task_id", self.task_id, minimum=1, maximum=MAX_TASK_ID)
        target = self.target
        if not isinstance(target, FirmwareVersion | OpaqueVersion):
            raise TaskSpecError("target", f"must be a parsed version, got {target!r}")
        if not target.raw.isascii() or len(target.raw) > MAX_TARGET_VERSION_LENGTH:
            raise TaskSpecError(
                "target",
                f"{target.raw!r} must be ASCII of at most {MAX_TARGET_VERSION_LENGTH} "
                "characters (CBP/1 carries it as ASCII24)",
            )
        for name, kind in (
            ("image", ImageRef),
            ("schedule", Schedule),
            ("rollout", RolloutPolicy),
            ("retries", RetryPolicy),
            ("timeouts", StageTimeouts),
        ):
            if not isinstance(getattr(self, name), kind):
                raise TaskSpecError(name, f"must be a {kind.__name__}")
        if not isinstance(self.targets, PileSelector):
            if isinstance(self.targets, str | bytes) or not isinstance(self.targets, Sequence):
                raise TaskSpecError(
                    "targets", f"must be a list of pile IDs or a selector, got {self.targets!r}"
                )
            ids = tuple(self.targets)
            if not ids:
                raise TaskSpecError("targets", "the list of pile IDs is empty")
            seen: set[str] = set()
            for i, pile_id in enumerate(ids):
                _pile_id(f"targets[{i}]", pile_id)
                if pile_id in seen:
                    raise TaskSpecError(f"targets[{i}]", f"pile {pile_id} is listed twice")
                seen.add(pile_id)
            object.__setattr__(self, "targets", ids)

    def select(self, fleet: Iterable[PileFacts]) -> tuple[PileFacts, ...]:
        """The task's piles, in rollout order.

        Explicit list: in the listed order; a listed pile the fleet does not
        know (never connected) is still targeted, as offline with unknown
        model and version, and will be upgraded when it shows up.
        Selector: the matching piles in the fleet's order.
        """
        if isinstance(self.targets, PileSelector):
            selector = self.targets
            return tuple(facts for facts in fleet if selector.matches(facts))
        known = {facts.pile_id: facts for facts in fleet}
        return tuple(known.get(pile_id) or PileFacts(pile_id) for pile_id in self.targets)
