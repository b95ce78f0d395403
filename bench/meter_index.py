"""meter_values layouts: sample rows per second at migrations 0005, 0006 and 0007.

Migration 0006 replaced the unique key (pile_id, connector_id,
transaction_key, at, ...) plus the index (transaction_key, at) by one unique
key on the same columns led by (pile_id, transaction_key). Migration 0007
made that key the primary key, without the surrogate id (a WITHOUT ROWID
table on SQLite). This writes the same meter rows into a database migrated
to each, on SQLite and on PostgreSQL, in one run, the way the
write-behind queue did: batches of 5,000 rows, one transaction each, the
compiled INSERT ... ON CONFLICT DO NOTHING through the driver's executemany
(gateway/storage/rawsql.py). It prints rows/s for each, and on SQLite the
size of the database file (with its WAL) afterwards.

Migration 0008 replaced ``meter_values`` (one row per sampled value) by
``meter_readings`` (one row per OCPP MeterValue element), so the gateway no
longer has the table's model nor its statement: the table as 0007 left it
(``METER_VALUES``) and its statement (``meter_values_statement``, compiled
the way gateway/storage/rawsql.py compiled it) are defined here, and the
databases are migrated to 0005, 0006 and 0007, not to head.
bench/meter_row_shape.py uses them too (the per-sample shape).

    .venv/bin/python bench/meter_index.py [--rows 400000] [--pg-admin-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from run import _pg, add_pg_admin_url
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    insert,
)
from sqlalchemy.engine import Dialect

from gateway.storage import db
from gateway.storage.models import Pile, UTCDateTime
from gateway.storage.rawsql import RawStatement, _compile, dialect_insert, executemany

MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage")
BATCH = 5_000
PILES = [f"4420000001{i:010d}" for i in range(100)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# meter_values as migration 0007 left it (0008 replaced it by meter_readings),
# and a stand-in for ``piles`` so that the foreign key renders in its DDL.
_meta = MetaData()
Table("piles", _meta, Column("pile_id", String(20), primary_key=True))
METER_VALUES = Table(
    "meter_values",
    _meta,
    Column("pile_id", String(20), nullable=False),
    Column("connector_id", Integer, nullable=False),
    Column("transaction_key", BigInteger, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("measurand", String(48), nullable=False),
    Column("phase", String(8), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("context", String(32), nullable=False),
    Column("location", String(16), nullable=False),
    Column("format", String(16), nullable=False),
    Column("value", Text, nullable=False),
    Column("value_num", Float, nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
    ForeignKeyConstraint(
        ["pile_id"], ["piles.pile_id"], name="fk_meter_values_pile_id_piles", ondelete="CASCADE"
    ),
    PrimaryKeyConstraint(
        "pile_id",
        "transaction_key",
        "connector_id",
        "at",
        "measurand",
        "phase",
        "location",
        "context",
        name="pk_meter_values",
    ),
    sqlite_with_rowid=False,
)


def meter_values_statement(dialect: Dialect) -> RawStatement:
    """The write-behind queue's statement for ``meter_values`` before
    migration 0008: INSERT ... ON CONFLICT DO NOTHING (retransmitted samples
    were ignored by the key), compiled as gateway/storage/rawsql.py does."""
    return _compile(
        dialect_insert(dialect, cast(Any, METER_VALUES)).on_conflict_do_nothing(),  # a Table
        dialect,
        tuple(c.key for c in METER_VALUES.columns),
        frozenset(c.key for c in METER_VALUES.columns if isinstance(c.type, UTCDateTime)),
    )


def meter_rows(first: int, total: int) -> list[dict[str, object]]:
    """Rows ``first`` to ``first + BATCH`` (at most ``total``) of the bench's
    meter load: 100 piles, each in its own transaction, 4 measurands per
    timestamp (bench/sqlite_pragmas.py writes the same rows)."""
    return [
        {
            "pile_id": PILES[(k // 4) % 100],
            "connector_id": 1,
            "transaction_key": 1000 + (k // 4) % 100,
            "at": T0 + timedelta(milliseconds=k // 4),
            "measurand": MEASURANDS[k % 4],
            "phase": "",
            "unit": "Wh",
            "context": "Sample.Periodic",
            "location": "Outlet",
            "format": "Raw",
            "value": str(k),
            "value_num": float(k),
            "received_at": T0 + timedelta(milliseconds=k // 4),
        }
        for k in range(first, min(first + BATCH, total))
    ]


async def rows_per_second(url: str, revision: str, total: int) -> float:
    """Sample rows written per second into a database migrated to ``revision``."""
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine, revision)
        async with engine.begin() as c:
            await c.execute(
                insert(Pile.__table__),
                [
                    {
                        "pile_id": p,
                        "region_code": "442000",
                        "operator_code": "0001",
                        "product_code": "10",
                        "kind": "DC",
                        "serial": p[-5:],
                        "registered_at": T0,
                        "online": False,
                        "kind_mismatch": False,
                    }
                    for p in PILES
                ],
            )
        sessions = db.session_factory(engine)
        stmt = meter_values_statement(engine.dialect)
        spent = 0.0
        for first in range(0, total, BATCH):
            batch = meter_rows(first, total)
            started = time.perf_counter()
            async with sessions() as s, s.begin():
                await executemany(s, stmt, batch)
            spent += time.perf_counter() - started
        return total / spent
    finally:
        await engine.dispose()


def _disk_bytes(directory: str) -> int:
    """The database file and its WAL (the bench's event loop runs nothing else)."""
    return sum(f.stat().st_size for f in Path(directory).iterdir())


@contextlib.asynccontextmanager
async def _pg_database(admin_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database next to ``admin_url`` (bench/run.py's
    ``_pg`` creates and drops it); yields its SQLAlchemy URL."""
    name = f"pilegate_bench_{uuid.uuid4().hex[:8]}"
    await _pg(admin_url, f'CREATE DATABASE "{name}"')
    try:
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await _pg(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    add_pg_admin_url(parser)
    args = parser.parse_args()
    layouts = {
        "0005 (id, unique key, ix_meter_values_tx)": "0005",
        "0006 (id, unique key)": "0006",
        "0007 (the key is the primary key; 0008 replaced the table)": "0007",
    }
    print(f"{args.rows:,} meter rows in batches of {BATCH:,}")
    for name, revision in layouts.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "b.db"
            rate = await rows_per_second(f"sqlite+aiosqlite:///{path}", revision, args.rows)
            size = _disk_bytes(tmp)
        print(f"SQLite, {name}: {rate:,.0f} rows/s, {size / 2**20:,.0f} MiB on disk")
    if args.pg_admin_url:
        for name, revision in layouts.items():
            async with _pg_database(args.pg_admin_url) as url:
                rate = await rows_per_second(url, revision, args.rows)
            print(f"PostgreSQL, {name}: {rate:,.0f} rows/s")


if __name__ == "__main__":
    asyncio.run(main())
