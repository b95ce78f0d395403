"""Database helpers the cloud-board adapter needs beyond ``gateway.storage.repo.Store``.

They belong in ``Store`` (see the issue 7 report); they live here meanwhile
so that the storage package is left to its owner. Each ``*_in`` helper runs
inside the caller's session (a ``WriteBehind.call`` durable operation) and
never raises on data, because a failing durable operation makes the write
queue retry its whole batch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from ..storage.models import MeterReading, Transaction
from ..storage.repo import Store, TransactionRecord


def _record(row: Transaction) -> TransactionRecord:
    return TransactionRecord(**{name: getattr(row, name) for name in TransactionRecord.__slots__})


async def transaction_by_external_id(
    store: Store, pile_id: str, external_id: str
) -> TransactionRecord | None:
    """The transaction of a pile with this CBP/1 SERIAL (unique per pile)."""
    async with store.sessions() as s:
        row = await s.scalar(
            select(Transaction).where(
                Transaction.pile_id == pile_id, Transaction.external_id == external_id
            )
        )
        return _record(row) if row is not None else None


async def conflicting_start_in(
    s: AsyncSession,
    *,
    pile_id: str,
    connector_id: int,
    start_at: datetime,
    meter_start: int,
    id_tag: str,
    external_id: str,
) -> TransactionRecord | None:
    """Another transaction (not this SERIAL) with the same start key
    (``uq_transactions_start``): the record could never be inserted."""
    row = await s.scalar(
        select(Transaction).where(
            Transaction.pile_id == pile_id,
            Transaction.connector_id == connector_id,
            Transaction.start_at == start_at,
            Transaction.meter_start == meter_start,
            Transaction.id_tag == id_tag,
            (Transaction.external_id.is_(None)) | (Transaction.external_id != external_id),
        )
    )
    return _record(row) if row is not None else None


async def correct_start_in(
    s: AsyncSession,
    transaction_id: int,
    *,
    start_at: datetime,
    meter_start: int,
    id_tag: str,
    auth_method: str,
    offline: bool,
) -> bool:
    """Replace the provisional start of a transaction opened from real-time
    data by the charger's record (the authoritative one). Only while it is
    active: a completed transaction is never rewritten. True if changed."""
    row = await s.get(Transaction, transaction_id, with_for_update=True)
    if row is None or row.status != "active":
        return False
    changed = (row.start_at, row.meter_start, row.id_tag, row.auth_method, row.offline) != (
        start_at,
        meter_start,
        id_tag,
        auth_method,
        offline,
    )
    if changed:
        # Through the ORM object: stop_transaction_in reads the same
        # identity-mapped row and computes the energy from meter_start.
        row.start_at = start_at
        row.meter_start = meter_start
        row.id_tag = id_tag
        row.auth_method = auth_method
        row.offline = offline
        await s.flush()
    return changed


async def attach_samples_in(
    s: AsyncSession,
    *,
    pile_id: str,
    connector_id: int,
    transaction_id: int,
    start_at: datetime,
    stop_at: datetime,
) -> int:
    """Give the gun's meter readings stored outside any transaction (key 0)
    between start and stop to the transaction: readings that arrived before
    the gateway knew the session (its SERIAL was not one it assigned). A
    reading already stored under the transaction (same time and digest) is
    left alone (primary key); for a sampled value stored under both, the
    reader keeps the first received (gateway/storage/meter.py ``merge``).
    Returns the number of readings moved."""
    other = aliased(MeterReading)
    duplicate = exists().where(
        and_(
            other.pile_id == MeterReading.pile_id,
            other.transaction_key == transaction_id,
            other.connector_id == MeterReading.connector_id,
            other.at == MeterReading.at,
            other.digest == MeterReading.digest,
        )
    )
    res = await s.execute(
        update(MeterReading)
        .where(
            MeterReading.pile_id == pile_id,
            MeterReading.transaction_key == 0,
            MeterReading.connector_id == connector_id,
            MeterReading.at >= start_at,
            MeterReading.at <= stop_at,
            ~duplicate,
        )
        .values(transaction_key=transaction_id)
        .execution_options(synchronize_session=False)
    )
    return int(res.rowcount)  # type: ignore[attr-defined]
