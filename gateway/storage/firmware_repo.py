"""Storage of firmware images, tasks, per-pile upgrades and the task event log.

A task is persisted in two parts that together are its
:class:`firmware.RolloutRecord`: the task row holds the spec and the
progress (:meth:`firmware.TaskProgress.to_dict`), and one row per pile holds
:meth:`firmware.PileUpgrade.to_dict` (plus a few of its fields as columns,
for SQL filtering and counting). Saving a pile therefore costs one row,
not a rewrite of the whole task.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from firmware import FINAL, IN_FLIGHT, PileUpgrade, TaskProgress, TaskState

from .models import FirmwareEvent, FirmwareImage, FirmwareTaskPile, FirmwareTaskRow, Pile

# Tasks that may still dispatch: their unfinished piles are "busy".
ACTIVE_TASK_STATES = (
    TaskState.SCHEDULED.value,
    TaskState.RUNNING.value,
    TaskState.PAUSED.value,
    TaskState.STOPPED.value,
)
_FINAL = tuple(s.value for s in FINAL)
_IN_FLIGHT = tuple(s.value for s in IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    version: str
    model: str
    sha256: str
    size: int
    filename: str
    path: str | None  # relative to the image directory; None for an external image
    url: str | None  # external URL; None for a stored image
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TaskRecordRow:
    id: int
    image_id: int | None
    target_version: str
    spec: dict[str, Any]
    state: str
    reason: str | None
    progress: dict[str, Any]
    node_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FirmwareEventRecord:
    id: int
    task_id: int
    pile_id: str | None
    at: datetime
    from_state: str
    to_state: str
    trigger: str
    reason: str | None
    attempt: int | None


@dataclass(frozen=True, slots=True)
class FleetPile:
    """What the piles table knows of a pile (its last boot's model and version)."""

    pile_id: str
    model: str | None
    firmware_version: str | None


@dataclass(frozen=True, slots=True)
class EventLine:
    """One line of the audit log to write (pile_id None: a task transition)."""

    task_id: int
    pile_id: str | None
    at: datetime
    from_state: str
    to_state: str
    trigger: str
    reason: str | None
    attempt: int | None


def _image(row: FirmwareImage) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        version=row.version,
        model=row.model,
        sha256=row.sha256,
        size=row.size,
        filename=row.filename,
        path=row.path,
        url=row.url,
        created_at=row.created_at,
    )


