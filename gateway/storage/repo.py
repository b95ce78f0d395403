"""Repository: the only place that turns domain values into rows and back.

The rest of the gateway sees plain frozen dataclasses (``PileRecord``,
``PresenceRecord``), never ORM objects, so nothing outside this package can
lazily load or accidentally write through a session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pileid import PileId

from .db import session_factory
from .meter import StoredReading, merge
from .models import (
    ChargerMessage,
    Gun,
    MeterReading,
    OrphanStop,
    OutboxEvent,
    Pile,
    PresenceEvent,
    Token,
    Transaction,
)
from .writer import insert_ignore


class TokenExists(Exception):
    pass


class PileExists(Exception):
    def __init__(self, pile_id: str) -> None:
        super().__init__(f"pile {pile_id} is already registered")
        self.pile_id = pile_id


@dataclass(frozen=True, slots=True)
class PileRecord:
    pile_id: str
    region_code: str
    operator_code: str
    product_code: str
    kind: str
    serial: str
    protocol: str | None
    vendor: str | None
    model: str | None
    firmware_version: str | None
    registered_at: datetime
    first_seen: datetime | None
    last_seen: datetime | None
    last_boot: datetime | None
    online: bool
    online_since: datetime | None
    node_id: str | None
    charge_point_serial: str | None
    charge_box_serial: str | None
    iccid: str | None
    imsi: str | None
    meter_type: str | None
    meter_serial: str | None
    boot_count: int
    kind_mismatch: bool
    kind_mismatch_evidence: str | None
    has_password: bool


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    id: int
    pile_id: str
    at: datetime
    online: bool
    reason: str
    detail: str | None
    connection_id: str | None
    node_id: str | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id_tag: str
    type: str
    status: str
    expiry: datetime | None
    parent_id_tag: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    id: int
    pile_id: str
    connector_id: int
    protocol: str
    external_id: str | None
    id_tag: str
    auth_method: str
    offline: bool
    auth_status: str
    reservation_id: int | None
    start_at: datetime
    meter_start: int
    stop_at: datetime | None
    meter_stop: int | None
    energy_wh: int | None
    stop_reason: str | None
    stop_id_tag: str | None
    stop_offline: bool | None
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MeterValueRecord:
    at: datetime
    connector_id: int
    measurand: str
    phase: str
    unit: str
    context: str
    location: str
    format: str
    value: str
    value_num: float | None


@dataclass(frozen=True, slots=True)
class GunRecord:
    pile_id: str
    connector_id: int
    gun_id: str
    status: str
    error_code: str | None
    info: str | None
    vendor_error_code: str | None
    status_at: datetime


@dataclass(frozen=True, slots=True)
class OrphanStopRecord:
    id: int
    pile_id: str
    transaction_id: int
    id_tag: str | None
    stop_at: datetime
    meter_stop: int
    reason: str | None
    payload: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ChargerMessageRecord:
    id: int
    pile_id: str
    kind: str
    vendor_id: str | None
    message_id: str | None
    status: str | None
    data: str | None
    received_at: datetime


def _copy(cls: type[Any], row: Any) -> Any:
    return cls(**{name: getattr(row, name) for name in cls.__slots__})


EventRows = Callable[[TransactionRecord], tuple[tuple[str, str, str, bool], ...]]


def _add_outbox(
    s: AsyncSession,
    node_id: str,
    pile_id: str,
    at: datetime,
    rows: tuple[tuple[str, str, str, bool], ...],
) -> None:
    """Outbox rows in the caller's transaction (atomic with the data)."""
    for event_id, topic, payload, retain in rows:
        s.add(
            OutboxEvent(
                event_id=event_id,
                node_id=node_id,
                pile_id=pile_id,
                topic=topic,
                payload=payload,
                retain=retain,
                created_at=at,
            )
        )


def _pile(row: Pile) -> PileRecord:
    return PileRecord(
        pile_id=row.pile_id,
        region_code=row.region_code,
        operator_code=row.operator_code,
        product_code=row.product_code,
        kind=row.kind,
        serial=row.serial,
        protocol=row.protocol,
        vendor=row.vendor,
        model=row.model,
        firmware_version=row.firmware_version,
        registered_at=row.registered_at,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        last_boot=row.last_boot,
        online=row.online,
        online_since=row.online_since,
        node_id=row.node_id,
        charge_point_serial=row.charge_point_serial,
        charge_box_serial=row.charge_box_serial,
        iccid=row.iccid,
        imsi=row.imsi,
        meter_type=row.meter_type,
        meter_serial=row.meter_serial,
        boot_count=row.boot_count,
        kind_mismatch=row.kind_mismatch,
        kind_mismatch_evidence=row.kind_mismatch_evidence,
        has_password=row.password_hash is not None,
    )


