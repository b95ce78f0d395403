"""Firmware tasks in the gateway: the asyncio adapter around :mod:`firmware`.

:class:`FirmwareService` is an :class:`~gateway.extensions.Extension` and a
:class:`~gateway.observers.PileObserver`. It holds one
:class:`firmware.Rollout` per task this node drives, feeds it what the
chargers say (firmware statuses, boots, presence, charging) and the timers
it asked for, and executes the actions it returns, in order:

* ``SavePile`` / ``SaveTask`` / ``Record`` / ``TaskRecord`` are collected
  and written in one database transaction of the write-behind queue (pile
  rows, task row, audit lines, and a ``firmware.transition`` outbox event
  per pile transition);
* a ``SendUpdate`` is sent only once everything before it is committed
  (its own task awaits that write first), so a pile is durably ``sent``
  before its UpdateFirmware leaves: after a crash it is never sent twice;
* ``ArmTimer`` goes into a heap that the engine task fires.

One owned task (``firmware-engine``) does all of this: observer callbacks
only queue events and wake it. API calls (create, pause, resume, cancel)
take the same lock, so a rollout is only ever touched by one coroutine at a
time and its actions are executed in the order they were produced.

Only piles connected to *this* node are driven (the node holding the pile
drives it); a task is driven by one node (``firmware_tasks.node_id``).

Images are stored under ``PILEGATE_FIRMWARE_DIR`` (default
``./firmware-images``) and served at ``/firmware-images/{id}/{filename}``;
chargers are given ``PILEGATE_FIRMWARE_BASE_URL`` (default
``http://{api_host}:{api_port}``) followed by that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import math
import os
import re
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from firmware import (
    MaintenanceWindow,
    PileFacts,
    PileSelector,
    RetryPolicy,
    RolloutPolicy,
    Schedule,
    StageTimeouts,
)
from firmware.pile_upgrade import (
    ArmTimer,
    BootReported,
    ChargingEnded,
    ChargingStarted,
    FirmwareStatus,
    PileEvent,
    PileOffline,
    PileOnline,
    PileUpgrade,
    Record,
    RecordError,
    RejectReason,
    SendUpdate,
    Sent,
    StageTimeout,
    StatusReported,
    UpdateRejected,
    UpgradeError,
)
from firmware.rollout import (
    Action,
    IllegalTaskTransition,
    Rollout,
    RolloutError,
    RolloutRecord,
    SavePile,
    SaveTask,
    TaskProgress,
    TaskRecord,
    TaskState,
)
from firmware.task import (
    MAX_IMAGE_SIZE,
    MAX_TARGET_VERSION_LENGTH,
    FirmwareTask,
    ImageRef,
    TaskSpecError,
)
from firmware.version import Version, VersionError, parse_version
from pileid import Kind

from .events import FirmwareTransition
from .logging import get_logger
from .registry import CommandError, PileConnection
from .services import Services
from .storage.firmware_repo import EventLine, FirmwareRepo, ImageRecord, TaskRecordRow
from .storage.writer import DurableOp, OutboxOp

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .api import ApiContext
    from .commands import CommandService

log = get_logger("pilegate.firmware")

FIRMWARE_DIR_ENV = "PILEGATE_FIRMWARE_DIR"
FIRMWARE_BASE_URL_ENV = "PILEGATE_FIRMWARE_BASE_URL"
DEFAULT_FIRMWARE_DIR = "./firmware-images"
IMAGE_PATH_PREFIX = "/firmware-images"

# The engine wakes at least this often even with nothing due (a safety net
# for wall-clock jumps; every due time is also computed exactly).
_IDLE_WAKEUP = 5.0
_TERMINAL = (TaskState.COMPLETED, TaskState.CANCELLED)
_FILENAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class FirmwareError(Exception):
    """A request the firmware service refuses; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


# --------------------------------------------------------------------------
# task spec <-> JSON (the API's body and the stored form are the same shape)
# --------------------------------------------------------------------------
def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TaskSpecError(key, f"must be an object, got {value!r}")
    return value


def _seconds(field_name: str, value: Any) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskSpecError(field_name, f"must be a number of seconds, got {value!r}")
    return timedelta(seconds=value)


