"""One row per sample (before 0008) or one row per MeterValue element (today): the cost per message.

Under the mixed load a third of the messages are MeterValues with 4 sampled
values. Until migration 0008 each sampled value was a row of
``meter_values``, 1.33 rows per message; since then each OCPP MeterValue
element is one row of ``meter_readings`` (gateway/storage/models.py), its
sampledValue list as JSON text. This measures, in one run, what a
MeterValues message of 4 samples costs the gateway's one core to store

- one row per sample, as before 0008: the 4 ``MeterSampleOp`` the handler
  made (``sample_ops``, the handler's code of then), their parameter rows
  (``RawStatement.rows``) and 4 inserts through the INSERT ... ON CONFLICT
  DO NOTHING the gateway compiled for ``meter_values``. The gateway no longer
  has that op, model nor statement: they are defined here and in
  bench/meter_index.py (``METER_VALUES``, the table as 0007 left it,
  created next to the gateway's schema, with its foreign key to ``piles``);
- one row per meterValue element, as today: the handler's ``MeterReadingOp``
  (``OcppHandlers._readings``: the key pile_id, transaction_key,
  connector_id, at and the digest of the sampledValue list's orjson text,
  the text, received_at), its parameter rows and the gateway's own statement
  for ``meter_readings`` (WITHOUT ROWID on SQLite, with the foreign key);

on SQLite (the driver's executemany in batches of 5,000 sample rows, one
transaction each, with pilegate's pragmas; the per-sample shape also with
``foreign_keys=OFF``) and on PostgreSQL (asyncpg's executemany, same
batches), each batch built just before it is written, with the gateway's
garbage collector settings. It prints µs per MeterValues for building the
rows (the event loop's thread in the gateway) and for writing them (the
database thread, or the wait for PostgreSQL), and the total, for
``--repeat`` rounds of every case in turn. It checks that every row was
stored.

    .venv/bin/python bench/meter_row_shape.py [--messages 100000] [--repeat 2] [--pg-admin-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import asyncpg
from meter_index import MEASURANDS, METER_VALUES, PILES, T0, _pg_database, meter_values_statement
from run import add_pg_admin_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from gateway.ocpp.handlers import OcppHandlers, parse_time
from gateway.storage import db
from gateway.storage.db import SQLITE_CACHE_MIB, SQLITE_WAL_AUTOCHECKPOINT
from gateway.storage.meter import float_or_none
from gateway.storage.rawsql import RawStatements

SAMPLES = 4
# (pile ID, MeterValues payload, received at) -> the write ops of the message
Build = Callable[[str, dict[str, Any], datetime], list[Any]]
BATCH_MESSAGES = 5_000 // SAMPLES  # the write-behind queue's batch of sample rows


def payloads(count: int) -> list[tuple[str, dict[str, Any]]]:
    """(pile ID, MeterValues payload) of the mixed load: 100 piles, each in
    its own transaction, one meterValue of 4 sampled values."""
    out = []
    for k in range(count):
        at = (T0 + timedelta(milliseconds=k)).isoformat(timespec="milliseconds")
        out.append(
            (
                PILES[k % 100],
                {
                    "connectorId": 1,
                    "transactionId": 1000 + k % 100,
                    "meterValue": [
                        {
                            "timestamp": at.replace("+00:00", "Z"),
                            "sampledValue": [
                                {"value": str(k * SAMPLES + i), "measurand": m, "unit": "Wh"}
                                for i, m in enumerate(MEASURANDS[:SAMPLES])
                            ],
                        }
                    ],
                },
            )
        )
    return out


class MeterSampleOp(NamedTuple):
    """The write op of a ``meter_values`` row (gateway/storage/writer.py
    before migration 0008)."""

    pile_id: str
    connector_id: int
    transaction_key: int
    at: datetime
    measurand: str
    phase: str
    unit: str
    context: str
    location: str
    format: str
    value: str
    value_num: float | None
    received_at: datetime


def sample_ops(
    pile_id: str, meter_values: list[dict[str, Any]], connector: int, tx_key: int, now: datetime
) -> list[MeterSampleOp]:
    """``OcppHandlers._samples`` before migration 0008: one op per sampled
    value, the §7.43 defaults filled in."""
    out: list[MeterSampleOp] = []
    for i, mv in enumerate(meter_values):
        at = parse_time(mv["timestamp"], f"meterValue[{i}].timestamp")
        for sv in mv["sampledValue"]:
            value = sv["value"]
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            # Positional, in MeterSampleOp's field order, as the handler did.
            out.append(
                MeterSampleOp(
                    pile_id,
                    connector,  # connector_id
                    tx_key,  # transaction_key
                    at,
                    measurand,
                    sv.get("phase", ""),
                    sv.get("unit", "Wh" if measurand.startswith("Energy") else ""),
                    sv.get("context", "Sample.Periodic"),
                    sv.get("location", "Outlet"),
                    sv.get("format", "Raw"),
                    value,
                    float_or_none(value),  # value_num
                    now,  # received_at
                )
            )
    return out


class Shape(NamedTuple):
    """How one storage layout turns messages into parameter rows: ops per
    message in the handler, rows per batch in the write-behind flush, and
    the statement they are written with."""

    ops: Build
    rows: Callable[[list[Any]], list[tuple[Any, ...]]]
    sql: str
    rows_per_message: int  # of a MeterValues of SAMPLES sampled values


def per_sample_shape(dialect: Dialect) -> Shape:
    """Before 0008: the handler's ops of then, the ``meter_values`` statement."""
    stmt = meter_values_statement(dialect)

    def ops(pile_id: str, p: dict[str, Any], now: datetime) -> list[Any]:
        return sample_ops(
            pile_id, p["meterValue"], int(p["connectorId"]), int(p["transactionId"]), now
        )

    return Shape(ops, lambda batch: stmt.rows(batch, attrs=True), stmt.sql, SAMPLES)


