"""meter_values has one index, its sample key (migration 0006), and that key
is the primary key, without a surrogate id (0007; a WITHOUT ROWID table on
SQLite): the rows and the duplicate rule survive both migrations and their
downgrades, and both readers search the key instead of scanning the table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import Connection, event, func, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cloudboard.store import attach_samples_in
from gateway.storage import db
from gateway.storage.models import MeterValue, Pile, Transaction
from gateway.storage.repo import Store
from gateway.storage.writer import insert_ignore

PILE = "11010100011000000001"
T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
# The key as the model declares it: the migrated database must have exactly
# this column order (alembic's compare_metadata does not look at the order).
KEY = [c.name for c in MeterValue.__table__.primary_key.columns]
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


def _sample(tx: int, at: datetime, measurand: str = "Energy.Active.Import.Register") -> dict:
    return {
        "pile_id": PILE,
        "connector_id": 1,
        "transaction_key": tx,
        "at": at,
        "measurand": measurand,
        "phase": "",
        "unit": "Wh",
        "context": "Sample.Periodic",
        "location": "Outlet",
        "format": "Raw",
        "value": "10",
        "value_num": 10.0,
        "received_at": at,
    }


async def _seed(engine: AsyncEngine) -> int:
    """A pile, one transaction and samples inside and outside it (Core
    inserts: valid at revision 0005 as at head)."""
    async with engine.begin() as c:
        await c.execute(
            insert(Pile.__table__).values(
                pile_id=PILE,
                region_code="110101",
                operator_code="0001",
                product_code="10",
                kind="DC",
                serial="00001",
                registered_at=T0,
                online=False,
                kind_mismatch=False,
            )
        )
        res = await c.execute(
            insert(Transaction.__table__).values(
                pile_id=PILE,
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
        tx = int(res.inserted_primary_key[0])
        rows = [_sample(tx, T0 + timedelta(minutes=m)) for m in range(3)]
        rows.append(_sample(tx, T0, "Power.Active.Import"))
        rows += [_sample(0, T0 + timedelta(hours=1, minutes=m)) for m in range(2)]
        await c.execute(insert(MeterValue.__table__), rows)
    return tx


def _shape(conn: Connection) -> tuple[list[list[str]], list[str]]:
    insp = inspect(conn)
    uniques = [list(u["column_names"]) for u in insp.get_unique_constraints("meter_values")]
    indexes = [str(i["name"]) for i in insp.get_indexes("meter_values")]
    return uniques, indexes


def _downgrade(conn: Connection, revision: str) -> None:
    cfg = db.alembic_config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, revision)


async def _insert_two_retransmissions_and_one_new(engine: AsyncEngine, tx: int) -> None:
    """Two samples already stored (the same key) and a new one (SoC), through
    the duplicate rule's INSERT ... ON CONFLICT DO NOTHING."""
    sessions = db.session_factory(engine)
    async with sessions() as s, s.begin():
        await s.execute(
            insert_ignore(
                s,
                MeterValue,
                [_sample(tx, T0), _sample(0, T0 + timedelta(hours=1)), _sample(tx, T0, "SoC")],
            )
        )


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as c:
        return int((await c.execute(select(func.count()).select_from(MeterValue))).scalar_one())


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

        store = Store(engine)
        curve = await store.meter_values(tx)
        assert [(r.at, r.measurand) for r in curve] == [
            (T0, "Energy.Active.Import.Register"),
            (T0, "Power.Active.Import"),
            (T0 + timedelta(minutes=1), "Energy.Active.Import.Register"),
            (T0 + timedelta(minutes=2), "Energy.Active.Import.Register"),
        ]
        # The same set of columns decides what is a retransmission.
        await _insert_two_retransmissions_and_one_new(engine, tx)
        assert await _count(engine) == 7

        async with engine.begin() as c:
            await c.run_sync(_downgrade, "0005")
        async with engine.connect() as c:
            uniques, indexes = await c.run_sync(_shape)
        assert uniques == [OLD_KEY] and "ix_meter_values_tx" in indexes
        assert await _count(engine) == 7
        assert await db.upgrade(engine) == db.head_revision()
        await store.close()
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

        assert await db.upgrade(engine) == db.head_revision()
        async with engine.connect() as c:
            pk, columns, uniques, ddl = await c.run_sync(_key_shape)
        assert pk == KEY
        assert "id" not in columns and uniques == []
        if engine.dialect.name == "sqlite":
            assert ddl.rstrip().endswith("WITHOUT ROWID"), ddl
        assert await _count(engine) == 6
        store = Store(engine)
        assert len(await store.meter_values(tx)) == 4

        # The primary key now decides what is a retransmission: the same
        # samples as before the migration are ignored, a new one is stored.
        await _insert_two_retransmissions_and_one_new(engine, tx)
        assert await _count(engine) == 7

        # Down again: every row gets an id back, and the key is unique again.
        async with engine.begin() as c:
            await c.run_sync(_downgrade, "0006")
        async with engine.connect() as c:
            pk, columns, uniques, ddl = await c.run_sync(_key_shape)
        assert pk == ["id"] and uniques == [KEY]
        assert "WITHOUT ROWID" not in ddl
        ids = await _ids(engine)
        assert len(ids) == 7 and len(set(ids)) == 7
        # The id keeps counting for new rows.
        async with db.session_factory(engine)() as s, s.begin():
            await s.execute(insert_ignore(s, MeterValue, [_sample(tx, T0, "Voltage")]))
        ids_after = await _ids(engine)
        assert len(ids_after) == 8 and max(ids_after) > max(ids)
        assert await db.upgrade(engine) == db.head_revision()
        assert await _count(engine) == 8
        await store.close()
    finally:
        await engine.dispose()


@contextmanager
def _captured(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "meter_values" in statement and not statement.lstrip().upper().startswith("INSERT"):
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


async def test_both_readers_search_the_key(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)
        tx = await _seed(engine)
        store = Store(engine)
        sessions = db.session_factory(engine)
        with _captured(engine) as seen:
            await store.meter_values(tx)
            async with sessions() as s, s.begin():
                moved = await attach_samples_in(
                    s,
                    pile_id=PILE,
                    connector_id=1,
                    transaction_id=tx,
                    start_at=T0 + timedelta(minutes=30),
                    stop_at=T0 + timedelta(hours=2),
                )
        assert moved == 2
        assert len(seen) == 2, seen
        for statement, params in seen:
            plan = await _plan(engine, statement, params)
            if engine.dialect.name == "sqlite":
                # The key's automatic index, searched on its leading columns.
                assert "SCAN meter_values" not in plan, plan
                assert "SEARCH meter_values USING PRIMARY KEY" in plan, plan
                assert "pile_id=? AND transaction_key=?" in plan, plan
            else:
                assert "Seq Scan on meter_values" not in plan, plan
                assert "pk_meter_values" in plan, plan
        assert len(await store.meter_values(tx)) == 6
        await store.close()
    finally:
        await engine.dispose()
