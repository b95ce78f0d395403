"""SQLite page cache and WAL checkpoint interval: meter readings per second.

Writes the same meter readings (``meter_readings`` rows, one per OCPP
MeterValue element of 4 sampled values), in the write-behind queue's batches
(5,000 rows, one transaction each, the gateway's own compiled INSERT ... ON
CONFLICT DO NOTHING and driver executemany), into a fresh database with
SQLite's defaults and with pilegate's settings (gateway/storage/db.py), in
one run, and prints rows/s (and the sampled values they hold per second) for
each. Foreign keys are off here (no piles table rows): this compares the
pragmas, not the whole gateway.

The load is bench/meter_index.py's sample rows grouped by timestamp: 100
piles, each in its own transaction, the 4 measurands of one time in one
reading. Before migration 0008 this bench wrote those sample rows, one row
per sampled value, into ``meter_values``; ``--rows 125000`` (the default)
is the same 500,000 sampled values.

    .venv/bin/python bench/sqlite_pragmas.py [--rows 125000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from meter_index import BATCH, MEASURANDS, PILES, T0
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite

from gateway.storage.db import SQLITE_CACHE_MIB, SQLITE_WAL_AUTOCHECKPOINT
from gateway.storage.meter import encode
from gateway.storage.models import Base
from gateway.storage.rawsql import RawStatements

SAMPLES = len(MEASURANDS)


def reading_rows(first: int, total: int) -> list[dict[str, object]]:
    """Readings ``first`` to ``first + BATCH`` (at most ``total``): reading
    ``j`` holds the sampled values of bench/meter_index.py's sample rows
    ``4j`` to ``4j + 3`` (same pile, transaction, time and values)."""
    out: list[dict[str, object]] = []
    for j in range(first, min(first + BATCH, total)):
        at = T0 + timedelta(milliseconds=j)
        text, digest = encode(
            [
                {"value": str(SAMPLES * j + i), "measurand": m, "unit": "Wh"}
                for i, m in enumerate(MEASURANDS)
            ]
        )
        out.append(
            {
                "pile_id": PILES[j % 100],
                "transaction_key": 1000 + j % 100,
                "connector_id": 1,
                "at": at,
                "digest": digest,
                "samples": text,
                "received_at": at,
            }
        )
    return out


def rows_per_second(path: Path, pragmas: list[str], total: int) -> float:
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    for pragma in ["journal_mode=WAL", "synchronous=NORMAL", *pragmas]:
        con.execute(f"PRAGMA {pragma}")
    stmt = RawStatements(sqlite.dialect()).meter_readings
    spent = 0.0
    for first in range(0, total, BATCH):
        batch = reading_rows(first, total)
        params = stmt.rows(batch)
        started = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(stmt.sql, params)
        con.execute("COMMIT")
        spent += time.perf_counter() - started
    stored = con.execute("SELECT count(*) FROM meter_readings").fetchone()[0]
    con.close()
    if stored != total:  # every row new: no conflict skipped
        raise SystemExit(f"{stored:,} meter_readings rows stored for {total:,} written")
    return total / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=125_000, help=f"meter_readings rows ({SAMPLES} samples each)"
    )
    args = parser.parse_args()
    setups = {
        "SQLite defaults (2 MiB cache, checkpoint every 1,000 pages)": [],
        f"pilegate ({SQLITE_CACHE_MIB} MiB cache, checkpoint every "
        f"{SQLITE_WAL_AUTOCHECKPOINT:,} pages)": [
            f"cache_size=-{SQLITE_CACHE_MIB * 1024}",
            f"wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}",
        ],
    }
    print(
        f"{args.rows:,} meter_readings rows ({SAMPLES} samples each, {SAMPLES * args.rows:,} "
        f"samples) in batches of {BATCH:,}, SQLite {sqlite3.sqlite_version}"
    )
    for name, pragmas in setups.items():
        with tempfile.TemporaryDirectory() as tmp:
            rate = rows_per_second(Path(tmp) / "bench.db", pragmas, args.rows)
        print(f"{name}: {rate:,.0f} rows/s ({SAMPLES * rate:,.0f} samples/s)")


if __name__ == "__main__":
    main()
