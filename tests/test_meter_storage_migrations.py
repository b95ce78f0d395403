"""Meter storage migrations, on SQLite and PostgreSQL.

- 0006: ``meter_values`` has one index, its sample key, led by (pile_id,
  transaction_key);
- 0007: that key is the primary key, without a surrogate id (a WITHOUT ROWID
  table on SQLite);
- 0008: ``meter_readings``, one row per OCPP MeterValue element, replaces
  ``meter_values``.

The rows and the duplicate rule survive each migration and its downgrade;
after 0008 the transaction-curve reader answers exactly what it answered
before; and both readers of ``meter_readings`` search its primary key
instead of scanning the table.

``meter_values`` no longer has a model: it is declared here as migration
0007 left it (without 0005/0006's surrogate ``id``, which the database
fills in by itself at those revisions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cloudboard.store import attach_samples_in
from gateway.storage import db
from gateway.storage.meter import encode
from gateway.storage.models import MeterReading, Pile, Transaction, UTCDateTime
from gateway.storage.repo import MeterValueRecord, Store

PILE = "11010100011000000001"
OTHER_PILE = "11010100011000000002"
T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
ENERGY = "Energy.Active.Import.Register"

# meter_values as migration 0007 left it (0008's ``_create_meter_values``).
_meta = MetaData()
meter_values = Table(
    "meter_values",
    _meta,
    Column("pile_id", String(20), nullable=False),
    Column("connector_id", Integer(), nullable=False),
    Column("transaction_key", BigInteger(), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("measurand", String(48), nullable=False),
    Column("phase", String(8), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("context", String(32), nullable=False),
    Column("location", String(16), nullable=False),
    Column("format", String(16), nullable=False),
    Column("value", Text(), nullable=False),
    Column("value_num", Float(), nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
)
# The sample key since 0006, the primary key since 0007, in this column order
# (alembic's compare_metadata does not look at the order).
KEY = [
    "pile_id",
    "transaction_key",
    "connector_id",
    "at",
    "measurand",
    "phase",
    "location",
    "context",
]
# The key up to 0005.
OLD_KEY = [
    "pile_id",
    "connector_id",
    "transaction_key",
    "at",
    "measurand",
    "phase",
    "location",
    "context",
]
# What the transaction-curve reader gives, in meter_values' column names.
RECORD = [
    "at",
    "connector_id",
    "measurand",
    "phase",
    "unit",
    "context",
    "location",
    "format",
    "value",
    "value_num",
]


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _sample(
    tx: int,
    at: datetime,
    measurand: str = ENERGY,
    value: str = "10",
    *,
    received_at: datetime | None = None,
    connector_id: int = 1,
    pile_id: str = PILE,
    phase: str = "",
    unit: str | None = None,
    context: str = "Sample.Periodic",
    location: str = "Outlet",
    format: str = "Raw",
) -> dict[str, Any]:
    """A meter_values row as the gateway wrote it up to 0007 (the §7.43
    defaults filled in)."""
    return {
        "pile_id": pile_id,
        "connector_id": connector_id,
        "transaction_key": tx,
        "at": at,
        "measurand": measurand,
        "phase": phase,
        "unit": ("Wh" if measurand.startswith("Energy") else "") if unit is None else unit,
        "context": context,
        "location": location,
        "format": format,
        "value": value,
        "value_num": _number(value),
        "received_at": at if received_at is None else received_at,
    }


def _insert_ignore(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The old writer's INSERT ... ON CONFLICT DO NOTHING into meter_values:
    a sample whose key is stored already is dropped (first received wins)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(dialect_insert(meter_values).values(rows).on_conflict_do_nothing())


async def _store_samples(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as c:
        await c.run_sync(_insert_ignore, rows)


async def _add_pile(engine: AsyncEngine, pile_id: str) -> None:
    async with engine.begin() as c:
        await c.execute(
            insert(Pile.__table__).values(
                pile_id=pile_id,
                region_code="110101",
                operator_code="0001",
                product_code="10",
                kind="DC",
                serial=pile_id[-5:],
                registered_at=T0,
                online=False,
                kind_mismatch=False,
            )
        )


async def _add_transaction(engine: AsyncEngine, pile_id: str = PILE) -> int:
    async with engine.begin() as c:
        res = await c.execute(
            insert(Transaction.__table__).values(
                pile_id=pile_id,
                connector_id=1,
                protocol="ocpp1.6",
                id_tag="TAG1",
                auth_method="card",
                offline=False,
                auth_status="Accepted",
                start_at=T0,
                meter_start=0,
                status="active",
                created_at=T0,
                updated_at=T0,
            )
        )
        return int(res.inserted_primary_key[0])


async def _seed(engine: AsyncEngine) -> int:
    """A pile, one transaction and samples inside and outside it (Core
    inserts: valid at revisions 0005 to 0007)."""
    await _add_pile(engine, PILE)
    tx = await _add_transaction(engine)
    rows = [_sample(tx, T0 + timedelta(minutes=m)) for m in range(3)]
    rows.append(_sample(tx, T0, "Power.Active.Import"))
    rows += [_sample(0, T0 + timedelta(hours=1, minutes=m)) for m in range(2)]
    async with engine.begin() as c:
        await c.execute(insert(meter_values), rows)
    return tx


async def _old_curve(engine: AsyncEngine, tx: int, pile_id: str = PILE) -> list[MeterValueRecord]:
    """Store.meter_values up to 0007: the transaction's samples sent by its
    pile, ordered by time, measurand, phase, location and context."""
    c = meter_values.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(*[c[k] for k in RECORD])
            .where(c.transaction_key == tx, c.pile_id == pile_id)
            .order_by(c.at, c.measurand, c.phase, c.location, c.context)
        )
        return [MeterValueRecord(**r._mapping) for r in rows]


async def _all_samples(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """Every meter_values row, every column (but 0005/0006's id)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(meter_values))).all()
    return sorted((tuple(r) for r in rows), key=lambda r: tuple(map(str, r)))


def _shape(conn: Connection) -> tuple[list[list[str]], list[str]]:
    insp = inspect(conn)
    uniques = [list(u["column_names"]) for u in insp.get_unique_constraints("meter_values")]
    indexes = [str(i["name"]) for i in insp.get_indexes("meter_values")]
    return uniques, indexes


async def _insert_two_retransmissions_and_one_new(engine: AsyncEngine, tx: int) -> None:
    """Two samples already stored (the same key) and a new one (SoC), through
    the duplicate rule's INSERT ... ON CONFLICT DO NOTHING."""
    await _store_samples(
        engine,
        [_sample(tx, T0), _sample(0, T0 + timedelta(hours=1)), _sample(tx, T0, "SoC")],
    )


async def _count(engine: AsyncEngine, table: str = "meter_values") -> int:
    async with engine.connect() as c:
        return int((await c.execute(select(func.count()).select_from(text(table)))).scalar_one())


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as c:
        return set(await c.run_sync(lambda conn: inspect(conn).get_table_names()))


async def test_0006_keeps_the_samples_and_the_duplicate_rule(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine, "0005")
        tx = await _seed(engine)
        async with engine.connect() as c:
            uniques, indexes = await c.run_sync(_shape)
        assert uniques == [OLD_KEY] and "ix_meter_values_tx" in indexes

        assert await db.upgrade(engine, "0006") == "0006"
        async with engine.connect() as c:
            uniques, indexes = await c.run_sync(_shape)
        assert uniques == [KEY]
        assert "ix_meter_values_tx" not in indexes
        assert await _count(engine) == 6

        curve = await _old_curve(engine, tx)
        assert [(r.at, r.measurand) for r in curve] == [
            (T0, "Energy.Active.Import.Register"),
            (T0, "Power.Active.Import"),
            (T0 + timedelta(minutes=1), "Energy.Active.Import.Register"),
            (T0 + timedelta(minutes=2), "Energy.Active.Import.Register"),
        ]
        # The same set of columns decides what is a retransmission.
        await _insert_two_retransmissions_and_one_new(engine, tx)
        assert await _count(engine) == 7

        await db.downgrade(engine, "0005")
        async with engine.connect() as c:
            uniques, indexes = await c.run_sync(_shape)
        assert uniques == [OLD_KEY] and "ix_meter_values_tx" in indexes
        assert await _count(engine) == 7
        assert await db.upgrade(engine) == db.head_revision()
    finally:
        await engine.dispose()


def _key_shape(conn: Connection) -> tuple[list[str], list[str], list[list[str]], str]:
    """(primary key, columns, unique constraints, SQLite's CREATE TABLE or '')."""
    insp = inspect(conn)
    pk = list(insp.get_pk_constraint("meter_values")["constrained_columns"])
    columns = [str(c["name"]) for c in insp.get_columns("meter_values")]
    uniques = [list(u["column_names"]) for u in insp.get_unique_constraints("meter_values")]
    ddl = ""
    if conn.dialect.name == "sqlite":
        ddl = str(
            conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'meter_values'"
            ).scalar_one()
        )
    return pk, columns, uniques, ddl