def _task(row: FirmwareTaskRow) -> TaskRecordRow:
    return TaskRecordRow(
        id=row.id,
        image_id=row.image_id,
        target_version=row.target_version,
        spec=json.loads(row.spec),
        state=row.state,
        reason=row.reason,
        progress=json.loads(row.record),
        node_id=row.node_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _pile_columns(upgrade: PileUpgrade, now: datetime) -> dict[str, Any]:
    return {
        "state": upgrade.state.value,
        "wave": upgrade.wave,
        "attempts": upgrade.attempts,
        "last_status": None if upgrade.last_status is None else upgrade.last_status.value,
        "first_sent_at": upgrade.first_sent_at,
        "last_sent_at": upgrade.last_sent_at,
        "finished_at": upgrade.finished_at,
        "record": json.dumps(upgrade.to_dict()),
        "updated_at": now,
    }


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class FirmwareRepo:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # --- images ------------------------------------------------------------
    async def add_image(
        self,
        *,
        version: str,
        model: str,
        sha256: str,
        size: int,
        filename: str,
        path: str | None,
        url: str | None,
        now: datetime,
    ) -> ImageRecord:
        row = FirmwareImage(
            version=version,
            model=model,
            sha256=sha256,
            size=size,
            filename=filename,
            path=path,
            url=url,
            created_at=now,
        )
        async with self._sessions() as s, s.begin():
            s.add(row)
            await s.flush()
            return _image(row)

    async def image(self, image_id: int) -> ImageRecord | None:
        async with self._sessions() as s:
            row = await s.get(FirmwareImage, image_id)
            return None if row is None else _image(row)

    async def images(self, *, limit: int = 100, offset: int = 0) -> list[ImageRecord]:
        stmt = select(FirmwareImage).order_by(FirmwareImage.id.desc()).limit(limit).offset(offset)
        async with self._sessions() as s:
            return [_image(r) for r in await s.scalars(stmt)]

    # --- the fleet, as tasks see it ------------------------------------------
    async def fleet(self, pile_ids: Sequence[str] | None = None) -> list[FleetPile]:
        """Registered piles (all of them, or those of ``pile_ids``), by pile ID."""
        stmt = select(Pile.pile_id, Pile.model, Pile.firmware_version).order_by(Pile.pile_id)
        if pile_ids is not None:
            stmt = stmt.where(Pile.pile_id.in_(list(pile_ids)))
        async with self._sessions() as s:
            return [FleetPile(*row) for row in (await s.execute(stmt)).all()]

    async def busy_piles(self, pile_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Piles not yet final in a task that may still dispatch: pile -> task id."""
        stmt = (
            select(FirmwareTaskPile.pile_id, FirmwareTaskPile.task_id)
            .join(FirmwareTaskRow, FirmwareTaskRow.id == FirmwareTaskPile.task_id)
            .where(
                FirmwareTaskRow.state.in_(ACTIVE_TASK_STATES),
                FirmwareTaskPile.state.not_in(_FINAL),
            )
        )
        if pile_ids is not None:
            stmt = stmt.where(FirmwareTaskPile.pile_id.in_(list(pile_ids)))
        async with self._sessions() as s:
            return {pile_id: task_id for pile_id, task_id in (await s.execute(stmt)).all()}

    # --- tasks -------------------------------------------------------------
    async def create_task(
        self,
        *,
        image_id: int | None,
        target_version: str,
        node_id: str,
        now: datetime,
        build: Callable[[int], tuple[dict[str, Any], TaskProgress, Sequence[PileUpgrade]]],
    ) -> int:
        """Insert a task; ``build(task_id)`` returns its stored spec, progress
        and piles (in rollout order). All in one transaction: a ``build``
        that raises leaves nothing behind."""
        async with self._sessions() as s, s.begin():
            row = FirmwareTaskRow(
                image_id=image_id,
                target_version=target_version,
                spec="{}",
                state=TaskState.SCHEDULED.value,
                record="{}",
                node_id=node_id,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            await s.flush()
            spec, progress, piles = build(row.id)
            row.spec = _dumps(spec)
            row.state = progress.state.value
            row.reason = progress.reason
            row.record = _dumps(progress.to_dict())
            if piles:
                await s.execute(
                    insert(FirmwareTaskPile),
                    [
                        {
                            "task_id": row.id,
                            "pile_id": upgrade.pile_id,
                            "position": position,
                            **_pile_columns(upgrade, now),
                        }
                        for position, upgrade in enumerate(piles)
                    ],
                )
            return row.id

    async def task(self, task_id: int) -> TaskRecordRow | None:
        async with self._sessions() as s:
            row = await s.get(FirmwareTaskRow, task_id)
            return None if row is None else _task(row)

    async def tasks(
        self, *, state: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[tuple[TaskRecordRow, dict[str, int]]]:
        """Newest first, each with its pile counts per state."""
        stmt = select(FirmwareTaskRow).order_by(FirmwareTaskRow.id.desc())
        if state is not None:
            stmt = stmt.where(FirmwareTaskRow.state == state)
        async with self._sessions() as s:
            rows = [_task(r) for r in await s.scalars(stmt.limit(limit).offset(offset))]
            counts: dict[int, dict[str, int]] = {r.id: {} for r in rows}
            if rows:
                grouped = await s.execute(
                    select(FirmwareTaskPile.task_id, FirmwareTaskPile.state, func.count())
                    .where(FirmwareTaskPile.task_id.in_(list(counts)))
                    .group_by(FirmwareTaskPile.task_id, FirmwareTaskPile.state)
                )
                for task_id, pile_state, n in grouped.all():
                    counts[task_id][pile_state] = int(n)
            return [(r, counts[r.id]) for r in rows]

    async def task_piles(self, task_id: int) -> list[dict[str, Any]]:
        """The piles' records (PileUpgrade.to_dict()), in rollout order."""
        stmt = (
            select(FirmwareTaskPile.record)
            .where(FirmwareTaskPile.task_id == task_id)
            .order_by(FirmwareTaskPile.position)
        )
        async with self._sessions() as s:
            return [json.loads(r) for r in await s.scalars(stmt)]

    async def events(
        self,
        task_id: int,
        *,
        pile_id: str | None = None,
        after_id: int | None = None,
        limit: int = 1000,
    ) -> list[FirmwareEventRecord]:
        """Oldest first; page on with ``after_id`` (the last id seen)."""
        stmt = select(FirmwareEvent).where(FirmwareEvent.task_id == task_id)
        if pile_id is not None:
            stmt = stmt.where(FirmwareEvent.pile_id == pile_id)
        if after_id is not None:
            stmt = stmt.where(FirmwareEvent.id > after_id)
        stmt = stmt.order_by(FirmwareEvent.id).limit(limit)
        async with self._sessions() as s:
            return [
                FirmwareEventRecord(
                    id=r.id,
                    task_id=r.task_id,
                    pile_id=r.pile_id,
                    at=r.at,
                    from_state=r.from_state,
                    to_state=r.to_state,
                    trigger=r.trigger,
                    reason=r.reason,
                    attempt=r.attempt,
                )
                for r in await s.scalars(stmt)
            ]

    async def claim_tasks(
        self, node_id: str, live_nodes: Sequence[str]
    ) -> list[tuple[TaskRecordRow, list[dict[str, Any]]]]:
        """The tasks this node must drive after a start, with their piles.

        A task is driven by one node (``node_id``): this node's own, plus
        those of nodes that are no longer alive, which it takes over. Loaded:
        tasks that may still dispatch, and finished ones (cancelled) whose
        piles are still in flight (an UpdateFirmware cannot be recalled).
        """
        alive = set(live_nodes) - {node_id}
        in_flight = (
            select(FirmwareTaskPile.task_id)
            .where(
                FirmwareTaskPile.task_id == FirmwareTaskRow.id,
                FirmwareTaskPile.state.in_((*_IN_FLIGHT, "retry_wait")),
            )
            .exists()
        )
        wanted = or_(FirmwareTaskRow.state.in_(ACTIVE_TASK_STATES), in_flight)
        mine = (
            or_(FirmwareTaskRow.node_id.is_(None), FirmwareTaskRow.node_id.not_in(alive))
            if alive
            else true()
        )
        async with self._sessions() as s, s.begin():
            await s.execute(
                update(FirmwareTaskRow)
                .where(wanted, mine)
                .values(node_id=node_id)
                .execution_options(synchronize_session=False)
            )
            rows = [
                _task(r)
                for r in await s.scalars(
                    select(FirmwareTaskRow)
                    .where(wanted, FirmwareTaskRow.node_id == node_id)
                    .order_by(FirmwareTaskRow.id)
                )
            ]
            out = []
            for row in rows:
                records = await s.scalars(
                    select(FirmwareTaskPile.record)
                    .where(FirmwareTaskPile.task_id == row.id)
                    .order_by(FirmwareTaskPile.position)
                )
                out.append((row, [json.loads(r) for r in records]))
            return out

    # --- saving what the rollout decided --------------------------------------
    @staticmethod
    def saver(
        piles: Mapping[tuple[int, str], PileUpgrade],
        tasks: Mapping[int, TaskProgress],
        events: Sequence[EventLine],
        now: datetime,
    ) -> Callable[[AsyncSession], Awaitable[None]]:
        """A write for ``WriteBehind.call``/``DurableOp``: pile rows, task rows
        and audit lines in the batch's transaction (rerunnable: a failed
        batch is rolled back and retried whole)."""
        pile_rows = [
            {"task_id": task_id, "pile_id": pile_id, **_pile_columns(upgrade, now)}
            for (task_id, pile_id), upgrade in piles.items()
        ]
        task_rows = [
            {
                "id": task_id,
                "state": progress.state.value,
                "reason": progress.reason,
                "record": _dumps(progress.to_dict()),
                "updated_at": now,
            }
            for task_id, progress in tasks.items()
        ]
        event_rows = [
            {
                "task_id": e.task_id,
                "pile_id": e.pile_id,
                "at": e.at,
                "from_state": e.from_state,
                "to_state": e.to_state,
                "trigger": e.trigger,
                "reason": e.reason,
                "attempt": e.attempt,
            }
            for e in events
        ]

        async def write(s: AsyncSession) -> None:
            if pile_rows:
                await s.execute(update(FirmwareTaskPile), pile_rows)
            if task_rows:
                await s.execute(update(FirmwareTaskRow), task_rows)
            if event_rows:
                await s.execute(insert(FirmwareEvent), event_rows)

        return write
