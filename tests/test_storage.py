from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

import pileid
from gateway.storage import db
from gateway.storage.repo import PileExists, Store

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    s = Store(engine)
    try:
        yield s
    finally:
        await s.close()


async def test_migrations_reach_head_and_are_idempotent(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        assert await db.current_revision(engine) is None
        assert await db.upgrade(engine) == db.head_revision()
        assert await db.upgrade(engine) == db.head_revision()
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import Connection

    from gateway.storage.models import Base

    engine = db.create_engine(database_url)

    def diff(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_register_and_read_pile(store: Store) -> None:
    pid = pileid.parse_pile_id("44030800010000200005")
    rec = await store.register_pile(pid, T0, vendor="DLH", model="XD120")
    assert (rec.region_code, rec.operator_code, rec.kind, rec.serial) == (
        "440308",
        "0001",
        "DC",
        "00005",
    )
    got = await store.get_pile("44030800010000200005")
    assert got == rec
    assert got is not None and got.registered_at == T0 and got.registered_at.tzinfo is not None
    with pytest.raises(PileExists):
        await store.register_pile(pid, T0)
    await store.register_at_connect(pid, T0)  # already registered: nothing changes
    assert await store.get_pile("44030800010000200005") == rec


async def test_list_filters(store: Store) -> None:
    for text in ("44030800010000200005", "44200000010000100001", "81000000560000100003"):
        await store.register_pile(pileid.parse_pile_id(text), T0, vendor="DLH")
    rows, total = await store.list_piles()
    assert total == 3 and [r.pile_id for r in rows] == sorted(r.pile_id for r in rows)
    ac, n_ac = await store.list_piles(kind="AC")
    assert n_ac == 2 and {r.kind for r in ac} == {"AC"}
    found, _ = await store.list_piles(q="8100")
    assert [r.pile_id for r in found] == ["81000000560000100003"]
    page, total = await store.list_piles(limit=1, offset=1)
    assert total == 3 and len(page) == 1
    await store.record_presence("44200000010000100001", T0, True, "connected", node_id="n1")
    online, n = await store.list_piles(online=True)
    assert n == 1 and online[0].pile_id == "44200000010000100001"


async def test_presence_events_update_the_pile(store: Store) -> None:
    pid = pileid.parse_pile_id("44200000010000100001")
    await store.register_pile(pid, T0)
    await store.record_presence(pid.text, T0, True, "connected", connection_id="c1", node_id="n1")
    later = T0 + timedelta(minutes=5)
    await store.record_presence(pid.text, later, False, "heartbeat_timeout", detail="no frame")
    rec = await store.get_pile(pid.text)
    assert rec is not None
    assert rec.online is False and rec.online_since is None and rec.first_seen == T0
    events = await store.presence_events(pid.text)
    assert [(e.online, e.reason, e.at) for e in events] == [
        (False, "heartbeat_timeout", later),
        (True, "connected", T0),
    ]
    older = await store.presence_events(pid.text, before_id=events[0].id)
    assert [e.reason for e in older] == ["connected"]
    with pytest.raises(KeyError):
        await store.record_presence("44030800010000200005", T0, True, "connected")


async def test_naive_datetimes_are_refused(store: Store) -> None:
    from sqlalchemy.exc import StatementError

    with pytest.raises(StatementError, match="naive datetime"):
        await store.register_pile(
            pileid.parse_pile_id("44200000010000100001"), datetime(2026, 1, 1)
        )


async def test_concurrent_handshake_lookups_share_queries(store: Store) -> None:
    """A storm's handshakes are answered by a few IN (...) queries, each
    answer still the database's: registered or not, password hash, model."""
    import asyncio

    from sqlalchemy import event

    known = [f"442000000100001{n:05d}" for n in range(1, 601)]
    for n, text in enumerate(known):
        await store.register_pile(pileid.parse_pile_id(text), T0, model=f"M{n}")
    await store.set_pile_password_hash(known[0], "hash-of-pile-1")
    unknown = [f"442000000100001{n:05d}" for n in range(701, 801)]
    statements: list[str] = []

    def count(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if "password_hash" in statement:
            statements.append(statement)

    sync_engine = store.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count)
    try:
        asked = [*known, *unknown, known[5]]  # one pile asked twice
        answers = await asyncio.gather(*(store.handshake_info(p) for p in asked))
    finally:
        event.remove(sync_engine, "before_cursor_execute", count)
    assert answers[0] == (True, "hash-of-pile-1", "M0")
    assert answers[1:600] == [(True, None, f"M{n}") for n in range(1, 600)]
    assert answers[600:700] == [(False, None, None)] * 100
    assert answers[700] == (True, None, "M5")
    # 701 look-ups: the first alone, the other 700 together (IN lists of 500)
    assert len(statements) <= 4, len(statements)
    # Later look-ups read the database again (nothing cached).
    await store.set_pile_password_hash(known[1], "new-hash")
    assert await store.handshake_info(known[1]) == (True, "new-hash", "M1")


async def test_registrations_at_connect_are_batched_and_idempotent(store: Store) -> None:
    import asyncio

    from sqlalchemy import event

    first = pileid.parse_pile_id("44200000010000100001")
    existing = await store.register_pile(first, T0, model="KEEP")
    piles = [pileid.parse_pile_id(f"442000000100001{n:05d}") for n in range(1, 701)]
    inserts: list[str] = []

    def count(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    sync_engine = store.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count)
    try:
        # every pile once, one of them three times, one already registered
        await asyncio.gather(
            *(store.register_at_connect(p, T0) for p in [*piles, piles[9], piles[9]])
        )
    finally:
        event.remove(sync_engine, "before_cursor_execute", count)
    _, total = await store.list_piles(limit=1000)
    assert total == 700
    got = await store.get_pile(first.text)
    assert got == existing and got is not None and got.model == "KEEP"  # untouched
    new = await store.get_pile(piles[99].text)
    assert new is not None and new.kind == "AC" and new.registered_at == T0
    assert len(inserts) <= 4, len(inserts)