async def _ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as c:
        return [int(i) for i in (await c.exec_driver_sql("SELECT id FROM meter_values")).scalars()]


async def test_0007_makes_the_key_the_primary_key_and_keeps_the_samples(
    database_url: str,
) -> None:
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine, "0006")
        tx = await _seed(engine)
        async with engine.connect() as c:
            pk, columns, uniques, ddl = await c.run_sync(_key_shape)
        assert pk == ["id"] and uniques == [KEY]

        assert await db.upgrade(engine, "0007") == "0007"
        async with engine.connect() as c:
            pk, columns, uniques, ddl = await c.run_sync(_key_shape)
        assert pk == KEY
        assert "id" not in columns and uniques == []
        # Every column of the table declared above, none other.
        assert sorted(columns) == sorted(meter_values.c.keys())
        if engine.dialect.name == "sqlite":
            assert ddl.rstrip().endswith("WITHOUT ROWID"), ddl
        assert await _count(engine) == 6
        assert len(await _old_curve(engine, tx)) == 4

        # The primary key now decides what is a retransmission: the same
        # samples as before the migration are ignored, a new one is stored.
        await _insert_two_retransmissions_and_one_new(engine, tx)
        assert await _count(engine) == 7

        # Down again: every row gets an id back, and the key is unique again.
        await db.downgrade(engine, "0006")
        async with engine.connect() as c:
            pk, columns, uniques, ddl = await c.run_sync(_key_shape)
        assert pk == ["id"] and uniques == [KEY]
        assert "WITHOUT ROWID" not in ddl
        ids = await _ids(engine)
        assert len(ids) == 7 and len(set(ids)) == 7
        # The id keeps counting for new rows.
        await _store_samples(engine, [_sample(tx, T0, "Voltage")])
        ids_after = await _ids(engine)
        assert len(ids_after) == 8 and max(ids_after) > max(ids)
        assert await db.upgrade(engine, "0007") == "0007"
        assert await _count(engine) == 8
        assert await db.upgrade(engine) == db.head_revision()
    finally:
        await engine.dispose()


