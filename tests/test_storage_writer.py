"""The write-behind queue's driver-level batch writes (gateway/storage/rawsql.py):
rows read back through the ORM exactly as written, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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
from gateway.storage.meter import Sample, StoredReading, encode, merge, samples_of
from gateway.storage.models import GunStatusEvent, MeterReading, OutboxEvent, Pile, UTCDateTime
from gateway.storage.rawsql import sqlite_datetime
from gateway.storage.repo import Store
from gateway.storage.writer import (
    GunStatusOp,
    MeterReadingOp,
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


def _sv(measurand: str, value: str, *, signed: bool = False) -> dict[str, str]:
    """One OCPP §7.43 sampledValue, every field given (phase for a current)."""
    sv = {
        "value": value,
        "context": "Sample.Periodic",
        "format": "SignedData" if signed else "Raw",
        "measurand": measurand,
        "location": "Outlet",
        "unit": "A" if measurand == "Current.Import" else "Wh",
    }
    if measurand == "Current.Import":
        sv["phase"] = "L1"
    return sv


def _reading(
    at: datetime,
    *sampled_values: dict[str, str],
    received_at: datetime | None = None,
) -> MeterReadingOp:
    """One OCPP MeterValue element of transaction 7, as the handlers build it."""
    text, digest = encode(list(sampled_values))
    return MeterReadingOp(
        pile_id=PILE,
        transaction_key=7,
        connector_id=1,
        at=at,
        digest=digest,
        samples=text,
        received_at=received_at or at + timedelta(seconds=1),
    )


def _current(at: datetime, value: str) -> MeterReadingOp:
    return _reading(at, _sv("Current.Import", value))


async def _stored_readings(store: Store) -> list[MeterReading]:
    async with store.sessions() as s:
        return list(
            (
                await s.scalars(
                    select(MeterReading).order_by(
                        MeterReading.at, MeterReading.received_at, MeterReading.samples
                    )
                )
            ).all()
        )


async def _rows(store: Store) -> list[Any]:
    """The rows of meter_readings in MeterReadingOp's field order."""
    async with store.sessions() as s:
        c = MeterReading
        return list(
            (
                await s.execute(
                    select(
                        c.pile_id,
                        c.transaction_key,
                        c.connector_id,
                        c.at,
                        c.digest,
                        c.samples,
                        c.received_at,
                    ).order_by(c.received_at, c.connector_id)
                )
            ).all()
        )


def _samples(readings: list[MeterReading]) -> list[Sample]:
    """The stored sampled values, reading by reading, in the order sent."""
    return [x for r in readings for x in samples_of(r.samples)]


def _values(readings: list[MeterReading]) -> list[str]:
    return [x.value for x in _samples(readings)]


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
    first = _reading(
        T0, _sv("Energy.Active.Import.Register", "1234.5"), _sv("Current.Import", "16.2")
    )
    # Another element with the same timestamp, received later: stored beside
    # the first (another digest); its energy value loses to the first's when
    # read (same connector, time, measurand, phase, location and context).
    other = _reading(
        T0,
        _sv("Energy.Active.Import.Register", "00ab", signed=True),
        received_at=T0 + timedelta(seconds=3),
    )
    # A retransmission of the first element, in the same batch: ignored.
    await writer.put(first, other, first)
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
    # A later batch: the first element again, retransmitted (ignored: the
    # stored row keeps its receipt time), an older status that arrives late
    # (history only, not the gun's current status), an older "last seen"
    # (does not move it back).
    await writer.put(
        first._replace(received_at=T0 + timedelta(minutes=2)),
        _status(T0 - timedelta(minutes=1), "Faulted"),
    )
    writer.touch(PILE, T0)
    await writer.flush()

    readings = await _stored_readings(store)
    async with store.sessions() as s:
        events = (await s.scalars(select(GunStatusEvent).order_by(GunStatusEvent.id))).all()
        outbox = (await s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))).all()
        last_seen = await s.scalar(select(Pile.last_seen).where(Pile.pile_id == PILE))

    # Two rows, each exactly as written (the digest a signed BIGINT, the
    # sampledValue list as its JSON text): the retransmissions added none.
    assert [
        (r.pile_id, r.transaction_key, r.connector_id, r.at, r.digest, r.samples, r.received_at)
        for r in readings
    ] == [tuple(first), tuple(other)]
    assert [
        (x.measurand, x.value, x.value_num, x.phase, x.unit, x.format) for x in _samples(readings)
    ] == [
        ("Energy.Active.Import.Register", "1234.5", 1234.5, "", "Wh", "Raw"),
        ("Current.Import", "16.2", 16.2, "L1", "A", "Raw"),
        ("Energy.Active.Import.Register", "00ab", None, "", "Wh", "SignedData"),
    ]
    # Read as samples, the two energy values differ by format and value, but
    # the sample key is (connector, at, measurand, phase, location, context):
    # the first received wins.
    merged = merge(StoredReading(r.connector_id, r.at, r.samples, r.received_at) for r in readings)
    assert [
        (m.sample.measurand, m.sample.value, m.sample.value_num, m.sample.phase, m.sample.unit)
        for m in merged
    ] == [
        ("Current.Import", "16.2", 16.2, "L1", "A"),
        ("Energy.Active.Import.Register", "1234.5", 1234.5, "", "Wh"),
    ]
    assert all(m.at == T0 and m.received_at == T0 + timedelta(seconds=1) for m in merged)
    assert all(m.connector_id == 1 and m.sample.context == "Sample.Periodic" for m in merged)
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


