"""Turning write ops into SQLite parameter rows (gateway/storage/rawsql.py):
the time per row, with the storage text of a time made by ``isoformat`` (the
baseline, as before 2026-12-05) and by ``sqlite_datetime`` (%-formatting), in
one run. Prints nanoseconds per time value and per row, and the same for
the text of a Heartbeat answer's ``currentTime`` (``iso``).

The rows are the mixed load's: one ``meter_readings`` row per MeterValues
(its one MeterValue element of 4 sampled values, as the handler makes it:
``MeterReadingOp``, text and digest from ``gateway.storage.meter.encode``,
made before the timing); one status row per StatusNotification. Before
migration 0008 the meter rows were ``meter_values`` rows, 4 per MeterValues
(one per sampled value) sharing one timestamp and one ``received_at``.

    .venv/bin/python bench/row_build.py [--rows 5000] [--number 50]
"""

from __future__ import annotations

import argparse
import timeit
from datetime import UTC, datetime, timedelta

from sqlalchemy.dialects import sqlite

from gateway.ocpp.handlers import iso
from gateway.storage.meter import encode
from gateway.storage.models import utc_for_storage
from gateway.storage.rawsql import RawStatement, RawStatements, sqlite_datetime
from gateway.storage.writer import GunStatusOp, MeterReadingOp

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
PILE = "44200000010000000001"
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage")


def isoformat_baseline(value: datetime | None) -> str | None:
    """What sqlite_datetime did before: the same text, via isoformat."""
    utc = utc_for_storage(value, naive=True)
    return None if utc is None else utc.isoformat(" ", "microseconds")


def iso_baseline(value: datetime) -> str:
    """What gateway.ocpp.handlers.iso did before."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def meter_ops(n: int) -> list[MeterReadingOp]:
    """``n`` readings, one per MeterValues of the mixed load (4 sampled values)."""
    out = []
    for k in range(n):
        at = T0 + timedelta(milliseconds=37 * k, microseconds=k)
        text, digest = encode(
            [
                {"value": str(4 * k + i), "measurand": m, "unit": "Wh"}
                for i, m in enumerate(MEASURANDS)
            ]
        )
        out.append(MeterReadingOp(PILE, 7, 1, at, digest, text, at + timedelta(milliseconds=3)))
    return out


def status_ops(n: int) -> list[GunStatusOp]:
    out = []
    for k in range(n):
        at = T0 + timedelta(milliseconds=37 * k, microseconds=k)
        out.append(
            GunStatusOp(
                PILE, 1, PILE + "001", "Charging", "NoError", None, "DLH", None, at,
                at + timedelta(milliseconds=3),
            )
        )  # fmt: skip
    return out


def per_row_ns(stmt: RawStatement, ops: list[object], number: int) -> float:
    seconds = timeit.timeit(lambda: stmt.rows(ops, attrs=True), number=number)
    return seconds / number / len(ops) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--number", type=int, default=50)
    args = parser.parse_args()
    value = T0 + timedelta(seconds=1.5)
    assert isoformat_baseline(value) == sqlite_datetime(value)
    assert iso_baseline(value) == iso(value)
    n = args.number * 2_000
    for name, fn in (
        ("isoformat (baseline)", isoformat_baseline),
        ("sqlite_datetime", sqlite_datetime),
    ):
        ns = timeit.timeit(lambda fn=fn: fn(value), number=n) / n * 1e9  # type: ignore[misc]
        print(f"one time value, {name}: {ns:,.0f} ns")
    for name, fn in (("isoformat (baseline)", iso_baseline), ("iso", iso)):
        ns = timeit.timeit(lambda fn=fn: fn(value), number=n) / n * 1e9  # type: ignore[misc]
        print(f"a Heartbeat's currentTime, {name}: {ns:,.0f} ns")
    statements = RawStatements(sqlite.dialect())
    workloads = (
        ("meter_readings", statements.meter_readings, meter_ops(args.rows)),
        ("gun_status_events", statements.gun_status_events, status_ops(args.rows)),
    )
    for table, stmt, ops in workloads:
        results = {}
        for name, fn in (("isoformat", isoformat_baseline), ("sqlite_datetime", sqlite_datetime)):
            stmt._convert = fn  # the converter the statement applies to its time columns
            results[name] = per_row_ns(stmt, list(ops), args.number)
        stmt._convert = sqlite_datetime
        print(
            f"{table} rows: {results['isoformat']:,.0f} ns per row with isoformat, "
            f"{results['sqlite_datetime']:,.0f} ns with sqlite_datetime"
        )


if __name__ == "__main__":
    main()
