"""Migration 0008 on a large database: how long the upgrade and its downgrade take.

Migration 0008 (gateway/storage/migrations/versions/0008_meter_readings.py)
groups the ``meter_values`` rows (one per sampled value) into
``meter_readings`` rows (one per OCPP MeterValue element) and drops the old
table; its downgrade expands them again. An operator upgrading a gateway
with months of samples wants to know how long the gateway stays down. This
fills a database at revision 0007 with bench/meter_index.py's load (100
piles, each in its own transaction, 4 measurands per timestamp: ``--rows``
sample rows, ``--rows / 4`` readings), then times ``upgrade 0008`` and
``downgrade 0007``, on SQLite and on PostgreSQL, and checks the counts on
both sides (every sample row becomes part of a reading and comes back).

    .venv/bin/python bench/meter_migration.py [--rows 400000] [--pg-admin-url '']
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from meter_index import _pg_database, rows_per_second
from run import add_pg_admin_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage import db


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as c:
        return int((await c.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def migrate(url: str, rows: int) -> tuple[float, float, int]:
    """Seconds for upgrade 0008 and downgrade 0007 of a database holding
    ``rows`` sample rows, and the readings 0008 made of them."""
    await rows_per_second(url, "0007", rows)  # fills the database at 0007
    engine = db.create_engine(url)
    try:
        started = time.perf_counter()
        await db.upgrade(engine, "0008")
        up = time.perf_counter() - started
        readings = await _count(engine, "meter_readings")
        started = time.perf_counter()
        await db.downgrade(engine, "0007")
        down = time.perf_counter() - started
        back = await _count(engine, "meter_values")
    finally:
        await engine.dispose()
    if back != rows:
        raise SystemExit(f"downgrade gave back {back:,} sample rows of {rows:,}")
    return up, down, readings


def _line(backend: str, rows: int, up: float, down: float, readings: int) -> str:
    if readings * 4 != rows:
        raise SystemExit(f"{backend}: {readings:,} readings for {rows:,} samples (expected 1:4)")
    return (
        f"{backend}: upgrade 0008 {up:,.1f} s ({rows / up:,.0f} samples/s, "
        f"{readings:,} readings), downgrade 0007 {down:,.1f} s ({rows / down:,.0f} samples/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="sample rows (multiple of 4)")
    add_pg_admin_url(parser)
    args = parser.parse_args()
    if args.rows <= 0 or args.rows % 4:
        parser.error("--rows must be a positive multiple of 4 (4 samples per reading)")
    print(f"{args.rows:,} meter_values rows at 0007, {args.rows // 4:,} readings after 0008")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'm.db'}"
        print(_line("SQLite", args.rows, *await migrate(url, args.rows)), flush=True)
    if args.pg_admin_url:
        async with _pg_database(args.pg_admin_url) as url:
            print(_line("PostgreSQL", args.rows, *await migrate(url, args.rows)))


if __name__ == "__main__":
    asyncio.run(main())