async def test_a_reading_is_stored_once_per_key_and_digest(store: Store) -> None:
    # The primary key is (pile, transaction key, connector, at, digest): an
    # element sent again (same samples, so same text and digest) is stored
    # once, in the same batch or a later one; another element with the same
    # timestamp but other samples is a row of its own, and so is the same
    # element on another connector.
    writer = WriteBehind(store.sessions)
    energy = _reading(T0, _sv("Energy.Active.Import.Register", "10"))
    corrected = _reading(
        T0, _sv("Energy.Active.Import.Register", "11"), received_at=T0 + timedelta(seconds=5)
    )
    elsewhere = energy._replace(connector_id=2)
    assert energy.digest != corrected.digest and energy.samples != corrected.samples
    await writer.put(energy, energy._replace(received_at=T0 + timedelta(seconds=2)))
    await writer.flush()
    assert [tuple(r) for r in await _rows(store)] == [tuple(energy)]
    await writer.put(energy._replace(received_at=T0 + timedelta(minutes=1)), corrected)
    await writer.put(elsewhere)
    await writer.flush()
    assert [tuple(r) for r in await _rows(store)] == [
        tuple(energy),
        tuple(elsewhere),
        tuple(corrected),
    ]
    readings = await _stored_readings(store)
    assert len(readings) == 3
    assert _values(readings) == ["10", "10", "11"]


async def test_large_batch_is_written_whole(store: Store) -> None:
    writer = WriteBehind(store.sessions, batch_max=5_000)
    ops = [
        _reading(T0 + timedelta(seconds=i), _sv("Energy.Active.Import.Register", str(i)))
        for i in range(12_000)
    ]
    for i in range(0, len(ops), 4):
        await writer.put(*ops[i : i + 4])
    await writer.flush()
    readings = await _stored_readings(store)
    assert len(readings) == 12_000
    assert [x.value_num for x in _samples(readings)] == [float(i) for i in range(12_000)]
    # Digests of either sign read back as written (signed 64-bit).
    assert [r.digest for r in readings] == [op.digest for op in ops]
    assert min(op.digest for op in ops) < 0 < max(op.digest for op in ops)


async def test_backlogged_from_half_the_bound(store: Store) -> None:
    writer = WriteBehind(store.sessions, max_items=8)
    assert not writer.backlogged
    assert writer.try_put(*(_current(T0 + timedelta(seconds=i), "1") for i in range(3)))
    assert not writer.backlogged
    assert writer.try_put(_current(T0 + timedelta(seconds=9), "1"))
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


def _other_pile_reading(at: datetime) -> MeterReadingOp:
    """A reading of a pile the database does not know: the foreign key to
    ``piles`` refuses it, on SQLite and PostgreSQL alike."""
    return _current(at, "1")._replace(pile_id="44030800010000299999")