def per_reading_shape(dialect: Dialect) -> Shape:
    """Today's path: the handler's ops, then the statement's parameter rows."""
    stmt = RawStatements(dialect).meter_readings
    # ``_readings`` reads only ``self.conn.pile_id``
    conns: dict[str, Any] = {p: SimpleNamespace(conn=SimpleNamespace(pile_id=p)) for p in PILES}

    def ops(pile_id: str, p: dict[str, Any], now: datetime) -> list[Any]:
        return OcppHandlers._readings(
            conns[pile_id], p["meterValue"], int(p["connectorId"]), int(p["transactionId"]), now
        )

    return Shape(ops, lambda batch: stmt.rows(batch, attrs=True), stmt.sql, 1)


def batches(shape: Shape, messages: list[tuple[str, dict[str, Any]]], spent: list[float]) -> Any:
    """Parameter rows, BATCH_MESSAGES messages at a time (the write-behind
    queue's batch); adds the seconds spent building them to ``spent[0]``."""
    now = datetime(2026, 12, 5, tzinfo=UTC)
    ops = shape.ops
    for first in range(0, len(messages), BATCH_MESSAGES):
        started = time.perf_counter()
        batch: list[Any] = []
        for pile_id, p in messages[first : first + BATCH_MESSAGES]:
            batch.extend(ops(pile_id, p, now))
        rows = shape.rows(batch)
        spent[0] += time.perf_counter() - started
        yield rows


def _table(sql: str) -> str:
    return sql.split()[2]  # INSERT INTO <table> ...