def _presence(row: PresenceEvent) -> PresenceRecord:
    return PresenceRecord(
        id=row.id,
        pile_id=row.pile_id,
        at=row.at,
        online=row.online,
        reason=row.reason,
        detail=row.detail,
        connection_id=row.connection_id,
        node_id=row.node_id,
    )


def _new_pile_row(pile: PileId, now: datetime) -> Pile:
    return Pile(
        pile_id=pile.text,
        region_code=pile.region_code,
        operator_code=pile.operator,
        product_code=pile.product.value,
        kind=pile.kind.label,
        serial=pile.serial,
        registered_at=now,
        online=False,
        boot_count=0,
        kind_mismatch=False,
    )


HandshakeInfo = tuple[bool, str | None, str | None]  # registered, password hash, model
_UNKNOWN_PILE: HandshakeInfo = (False, None, None)
_IN_CHUNK = 500  # pile IDs per IN (...): far below every backend's parameter limit
_INSERT_CHUNK = 500  # rows per multi-row INSERT: 11 columns, 5,500 parameters
V = TypeVar("V")


class _Coalescer(Generic[V]):
    """Requests that arrive while a batch is being fetched wait for the next
    batch; one ``fetch(dict key → item)`` answers them all (a key missing
    from its result gets ``default``). Its single task ends when nobody
    waits, and :meth:`close` cancels it (waiters then see CancelledError)."""

    def __init__(
        self,
        fetch: Callable[[dict[str, Any]], Awaitable[dict[str, V]]],
        default: V,
        name: str,
    ) -> None:
        self._fetch = fetch
        self._default = default
        self._name = name
        self._waiting: dict[str, tuple[Any, list[asyncio.Future[V]]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: str, item: Any) -> V:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        entry = self._waiting.get(key)
        if entry is None:
            self._waiting[key] = (item, [fut])
        else:
            entry[1].append(fut)
        if self._task is None:
            self._task = loop.create_task(self._run(), name=self._name)
        return await fut

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                try:
                    found = await self._fetch({k: item for k, (item, _) in batch.items()})
                except Exception as exc:  # e.g. the database is down: each caller sees it
                    for _, futures in batch.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                for key, (_, futures) in batch.items():
                    value = found.get(key, self._default)
                    for f in futures:
                        if not f.done():
                            f.set_result(value)
        finally:
            self._task = None
            for _, futures in self._waiting.values():  # cancelled at shutdown
                for f in futures:
                    f.cancel()
            self._waiting = {}

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Store:
    """Async repository over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        # Requests of many connections at once, answered by one query (see
        # handshake_info and register_at_connect).
        self._handshakes: _Coalescer[HandshakeInfo] = _Coalescer(
            self._handshake_rows, _UNKNOWN_PILE, "handshake-lookups"
        )
        self._registrations: _Coalescer[None] = _Coalescer(
            self._register_rows, None, "pile-registrations"
        )

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    async def close(self) -> None:
        await self._handshakes.close()
        await self._registrations.close()
        await self.engine.dispose()

    # --- piles -------------------------------------------------------------
    async def register_pile(
        self,
        pile: PileId,
        now: datetime,
        *,
        vendor: str | None = None,
        model: str | None = None,
    ) -> PileRecord:
        row = _new_pile_row(pile, now)
        row.vendor = vendor
        row.model = model
        async with self._sessions() as s:
            s.add(row)
            try:
                await s.commit()
            except IntegrityError as exc:
                raise PileExists(pile.text) from exc
            return _pile(row)

    async def get_pile(self, pile_id: str) -> PileRecord | None:
        async with self._sessions() as s:
            row = await s.get(Pile, pile_id)
            return _pile(row) if row is not None else None

    async def list_piles(
        self,
        *,
        online: bool | None = None,
        kind: Literal["AC", "DC"] | None = None,
        q: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[PileRecord], int]:
        stmt = select(Pile)
        if online is not None:
            stmt = stmt.where(Pile.online.is_(online))
        if kind is not None:
            stmt = stmt.where(Pile.kind == kind)
        if q:
            like = f"%{q}%"
            stmt = stmt.where(
                or_(Pile.pile_id.like(like), Pile.vendor.like(like), Pile.model.like(like))
            )
        count_stmt = select(func.count()).select_from(stmt.subquery())
        async with self._sessions() as s:
            total = (await s.execute(count_stmt)).scalar_one()
            rows = await s.scalars(stmt.order_by(Pile.pile_id).limit(limit).offset(offset))
            return [_pile(r) for r in rows], int(total)

    # --- presence ----------------------------------------------------------
    async def record_presence(
        self,
        pile_id: str,
        at: datetime,
        online: bool,
        reason: str,
        *,
        detail: str | None = None,
        connection_id: str | None = None,
        node_id: str | None = None,
    ) -> PresenceRecord:
        """Append a presence event and set the pile's current presence."""
        async with self._sessions() as s, s.begin():
            pile = await s.get(Pile, pile_id, with_for_update=True)
            if pile is None:
                raise KeyError(pile_id)
            event = PresenceEvent(
                pile_id=pile_id,
                at=at,
                online=online,
                reason=reason,
                detail=detail,
                connection_id=connection_id,
                node_id=node_id,
            )
            s.add(event)
            pile.online = online
            pile.node_id = node_id if online else None
            if online:
                pile.online_since = at
                pile.first_seen = pile.first_seen or at
                pile.last_seen = at
            else:
                pile.online_since = None
            await s.flush()
            return _presence(event)

    async def presence_events(
        self, pile_id: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[PresenceRecord]:
        stmt = select(PresenceEvent).where(PresenceEvent.pile_id == pile_id)
        if before_id is not None:
            stmt = stmt.where(PresenceEvent.id < before_id)
        stmt = stmt.order_by(PresenceEvent.id.desc()).limit(limit)
        async with self._sessions() as s:
            return [_presence(r) for r in await s.scalars(stmt)]

    async def set_pile_password_hash(self, pile_id: str, password_hash: str | None) -> bool:
        async with self._sessions() as s, s.begin():
            res = await s.execute(
                update(Pile).where(Pile.pile_id == pile_id).values(password_hash=password_hash)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    async def pile_password_hash(self, pile_id: str) -> str | None:
        async with self._sessions() as s:
            return await s.scalar(select(Pile.password_hash).where(Pile.pile_id == pile_id))

    async def guns(self, pile_id: str) -> list[GunRecord]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(Gun).where(Gun.pile_id == pile_id).order_by(Gun.connector_id)
            )
            return [_copy(GunRecord, r) for r in rows]

    # --- tokens --------------------------------------------------------------
    async def get_token(self, id_tag: str) -> TokenRecord | None:
        async with self._sessions() as s:
            row = await s.get(Token, id_tag)
            return _copy(TokenRecord, row) if row is not None else None

    async def put_token(
        self,
        id_tag: str,
        type_: str,
        status: str,
        now: datetime,
        *,
        expiry: datetime | None = None,
        parent_id_tag: str | None = None,
    ) -> tuple[TokenRecord, bool]:
        """Create or replace a token; returns (record, created)."""
        async with self._sessions() as s, s.begin():
            row = await s.get(Token, id_tag, with_for_update=True)
            created = row is None
            if row is None:
                row = Token(id_tag=id_tag, created_at=now)
                s.add(row)
            row.type = type_
            row.status = status
            row.expiry = expiry
            row.parent_id_tag = parent_id_tag
            row.updated_at = now
            await s.flush()
            return _copy(TokenRecord, row), created

    async def delete_token(self, id_tag: str) -> bool:
        async with self._sessions() as s, s.begin():
            row = await s.get(Token, id_tag)
            if row is None:
                return False
            await s.delete(row)
            return True

    async def list_tokens(self, *, limit: int = 100, offset: int = 0) -> list[TokenRecord]:
        async with self._sessions() as s:
            rows = await s.scalars(select(Token).order_by(Token.id_tag).limit(limit).offset(offset))
            return [_copy(TokenRecord, r) for r in rows]

    # --- transactions ----------------------------------------------------------
    async def start_transaction_in(
        self,
        s: AsyncSession,
        *,
        pile_id: str,
        connector_id: int,
        protocol: str,
        id_tag: str,
        auth_method: str,
        offline: bool,
        auth_status: str,
        start_at: datetime,
        meter_start: int,
        reservation_id: int | None,
        now: datetime,
        external_id: str | None = None,
        events: EventRows | None = None,
        node_id: str = "",
    ) -> tuple[TransactionRecord, bool]:
        """Durably allocate a transaction id, in the caller's session (the
        write queue runs it with ``WriteBehind.call``); a retransmission gets
        the same one. Returns (record, created).
        """
        values = {
            "pile_id": pile_id,
            "connector_id": connector_id,
            "protocol": protocol,
            "external_id": external_id,
            "id_tag": id_tag,
            "auth_method": auth_method,
            "offline": offline,
            "auth_status": auth_status,
            "reservation_id": reservation_id,
            "start_at": start_at,
            "meter_start": meter_start,
            "status": "active",
            "created_at": now,
            "updated_at": now,
        }
        res = await s.execute(insert_ignore(s, Transaction, [values]))
        created = bool(res.rowcount)  # type: ignore[attr-defined]
        if external_id is not None:
            key = (Transaction.pile_id == pile_id) & (Transaction.external_id == external_id)
        else:
            key = (
                (Transaction.pile_id == pile_id)
                & (Transaction.connector_id == connector_id)
                & (Transaction.start_at == start_at)
                & (Transaction.meter_start == meter_start)
                & (Transaction.id_tag == id_tag)
            )
        row = (await s.scalars(select(Transaction).where(key))).one_or_none()
        if row is None:
            # The insert was ignored because another transaction of this pile
            # has the same start (connector, time, meter, token) under another
            # charger-made id: refuse this one rather than merge two sessions.
            raise LookupError(
                f"transaction {external_id!r} of pile {pile_id} collides with another "
                "transaction's start"
            )
        rec: TransactionRecord = _copy(TransactionRecord, row)
        if created and events is not None:
            _add_outbox(s, node_id, rec.pile_id, now, events(rec))
        return rec, created

    async def stop_transaction_in(
        self,
        s: AsyncSession,
        *,
        pile_id: str,
        transaction_id: int,
        stop_at: datetime,
        meter_stop: int,
        reason: str | None,
        stop_id_tag: str | None,
        stop_offline: bool,
        readings: list[dict[str, Any]],
        now: datetime,
        raw_payload: str,
        events: EventRows | None = None,
        node_id: str = "",
    ) -> TransactionRecord | None:
        """Complete a transaction with its final meter readings (rows of
        ``meter_readings``, StopTransaction's transactionData), in one database
        transaction. Returns None (and records an orphan stop) when the id is
        unknown for this pile. Idempotent: a repeated stop changes nothing."""
        row = await s.get(Transaction, transaction_id, with_for_update=True)
        if row is None or row.pile_id != pile_id:
            s.add(
                OrphanStop(
                    pile_id=pile_id,
                    transaction_id=transaction_id,
                    id_tag=stop_id_tag,
                    stop_at=stop_at,
                    meter_stop=meter_stop,
                    reason=reason,
                    payload=raw_payload,
                    received_at=now,
                )
            )
            if readings:
                await s.execute(insert_ignore(s, MeterReading, readings))
            return None
        first_stop = row.status != "completed"
        if first_stop:
            row.stop_at = stop_at
            row.meter_stop = meter_stop
            row.energy_wh = max(0, meter_stop - row.meter_start)
            row.stop_reason = reason
            row.stop_id_tag = stop_id_tag
            row.stop_offline = stop_offline
            row.status = "completed"
            row.updated_at = now
        if readings:
            await s.execute(insert_ignore(s, MeterReading, readings))
        await s.flush()
        rec: TransactionRecord = _copy(TransactionRecord, row)
        if first_stop and events is not None:
            _add_outbox(s, node_id, rec.pile_id, now, events(rec))
        return rec

    async def get_transaction(self, transaction_id: int) -> TransactionRecord | None:
        async with self._sessions() as s:
            row = await s.get(Transaction, transaction_id)
            return _copy(TransactionRecord, row) if row is not None else None

    async def active_transactions(self, pile_id: str) -> list[TransactionRecord]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(Transaction)
                .where(Transaction.pile_id == pile_id, Transaction.status == "active")
                .order_by(Transaction.id)
            )
            return [_copy(TransactionRecord, r) for r in rows]

    async def active_transaction_of_token(self, id_tag: str) -> TransactionRecord | None:
        async with self._sessions() as s:
            row = await s.scalar(
                select(Transaction)
                .where(Transaction.id_tag == id_tag, Transaction.status == "active")
                .order_by(Transaction.id.desc())
                .limit(1)
            )
            return _copy(TransactionRecord, row) if row is not None else None

    async def list_transactions(
        self,
        *,
        pile_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TransactionRecord]:
        stmt = select(Transaction)
        if pile_id is not None:
            stmt = stmt.where(Transaction.pile_id == pile_id)
        if since is not None:
            stmt = stmt.where(Transaction.start_at >= since)
        stmt = stmt.order_by(Transaction.start_at.desc(), Transaction.id.desc())
        async with self._sessions() as s:
            rows = await s.scalars(stmt.limit(limit).offset(offset))
            return [_copy(TransactionRecord, r) for r in rows]

    async def meter_values(self, transaction_id: int) -> list[MeterValueRecord]:
        """Sampled values of a transaction; only those its own pile sent
        (another pile naming the same transaction id adds nothing to this
        curve). Per connector, time, measurand, phase, location and context
        the first received wins (gateway/storage/meter.py ``merge``)."""
        async with self._sessions() as s:
            pile_id = await s.scalar(
                select(Transaction.pile_id).where(Transaction.id == transaction_id)
            )
            if pile_id is None:
                return []
            rows = await s.execute(
                select(
                    MeterReading.connector_id,
                    MeterReading.at,
                    MeterReading.samples,
                    MeterReading.received_at,
                ).where(
                    MeterReading.pile_id == pile_id,
                    MeterReading.transaction_key == transaction_id,
                )
            )
            readings = [StoredReading(*r) for r in rows]
        return [
            MeterValueRecord(
                at=m.at,
                connector_id=m.connector_id,
                measurand=m.sample.measurand,
                phase=m.sample.phase,
                unit=m.sample.unit,
                context=m.sample.context,
                location=m.sample.location,
                format=m.sample.format,
                value=m.sample.value,
                value_num=m.sample.value_num,
            )
            for m in merge(readings)
        ]

    async def orphan_stops(self, pile_id: str | None = None) -> list[OrphanStopRecord]:
        stmt = select(OrphanStop).order_by(OrphanStop.id.desc()).limit(1000)
        if pile_id is not None:
            stmt = stmt.where(OrphanStop.pile_id == pile_id)
        async with self._sessions() as s:
            return [_copy(OrphanStopRecord, r) for r in await s.scalars(stmt)]

    async def charger_messages(
        self, pile_id: str, kind: str | None = None, limit: int = 100
    ) -> list[ChargerMessageRecord]:
        stmt = select(ChargerMessage).where(ChargerMessage.pile_id == pile_id)
        if kind is not None:
            stmt = stmt.where(ChargerMessage.kind == kind)
        async with self._sessions() as s:
            rows = await s.scalars(stmt.order_by(ChargerMessage.id.desc()).limit(limit))
            return [_copy(ChargerMessageRecord, r) for r in rows]

    async def handshake_info(self, pile_id: str) -> HandshakeInfo:
        """(registered, password hash, model), for the OCPP handshake and the
        CBP/1 login.

        Look-ups that arrive while one is running are answered together by
        the next query (``WHERE pile_id IN (...)``): in a reconnect storm of
        10,000 chargers, one session and query per handshake serialised on
        the database connection made the storm last 18 s with the gateway's
        CPU mostly idle (docs/benchmarks.md, scenario 2). Every answer still
        comes from the database, read after the request arrived."""
        return await self._handshakes.get(pile_id, pile_id)

    async def register_at_connect(self, pile: PileId, now: datetime) -> None:
        """Register a pile at its first connection unless it already is (a
        concurrent connection or another node may have done it). Batched like
        :meth:`handshake_info`: a first-connect storm registers its piles with
        a few ``INSERT ... ON CONFLICT DO NOTHING`` of many rows."""
        await self._registrations.get(pile.text, (pile, now))

    async def _register_rows(self, batch: dict[str, Any]) -> dict[str, None]:
        rows: list[dict[str, Any]] = []
        for pile, now in batch.values():
            row = _new_pile_row(pile, now)
            values = {c.key: getattr(row, c.key) for c in Pile.__table__.columns}
            # unset columns are left out, so their defaults apply
            rows.append({k: v for k, v in values.items() if v is not None})
        async with self._sessions() as s, s.begin():
            for i in range(0, len(rows), _INSERT_CHUNK):
                await s.execute(insert_ignore(s, Pile, rows[i : i + _INSERT_CHUNK]))
        return {}

    async def _handshake_rows(self, batch: dict[str, Any]) -> dict[str, HandshakeInfo]:
        pile_ids = list(batch)
        found: dict[str, HandshakeInfo] = {}
        async with self._sessions() as s:
            for i in range(0, len(pile_ids), _IN_CHUNK):
                rows = await s.execute(
                    select(Pile.pile_id, Pile.password_hash, Pile.model).where(
                        Pile.pile_id.in_(pile_ids[i : i + _IN_CHUNK])
                    )
                )
                for pile_id, password_hash, model in rows:
                    found[pile_id] = (True, password_hash, model)
        return found

    async def gun_history(
        self, pile_id: str, connector_id: int, limit: int = 100
    ) -> list[GunRecord]:
        from .models import GunStatusEvent

        async with self._sessions() as s:
            rows = await s.scalars(
                select(GunStatusEvent)
                .where(
                    GunStatusEvent.pile_id == pile_id, GunStatusEvent.connector_id == connector_id
                )
                .order_by(GunStatusEvent.at.desc(), GunStatusEvent.id.desc())
                .limit(limit)
            )
            return [
                GunRecord(
                    pile_id=r.pile_id,
                    connector_id=r.connector_id,
                    gun_id=f"{r.pile_id}{r.connector_id:03d}",
                    status=r.status,
                    error_code=r.error_code,
                    info=r.info,
                    vendor_error_code=r.vendor_error_code,
                    status_at=r.at,
                )
                for r in rows
            ]

    async def presence_between(
        self, pile_id: str, start: datetime, end: datetime
    ) -> tuple[PresenceRecord | None, list[PresenceRecord]]:
        """The last event before ``start`` (the state at ``start``) and the
        events within [start, end], oldest first."""
        async with self._sessions() as s:
            before = await s.scalar(
                select(PresenceEvent)
                .where(PresenceEvent.pile_id == pile_id, PresenceEvent.at < start)
                .order_by(PresenceEvent.at.desc(), PresenceEvent.id.desc())
                .limit(1)
            )
            rows = await s.scalars(
                select(PresenceEvent)
                .where(
                    PresenceEvent.pile_id == pile_id,
                    PresenceEvent.at >= start,
                    PresenceEvent.at <= end,
                )
                .order_by(PresenceEvent.at, PresenceEvent.id)
            )
            return (_presence(before) if before is not None else None), [_presence(r) for r in rows]

    async def clear_kind_mismatch(self, pile_id: str) -> bool:
        async with self._sessions() as s, s.begin():
            res = await s.execute(
                update(Pile)
                .where(Pile.pile_id == pile_id)
                .values(kind_mismatch=False, kind_mismatch_evidence=None)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # --- outbox --------------------------------------------------------------
    async def outbox_batch(self, node_id: str, limit: int) -> list[tuple[int, str, str, bool]]:
        """The oldest unpublished events of this node: (id, topic, payload, retain)."""
        async with self._sessions() as s:
            rows = await s.execute(
                select(OutboxEvent.id, OutboxEvent.topic, OutboxEvent.payload, OutboxEvent.retain)
                .where(OutboxEvent.node_id == node_id)
                .order_by(OutboxEvent.id)
                .limit(limit)
            )
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def outbox_delete(self, ids: list[int]) -> None:
        from sqlalchemy import delete

        async with self._sessions() as s, s.begin():
            await s.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids)))

    async def outbox_stats(self, node_id: str) -> tuple[int, datetime | None]:
        """(rows waiting, creation time of the oldest) for this node."""
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(func.count(), func.min(OutboxEvent.created_at)).where(
                        OutboxEvent.node_id == node_id
                    )
                )
            ).one()
            oldest = row[1]
            if isinstance(oldest, datetime) and oldest.tzinfo is None:
                from datetime import UTC

                oldest = oldest.replace(tzinfo=UTC)
            return int(row[0]), oldest

    # --- nodes ---------------------------------------------------------------
    async def node_heartbeat(self, node_id: str, now: datetime) -> None:
        from .models import Node

        async with self._sessions() as s, s.begin():
            node = await s.get(Node, node_id)
            if node is None:
                s.add(Node(node_id=node_id, started_at=now, heartbeat_at=now))
            else:
                node.heartbeat_at = now

    async def live_nodes(self, now: datetime, lease: float) -> list[str]:
        from datetime import timedelta

        from .models import Node

        async with self._sessions() as s:
            rows = await s.scalars(
                select(Node.node_id).where(Node.heartbeat_at >= now - timedelta(seconds=lease))
            )
            return list(rows)

    async def pile_node(self, pile_id: str) -> str | None:
        """The node that holds the pile's connection, if it is online."""
        async with self._sessions() as s:
            row = (
                await s.execute(select(Pile.online, Pile.node_id).where(Pile.pile_id == pile_id))
            ).first()
            return row[1] if row is not None and row[0] else None

    async def release_node_piles(
        self,
        dead_node: str,
        now: datetime,
        reason: str,
        adopter: str,
        events: Callable[[str, datetime], tuple[tuple[str, str, str, bool], ...]] | None,
        *,
        cutoff: datetime | None = None,
    ) -> list[str] | None:
        """Mark the piles a node held offline and adopt its unpublished events.

        With ``cutoff`` the node row is deleted only if its heartbeat is older
        (a dead node; several survivors may race, exactly one wins and does
        the work; the others get None). Without it (this node restarting
        under the same name), the node's piles are released unconditionally.
        """
        from sqlalchemy import delete

        from .models import Node

        async with self._sessions() as s, s.begin():
            if cutoff is not None:
                res = await s.execute(
                    delete(Node).where(Node.node_id == dead_node, Node.heartbeat_at < cutoff)
                )
                if not res.rowcount:  # type: ignore[attr-defined]
                    return None
            piles = list(
                await s.scalars(
                    select(Pile.pile_id).where(Pile.node_id == dead_node, Pile.online.is_(True))
                )
            )
            for pile_id in piles:
                s.add(
                    PresenceEvent(
                        pile_id=pile_id,
                        at=now,
                        online=False,
                        reason=reason,
                        detail=f"node {dead_node} lost" if cutoff else "node restarted",
                        connection_id=None,
                        node_id=adopter,
                    )
                )
                if events is not None:
                    _add_outbox(s, adopter, pile_id, now, events(pile_id, now))
            if piles:
                await s.execute(
                    update(Pile)
                    .where(Pile.node_id == dead_node, Pile.online.is_(True))
                    .values(online=False, online_since=None, node_id=None)
                )
            if dead_node != adopter:
                await s.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.node_id == dead_node)
                    .values(node_id=adopter)
                )
            return piles

    async def dead_nodes(self, now: datetime, lease: float) -> list[str]:
        from datetime import timedelta

        from .models import Node

        async with self._sessions() as s:
            rows = await s.scalars(
                select(Node.node_id).where(Node.heartbeat_at < now - timedelta(seconds=lease))
            )
            return list(rows)

    async def put_tokens_bulk(
        self, rows: list[tuple[str, str, str, datetime | None, str | None]], now: datetime
    ) -> tuple[int, int]:
        """Create or replace many tokens in one transaction:
        (id_tag, type, status, expiry, parent). Returns (created, updated)."""
        created = updated = 0
        async with self._sessions() as s, s.begin():
            existing = (
                {
                    t.id_tag: t
                    for t in await s.scalars(
                        select(Token).where(Token.id_tag.in_([r[0] for r in rows]))
                    )
                }
                if len(rows) <= 30000
                else {}
            )
            for id_tag, type_, status, expiry, parent in rows:
                tok = existing.get(id_tag)
                if tok is None:
                    tok = Token(id_tag=id_tag, created_at=now)
                    s.add(tok)
                    created += 1
                else:
                    updated += 1
                tok.type = type_
                tok.status = status
                tok.expiry = expiry
                tok.parent_id_tag = parent
                tok.updated_at = now
        return created, updated