async def test_a_refused_row_does_not_stop_the_queue(store: Store) -> None:
    # Before: the batch failed as a whole and was retried forever, so one
    # refused row stopped every charger's writes (the queue filled up).
    metrics = Metrics()
    registry = metrics.registry
    writer = WriteBehind(store.sessions, metrics=metrics)
    groups: list[tuple[GunStatusOp | MeterReadingOp, ...]] = [
        (_current(T0 + timedelta(seconds=i), str(i)),) for i in range(10)
    ]
    groups[6] = (
        _status(T0 + timedelta(seconds=6), "Charging"),
        _other_pile_reading(T0 + timedelta(seconds=6)),
    )
    for group in groups:
        await writer.put(*group)
    writer.touch(PILE, T0 + timedelta(minutes=1))
    await asyncio.wait_for(writer.flush(), 30)
    assert len(writer) == 0
    readings = await _stored_readings(store)
    async with store.sessions() as s:
        events = (await s.scalars(select(GunStatusEvent.status))).all()
        last_seen = await s.scalar(select(Pile.last_seen).where(Pile.pile_id == PILE))
    # Every other group is stored, in order; the refused group is refused
    # whole (its status and reading were put together: atomic).
    assert len(readings) == 9
    assert _values(readings) == [str(i) for i in range(10) if i != 6]
    assert events == []
    assert last_seen == T0 + timedelta(minutes=1)
    assert (
        registry.get_sample_value("pilegate_storage_refused_ops_total", {"kind": "MeterReadingOp"})
        == 1
    )
    assert (
        registry.get_sample_value("pilegate_storage_refused_ops_total", {"kind": "GunStatusOp"})
        == 1
    )
    # The queue goes on: a later batch is written as usual.
    await writer.put(_current(T0 + timedelta(hours=1), "later"))
    await asyncio.wait_for(writer.flush(), 30)
    async with store.sessions() as s:
        later = (
            await s.scalars(
                select(MeterReading.samples).where(MeterReading.at > T0 + timedelta(minutes=1))
            )
        ).all()
    assert [x.value for text in later for x in samples_of(text)] == ["later"]


async def test_a_value_too_long_for_its_column_is_refused_alone(
    store: Store, database_url: str
) -> None:
    # A lenient model's StatusNotification may carry an info its schema
    # would refuse (more than 50 characters); PostgreSQL refuses more than
    # 64 (String(64)), SQLite stores it. (A sampled value has no such limit
    # any more: its measurand is inside the reading's JSON text.) An awaited
    # write in the refused group fails with the database's error, and the
    # group's reading is refused with it (atomic); the other groups are
    # written.
    metrics = Metrics()
    writer = WriteBehind(store.sessions, metrics=metrics)
    long_measurand = "Energy.Active.Import.Register." + "x" * 30
    long_info = "x" * 65
    await writer.put(_current(T0, "before"))
    durable = asyncio.ensure_future(
        writer.call(
            lambda _session: asyncio.sleep(0, "done"),
            _status(T0 + timedelta(seconds=1), "Charging")._replace(info=long_info),
            _reading(T0 + timedelta(seconds=1), _sv(long_measurand, "long")),
        )
    )
    await writer.put(_current(T0 + timedelta(seconds=2), "after"))
    await asyncio.wait_for(writer.flush(), 30)
    readings = await _stored_readings(store)
    async with store.sessions() as s:
        infos = (await s.scalars(select(GunStatusEvent.info))).all()

    def refused(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "pilegate_storage_refused_ops_total", {"kind": kind}
        )

    if database_url.startswith("postgresql"):
        assert len(readings) == 2
        assert _values(readings) == ["before", "after"]
        assert infos == []
        assert refused("GunStatusOp") == 1
        assert refused("MeterReadingOp") == 1
        with pytest.raises(DBAPIError, match="value too long"):
            await durable
    else:
        assert len(readings) == 3
        assert _values(readings) == ["before", "long", "after"]
        assert [x.measurand for x in _samples(readings)][1] == long_measurand
        assert infos == [long_info]
        assert refused("GunStatusOp") is None
        assert refused("MeterReadingOp") is None
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
