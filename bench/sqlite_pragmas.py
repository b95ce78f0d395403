"""SQLite page cache and WAL checkpoint interval: meter rows per second.

Writes the same meter rows, in the write-behind queue's batches (5,000 rows,
one transaction each, the gateway's own compiled INSERT ... ON CONFLICT DO
NOTHING and driver executemany), into a fresh database with SQLite's defaults
and with pilegate's settings (gateway/storage/db.py), in one run, and prints
rows/s for each. Foreign keys are off here (no piles table rows): this
compares the pragmas, not the whole gateway.

    .venv/bin/python bench/sqlite_pragmas.py [--rows 500000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from meter_index import BATCH, meter_rows
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite

from gateway.storage.db import SQLITE_CACHE_MIB, SQLITE_WAL_AUTOCHECKPOINT
from gateway.storage.models import Base
from gateway.storage.rawsql import RawStatements


def rows_per_second(path: Path, pragmas: list[str], total: int) -> float:
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    for pragma in ["journal_mode=WAL", "synchronous=NORMAL", *pragmas]:
        con.execute(f"PRAGMA {pragma}")
    stmt = RawStatements(sqlite.dialect()).meter_values
    spent = 0.0
    for first in range(0, total, BATCH):
        batch = meter_rows(first, total)
        params = stmt.rows(batch)
        started = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(stmt.sql, params)
        con.execute("COMMIT")
        spent += time.perf_counter() - started
    con.close()
    return total / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    setups = {
        "SQLite defaults (2 MiB cache, checkpoint every 1,000 pages)": [],
        f"pilegate ({SQLITE_CACHE_MIB} MiB cache, checkpoint every "
        f"{SQLITE_WAL_AUTOCHECKPOINT:,} pages)": [
            f"cache_size=-{SQLITE_CACHE_MIB * 1024}",
            f"wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}",
        ],
    }
    print(f"{args.rows:,} meter rows in batches of {BATCH:,}, SQLite {sqlite3.sqlite_version}")
    for name, pragmas in setups.items():
        with tempfile.TemporaryDirectory() as tmp:
            rate = rows_per_second(Path(tmp) / "bench.db", pragmas, args.rows)
        print(f"{name}: {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