def _datetime(field_name: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TaskSpecError(field_name, f"must be an RFC 3339 date-time, got {value!r}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TaskSpecError(field_name, f"must be an RFC 3339 date-time, got {value!r}") from None


def _time(field_name: str, value: Any) -> time:
    if isinstance(value, time):
        return value
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise TaskSpecError(field_name, f"must be a time HH:MM, got {value!r}") from None


def _version(field_name: str, value: Any) -> Version:
    if not isinstance(value, str):
        raise TaskSpecError(field_name, f"must be a version string, got {value!r}")
    try:
        return parse_version(value)
    except VersionError as exc:
        raise TaskSpecError(field_name, str(exc)) from None


def _selector(data: Mapping[str, Any]) -> PileSelector:
    unknown = set(data) - {"operator", "region_prefix", "kind", "model", "current_versions"}
    if unknown:
        raise TaskSpecError(f"targets.{sorted(unknown)[0]}", "is not a selector criterion")
    kind = data.get("kind")
    if kind is not None:
        try:
            kind = Kind[str(kind).upper()]
        except KeyError:
            raise TaskSpecError("targets.kind", f"must be AC or DC, got {kind!r}") from None
    versions = data.get("current_versions")
    if versions is not None:
        if isinstance(versions, str) or not isinstance(versions, Sequence):
            raise TaskSpecError("targets.current_versions", "must be a list of versions")
        versions = frozenset(
            _version(f"targets.current_versions[{i}]", v) for i, v in enumerate(versions)
        )
    return PileSelector(
        operator=data.get("operator"),
        region_prefix=data.get("region_prefix"),
        kind=kind,
        model=data.get("model"),
        current_versions=versions,
    )


def task_from_json(task_id: int, data: Mapping[str, Any]) -> FirmwareTask:
    """Build a task from its JSON form; missing sections take the core's
    defaults. Raises :class:`TaskSpecError` naming the field."""
    image = _section(data, "image")
    for key in ("url", "sha256", "size"):
        if key not in image:
            raise TaskSpecError(f"image.{key}", "missing")
    targets_raw = data.get("targets")
    targets: tuple[str, ...] | PileSelector
    if isinstance(targets_raw, Mapping):
        targets = _selector(targets_raw)
    elif isinstance(targets_raw, list | tuple):
        targets = tuple(targets_raw)
    else:
        raise TaskSpecError("targets", "give a list of pile IDs or a selector object")
    schedule = _section(data, "schedule")
    window_raw = schedule.get("window")
    window = None
    if window_raw is not None:
        if not isinstance(window_raw, Mapping):
            raise TaskSpecError("schedule.window", "must be an object {start, end}")
        offset = window_raw.get("utc_offset_minutes", 480)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TaskSpecError("schedule.window.utc_offset", f"must be minutes, got {offset!r}")
        window = MaintenanceWindow(
            start=_time("schedule.window.start", window_raw.get("start")),
            end=_time("schedule.window.end", window_raw.get("end")),
            utc_offset=timedelta(minutes=offset),
        )
    if "start_at" not in schedule:
        raise TaskSpecError("schedule.start_at", "missing")
    rollout = _section(data, "rollout")
    retries = _section(data, "retries")
    timeouts = _section(data, "timeouts")
    retry_defaults, timeout_defaults = RetryPolicy(), StageTimeouts()
    rollout_args = {
        k: rollout[k]
        for k in ("canary", "waves", "wave_percent", "max_concurrent", "failure_threshold")
        if rollout.get(k) is not None
    }
    return FirmwareTask(
        task_id=task_id,
        target=_version("target_version", data.get("target_version")),
        image=ImageRef(sha256=image["sha256"], size=image["size"], url=image["url"]),
        targets=targets,
        schedule=Schedule(_datetime("schedule.start_at", schedule["start_at"]), window),
        rollout=RolloutPolicy(**rollout_args),
        retries=RetryPolicy(
            max_attempts=retries.get("max_attempts", retry_defaults.max_attempts),
            backoff=_seconds(
                "retries.backoff_seconds",
                retries.get("backoff_seconds", retry_defaults.backoff.total_seconds()),
            ),
            backoff_factor=retries.get("backoff_factor", retry_defaults.backoff_factor),
            backoff_max=_seconds(
                "retries.backoff_max_seconds",
                retries.get("backoff_max_seconds", retry_defaults.backoff_max.total_seconds()),
            ),
        ),
        timeouts=StageTimeouts(
            **{
                stage: _seconds(
                    f"timeouts.{stage}_seconds",
                    timeouts.get(
                        f"{stage}_seconds", getattr(timeout_defaults, stage).total_seconds()
                    ),
                )
                for stage in ("download", "install", "reboot")
            }
        ),
        allow_downgrade=bool(data.get("allow_downgrade", False)),
    )


def task_to_json(task: FirmwareTask, image_id: int | None) -> dict[str, Any]:
    """The stored (and shown) form: every value explicit, readable by :func:`task_from_json`."""
    targets: list[str] | dict[str, Any]
    if isinstance(task.targets, PileSelector):
        sel = task.targets
        targets = {
            key: value
            for key, value in (
                ("operator", sel.operator),
                ("region_prefix", sel.region_prefix),
                ("kind", None if sel.kind is None else sel.kind.label),
                ("model", sel.model),
                (
                    "current_versions",
                    None
                    if sel.current_versions is None
                    else sorted(v.raw for v in sel.current_versions),
                ),
            )
            if value is not None
        }
    else:
        targets = list(task.targets)
    window = task.schedule.window
    return {
        "target_version": task.target.raw,
        "image": {
            "id": image_id,
            "url": task.image.url,
            "sha256": task.image.sha256,
            "size": task.image.size,
        },
        "targets": targets,
        "schedule": {
            "start_at": task.schedule.start_at.isoformat(),
            "window": None
            if window is None
            else {
                "start": window.start.isoformat(timespec="minutes"),
                "end": window.end.isoformat(timespec="minutes"),
                "utc_offset_minutes": int(window.utc_offset.total_seconds() // 60),
            },
        },
        "rollout": {
            "canary": task.rollout.canary,
            "waves": None if task.rollout.waves is None else list(task.rollout.waves),
            "wave_percent": task.rollout.wave_percent,
            "max_concurrent": task.rollout.max_concurrent,
            "failure_threshold": task.rollout.failure_threshold,
        },
        "retries": {
            "max_attempts": task.retries.max_attempts,
            "backoff_seconds": task.retries.backoff.total_seconds(),
            "backoff_factor": task.retries.backoff_factor,
            "backoff_max_seconds": task.retries.backoff_max.total_seconds(),
        },
        "timeouts": {
            f"{stage}_seconds": getattr(task.timeouts, stage).total_seconds()
            for stage in ("download", "install", "reboot")
        },
        "allow_downgrade": task.allow_downgrade,
    }


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def safe_filename(name: str | None) -> str:
    """A file name that is safe in a URL path and on disk (``firmware.bin`` if none)."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = _FILENAME_BAD.sub("_", base).strip("._")[:64]
    return cleaned or "firmware.bin"


def check_image_fields(version: str, model: str) -> None:
    """What a task will need of an image's version and model, checked at upload."""
    try:
        parsed = parse_version(version)
    except VersionError as exc:
        raise FirmwareError(400, "invalid_image", f"version: {exc}") from None
    if not parsed.raw.isascii() or len(parsed.raw) > MAX_TARGET_VERSION_LENGTH:
        raise FirmwareError(
            400,
            "invalid_image",
            f"version {version!r} must be ASCII of at most {MAX_TARGET_VERSION_LENGTH} "
            "characters (CBP/1 carries it as ASCII24)",
        )
    if not model.strip() or len(model) > 64:
        raise FirmwareError(400, "invalid_image", f"model must be 1 to 64 characters: {model!r}")


class ImageUpload:
    """An image being received: written to a temporary file next to the image
    store while its SHA-256 and size are computed."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_IMAGE_SIZE:
            raise FirmwareError(
                413, "image_too_large", f"images are at most {MAX_IMAGE_SIZE} bytes (CBP/1 u32)"
            )
        self._file.write(chunk)
        self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def default_base_url(api_host: str, api_port: int) -> str | None:
    """``http://{api_host}:{api_port}``, or None when that is no address a
    charger could use (a wildcard host, or an ephemeral port)."""
    if api_port == 0 or api_host in ("", "0.0.0.0", "::"):
        return None
    host = f"[{api_host}]" if ":" in api_host else api_host
    return f"http://{host}:{api_port}"


# --------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------
@dataclass
class _Batch:
    """Writes collected from consecutive actions, committed together."""

    piles: dict[tuple[int, str], PileUpgrade] = field(default_factory=dict)
    tasks: dict[int, TaskProgress] = field(default_factory=dict)
    events: list[EventLine] = field(default_factory=list)
    outbox: list[OutboxOp] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.piles or self.tasks or self.events or self.outbox)


@dataclass(frozen=True, slots=True)
class CreatedTask:
    task_id: int
    piles: int
    excluded: dict[str, list[str]]


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a write's exception so asyncio does not report it as lost."""
    if not fut.cancelled():
        fut.exception()


class FirmwareService:
    """Extension + pile observer running this node's firmware tasks."""

    def __init__(self, services: Services, commands: CommandService | None = None) -> None:
        self.services = services
        self.commands = commands
        self.repo = FirmwareRepo(services.store.sessions)
        # Settings (PILEGATE_FIRMWARE_DIR, PILEGATE_FIRMWARE_BASE_URL).
        self.image_dir = Path(services.settings.firmware_dir)
        self.base_url = services.settings.firmware_base_url
        self._rollouts: dict[int, Rollout] = {}
        self._tasks_of: dict[str, set[int]] = {}
        self._inbox: deque[tuple[int | None, str, PileEvent]] = deque()
        self._timers: list[tuple[datetime, int, int, str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._engine: asyncio.Task[Any] | None = None
        self._senders: set[asyncio.Task[Any]] = set()
        self._running = False

    # --- Extension ------------------------------------------------------------
    async def start(self) -> None:
        s = self.services
        now = s.clock()
        live = await s.store.live_nodes(now, s.settings.node_lease_seconds)
        claimed = await self.repo.claim_tasks(s.node_id, live)
        actions: list[Action] = []
        async with self._lock:
            for row, piles in claimed:
                try:
                    spec = task_from_json(row.id, row.spec)
                    record = RolloutRecord.from_dict({"progress": row.progress, "piles": piles})
                    rollout, rearm = Rollout.restore(spec, record, now, self._live_facts(piles))
                except (TaskSpecError, RecordError, RolloutError, VersionError) as exc:
                    log.error("firmware task cannot be restored", task_id=row.id, error=str(exc))
                    continue
                self._add(rollout)
                actions += rearm
                actions += rollout.tick(now)
                log.info(
                    "firmware task restored",
                    task_id=row.id,
                    state=rollout.state.value,
                    in_flight=rollout.in_flight(),
                )
            self._running = True
            await self._execute(actions)
            self._unload_finished()
        s.observers.add(self)
        self._engine = s.spawn(self._run(), "firmware-engine")

    async def stop(self) -> None:
        self._running = False
        tasks = [t for t in (self._engine, *self._senders) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def router(self, ctx: ApiContext, dependencies: list[Any]) -> APIRouter | None:
        from .api_firmware import build_router

        return build_router(ctx, self, dependencies)

    # --- PileObserver (synchronous: queue and wake the engine) -------------------
    def pile_connected(self, conn: PileConnection) -> None:
        self._post(None, conn.pile_id, PileOnline(self.services.clock()))

    def pile_disconnected(self, pile_id: str, conn_id: str) -> None:
        self._post(None, pile_id, PileOffline(self.services.clock()))

    def pile_booted(
        self, pile_id: str, firmware_version: str | None, model: str | None, accepted: bool
    ) -> None:
        if not firmware_version:
            return
        try:
            version = parse_version(firmware_version)
        except VersionError:
            return
        self._post(None, pile_id, BootReported(version, self.services.clock()))

    def firmware_status(self, pile_id: str, status: str, protocol: str) -> None:
        try:
            if protocol == "cbp1":
                parsed = FirmwareStatus.from_cbp1(int(status))
            else:
                # OCPP 2.0.1 shares the names of the statuses the machine follows.
                parsed = FirmwareStatus.from_ocpp16(status)
        except ValueError:
            log.info("firmware status not followed", pile_id=pile_id, status=status)
            return
        self._post(None, pile_id, StatusReported(parsed, self.services.clock()))

    def charging_changed(self, pile_id: str, charging: bool) -> None:
        now = self.services.clock()
        self._post(None, pile_id, ChargingStarted(now) if charging else ChargingEnded(now))

    def _post(self, task_id: int | None, pile_id: str, event: PileEvent) -> None:
        if not self._running:
            return
        self._inbox.append((task_id, pile_id, event))
        self._wake.set()

    # --- the engine ---------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            delay = self._delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                async with self._lock:
                    await self._execute(self._work(self.services.clock()))
                    self._unload_finished()
            except Exception:
                log.exception("firmware engine round failed")
                await asyncio.sleep(0.5)

    def _delay(self) -> float:
        if self._inbox:
            return 0.0
        now = self.services.clock()
        due = [self._timers[0][0]] if self._timers else []
        for rollout in self._rollouts.values():
            wake = rollout.next_wakeup(now)
            if wake is not None:
                due.append(wake)
        if not due:
            return _IDLE_WAKEUP
        return min(_IDLE_WAKEUP, max(0.01, (min(due) - now).total_seconds()))

    def _work(self, now: datetime) -> list[Action]:
        actions: list[Action] = []
        while self._inbox:
            task_id, pile_id, event = self._inbox.popleft()
            ids = (task_id,) if task_id is not None else sorted(self._tasks_of.get(pile_id, ()))
            for tid in ids:
                self._handle(actions, tid, pile_id, event)
        while self._timers and self._timers[0][0] <= now:
            _, _, tid, pile_id = heapq.heappop(self._timers)
            self._handle(actions, tid, pile_id, StageTimeout(now))
        for rollout in self._rollouts.values():
            actions += rollout.tick(now)
        return actions

    def _handle(self, actions: list[Action], task_id: int, pile_id: str, event: PileEvent) -> None:
        rollout = self._rollouts.get(task_id)
        if rollout is None or pile_id not in rollout:
            return
        try:
            actions += rollout.handle(pile_id, event)
        except (UpgradeError, RolloutError) as exc:
            # A gateway-side inconsistency: logged, the rollout keeps going.
            log.error(
                "firmware event refused",
                task_id=task_id,
                pile_id=pile_id,
                event=type(event).__name__,
                error=str(exc),
            )

    def _add(self, rollout: Rollout) -> None:
        self._rollouts[rollout.task_id] = rollout
        for upgrade in rollout.upgrades():
            self._tasks_of.setdefault(upgrade.pile_id, set()).add(rollout.task_id)

    def _unload_finished(self) -> None:
        """Forget tasks with nothing left to follow (the database keeps them)."""
        for task_id, rollout in list(self._rollouts.items()):
            if rollout.state in _TERMINAL and rollout.in_flight() == 0:
                del self._rollouts[task_id]
                for upgrade in rollout.upgrades():
                    ids = self._tasks_of.get(upgrade.pile_id)
                    if ids is not None:
                        ids.discard(task_id)
                        if not ids:
                            del self._tasks_of[upgrade.pile_id]

    def _live_facts(self, piles: Sequence[Mapping[str, Any]]) -> dict[str, PileFacts]:
        """Online (connected to this node) and charging, for restored piles."""
        out: dict[str, PileFacts] = {}
        for data in piles:
            pile_id = data.get("pile_id")
            if isinstance(pile_id, str) and self.services.registry.get(pile_id) is not None:
                out[pile_id] = PileFacts(
                    pile_id, online=True, charging=self.services.observers.is_charging(pile_id)
                )
        return out

    # --- executing actions ------------------------------------------------------------
    async def _execute(self, actions: Sequence[Action]) -> asyncio.Future[Any] | None:
        """Run ``actions`` in order; returns the future of the last write (None
        if there was nothing to write). Never blocks on the database itself:
        a SendUpdate waits for its write in its own task."""
        batch = _Batch()
        last: asyncio.Future[Any] | None = None
        events = self.services.events
        for action in actions:
            if isinstance(action, SavePile):
                batch.piles[action.task_id, action.upgrade.pile_id] = action.upgrade
            elif isinstance(action, SaveTask):
                batch.tasks[action.progress.task_id] = action.progress
            elif isinstance(action, Record):
                batch.events.append(
                    EventLine(
                        action.task_id,
                        action.pile_id,
                        action.at,
                        action.from_state.value,
                        action.to_state.value,
                        action.trigger.value,
                        action.reason,
                        action.attempt,
                    )
                )
                batch.outbox.extend(
                    events.op(
                        "firmware.transition",
                        action.pile_id,
                        action.at,
                        FirmwareTransition(
                            task_id=action.task_id,
                            from_state=action.from_state.value,
                            to_state=action.to_state.value,
                            reason=action.reason,
                        ),
                    )
                )
                self.services.metrics.firmware_transitions.labels(
                    to_state=action.to_state.value
                ).inc()
                log.info(
                    "firmware transition",
                    task_id=action.task_id,
                    pile_id=action.pile_id,
                    from_state=action.from_state.value,
                    to_state=action.to_state.value,
                    reason=action.reason,
                )
            elif isinstance(action, TaskRecord):
                batch.events.append(
                    EventLine(
                        action.task_id,
                        None,
                        action.at,
                        action.from_state.value,
                        action.to_state.value,
                        action.trigger.value,
                        action.reason,
                        None,
                    )
                )
                log.info(
                    "firmware task transition",
                    task_id=action.task_id,
                    from_state=action.from_state.value,
                    to_state=action.to_state.value,
                    reason=action.reason,
                )
            elif isinstance(action, ArmTimer):
                entry = (action.at, next(self._seq), action.task_id, action.pile_id)
                heapq.heappush(self._timers, entry)
            elif isinstance(action, SendUpdate):
                if batch:
                    last = await self._write(batch)
                    batch = _Batch()
                sender = self.services.spawn(
                    self._send(action, last), f"firmware-send-{action.task_id}-{action.pile_id}"
                )
                self._senders.add(sender)
                sender.add_done_callback(self._senders.discard)
        if batch:
            last = await self._write(batch)
        return last

    async def _write(self, batch: _Batch) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        write = FirmwareRepo.saver(batch.piles, batch.tasks, batch.events, self.services.clock())
        await self.services.writer.put(*batch.outbox, DurableOp(write, fut))
        return fut

    async def _send(self, action: SendUpdate, durable: asyncio.Future[Any] | None) -> None:
        if durable is not None:
            try:
                await durable
            except Exception as exc:
                # Not durable, so not sent: the download timeout retries it.
                log.error(
                    "UpdateFirmware not sent: its state could not be saved",
                    task_id=action.task_id,
                    pile_id=action.pile_id,
                    error=str(exc),
                )
                return
        event = await self._call(action)
        if event is not None:
            self._post(action.task_id, action.pile_id, event)

    async def _call(self, action: SendUpdate) -> PileEvent | None:
        """Send one UpdateFirmware; the event its answer means (None: no answer)."""
        s = self.services
        conn = s.registry.get(action.pile_id)
        if conn is None:
            return UpdateRejected(
                RejectReason.ERROR, s.clock(), "pile not connected to this node when sending"
            )
        log.info(
            "sending UpdateFirmware",
            task_id=action.task_id,
            pile_id=action.pile_id,
            attempt=action.attempt,
            url=action.url,
        )
        try:
            if conn.protocol == "cbp1":
                return await self._call_cbp1(conn, action)
            return await self._call_ocpp(conn, action)
        except CommandError as exc:
            if exc.code in ("timeout", "pile_offline"):
                # The command may have arrived: the download timeout settles
                # it, rather than risking a second UpdateFirmware.
                log.warning(
                    "UpdateFirmware unanswered",
                    task_id=action.task_id,
                    pile_id=action.pile_id,
                    error=str(exc),
                )
                return None
            reason = RejectReason.ERROR
            if exc.extra.get("ocpp_error") in ("NotImplemented", "NotSupported"):
                reason = RejectReason.UNSUPPORTED
            return UpdateRejected(reason, s.clock(), str(exc))

    async def _call_ocpp(self, conn: PileConnection, action: SendUpdate) -> PileEvent:
        """OCPP 1.6 UpdateFirmware (location, retrieveDate; no ``retries``: the
        retries are the task's), or 2.0.1's shape; any 1.6 CALLRESULT accepts."""
        now = self.services.clock
        retrieve = action.retrieve_at.isoformat().replace("+00:00", "Z")
        if conn.protocol == "ocpp2.0.1":
            payload: dict[str, Any] = {
                "requestId": action.task_id,
                "firmware": {"location": action.url, "retrieveDateTime": retrieve},
            }
        else:
            payload = {"location": action.url, "retrieveDate": retrieve}
        timeout = self.services.settings.command_timeout
        result = await conn.call("UpdateFirmware", payload, timeout)
        status = result.response.get("status")
        if conn.protocol == "ocpp2.0.1" and status not in ("Accepted", "AcceptedCanceled"):
            reason = (
                RejectReason.UNSUPPORTED
                if status in ("InvalidCertificate", "RevokedCertificate")
                else RejectReason.ERROR
            )
            return UpdateRejected(reason, now(), f"charger answered {status}")
        return Sent(now())

    async def _call_cbp1(self, conn: PileConnection, action: SendUpdate) -> PileEvent:
        """CBP/1 0x94, answered by 0x93 (accepted, busy charging, unsupported,
        already at target), through the cloud-board connection's ``request``."""
        from protocol.cloudboard import messages as m

        now = self.services.clock
        request = getattr(conn, "request", None)
        if request is None:
            return UpdateRejected(
                RejectReason.UNSUPPORTED, now(), "the connection cannot carry CBP/1 requests"
            )
        reply = await request(
            m.FirmwareUpdate(
                pile=conn.pile_id,
                task_id=action.task_id,
                target_version=action.target_version,
                sha256=bytes.fromhex(action.sha256),
                image_size=action.size,
                url=action.url,
            ),
            self.services.settings.command_timeout,
        )
        result = int(reply.result)
        if result == m.FirmwareUpdateResult.ACCEPTED:
            return Sent(now())
        name = m.FirmwareUpdateResult(result).name.lower()
        return UpdateRejected(RejectReason.from_cbp1(result), now(), f"0x93 result {name}")

    # --- images ---------------------------------------------------------------------
    def image_url(self, image: ImageRecord, request_base: str | None = None) -> str:
        """Where chargers download the image from."""
        if image.url is not None:
            return image.url
        settings = self.services.settings
        base = (
            self.base_url
            or default_base_url(settings.api_host, settings.api_port)
            or request_base
            or f"http://127.0.0.1:{settings.api_port}"
        )
        return f"{base.rstrip('/')}{IMAGE_PATH_PREFIX}/{image.id}/{quote(image.filename)}"

    def new_upload(self) -> ImageUpload:
        return ImageUpload(self.image_dir)

    async def finish_upload(
        self, upload: ImageUpload, *, version: str, model: str, filename: str | None
    ) -> ImageRecord:
        """Keep an uploaded image (content-addressed file) and record it."""
        upload.close()
        try:
            check_image_fields(version, model)
            if upload.size == 0:
                raise FirmwareError(400, "invalid_image", "the image file is empty")
            name = f"{upload.sha256}.bin"
            target = self.image_dir / name
            if target.exists():
                upload.discard()  # the same bytes are already stored
            else:
                upload.path.replace(target)
        except BaseException:
            upload.discard()
            raise
        return await self.repo.add_image(
            version=version.strip(),
            model=model.strip(),
            sha256=upload.sha256,
            size=upload.size,
            filename=safe_filename(filename),
            path=name,
            url=None,
            now=self.services.clock(),
        )

    async def add_external_image(
        self, *, version: str, model: str, url: str, sha256: str, size: int, filename: str | None
    ) -> ImageRecord:
        check_image_fields(version, model)
        try:
            ref = ImageRef(sha256=sha256, size=size, url=url)
        except TaskSpecError as exc:
            raise FirmwareError(400, "invalid_image", str(exc), field=exc.field) from None
        return await self.repo.add_image(
            version=version.strip(),
            model=model.strip(),
            sha256=ref.sha256,
            size=ref.size,
            filename=safe_filename(filename or url.rsplit("/", 1)[-1]),
            path=None,
            url=url,
            now=self.services.clock(),
        )

    async def image_file(self, image_id: int, filename: str) -> Path | None:
        """The stored file of image ``image_id`` if ``filename`` is its name."""
        image = await self.repo.image(image_id)
        if image is None or image.path is None or image.filename != filename:
            return None
        path = self.image_dir / image.path
        return path if path.is_file() else None

    # --- tasks: create and control ----------------------------------------------------
    async def _resolve_image(self, body: Mapping[str, Any]) -> tuple[ImageRecord, Version]:
        image_id = body.get("image_id")
        target_raw = body.get("target_version")
        target = None if target_raw is None else _version("target_version", target_raw)
        if image_id is not None:
            image = await self.repo.image(int(image_id))
            if image is None:
                raise FirmwareError(404, "unknown_image", f"no firmware image {image_id}")
            version = parse_version(image.version)
            if target is not None and target != version:
                raise FirmwareError(
                    400,
                    "invalid_task",
                    f"target_version {target_raw!r} is not the version of image {image_id} "
                    f"({image.version})",
                    field="target_version",
                )
            return image, version
        if target is None:
            raise FirmwareError(
                400, "invalid_task", "give image_id or target_version", field="image_id"
            )
        matching = [
            i for i in await self.repo.images(limit=10_000) if parse_version(i.version) == target
        ]
        if not matching:
            raise FirmwareError(
                404, "unknown_image", f"no firmware image with version {target_raw!r}"
            )
        return matching[0], target  # the newest upload of that version

    def _spec_json(
        self,
        body: Mapping[str, Any],
        image: ImageRecord,
        target: Version,
        request_base: str | None,
    ) -> dict[str, Any]:
        """The request with its image resolved (URL, SHA-256, size) and the
        start time defaulted to now: what :func:`task_from_json` reads."""
        spec = {
            key: value
            for key, value in body.items()
            if key not in ("image_id", "target_version") and value is not None
        }
        spec["target_version"] = target.raw
        spec["image"] = {
            "id": image.id,
            "url": self.image_url(image, request_base),
            "sha256": image.sha256,
            "size": image.size,
        }
        schedule = dict(spec.get("schedule") or {})
        if schedule.get("start_at") is None:
            schedule["start_at"] = self.services.clock().isoformat()
        spec["schedule"] = schedule
        return spec

    async def _select(
        self, probe: FirmwareTask, image: ImageRecord
    ) -> tuple[list[PileFacts], dict[str, list[str]]]:
        """The task's piles (rollout order) and those a selector left out.

        An explicit list is refused if a pile is not registered, reports
        another model than the image's, or is unfinished in another task; a
        selector leaves such piles out (``excluded``) instead.
        """
        listed = None if isinstance(probe.targets, PileSelector) else probe.targets
        # Boots received so far are in the piles table (model, version).
        await self.services.writer.barrier()
        fleet = await self.repo.fleet(listed)
        if listed is not None:
            known = {p.pile_id for p in fleet}
            unknown = [p for p in listed if p not in known]
            if unknown:
                raise _refused(400, "unknown_pile", unknown, "is not registered")
        facts: list[PileFacts] = []
        for pile in fleet:
            try:
                version = parse_version(pile.firmware_version) if pile.firmware_version else None
                facts.append(PileFacts(pile.pile_id, model=pile.model, version=version))
            except (TaskSpecError, VersionError):
                continue  # not an ID a task can target (only a selector meets these)
        selected = list(probe.select(facts))
        model = image.model.strip().upper()
        excluded = {
            "model_mismatch": [
                f.pile_id
                for f in selected
                if f.model is not None and f.model.strip().upper() != model
            ]
        }
        busy = await self.repo.busy_piles([f.pile_id for f in selected])
        excluded["busy"] = sorted(busy)
        if listed is not None:
            if excluded["model_mismatch"]:
                what = f"reports another model than the image's {image.model!r}"
                raise _refused(400, "model_mismatch", excluded["model_mismatch"], what)
            if busy:
                pile_id = next(iter(busy))
                what = f"is still in firmware task {busy[pile_id]}"
                raise _refused(409, "pile_busy", list(busy), what, tasks=busy)
        skip = {p for piles in excluded.values() for p in piles}
        selected = [f for f in selected if f.pile_id not in skip]
        if not selected:
            raise FirmwareError(
                400,
                "no_piles",
                "the selector matches no registered pile"
                + (" that is free and of the image's model" if skip else ""),
                field="targets",
            )
        return selected, {why: piles for why, piles in excluded.items() if piles}

    async def create_task(
        self, body: Mapping[str, Any], request_base: str | None = None
    ) -> CreatedTask:
        """Validate, select the piles, store the task and start driving it.

        Errors (:class:`FirmwareError`) name what is wrong: an invalid field
        (``TaskSpecError.field``), an unknown image, an explicit pile that is
        not registered, of another model or already in an unfinished task,
        a selector that matches nothing.
        """
        s = self.services
        self._check_running()
        image, target = await self._resolve_image(body)
        spec_json = self._spec_json(body, image, target, request_base)
        try:
            probe = task_from_json(1, spec_json)  # the real id comes with the row
        except TaskSpecError as exc:
            raise FirmwareError(400, "invalid_task", str(exc), field=exc.field) from None
        selected, excluded = await self._select(probe, image)
        created: list[Rollout] = []
        async with self._lock:
            # The live view now, under the lock: later changes queue behind it.
            live = [
                PileFacts(
                    f.pile_id,
                    model=f.model,
                    version=f.version,
                    online=s.registry.get(f.pile_id) is not None,
                    charging=s.observers.is_charging(f.pile_id),
                )
                for f in selected
            ]

            def build(task_id: int) -> tuple[dict[str, Any], TaskProgress, Sequence[PileUpgrade]]:
                spec = task_from_json(task_id, spec_json)
                created.append(Rollout(spec, live))
                snapshot = created[-1].snapshot()
                return task_to_json(spec, image.id), snapshot.progress, snapshot.piles

            task_id = await self.repo.create_task(
                image_id=image.id,
                target_version=target.raw,
                node_id=s.node_id,
                now=s.clock(),
                build=build,
            )
            rollout = created[-1]
            self._add(rollout)
            written = await self._execute(rollout.tick(s.clock()))
            self._unload_finished()
        if written is not None:
            await written
        log.info("firmware task created", task_id=task_id, piles=len(live), target=target.raw)
        return CreatedTask(task_id, len(live), excluded)

    async def control(self, task_id: int, operation: str) -> None:
        """``pause``, ``resume`` or ``cancel`` a task driven by this node."""
        self._check_running()
        async with self._lock:
            rollout = self._rollouts.get(task_id)
            if rollout is None:
                row = await self.repo.task(task_id)
                raise self._not_here(task_id, row, operation)
            now = self.services.clock()
            try:
                if operation == "pause":
                    actions = rollout.pause(now)
                elif operation == "resume":
                    actions = rollout.resume(now)
                elif operation == "cancel":
                    actions = rollout.cancel(now)
                else:
                    raise ValueError(operation)
            except IllegalTaskTransition as exc:
                raise FirmwareError(
                    409,
                    "illegal_task_transition",
                    f"firmware task {task_id} is {exc.state.value}: "
                    f"it cannot be {_past(operation)}",
                    state=exc.state.value,
                ) from None
            written = await self._execute(actions)
            self._unload_finished()
        if written is not None:
            await written

    def _check_running(self) -> None:
        if not self._running:
            raise FirmwareError(503, "not_running", "the firmware engine is not running")

    def _not_here(self, task_id: int, row: TaskRecordRow | None, operation: str) -> FirmwareError:
        if row is None:
            return FirmwareError(404, "unknown_task", f"no firmware task {task_id}")
        if row.state in (TaskState.COMPLETED.value, TaskState.CANCELLED.value):
            return FirmwareError(
                409,
                "illegal_task_transition",
                f"firmware task {task_id} is {row.state}: it cannot be {_past(operation)}",
                state=row.state,
            )
        if row.node_id == self.services.node_id:
            return FirmwareError(
                409,
                "task_not_loaded",
                f"firmware task {task_id} could not be restored on this node (see its log)",
            )
        return FirmwareError(
            409,
            "task_elsewhere",
            f"firmware task {task_id} is driven by gateway node {row.node_id}; "
            "send the request to that node",
            node_id=row.node_id,
        )


def _refused(status: int, code: str, piles: list[str], what: str, **extra: Any) -> FirmwareError:
    """``pile X <what> (and N more)``, with the piles (first 100) for scripts."""
    more = f" (and {len(piles) - 1} more)" if len(piles) > 1 else ""
    return FirmwareError(status, code, f"pile {piles[0]} {what}{more}", piles=piles[:100], **extra)


def _past(operation: str) -> str:
    return {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}.get(operation, operation)


def upgrades_of(records: Sequence[Mapping[str, Any]]) -> list[PileUpgrade]:
    """Stored pile records back to :class:`firmware.PileUpgrade` values."""
    return [PileUpgrade.from_dict(r) for r in records]


__all__ = [
    "FIRMWARE_BASE_URL_ENV",
    "FIRMWARE_DIR_ENV",
    "CreatedTask",
    "FirmwareError",
    "FirmwareService",
    "ImageUpload",
    "task_from_json",
    "task_to_json",
]