# --- 0008: meter_readings ----------------------------------------------------


def _element(
    tx: int,
    at: datetime,
    received_at: datetime,
    samples: list[tuple[str, str, dict[str, str]]],
    **where: Any,
) -> list[dict[str, Any]]:
    """The meter_values rows one OCPP MeterValue element became up to 0007:
    (measurand, value, other fields) per sampled value."""
    return [
        _sample(tx, at, measurand, value, received_at=received_at, **where, **fields)
        for measurand, value, fields in samples
    ]


async def _seed_0008(engine: AsyncEngine) -> int:
    """Samples at revision 0007 as the old writer stored them, one element
    at a time in the order received (a duplicate key is dropped)."""
    await _add_pile(engine, PILE)
    await _add_pile(engine, OTHER_PILE)
    tx = await _add_transaction(engine)
    t1, t2, t3, t_out = (T0 + timedelta(minutes=m) for m in (1, 2, 3, 60))
    second = [
        (ENERGY, "1100", {}),
        (ENERGY, "0.37", {"phase": "L1", "unit": "kWh"}),
        ("Power.Active.Import", "7000", {"unit": "W"}),
        ("Voltage", "230.1", {"phase": "L1-N", "unit": "V"}),
        ("Voltage", "229.8", {"phase": "L2-N", "unit": "V"}),
        ("SoC", "40", {"unit": "Percent", "location": "EV"}),
    ]
    arrivals = [
        # The start of the transaction.
        _element(tx, T0, T0, [(ENERGY, "1000", {"context": "Transaction.Begin"})]),
        # Several sampled values, with phases, other units and locations.
        _element(tx, t1, t1, second),
        # The same timestamp again, received later: its energy value loses
        # to the first (the key is stored), its current is new.
        _element(
            tx,
            t1,
            t1 + timedelta(seconds=40),
            [
                (ENERGY, "1105", {}),
                ("Current.Import", "31.9", {"phase": "L1", "unit": "A"}),
            ],
        ),
        # A retransmission of the second element: nothing stored.
        _element(tx, t1, t1 + timedelta(minutes=2), second),
        # A clock-aligned signed value (not a number) beside the periodic one.
        _element(
            tx,
            t2,
            t2,
            [
                (ENERGY, "1200", {}),
                (ENERGY, "AbCd+/==", {"context": "Sample.Clock", "format": "SignedData"}),
            ],
        ),
        # Outside any transaction, on two guns.
        _element(0, t_out, t_out, [(ENERGY, "5000", {}), ("Power.Active.Import", "0", {})]),
        _element(0, t_out, t_out, [(ENERGY, "300", {})], connector_id=2),
        # Another pile naming the same transaction id.
        _element(tx, t3, t3, [(ENERGY, "9999", {})], pile_id=OTHER_PILE),
    ]
    for rows in arrivals:
        await _store_samples(engine, rows)
    return tx


