"""Statements the write-behind queue runs as plain driver ``executemany``.

The hot rows (meter readings, gun status events, current gun status, "last
seen") are written in batches of thousands. Through SQLAlchemy's ORM bulk
insert each row paid for parameter construction and bind processors in
Python (a quarter of the gateway's CPU in the mixed-load profile,
docs/benchmarks.md "Where the time goes"). Here each statement is compiled
once per dialect by SQLAlchemy itself (same SQL, same ON CONFLICT clauses),
and the rows go to the driver as tuples, with datetimes converted the way
the ``UTCDateTime`` column type stores them:

- SQLite: naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``, exactly what
  SQLAlchemy's SQLite ``DATETIME`` writes (comparisons in SQL are text
  comparisons, so the format must be identical; a test checks it);
- PostgreSQL (asyncpg): the aware datetime itself, in UTC.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, false, func, insert, null, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (
    ChargerMessage,
    Gun,
    GunStatusEvent,
    MeterReading,
    OutboxEvent,
    Pile,
    PresenceEvent,
    UTCDateTime,
    utc_for_storage,
)

# SQLAlchemy's SQLite DATETIME storage format, the same string
# (sqlalchemy/dialects/sqlite/base.py, DATETIME._storage_format).
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_datetime(value: datetime | None) -> str | None:
    """An aware datetime as SQLAlchemy's SQLite DATETIME stores it (naive UTC).

    %-formatting the fields: ``isoformat`` (and ``replace(tzinfo=None)``
    before it) took 1.6 µs per value, this 0.8 µs, and every sample and
    status row carries two (docs/benchmarks.md, "Storage text of a time")."""
    if value is None:
        return None
    tz = value.tzinfo
    if tz is not UTC:
        if tz is None:
            raise ValueError("naive datetime given to storage; pass an aware UTC datetime")
        value = value.astimezone(UTC)
    return _SQLITE_DATETIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def pg_datetime(value: datetime | None) -> datetime | None:
    return utc_for_storage(value, naive=False)


class RawStatement:
    """One compiled statement and how to turn rows into its parameters."""

    __slots__ = ("_by_attr", "_by_key", "_convert", "_dt_index", "params", "sql")

    def __init__(
        self, sql: str, params: tuple[str, ...], dt_index: tuple[int, ...], convert: Any
    ) -> None:
        self.sql = sql
        self.params = params  # parameter names in placeholder order (may repeat)
        self._dt_index = dt_index  # positions of datetime parameters
        self._convert = convert
        self._by_attr = operator.attrgetter(*params)
        self._by_key = operator.itemgetter(*params)

    def rows(self, items: Iterable[Any], *, attrs: bool = False) -> list[tuple[Any, ...]]:
        """Parameter tuples from dicts, or from objects (``attrs=True``)
        whose attributes are named like the columns (the write ops)."""
        get = self._by_attr if attrs else self._by_key
        if len(self.params) == 1:
            out: list[Any] = [(get(item),) for item in items]
        else:
            out = [get(item) for item in items]
        if self._dt_index:
            convert = self._convert
            idx = self._dt_index
            # A batch shares few distinct times (every row of one flush has
            # the same ``received_at``): convert each once.
            memo: dict[datetime | None, Any] = {}
            for n, row in enumerate(out):
                values = list(row)
                for i in idx:
                    v = values[i]
                    c = memo.get(v)
                    if c is None:
                        c = memo[v] = convert(v)
                    values[i] = c
                out[n] = tuple(values)
        return out


def _compile(
    stmt: Any, dialect: Dialect, columns: Sequence[str], datetimes: frozenset[str]
) -> RawStatement:
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns), for_executemany=True)
    params = tuple(compiled.positiontup or ())
    missing = set(params) - set(columns)
    if missing:  # a statement written here names a parameter it was not given
        raise RuntimeError(f"unbound parameters {sorted(missing)} in {compiled.string}")
    convert = sqlite_datetime if dialect.name == "sqlite" else pg_datetime
    dt_index = tuple(i for i, p in enumerate(params) if p in datetimes)
    return RawStatement(compiled.string, params, dt_index, convert)


def dialect_insert(dialect: Dialect, model: type[Any]) -> Any:
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    if dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model)
    raise RuntimeError(f"unsupported database dialect {dialect.name!r}")


def _columns(model: type[Any]) -> tuple[str, ...]:
    """A table's columns but its surrogate key: what the batch rows carry
    (derived from the model, so a new column cannot be left out here)."""
    return tuple(c.key for c in model.__table__.columns if c.key != "id")


def _datetimes(model: type[Any]) -> frozenset[str]:
    return frozenset(c.key for c in model.__table__.columns if isinstance(c.type, UTCDateTime))


def _non_key_columns(model: type[Any]) -> tuple[str, ...]:
    return tuple(c.key for c in model.__table__.columns if not c.primary_key)


class RawStatements:
    """The compiled statements of one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        # Retransmitted readings are ignored by the primary key.
        self.meter_readings = _compile(
            dialect_insert(dialect, MeterReading).on_conflict_do_nothing(),
            dialect,
            _columns(MeterReading),
            _datetimes(MeterReading),
        )
        self.gun_status_events = _compile(
            insert(GunStatusEvent), dialect, _columns(GunStatusEvent), _datetimes(GunStatusEvent)
        )
        # Statuses may arrive late (replayed after an outage): only a newer
        # status replaces the current one.
        gun = dialect_insert(dialect, Gun)
        self.gun_upsert = _compile(
            gun.on_conflict_do_update(
                index_elements=["pile_id", "connector_id"],
                set_={k: gun.excluded[k] for k in _non_key_columns(Gun)},
                where=Gun.status_at <= gun.excluded.status_at,
            ),
            dialect,
            _columns(Gun),
            _datetimes(Gun),
        )
        self.outbox = _compile(
            insert(OutboxEvent), dialect, _columns(OutboxEvent), _datetimes(OutboxEvent)
        )
        self.presence_events = _compile(
            insert(PresenceEvent), dialect, _columns(PresenceEvent), _datetimes(PresenceEvent)
        )
        self.charger_messages = _compile(
            insert(ChargerMessage), dialect, _columns(ChargerMessage), _datetimes(ChargerMessage)
        )
        piles = cast(Table, Pile.__table__)
        # Offline only if this node still holds the pile (gateway/storage/pilewrites.py).
        self.pile_offline = _compile(
            update(piles)
            .where(piles.c.pile_id == bindparam("p_pile_id"))
            .where((piles.c.node_id == bindparam("p_node_id")) | piles.c.node_id.is_(None))
            .values(online=false(), online_since=null(), node_id=null()),
            dialect,
            ("p_pile_id", "p_node_id"),
            frozenset(),
        )
        self._dialect = dialect
        self._pile_updates: dict[tuple[tuple[str, ...], bool, bool], RawStatement] = {}
        # "Last seen" only moves forward.
        self.last_seen = _compile(
            update(Pile)
            .where(Pile.pile_id == bindparam("seen_pile_id"))
            .where((Pile.last_seen.is_(None)) | (Pile.last_seen < bindparam("seen_at")))
            .values(last_seen=bindparam("seen_at")),
            dialect,
            # Not named like the columns: SQLAlchemy reserves those names
            # for the SET clause of an UPDATE.
            ("seen_pile_id", "seen_at"),
            frozenset({"seen_at"}),
        )

    def pile_update(
        self, columns: tuple[str, ...], first_seen_if_null: bool, boot_inc: bool
    ) -> RawStatement:
        """UPDATE piles SET the columns (parameters ``v_<column>``), with
        first_seen = COALESCE(first_seen, :v_first_seen_if_null) and
        boot_count = boot_count + :v_boot_inc if asked, WHERE pile_id =
        :p_pile_id; compiled once per shape (gateway/storage/pilewrites.py)."""
        key = (columns, first_seen_if_null, boot_inc)
        found = self._pile_updates.get(key)
        if found is not None:
            return found
        piles = cast(Table, Pile.__table__)
        unknown = [c for c in columns if c not in piles.c or c == "pile_id"]
        if unknown:
            raise ValueError(f"not a settable column of piles: {', '.join(unknown)}")
        values: dict[str, Any] = {c: bindparam(f"v_{c}", type_=piles.c[c].type) for c in columns}
        params = [f"v_{c}" for c in columns]
        datetimes = {f"v_{c}" for c in columns if isinstance(piles.c[c].type, UTCDateTime)}
        if first_seen_if_null:
            values["first_seen"] = func.coalesce(
                piles.c.first_seen,
                bindparam("v_first_seen_if_null", type_=piles.c.first_seen.type),
            )
            params.append("v_first_seen_if_null")
            datetimes.add("v_first_seen_if_null")
        if boot_inc:
            values["boot_count"] = piles.c.boot_count + bindparam(
                "v_boot_inc", type_=piles.c.boot_count.type
            )
            params.append("v_boot_inc")
        stmt = update(piles).where(piles.c.pile_id == bindparam("p_pile_id")).values(values)
        found = self._pile_updates[key] = _compile(
            stmt, self._dialect, (*params, "p_pile_id"), frozenset(datetimes)
        )
        return found


_CACHE: dict[tuple[str, str, str], RawStatements] = {}


def statements_for(session: AsyncSession) -> RawStatements:
    dialect = session.get_bind().dialect
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = RawStatements(dialect)
    return found


async def executemany(
    session: AsyncSession, stmt: RawStatement, rows: Iterable[Any], *, attrs: bool = False
) -> None:
    """Run ``stmt`` once per row in the session's transaction (driver
    executemany: one call for the whole list)."""
    params = stmt.rows(rows, attrs=attrs)
    if params:
        conn = await session.connection()
        await conn.exec_driver_sql(stmt.sql, params)
