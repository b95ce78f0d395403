"""What the ops API, the CLI and the CSV export show about a firmware task.

Pure functions over the persisted values (:class:`TaskProgress`,
:class:`PileUpgrade`), so the API can answer from the database without a
live :class:`~firmware.rollout.Rollout` (the task may run on another node).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime

from .pile_upgrade import IN_FLIGHT, PileState, PileUpgrade
from .rollout import TaskProgress, TaskState, WaveResult

__all__ = [
    "CSV_COLUMNS",
    "PileRow",
    "TaskSummary",
    "count_by_state",
    "pile_row",
    "pile_rows",
    "rows_to_csv",
    "summarize",
]


def count_by_state(upgrades: Iterable[PileUpgrade]) -> dict[PileState, int]:
    """Every state (zeros included, in declaration order), so dashboards and
    metrics always see the same keys."""
    counts = Counter(u.state for u in upgrades)
    return {state: counts[state] for state in PileState}


@dataclass(frozen=True, slots=True)
class PileRow:
    """One pile of a task, flattened for a table or a CSV line.

    ``elapsed_seconds``: from the first UpdateFirmware to the final state
    (or to ``now`` while it is not final); None if never sent.
    """

    pile_id: str
    state: PileState
    wave: int | None
    attempts: int
    sends: int
    last_status: str | None
    last_status_at: datetime | None
    reason: str | None
    last_error: str | None
    from_version: str | None
    reported_version: str | None
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    finished_at: datetime | None
    state_since: datetime | None
    elapsed_seconds: float | None


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PileRow))


def pile_row(upgrade: PileUpgrade, now: datetime) -> PileRow:
    elapsed = None
    if upgrade.first_sent_at is not None:
        end = upgrade.finished_at if upgrade.finished_at is not None else now
        elapsed = (end - upgrade.first_sent_at).total_seconds()
    return PileRow(
        pile_id=upgrade.pile_id,
        state=upgrade.state,
        wave=upgrade.wave,
        attempts=upgrade.attempts,
        sends=upgrade.sends,
        last_status=None if upgrade.last_status is None else upgrade.last_status.value,
        last_status_at=upgrade.last_status_at,
        reason=upgrade.reason,
        last_error=upgrade.last_error,
        from_version=None if upgrade.from_version is None else upgrade.from_version.raw,
        reported_version=None if upgrade.reported_version is None else upgrade.reported_version.raw,
        first_sent_at=upgrade.first_sent_at,
        last_sent_at=upgrade.last_sent_at,
        finished_at=upgrade.finished_at,
        state_since=upgrade.state_since,
        elapsed_seconds=elapsed,
    )


def pile_rows(
    upgrades: Iterable[PileUpgrade], now: datetime, state: PileState | None = None
) -> list[PileRow]:
    """Rows in the given (rollout) order, optionally only those in ``state``."""
    return [pile_row(u, now) for u in upgrades if state is None or u.state is state]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PileState):
        return value.value
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def rows_to_csv(rows: Iterable[PileRow]) -> str:
    """CSV text (RFC 4180: CRLF line ends, quoting as needed) with a header line."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in CSV_COLUMNS])
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class TaskSummary:
    task_id: int
    state: TaskState
    reason: str | None
    total: int
    counts: Mapping[PileState, int]
    in_flight: int
    waves: tuple[WaveResult, ...]

    @property
    def status_text(self) -> str:
        """E.g. ``stopped: failure rate 40% > threshold 20% in wave 2``."""
        return f"{self.state.value}: {self.reason}" if self.reason else self.state.value

    @property
    def done(self) -> int:
        """Piles upgraded and proven by a boot."""
        return self.counts[PileState.VERIFIED]


def summarize(progress: TaskProgress, upgrades: Iterable[PileUpgrade]) -> TaskSummary:
    counts = count_by_state(upgrades)
    return TaskSummary(
        task_id=progress.task_id,
        state=progress.state,
        reason=progress.reason,
        total=sum(counts.values()),
        counts=counts,
        in_flight=sum(counts[s] for s in IN_FLIGHT),
        waves=progress.waves,
    )
