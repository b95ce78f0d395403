"""One row per sample (today) or one row per MeterValues: the cost per message.

Data for a decision, not a change: under the mixed load a third of the
messages are MeterValues with 4 sampled values, and each sample is a row of
``meter_values`` (gateway/storage/models.py), 1.33 rows per message. This
measures, in one run, what a MeterValues message of 4 samples costs the
gateway's one core to store

- as today: the handler's 4 ``MeterSampleOp`` (``OcppHandlers._samples``),
  their parameter rows (``RawStatement.rows``) and 4 inserts through the
  gateway's own compiled INSERT ... ON CONFLICT DO NOTHING;
- as one row per meterValue element: the key (pile_id, transaction_key,
  connector_id, at), the sampledValue list as received, as JSON text
  (orjson), and received_at, in a table made here (``meter_values_per_message``,
  WITHOUT ROWID on SQLite, with the same foreign key to ``piles``);

on SQLite (the driver's executemany in batches of 5,000 sample rows, one
transaction each, with pilegate's pragmas; the per-sample shape also with
``foreign_keys=OFF``) and on PostgreSQL (asyncpg's executemany, same
batches), each batch built just before it is written, with the gateway's
garbage collector settings. It prints µs per MeterValues for building the
rows (the event loop's thread in the gateway) and for writing them (the
database thread, or the wait for PostgreSQL), and the total, for
``--repeat`` rounds of every case in turn.

    .venv/bin/python bench/meter_row_shape.py [--messages 100000] [--repeat 2] [--pg-admin-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import asyncpg
import orjson
from meter_index import MEASURANDS, PILES, T0, _pg_database
from sqlalchemy.dialects import postgresql, sqlite

from gateway.ocpp.handlers import OcppHandlers, parse_time
from gateway.storage import db
from gateway.storage.db import SQLITE_CACHE_MIB, SQLITE_WAL_AUTOCHECKPOINT
from gateway.storage.rawsql import RawStatement, RawStatements, pg_datetime, sqlite_datetime

SAMPLES = 4
# (pile ID, MeterValues payload, received at) -> the write ops of the message
Build = Callable[[str, dict[str, Any], datetime], list[Any]]
BATCH_MESSAGES = 5_000 // SAMPLES  # the write-behind queue's batch of sample rows

PER_MESSAGE_DDL = """
CREATE TABLE meter_values_per_message (
    pile_id VARCHAR(20) NOT NULL REFERENCES piles (pile_id) ON DELETE CASCADE,
    transaction_key BIGINT NOT NULL,
    connector_id INTEGER NOT NULL,
    at {ts} NOT NULL,
    samples TEXT NOT NULL,
    received_at {ts} NOT NULL,
    PRIMARY KEY (pile_id, transaction_key, connector_id, at)
){suffix}
"""
PER_MESSAGE_INSERT = (
    "INSERT INTO meter_values_per_message "
    "(pile_id, transaction_key, connector_id, at, samples, received_at) "
    "VALUES ({}) ON CONFLICT DO NOTHING"
)


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


class MeterSetOp(NamedTuple):
    """The write op a row per meterValue element would need."""

    pile_id: str
    transaction_key: int
    connector_id: int
    at: datetime
    samples: str
    received_at: datetime


PER_MESSAGE_COLUMNS = MeterSetOp._fields


class Shape(NamedTuple):
    """How one storage layout turns messages into parameter rows: ops per
    message in the handler, rows per batch in the write-behind flush."""

    ops: Build
    rows: Callable[[list[Any]], list[tuple[Any, ...]]]


def per_sample_shape(dialect: Any) -> Shape:
    """Today's path: the handler's ops, then the statement's parameter rows."""
    stmt = RawStatements(dialect).meter_values
    conns = {p: SimpleNamespace(conn=SimpleNamespace(pile_id=p)) for p in PILES}

    def ops(pile_id: str, p: dict[str, Any], now: datetime) -> list[Any]:
        return OcppHandlers._samples(  # type: ignore[arg-type]
            conns[pile_id], p["meterValue"], int(p["connectorId"]), int(p["transactionId"]), now
        )

    return Shape(ops, lambda batch: stmt.rows(batch, attrs=True))


