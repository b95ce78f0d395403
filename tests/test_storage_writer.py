"""The write-behind queue's driver-level batch writes (gateway/storage/rawsql.py):
rows read back through the ORM exactly as written, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

import pileid
from gateway.config import ConfigError, load_settings
from gateway.metrics import Metrics
from gateway.storage import db
from gateway.storage.models import GunStatusEvent, MeterValue, OutboxEvent, Pile, UTCDateTime
from gateway.storage.rawsql import sqlite_datetime
from gateway.storage.repo import Store
from gateway.storage.writer import (
    GunStatusOp,
    MeterSampleOp,
    OutboxOp,
    WriteBehind,
    refused_data,
)

T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
PILE = "44030800010000200005"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    s = Store(engine)
    await s.register_pile(pileid.parse_pile_id(PILE), T0)
    try:
        yield s
    finally:
        await s.close()


def _sample(at: datetime, measurand: str, value: str, num: float | None) -> MeterSampleOp:
    return MeterSampleOp(
        pile_id=PILE,
        connector_id=1,
        transaction_key=7,
        at=at,
        measurand=measurand,
        phase="L1" if measurand == "Current.Import" else "",
        unit="A" if measurand == "Current.Import" else "Wh",
        context="Sample.Periodic",
        location="Outlet",
        format="Raw" if num is not None else "SignedData",
        value=value,
        value_num=num,
        received_at=at + timedelta(seconds=1),
    )


def _status(at: datetime, status: str, connector: int = 1) -> GunStatusOp:
    return GunStatusOp(
        pile_id=PILE,
        connector_id=connector,
        gun_id=f"{PILE}{connector:03d}",
        status=status,
        error_code="NoError",
        info=None,
        vendor_id="DLH",
        vendor_error_code=None,
        at=at,
        received_at=at + timedelta(seconds=2),
    )


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 4, 8, 0, tzinfo=UTC),  # no microseconds: still written
        datetime(2026, 12, 4, 8, 0, 1, 5, tzinfo=UTC),
        datetime(2026, 12, 4, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        datetime(1999, 1, 2, 3, 4, 5, 999999, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_sqlite_datetime_is_what_sqlalchemy_writes(value: datetime) -> None:
    # The raw path must store the very text SQLAlchemy's SQLite DATETIME
    # stores for UTCDateTime: SQL compares these columns as text.
    # What the engine does for a UTCDateTime column on SQLite: the type's own
    # bind step (naive UTC), then the dialect's DATETIME processor.
    d = sqlite.dialect()
    to_text = sqlite.DATETIME().bind_processor(d)
    assert to_text is not None
    assert sqlite_datetime(value) == to_text(UTCDateTime().process_bind_param(value, d))


def _sqlalchemy_text(value: datetime) -> str:
    d = sqlite.dialect()
    to_text = sqlite.DATETIME().bind_processor(d)
    assert to_text is not None
    text = to_text(UTCDateTime().process_bind_param(value, d))
    assert isinstance(text, str)
    return text


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.one_of(
            st.just(UTC),
            st.builds(
                timezone,
                st.timedeltas(
                    min_value=timedelta(hours=-23, minutes=-59),
                    max_value=timedelta(hours=23, minutes=59),
                ),
            ),
            st.timezones(),
        ),
    )
)
def test_sqlite_datetime_matches_sqlalchemy_for_any_time(value: datetime) -> None:
    # Any aware time, any offset or zone (folds and gaps included): the same
    # text as SQLAlchemy's processor, which the fast formatting replaces.
    assert sqlite_datetime(value) == _sqlalchemy_text(value)


def test_sqlite_datetime_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        sqlite_datetime(datetime(2026, 1, 1))


async def test_batch_rows_read_back_as_written(store: Store) -> None:
    writer = WriteBehind(store.sessions)
    late = T0 + timedelta(minutes=5)
    await writer.put(
        _sample(T0, "Energy.Active.Import.Register", "1234.5", 1234.5),
        _sample(T0, "Current.Import", "16.2", 16.2),
        _sample(T0, "Energy.Active.Import.Register", "00ab", None),
        # A retransmission of the first sample, in the same batch: ignored.
        _sample(T0, "Energy.Active.Import.Register", "1234.5", 1234.5),
    )
    await writer.put(_status(T0, "Preparing"), _status(late, "Charging"))
    await writer.put(
        OutboxOp(
            node_id="n1",
            pile_id=PILE,
            rows=(("e-1", "pilegate/x", '{"a": 1}', True), ("e-2", "pilegate/y", "{}", False)),
            created_at=T0,
        )
    )
    writer.touch(PILE, late)
    await writer.flush()
    # A later batch: the same sample again (ignored), an older status that
    # arrives late (history only, not the gun's current status), an older
    # "last seen" (does not move it back).
    await writer.put(
        _sample(T0, "Current.Import", "16.2", 16.2), _status(T0 - timedelta(minutes=1), "Faulted")
    )
    writer.touch(PILE, T0)
    await writer.flush()

    async with store.sessions() as s:
        meters = (await s.scalars(select(MeterValue).order_by(MeterValue.measurand))).all()
        events = (await s.scalars(select(GunStatusEvent).order_by(GunStatusEvent.id))).all()
        outbox = (await s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()
        last_seen = await s.scalar(select(Pile.last_seen).where(Pile.pile_id == PILE))

    # Two energy samples differ by format and value, but the unique key is
    # (pile, connector, transaction, at, measurand, phase, location, context).
    assert [(m.measurand, m.value, m.value_num, m.phase, m.unit) for m in meters] == [
        ("Current.Import", "16.2", 16.2, "L1", "A"),
        ("Energy.Active.Import.Register", "1234.5", 1234.5, "", "Wh"),
    ]
    assert all(m.at == T0 and m.received_at == T0 + timedelta(seconds=1) for m in meters)
    assert all(m.transaction_key == 7 and m.context == "Sample.Periodic" for m in meters)
    assert [(e.status, e.at, e.vendor_id, e.info) for e in events] == [
        ("Preparing", T0, "DLH", None),
        ("Charging", late, "DLH", None),
        ("Faulted", T0 - timedelta(minutes=1), "DLH", None),
    ]
    guns = await store.guns(PILE)
    assert [(g.connector_id, g.status) for g in guns] == [(1, "Charging")]
    assert [(o.event_id, o.topic, o.payload, o.retain, o.created_at) for o in outbox] == [
        ("e-1", "pilegate/x", '{"a": 1}', True, T0),
        ("e-2", "pilegate/y", "{}", False, T0),
    ]
    assert last_seen == late


async def test_large_batch_is_written_whole(store: Store) -> None:
    writer = WriteBehind(store.sessions, batch_max=5_000)
    ops = [
        _sample(T0 + timedelta(seconds=i), "Energy.Active.Import.Register", str(i), float(i))
        for i in range(12_000)
    ]
    for i in range(0, len(ops), 4):
        await writer.put(*ops[i : i + 4])
    await writer.flush()
    async with store.sessions() as s:
        values = (await s.scalars(select(MeterValue.value_num).order_by(MeterValue.at))).all()
    assert values == [float(i) for i in range(12_000)]


async def test_backlogged_from_half_the_bound(store: Store) -> None:
    writer = WriteBehind(store.sessions, max_items=8)
    assert not writer.backlogged
    assert writer.try_put(
        *(_sample(T0 + timedelta(seconds=i), "Current.Import", "1", 1.0) for i in range(3))
    )
    assert not writer.backlogged
    assert writer.try_put(_sample(T0 + timedelta(seconds=9), "Current.Import", "1", 1.0))
    assert writer.backlogged
    await writer.flush()
    assert not writer.backlogged


async def test_sqlite_connections_get_the_cache_and_checkpoint_settings(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", sqlite_cache_mib=8)
    try:
        async with engine.connect() as conn:
            got = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("cache_size", "wal_autocheckpoint", "journal_mode", "foreign_keys")
            ]
    finally:
        await engine.dispose()
    assert got == [-8 * 1024, db.SQLITE_WAL_AUTOCHECKPOINT, "wal", 1]


def test_sqlite_cache_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="sqlite_cache_mib"):
        load_settings({"sqlite_cache_mib": 0})


def _other_pile_sample(at: datetime) -> MeterSampleOp:
    """A sample of a pile the database does not know: the foreign key to
    ``piles`` refuses it, on SQLite and PostgreSQL alike."""
    return _sample(at, "Current.Import", "1", 1.0)._replace(pile_id="44030800010000299999")


async def test_a_refused_row_does_not_stop_the_queue(store: Store) -> None:
    # Before: the batch failed as a whole and was retried forever, so one
    # refused row stopped every charger's writes (the queue filled up).
    metrics = Metrics()
    registry = metrics.registry
    writer = WriteBehind(store.sessions, metrics=metrics)
    groups = [
        (_sample(T0 + timedelta(seconds=i), "Current.Import", str(i), float(i)),) for i in range(10)
    ]
    groups[6] = (
        _status(T0 + timedelta(seconds=6), "Charging"),
        _other_pile_sample(T0 + timedelta(seconds=6)),
    )
    for group in groups:
        await writer.put(*group)
    writer.touch(PILE, T0 + timedelta(minutes=1))
    await asyncio.wait_for(writer.flush(), 30)
    assert len(writer) == 0
    async with store.sessions() as s:
        values = (await s.scalars(select(MeterValue.value).order_by(MeterValue.at))).all()
        events = (await s.scalars(select(GunStatusEvent.status))).all()
        last_seen = await s.scalar(select(Pile.last_seen).where(Pile.pile_id == PILE))
    # Every other group is stored, in order; the refused group is refused
    # whole (its status and sample were put together: atomic).
    assert values == [str(i) for i in range(10) if i != 6]
    assert events == []
    assert last_seen == T0 + timedelta(minutes=1)
    assert (
        registry.get_sample_value("pilegate_storage_refused_ops_total", {"kind": "MeterSampleOp"})
        == 1
    )
    assert (
        registry.get_sample_value("pilegate_storage_refused_ops_total", {"kind": "GunStatusOp"})
        == 1
    )
    # The queue goes on: a later batch is written as usual.
    await writer.put(_sample(T0 + timedelta(hours=1), "Current.Import", "later", None))
    await asyncio.wait_for(writer.flush(), 30)
    async with store.sessions() as s:
        assert (
            await s.scalar(
                select(MeterValue.value).where(MeterValue.at > T0 + timedelta(minutes=1))
            )
            == "later"
        )


async def test_a_value_too_long_for_its_column_is_refused_alone(
    store: Store, database_url: str
) -> None:
    # A lenient model's MeterValues may carry a measurand its schema would
    # refuse; PostgreSQL refuses more than 48 characters (String(48)),
    # SQLite stores it. An awaited write in the refused group fails with
    # the database's error; the other groups are written.
    metrics = Metrics()
    writer = WriteBehind(store.sessions, metrics=metrics)
    long_measurand = "Energy.Active.Import.Register." + "x" * 30
    await writer.put(_sample(T0, "Current.Import", "before", None))
    durable = asyncio.ensure_future(
        writer.call(
            lambda _session: asyncio.sleep(0, "done"),
            _sample(T0 + timedelta(seconds=1), long_measurand, "long", None),
        )
    )
    await writer.put(_sample(T0 + timedelta(seconds=2), "Current.Import", "after", None))
    await asyncio.wait_for(writer.flush(), 30)
    async with store.sessions() as s:
        values = (await s.scalars(select(MeterValue.value).order_by(MeterValue.at))).all()
    refused = metrics.registry.get_sample_value(
        "pilegate_storage_refused_ops_total", {"kind": "MeterSampleOp"}
    )
    if database_url.startswith("postgresql"):
        assert values == ["before", "after"]
        assert refused == 1
        with pytest.raises(DBAPIError, match="value too long"):
            await durable
    else:
        assert values == ["before", "long", "after"]
        assert refused is None
        assert await durable == "done"


class _PgError(Exception):
    """What SQLAlchemy's asyncpg adapter wraps: the driver's error with its SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (IntegrityError("INSERT", {}, Exception("FOREIGN KEY constraint failed")), True),
        (DataError("INSERT", {}, Exception("value too long")), True),
        (ValueError("naive datetime given to storage"), True),
        (DBAPIError("INSERT", {}, _PgError("22021")), True),  # NUL in text (asyncpg)
        (DBAPIError("INSERT", {}, _PgError("23503")), True),  # foreign key
        (DBAPIError("INSERT", {}, _PgError("08006")), False),  # connection failure
        (DBAPIError("INSERT", {}, _PgError("40P01")), False),  # deadlock
        (DBAPIError("INSERT", {}, _PgError("42P01")), False),  # no such table
        (
            DBAPIError(
                "INSERT",
                {},
                sqlite3.ProgrammingError(
                    "Error binding parameter 11: type 'dict' is not supported"
                ),
            ),
            True,
        ),
        (
            DBAPIError(
                "INSERT", {}, sqlite3.ProgrammingError("Cannot operate on a closed database.")
            ),
            False,
        ),
        (OperationalError("INSERT", {}, Exception("database is locked")), False),
        (InterfaceError("INSERT", {}, Exception("connection is closed")), False),
        (ConnectionResetError(), False),
        (TimeoutError(), False),
    ],
)
def test_only_refused_data_is_isolated(error: Exception, refused: bool) -> None:
    assert refused_data(error) is refused