def sqlite_run(path: Path, sql: str, rows: Any, foreign_keys: bool) -> tuple[float, int]:
    """Writes each batch of ``rows`` in one transaction: the seconds spent
    writing, and the rows the table then holds."""
    con = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        f"foreign_keys={'ON' if foreign_keys else 'OFF'}",
        f"cache_size=-{SQLITE_CACHE_MIB * 1024}",
        f"wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}",
    ):
        con.execute(f"PRAGMA {pragma}")
    spent = 0.0
    for batch in rows:
        started = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(sql, batch)
        con.execute("COMMIT")
        spent += time.perf_counter() - started
    stored = con.execute(f"SELECT count(*) FROM {_table(sql)}").fetchone()[0]
    con.close()
    return spent, stored


async def migrated(url: str) -> None:
    """The gateway's schema (migrations to head, ``meter_readings``), its
    bench piles, and ``meter_values`` as migration 0007 left it."""
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
        async with engine.begin() as c:
            await c.run_sync(METER_VALUES.create)
            for pile_id in PILES:
                await c.exec_driver_sql(
                    "INSERT INTO piles (pile_id, region_code, operator_code, product_code, "
                    "kind, serial, registered_at, online, kind_mismatch) VALUES "
                    f"('{pile_id}', '442000', '0001', '10', 'DC', '{pile_id[-5:]}', "
                    f"'{T0.strftime('%Y-%m-%d %H:%M:%S')}', false, false)"
                )
    finally:
        await engine.dispose()


async def pg_run(url: str, sql: str, rows: Any) -> tuple[float, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        spent = 0.0
        for batch in rows:
            started = time.perf_counter()
            async with conn.transaction():
                await conn.executemany(sql, batch)
            spent += time.perf_counter() - started
        return spent, await conn.fetchval(f"SELECT count(*) FROM {_table(sql)}")
    finally:
        await conn.close()


def report(
    name: str, shape: Shape, messages: int, build_s: float, write_s: float, stored: int
) -> None:
    b, w = build_s / messages * 1e6, write_s / messages * 1e6
    if stored != messages * shape.rows_per_message:  # every row new: no conflict skipped
        raise SystemExit(f"{name}: {stored:,} rows stored for {messages:,} messages")
    print(
        f"{name}: build {b:5.1f} µs + write {w:5.1f} µs = {b + w:5.1f} µs per MeterValues "
        f"({messages / (build_s + write_s):,.0f} messages/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds, shapes alternating")
    add_pg_admin_url(parser)
    args = parser.parse_args()
    # As `pilegate serve` runs (gateway/cli.py tune_gc): without it the
    # collector's full passes over the bench's payloads dominate the build.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    messages = payloads(args.messages)
    print(f"{args.messages:,} MeterValues of {SAMPLES} samples, batches of {BATCH_MESSAGES:,}")

    lite = sqlite.dialect()
    lite_cases = (
        ("SQLite, a row per sample (meter_values, before 0008)", per_sample_shape(lite), True),
        ("SQLite, a row per sample, foreign_keys=OFF", per_sample_shape(lite), False),
        ("SQLite, a row per MeterValue element (meter_readings, today)", per_reading_shape(lite),
         True),
    )  # fmt: skip
    pg = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    pg_cases = (
        ("PostgreSQL, a row per sample (meter_values, before 0008)", per_sample_shape(pg)),
        ("PostgreSQL, a row per MeterValue element (meter_readings, today)",
         per_reading_shape(pg)),
    )  # fmt: skip
    for _ in range(args.repeat):
        for name, shape, fk in lite_cases:
            spent = [0.0]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "b.db"
                await migrated(f"sqlite+aiosqlite:///{path}")
                write_s, stored = sqlite_run(path, shape.sql, batches(shape, messages, spent), fk)
            report(name, shape, args.messages, spent[0], write_s, stored)
        if not args.pg_admin_url:
            continue
        for name, shape in pg_cases:
            spent = [0.0]
            async with _pg_database(args.pg_admin_url) as url:
                await migrated(url)
                write_s, stored = await pg_run(url, shape.sql, batches(shape, messages, spent))
            report(name, shape, args.messages, spent[0], write_s, stored)


if __name__ == "__main__":
    asyncio.run(main())
