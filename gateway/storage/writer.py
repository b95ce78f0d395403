"""Write-behind queue: keeps the database off the per-message path.

Handlers enqueue small write operations and reply to the charger at once; one
flusher task drains the queue in batches, each batch in one database
transaction, in the order the operations were enqueued (so a pile's
presence events and gun statuses keep their order). Only what must be
durable before a reply (a transaction id, a stopped transaction) bypasses it.

The queue is bounded: when it is full ``put`` waits (back-pressure on the
charger's connection) instead of dropping data. Heartbeat "last seen" times
are coalesced per pile, so a heartbeat costs no row of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ClauseElement

from gateway.logging import get_logger

from .models import (
    Pile,
)
from .pilewrites import PileWrites
from .rawsql import dialect_insert, executemany, statements_for

log = get_logger("pilegate.storage")


@dataclass(frozen=True, slots=True)
class PresenceOp:
    pile_id: str
    at: datetime
    online: bool
    reason: str
    detail: str | None
    connection_id: str | None
    node_id: str | None
    protocol: str | None = None


# The two ops built per message (a status, each sampled value) are
# NamedTuples: as immutable as the frozen dataclasses around them, but a
# frozen dataclass's __init__ sets each field through object.__setattr__,
# 1.9 µs for a sample's 13 fields against 0.7 µs for a tuple, paid some
# 24,000 times a second under the bench's mixed load (docs/benchmarks.md,
# "write ops are NamedTuples").
class GunStatusOp(NamedTuple):
    pile_id: str
    connector_id: int
    gun_id: str
    status: str
    error_code: str | None
    info: str | None
    vendor_id: str | None
    vendor_error_code: str | None
    at: datetime
    received_at: datetime


class MeterReadingOp(NamedTuple):
    """One OCPP MeterValue element (a ``meter_readings`` row; samples and
    digest from gateway/storage/meter.py ``encode``)."""

    pile_id: str
    transaction_key: int
    connector_id: int
    at: datetime
    digest: int
    samples: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ChargerMessageOp:
    pile_id: str
    kind: str
    vendor_id: str | None
    message_id: str | None
    status: str | None
    data: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class PileUpdateOp:
    """Set columns of a pile row (boot data, kind mismatch...), and with
    ``count_boot`` add one to its boot count."""

    pile_id: str
    values: tuple[tuple[str, Any], ...]
    count_boot: bool = False

    def __post_init__(self) -> None:
        # Values are merged per pile and bound as parameters
        # (gateway/storage/pilewrites.py): an SQL expression would only fail
        # when the batch is written, so it is refused here, where it is built.
        columns = Pile.__table__.c
        for column, value in self.values:
            if column not in columns or column == "pile_id":
                raise ValueError(f"PileUpdateOp: not a settable column of piles: {column!r}")
            if isinstance(value, ClauseElement):
                raise TypeError(f"PileUpdateOp value of {column!r} is an SQL expression")


@dataclass(frozen=True, slots=True)
class KindEvidenceOp:
    """Flag an AC/DC contradiction, appending to the pile's evidence list
    (every source is kept: a later boot must not erase what the meter values
    showed)."""

    pile_id: str
    evidence: str  # JSON object


@dataclass(frozen=True, slots=True)
class OutboxOp:
    """Events to publish; enqueued in the same ``put`` as the data they
    describe, so both land in the same database transaction."""

    node_id: str
    pile_id: str
    rows: tuple[tuple[str, str, str, bool], ...]  # (event_id, topic, payload, retain)
    created_at: datetime


@dataclass(frozen=True, slots=True, eq=False)
class DurableOp:
    """A write the caller awaits (a transaction id before the reply): it runs
    in order with the queued writes, inside the batch transaction, and its
    future is resolved only after that transaction committed. ``fn`` must
    be idempotent: a failed batch is retried as a whole."""

    fn: Callable[[AsyncSession], Awaitable[Any]]
    future: asyncio.Future[Any]


# Evidence entries kept per pile (oldest dropped first).
KIND_EVIDENCE_MAX = 20

WriteOp = (
    PresenceOp
    | GunStatusOp
    | MeterReadingOp
    | ChargerMessageOp
    | PileUpdateOp
    | KindEvidenceOp
    | OutboxOp
    | DurableOp
)


# SQLSTATE classes of refused data (PostgreSQL, Appendix A "Error Codes"):
# 22 data exception (a value too long, a NUL character in text, an argument
# of the wrong type), 23 integrity constraint violation (a foreign key).
# Other classes (08 connection, 40 rollback, 53 resources, 57 shutdown, 42
# a missing table) are about the database, not the rows: retried.
_REFUSED_SQLSTATE_CLASSES = ("22", "23")


def refused_data(exc: BaseException) -> bool:
    """The database refused the rows themselves, or building a row failed:
    retrying the same batch would fail again, forever. Connection losses,
    locks, timeouts and a schema the database lacks are not: those batches
    are retried until the database is back."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        state = getattr(orig, "sqlstate", None)
        if isinstance(state, str) and state[:2] in _REFUSED_SQLSTATE_CLASSES:
            return True  # asyncpg's errors reach SQLAlchemy as plain DBAPIError
        # SQLite: a value of a type it cannot store (a bug, or a lenient
        # model's payload); other ProgrammingErrors (a closed connection) are not.
        return isinstance(orig, sqlite3.ProgrammingError) and str(orig).startswith(
            "Error binding parameter"
        )
    return isinstance(exc, (ValueError, TypeError, LookupError))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 500 else text[:500] + "…"