async def _readings(engine: AsyncEngine) -> list[Any]:
    r = MeterReading.__table__.c
    async with engine.connect() as c:
        rows = await c.execute(
            select(MeterReading.__table__).order_by(
                r.pile_id, r.transaction_key, r.connector_id, r.at, r.received_at
            )
        )
        return list(rows)


async def test_0008_moves_the_samples_into_readings_and_back(database_url: str) -> None:
    engine = db.create_engine(database_url)
    store = Store(engine)
    try:
        await db.upgrade(engine, "0007")
        tx = await _seed_0008(engine)
        samples = await _all_samples(engine)
        assert len(samples) == 14  # the retransmission and the lost 1105 dropped
        before = await _old_curve(engine, tx)
        assert len(before) == 10
        assert [r.value for r in before if r.measurand == ENERGY and r.phase == ""] == [
            "1000",
            "1100",
            "AbCd+/==",  # Sample.Clock before Sample.Periodic
            "1200",
        ]

        assert await db.upgrade(engine, "0008") == "0008"
        assert "meter_values" not in await _tables(engine)
        assert await store.meter_values(tx) == before

        # One reading per element as it arrived: the second arrival at t1
        # is a reading of its own; the retransmission added nothing.
        readings = await _readings(engine)
        t1, t_out = T0 + timedelta(minutes=1), T0 + timedelta(minutes=60)
        assert [(r.pile_id, r.transaction_key, r.connector_id, r.at) for r in readings] == [
            (PILE, 0, 1, t_out),
            (PILE, 0, 2, t_out),
            (PILE, tx, 1, T0),
            (PILE, tx, 1, t1),
            (PILE, tx, 1, t1),
            (PILE, tx, 1, T0 + timedelta(minutes=2)),
            (OTHER_PILE, tx, 1, T0 + timedelta(minutes=3)),
        ]
        later = readings[4]
        assert later.received_at == t1 + timedelta(seconds=40)
        # The defaults the old row carried are written out; no phase when
        # there was none.
        assert orjson.loads(later.samples) == [
            {
                "value": "31.9",
                "context": "Sample.Periodic",
                "format": "Raw",
                "measurand": "Current.Import",
                "location": "Outlet",
                "unit": "A",
                "phase": "L1",
            }
        ]
        assert "phase" not in orjson.loads(readings[2].samples)[0]
        for r in readings:
            assert (r.samples, r.digest) == encode(orjson.loads(r.samples))
        # Samples in the order of their old key (measurand, phase, ...).
        assert [
            (s["measurand"], s.get("phase", "")) for s in orjson.loads(readings[3].samples)
        ] == [
            (ENERGY, ""),
            (ENERGY, "L1"),
            ("Power.Active.Import", ""),
            ("SoC", ""),
            ("Voltage", "L1-N"),
            ("Voltage", "L2-N"),
        ]

        # And back: the same sample rows, every column.
        await db.downgrade(engine, "0007")
        assert "meter_readings" not in await _tables(engine)
        assert await _all_samples(engine) == samples
        assert await _old_curve(engine, tx) == before
        # Up once more: the round trip changes nothing.
        assert await db.upgrade(engine) == db.head_revision()
        assert await _readings(engine) == readings
        assert await store.meter_values(tx) == before
    finally:
        await store.close()
        await engine.dispose()