def per_message_shape(sql: str, convert: Callable[[datetime], Any]) -> Shape:
    """One row per meterValue element, its samples as received."""
    stmt = RawStatement(sql, PER_MESSAGE_COLUMNS, (3, 5), convert)

    def ops(pile_id: str, p: dict[str, Any], now: datetime) -> list[Any]:
        connector, tx = int(p["connectorId"]), int(p["transactionId"])
        return [
            MeterSetOp(
                pile_id,
                tx,
                connector,
                parse_time(mv["timestamp"], f"meterValue[{i}].timestamp"),
                orjson.dumps(mv["sampledValue"]).decode(),
                now,
            )
            for i, mv in enumerate(p["meterValue"])
        ]

    return Shape(ops, lambda batch: stmt.rows(batch, attrs=True))


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


async def migrated(url: str, per_message_ddl: str) -> None:
    """The gateway's schema (migrations to head), its bench piles, and the
    per-message table."""
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
        async with engine.begin() as c:
            await c.exec_driver_sql(per_message_ddl)
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


def report(name: str, messages: int, build_s: float, write_s: float, stored: int) -> None:
    b, w = build_s / messages * 1e6, write_s / messages * 1e6
    if stored not in (messages, messages * SAMPLES):  # every row new: no conflict skipped
        raise SystemExit(f"{name}: {stored:,} rows stored for {messages:,} messages")
    print(
        f"{name}: build {b:5.1f} µs + write {w:5.1f} µs = {b + w:5.1f} µs per MeterValues "
        f"({messages / (build_s + write_s):,.0f} messages/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds, shapes alternating")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PILEGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="an existing database to CREATE/DROP the bench database from ('' skips)",
    )
    args = parser.parse_args()
    # As `pilegate serve` runs (gateway/cli.py tune_gc): without it the
    # collector's full passes over the bench's payloads dominate the build.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    messages = payloads(args.messages)
    print(f"{args.messages:,} MeterValues of {SAMPLES} samples, batches of {BATCH_MESSAGES:,}")

    lite = sqlite.dialect()
    lite_ddl = PER_MESSAGE_DDL.format(ts="DATETIME", suffix=" WITHOUT ROWID")
    lite_sql = PER_MESSAGE_INSERT.format(", ".join("?" * 6))
    lite_cases = (
        ("SQLite, a row per sample (today)", RawStatements(lite).meter_values.sql,
         per_sample_shape(lite), True),
        ("SQLite, a row per sample, foreign_keys=OFF", RawStatements(lite).meter_values.sql,
         per_sample_shape(lite), False),
        ("SQLite, a row per MeterValues", lite_sql, per_message_shape(lite_sql, sqlite_datetime),
         True),
    )  # fmt: skip
    pg = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    pg_ddl = PER_MESSAGE_DDL.format(ts="TIMESTAMP WITH TIME ZONE", suffix="")
    pg_sql = PER_MESSAGE_INSERT.format(", ".join(f"${i}" for i in range(1, 7)))
    pg_cases = (
        ("PostgreSQL, a row per sample (today)", RawStatements(pg).meter_values.sql,
         per_sample_shape(pg)),
        ("PostgreSQL, a row per MeterValues", pg_sql, per_message_shape(pg_sql, pg_datetime)),
    )  # fmt: skip
    for _ in range(args.repeat):
        for name, sql, shape, fk in lite_cases:
            spent = [0.0]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "b.db"
                await migrated(f"sqlite+aiosqlite:///{path}", lite_ddl)
                write_s, stored = sqlite_run(path, sql, batches(shape, messages, spent), fk)
            report(name, args.messages, spent[0], write_s, stored)
        if not args.pg_admin_url:
            continue
        for name, sql, shape in pg_cases:
            spent = [0.0]
            async with _pg_database(args.pg_admin_url) as url:
                await migrated(url, pg_ddl)
                write_s, stored = await pg_run(url, sql, batches(shape, messages, spent))
            report(name, args.messages, spent[0], write_s, stored)


if __name__ == "__main__":
    asyncio.run(main())