def insert_ignore(session: AsyncSession, model: type[Any], rows: Sequence[dict[str, Any]]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the session's dialect."""
    stmt = dialect_insert(session.get_bind().dialect, model)
    return stmt.values(list(rows)).on_conflict_do_nothing()


class WriteBehind:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_items: int = 100_000,
        batch_max: int = 5_000,
        flush_interval: float = 0.1,
        metrics: Any = None,
    ) -> None:
        self._sessions = sessions
        # Groups of operations: one group per put() call, never split across
        # two database transactions (data and its outbox events stay atomic).
        self._queue: deque[tuple[WriteOp, ...]] = deque()
        self._queued_ops = 0
        self._last_seen: dict[str, datetime] = {}
        self._max_items = max_items
        self._batch_max = batch_max
        self._interval = flush_interval
        self._metrics = metrics
        if metrics is not None:
            # Read at scrape time: a Gauge.set per enqueued message took a
            # lock each time.
            metrics.storage_queue_depth.set_function(lambda: self._queued_ops)
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._flushed = asyncio.Condition()
        self._enqueued = 0  # sequence number of the last enqueued op
        self._done = 0  # sequence number of the last flushed op
        self._closed = False
        self._flush_lock = asyncio.Lock()
        self.on_flush: Callable[[], None] | None = None
        self.failures = 0

    def __len__(self) -> int:
        return self._queued_ops

    # --- producers -----------------------------------------------------------
    def touch(self, pile_id: str, at: datetime) -> None:
        """Record "last seen" (coalesced: only the newest time per pile is written)."""
        prev = self._last_seen.get(pile_id)
        if prev is None or at > prev:
            self._last_seen[pile_id] = at

    async def put(self, *ops: WriteOp) -> None:
        if self._closed:
            raise RuntimeError("write queue is closed")
        if not ops:
            return
        while self._queued_ops >= self._max_items:
            self._space.clear()
            self._wakeup.set()
            await self._space.wait()
        self._enqueue(ops)

    def _enqueue(self, ops: tuple[WriteOp, ...]) -> None:
        self._queue.append(ops)
        self._queued_ops += len(ops)
        self._enqueued += 1
        # A DurableOp comes last in its group (``call``, FirmwareService's
        # dispatch): looking at the last op only spares every other group a
        # scan (2 % of the event loop under mixed load, bench/message_path.py).
        # One elsewhere would only wait for the next timed flush.
        if self._queued_ops >= self._batch_max or type(ops[-1]) is DurableOp:
            self._wakeup.set()

    @property
    def backlogged(self) -> bool:
        """Half full or more: the database is behind. The connections' direct
        path then steps aside (its frames take the receive task, which waits
        for space), leaving the core to the flush instead of filling the
        queue faster (docs/benchmarks.md, "the direct path steps aside")."""
        return self._queued_ops * 2 >= self._max_items

    def try_put(self, *ops: WriteOp) -> bool:
        """Enqueue without waiting, if the queue has room (else False and
        nothing enqueued: the caller falls back to ``put``, which waits).
        The connection fast path uses it to answer a frame without a task
        switch."""
        if self._closed:
            raise RuntimeError("write queue is closed")
        if self._queued_ops >= self._max_items:
            return False
        if ops:
            self._enqueue(ops)
        return True

    async def call(self, fn: Callable[[AsyncSession], Awaitable[Any]], *ops: WriteOp) -> Any:
        """Run ``fn`` in order with the queue and return its result once
        committed (with ``ops`` enqueued in the same group, atomically)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.put(*ops, DurableOp(fn, fut))
        return await fut

    async def barrier(self) -> None:
        """Wait until everything enqueued before this call is in the database."""
        target = self._enqueued
        self._wakeup.set()
        async with self._flushed:
            await self._flushed.wait_for(lambda: self._done >= target)

    # --- consumer ------------------------------------------------------------
    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._interval)
            self._wakeup.clear()
            await self.flush()
            if self._closed and not self._queue and not self._last_seen:
                return

    async def close(self) -> None:
        """Stop accepting and flush what is queued (graceful shutdown)."""
        self._closed = True
        self._wakeup.set()
        await self.flush()

    async def flush(self) -> None:
        # run() and close() may both flush; one batch at a time keeps the
        # order and pops each operation exactly once.
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        while self._queue or self._last_seen:
            n = 0  # groups in this batch
            batch: list[WriteOp] = []
            # Iterated, not indexed: a deque's [n] walks from an end, and a
            # batch of a few thousand groups made that quadratic.
            for group in self._queue:
                if batch and len(batch) >= self._batch_max:
                    break
                batch.extend(group)
                n += 1
            seen, self._last_seen = self._last_seen, {}
            started = time.perf_counter()
            try:
                resolved = await self._write(batch, seen)
            except Exception as exc:
                # Keep the data: put "last seen" back and retry the batch on
                # the next round (the database may be restarting).
                self.failures += 1
                for pile_id, at in seen.items():
                    self.touch(pile_id, at)
                if refused_data(exc):
                    # Retrying would fail the same way, forever, and the full
                    # queue would then hold up every charger: find the
                    # refused groups and write the others.
                    log.warning(
                        "write batch refused by the database; isolating the refused operations",
                        ops=len(batch),
                        error=_short(exc),
                    )
                    groups = list(itertools.islice(self._queue, n))
                    if await self._bisect(groups, exc):
                        self.failures = 0
                        continue
                    exc_info = False  # _bisect logged the error that stopped it
                else:
                    exc_info = True
                log.error("write batch failed; will retry", ops=len(batch), exc_info=exc_info)
                await asyncio.sleep(min(5.0, 0.2 * self.failures))
                if self._closed and self.failures > 50:
                    log.error("giving up on queued writes at shutdown", lost=self._queued_ops)
                    for group in self._queue:
                        for op in group:
                            if type(op) is DurableOp and not op.future.done():
                                op.future.set_exception(RuntimeError("database unavailable"))
                    return
                continue
            self.failures = 0
            if self._metrics is not None:
                self._metrics.storage_flush_seconds.observe(time.perf_counter() - started)
            await self._retire(n, len(batch), resolved)

    async def _retire(
        self, n: int, ops: int, resolved: list[tuple[asyncio.Future[Any], Any]]
    ) -> None:
        """The first ``n`` groups (``ops`` operations) are written or refused:
        resolve their callers, take them off the queue, wake the waiters."""
        for fut, value in resolved:
            if not fut.done():
                fut.set_result(value)
        for _ in range(n):
            self._queue.popleft()
        self._queued_ops -= ops
        if self._queued_ops < self._max_items:
            self._space.set()
        async with self._flushed:
            self._done += n
            self._flushed.notify_all()
        if self.on_flush is not None:
            self.on_flush()

    async def _bisect(self, groups: list[tuple[WriteOp, ...]], exc: BaseException) -> bool:
        """``groups``, the head of the queue, failed together with ``exc``
        (refused data). Write them in halves, in order, until each refused
        group is alone; a group refused on its own is dropped, logged with
        its operations. About 2·log2(groups) transactions per refused group.
        False when another kind of error stopped it: what is left stays
        queued and the flusher retries it as usual."""
        if len(groups) == 1:
            self._refuse(groups[0], exc)
            await self._retire(1, len(groups[0]), [])
            return True
        half = len(groups) // 2
        for part in (groups[:half], groups[half:]):
            batch = [op for group in part for op in group]
            try:
                resolved = await self._write(batch, {})
            except Exception as error:
                if not refused_data(error):
                    log.exception("write failed while isolating refused data", ops=len(batch))
                    return False
                if not await self._bisect(part, error):
                    return False
            else:
                await self._retire(len(part), len(batch), resolved)
        return True

    def _refuse(self, group: tuple[WriteOp, ...], exc: BaseException) -> None:
        """Drop a group the database refuses on its own. The log line keeps
        its data (the charger was answered and will not send it again)."""
        log.error(
            "write refused by the database; operations dropped",
            pile_ids=sorted({p for op in group if (p := getattr(op, "pile_id", None))}),
            error=_short(exc),
            operations=[repr(op)[:2000] for op in group[:50]],
            count=len(group),
        )
        for op in group:
            if self._metrics is not None:
                self._metrics.storage_refused_ops.labels(kind=type(op).__name__).inc()
            if type(op) is DurableOp and not op.future.done():
                op.future.set_exception(exc)

    async def _write(
        self, batch: list[WriteOp], seen: dict[str, datetime]
    ) -> list[tuple[asyncio.Future[Any], Any]]:
        resolved: list[tuple[asyncio.Future[Any], Any]] = []
        failed: list[tuple[asyncio.Future[Any], BaseException]] = []
        async with self._sessions() as s, s.begin():
            # Rows that only depend on their own unique keys are collected
            # and written at the end of the batch as executemany statements
            # (compiled once and cached by SQLAlchemy), instead of one
            # statement or unit-of-work flush per message (docs/benchmarks.md,
            # "Where the time goes"). Outbox rows keep their order: they are
            # written before anything that adds outbox rows itself.
            raw = statements_for(s)
            readings: list[MeterReadingOp] = []
            gun_events: list[GunStatusOp] = []
            guns: dict[tuple[str, int], dict[str, Any]] = {}
            outbox: list[dict[str, Any]] = []
            presence: list[PresenceOp] = []
            messages: list[ChargerMessageOp] = []
            piles = PileWrites()

            async def drain() -> None:
                """Write what is collected before anything that may read it."""
                if outbox:
                    await executemany(s, raw.outbox, outbox)
                    outbox.clear()
                if presence:
                    await executemany(s, raw.presence_events, presence, attrs=True)
                    presence.clear()
                if messages:
                    await executemany(s, raw.charger_messages, messages, attrs=True)
                    messages.clear()
                if piles:
                    await piles.flush(s, raw)

            for op in batch:
                kind = type(op)
                if kind is MeterReadingOp:
                    assert isinstance(op, MeterReadingOp)
                    readings.append(op)
                elif kind is GunStatusOp:
                    assert isinstance(op, GunStatusOp)
                    gun_events.append(op)
                    key = (op.pile_id, op.connector_id)
                    prev = guns.get(key)
                    # One row per gun per statement (an upsert may not touch
                    # a row twice); the newest status wins, as in the upsert.
                    if prev is None or prev["status_at"] <= op.at:
                        guns[key] = {
                            "pile_id": op.pile_id,
                            "connector_id": op.connector_id,
                            "gun_id": op.gun_id,
                            "status": op.status,
                            "error_code": op.error_code,
                            "info": op.info,
                            "vendor_error_code": op.vendor_error_code,
                            "status_at": op.at,
                        }
                elif kind is OutboxOp:
                    assert isinstance(op, OutboxOp)
                    outbox.extend(
                        {
                            "event_id": event_id,
                            "node_id": op.node_id,
                            "pile_id": op.pile_id,
                            "topic": topic,
                            "payload": payload,
                            "retain": retain,
                            "created_at": op.created_at,
                        }
                        for event_id, topic, payload, retain in op.rows
                    )
                elif isinstance(op, PresenceOp):
                    presence.append(op)
                    if op.online:
                        if piles.needs_flush_before_merge(op.pile_id):
                            await piles.flush(s, raw)
                        piles.online(op.pile_id, op.at, op.node_id, op.protocol)
                    else:
                        piles.go_offline(op.pile_id, op.node_id)
                elif isinstance(op, ChargerMessageOp):
                    messages.append(op)
                elif isinstance(op, PileUpdateOp):
                    if piles.needs_flush_before_merge(op.pile_id):
                        await piles.flush(s, raw)
                    delta = piles.delta(op.pile_id)
                    delta.set(op.values)
                    if op.count_boot:
                        delta.count_boot()
                elif isinstance(op, DurableOp):
                    await drain()
                    # A savepoint per awaited write: if its own data is
                    # refused (a constraint, a bug), only its caller gets the
                    # error; the rest of the batch commits and nothing is
                    # retried forever.
                    try:
                        async with s.begin_nested():
                            value = await op.fn(s)
                    except (IntegrityError, ValueError, LookupError) as exc:
                        failed.append((op.future, exc))
                    else:
                        resolved.append((op.future, value))
                elif isinstance(op, KindEvidenceOp):
                    await drain()
                    current = await s.scalar(
                        select(Pile.kind_mismatch_evidence).where(Pile.pile_id == op.pile_id)
                    )
                    items = json.loads(current) if current else []
                    items.append(json.loads(op.evidence))
                    await s.execute(
                        update(Pile)
                        .where(Pile.pile_id == op.pile_id)
                        .values(
                            kind_mismatch=True,
                            kind_mismatch_evidence=json.dumps(items[-KIND_EVIDENCE_MAX:]),
                        )
                    )
            await drain()
            # Objects a durable write added to the session.
            await s.flush()
            await executemany(s, raw.meter_readings, readings, attrs=True)
            await executemany(s, raw.gun_status_events, gun_events, attrs=True)
            await executemany(s, raw.gun_upsert, guns.values())
            await executemany(
                s, raw.last_seen, ({"seen_pile_id": p, "seen_at": at} for p, at in seen.items())
            )
        for fut, error in failed:
            if not fut.done():
                fut.set_exception(error)
        return resolved