async def test_0008_downgrade_keeps_the_first_received(database_url: str) -> None:
    """Readings stored after the upgrade may hold a sampled value twice (an
    element sent again with other text); the downgrade keeps the one the
    reader gave, so the old reader answers what the new one did."""
    engine = db.create_engine(database_url)
    store = Store(engine)
    try:
        await db.upgrade(engine)
        await _add_pile(engine, PILE)
        tx = await _add_transaction(engine)
        t1 = T0 + timedelta(minutes=1)
        elements = [
            (tx, 1, T0, T0, [{"value": "1000"}, {"value": "7000", "measurand": "Power.Offered"}]),
            # Re-ordered and corrected, received later: only SoC is new.
            (
                tx,
                1,
                T0,
                T0 + timedelta(seconds=30),
                [
                    {"value": "7001", "measurand": "Power.Offered"},
                    {"value": "1001"},
                    {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"},
                ],
            ),
            # One element with a value twice: the first in the list wins.
            (tx, 1, t1, t1, [{"value": "1100"}, {"value": "1099"}, {"value": "x", "phase": "N"}]),
            (0, 2, t1, t1, [{"value": "12", "measurand": "Temperature", "unit": "Celsius"}]),
        ]
        async with engine.begin() as c:
            for key, connector, at, received, svs in elements:
                text_, digest = encode(svs)
                await c.execute(
                    insert(MeterReading.__table__).values(
                        pile_id=PILE,
                        transaction_key=key,
                        connector_id=connector,
                        at=at,
                        digest=digest,
                        samples=text_,
                        received_at=received,
                    )
                )
        now = await store.meter_values(tx)
        assert [(r.at, r.measurand, r.phase, r.value) for r in now] == [
            (T0, ENERGY, "", "1000"),
            (T0, "Power.Offered", "", "7000"),
            (T0, "SoC", "", "55"),
            (t1, ENERGY, "", "1100"),
            (t1, ENERGY, "N", "x"),
        ]

        await db.downgrade(engine, "0007")
        assert await _old_curve(engine, tx) == now
        assert await _count(engine) == 6
        c_ = meter_values.c
        async with engine.connect() as c:
            received = dict(
                (
                    await c.execute(
                        select(c_.measurand, c_.received_at).where(
                            c_.transaction_key == tx, c_.at == T0
                        )
                    )
                ).all()
            )
            outside = (await c.execute(select(meter_values).where(c_.transaction_key == 0))).one()
        assert received == {
            ENERGY: T0,
            "Power.Offered": T0,
            "SoC": T0 + timedelta(seconds=30),
        }
        assert outside._mapping == _sample(
            0, t1, "Temperature", "12", connector_id=2, unit="Celsius"
        )
    finally:
        await store.close()
        await engine.dispose()


async def test_0008_downgrade_with_a_nul_in_a_sampled_value(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Since 0008 a NUL character in a sampled value is stored (JSON escapes
    it); PostgreSQL's text cannot hold it in meter_values. The downgrade
    must still go through and keep the other samples; on PostgreSQL the
    NUL sample is left out with a warning."""
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)
        await _add_pile(engine, PILE)
        tx = await _add_transaction(engine)
        t1 = T0 + timedelta(minutes=1)
        async with engine.begin() as c:
            for at, svs in [
                (T0, [{"value": "1000"}, {"value": "7000", "measurand": "Power.Offered"}]),
                (t1, [{"value": "1\x00100"}, {"value": "40", "measurand": "SoC"}]),
            ]:
                text_, digest = encode(svs)
                await c.execute(
                    insert(MeterReading.__table__).values(
                        pile_id=PILE,
                        transaction_key=tx,
                        connector_id=1,
                        at=at,
                        digest=digest,
                        samples=text_,
                        received_at=at,
                    )
                )
        await db.downgrade(engine, "0007")
        kept = [(r.at, r.measurand, r.value) for r in await _old_curve(engine, tx)]
        expected = [(T0, ENERGY, "1000"), (T0, "Power.Offered", "7000")]
        if engine.dialect.name == "postgresql":  # left out, with a warning
            expected += [(t1, "SoC", "40")]
        else:  # SQLite's text holds the NUL
            expected += [(t1, ENERGY, "1\x00100"), (t1, "SoC", "40")]
        assert kept == expected
        assert ("NUL character left out" in caplog.text) == (engine.dialect.name == "postgresql")
    finally:
        await engine.dispose()


# --- the readers of meter_readings search the key ---------------------------


@contextmanager
def _captured(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "meter_readings" in statement and not statement.lstrip().upper().startswith("INSERT"):
            seen.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _plan(engine: AsyncEngine, statement: str, params: Any) -> str:
    async with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            rows = await c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            return "\n".join(str(r[-1]) for r in rows)
        # An almost empty table is cheaper to scan; ask whether the key
        # *can* serve the query.
        await c.execute(text("SET enable_seqscan = off"))
        rows = await c.exec_driver_sql("EXPLAIN " + statement, params)
        return "\n".join(str(r[0]) for r in rows)


async def _add_readings(engine: AsyncEngine, rows: list[tuple[int, int, datetime, str]]) -> None:
    """(transaction key, connector, at, energy value) per reading."""
    async with engine.begin() as c:
        for key, connector, at, value in rows:
            samples, digest = encode([{"value": value}, {"value": "7", "measurand": "SoC"}])
            await c.execute(
                insert(MeterReading.__table__).values(
                    pile_id=PILE,
                    transaction_key=key,
                    connector_id=connector,
                    at=at,
                    digest=digest,
                    samples=samples,
                    received_at=at,
                )
            )


async def test_both_readers_search_the_key(database_url: str) -> None:
    engine = db.create_engine(database_url)
    store = Store(engine)
    try:
        await db.upgrade(engine)
        await _add_pile(engine, PILE)
        tx = await _add_transaction(engine)
        hour = T0 + timedelta(hours=1)
        await _add_readings(
            engine,
            [
                (tx, 1, T0, "10"),
                (tx, 1, T0 + timedelta(minutes=1), "11"),
                (tx, 1, T0 + timedelta(minutes=2), "12"),
                # Outside any transaction: two in the window on the gun...
                (0, 1, hour, "20"),
                (0, 1, hour + timedelta(minutes=1), "21"),
                # ... one already stored under the transaction (left alone),
                (0, 1, T0 + timedelta(minutes=2), "12"),
                # one at the same time but another element (moved; its
                # energy loses to the one stored first, text "12" < "13"),
                (0, 1, T0 + timedelta(minutes=2), "13"),
                # another gun, and one after the stop.
                (0, 2, hour, "30"),
                (0, 1, T0 + timedelta(hours=3), "40"),
            ],
        )
        sessions = db.session_factory(engine)
        with _captured(engine) as seen:
            assert len(await store.meter_values(tx)) == 6
            async with sessions() as s, s.begin():
                moved = await attach_samples_in(
                    s,
                    pile_id=PILE,
                    connector_id=1,
                    transaction_id=tx,
                    start_at=T0 + timedelta(minutes=2),
                    stop_at=T0 + timedelta(hours=2),
                )
        assert moved == 3
        assert len(seen) == 2, seen
        select_plan, update_plan = [await _plan(engine, st, p) for st, p in seen]
        for plan in (select_plan, update_plan):
            if engine.dialect.name == "sqlite":
                # The table's one B-tree, searched on the key's leading columns.
                assert "SCAN meter_readings" not in plan, plan
                assert "SEARCH meter_readings USING PRIMARY KEY" in plan, plan
                assert "pile_id=? AND transaction_key=?" in plan, plan
            else:
                assert "Seq Scan" not in plan, plan
                assert "pk_meter_readings" in plan, plan
        if engine.dialect.name == "sqlite":
            # The gun and the time range narrow the search, and the
            # duplicate check is a look-up of the whole key.
            assert "pile_id=? AND transaction_key=? AND connector_id=? AND at>? AND at<?" in (
                update_plan
            ), update_plan
            assert (
                "pile_id=? AND transaction_key=? AND connector_id=? AND at=? AND digest=?"
                in update_plan
            ), update_plan
        else:
            # The rows to move and the duplicate check both use the key.
            assert update_plan.count("pk_meter_readings") >= 2, update_plan
        curve = await store.meter_values(tx)
        assert [r.value for r in curve if r.measurand == ENERGY] == ["10", "11", "12", "20", "21"]
        assert len(curve) == 10  # and one SoC per time
        assert await _count(engine, "meter_readings") == 9
    finally:
        await store.close()
        await engine.dispose()
