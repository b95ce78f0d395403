"""Pile row updates merged per batch (gateway/storage/pilewrites.py).

The batch path must leave every pile row exactly as the statements of the
ops, run one by one in enqueue order, would: checked against such a
sequential reference on SQLite and PostgreSQL over random op sequences
(connects, disconnects from this or another node, boots, plain updates,
explicit first_seen / boot_count values).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

import pileid
from gateway.storage import db
from gateway.storage.models import Pile, PresenceEvent
from gateway.storage.pilewrites import PileDelta, PileWrites
from gateway.storage.repo import Store
from gateway.storage.writer import PileUpdateOp, PresenceOp, WriteBehind, WriteOp

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
PILES = [f"4403080001000020000{i}" for i in range(1, 5)]
COLUMNS = (
    "online",
    "online_since",
    "node_id",
    "last_seen",
    "first_seen",
    "protocol",
    "vendor",
    "model",
    "last_boot",
    "boot_count",
)


# --- the merge, without a database ---------------------------------------------


def test_a_later_value_wins_and_boots_add_up() -> None:
    d = PileDelta()
    d.set((("vendor", "A"), ("model", "M1")))
    d.count_boot()
    d.set((("model", "M2"),))
    d.count_boot()
    assert d.sets == {"vendor": "A", "model": "M2"}
    assert d.boot_inc == 2
    assert d.shape() == (("model", "vendor"), False, True)
    assert d.params("P") == {"v_vendor": "A", "v_model": "M2", "p_pile_id": "P", "v_boot_inc": 2}


def test_first_seen_is_set_once_and_a_plain_value_replaces_conditionals() -> None:
    d = PileDelta()
    d.first_seen(T0)
    d.first_seen(T0 + timedelta(seconds=1))
    assert d.first_seen_if_null == T0  # the first connect of the batch
    d.set((("first_seen", None),))
    assert d.first_seen_if_null is None
    d.first_seen(T0 + timedelta(seconds=2))  # the row's value is now known: NULL
    assert d.sets["first_seen"] == T0 + timedelta(seconds=2)
    d.count_boot()
    d.set((("boot_count", 7),))
    d.count_boot()
    assert d.sets["boot_count"] == 8
    assert d.boot_inc == 0


def test_a_merge_after_an_offline_of_the_same_pile_needs_a_flush() -> None:
    w = PileWrites()
    w.online(PILES[0], T0, "n1", "ocpp1.6")
    w.go_offline(PILES[1], "n1")
    assert w.needs_flush_before_merge(PILES[1])
    assert not w.needs_flush_before_merge(PILES[0])
    assert list(w.groups().values()) == [
        [
            {
                "v_online": True,
                "v_online_since": T0,
                "v_node_id": "n1",
                "v_last_seen": T0,
                "v_protocol": "ocpp1.6",
                "p_pile_id": PILES[0],
                "v_first_seen_if_null": T0,
            }
        ]
    ]


def test_an_sql_expression_is_refused_where_the_op_is_built() -> None:
    with pytest.raises(TypeError, match="'boot_count' is an SQL expression"):
        PileUpdateOp(PILES[0], (("boot_count", Pile.boot_count + 1),))
    with pytest.raises(ValueError, match="not a settable column of piles: 'colour'"):
        PileUpdateOp(PILES[0], (("vendor", "DLH"), ("colour", "red")))


def test_an_unknown_column_is_refused_by_name() -> None:
    from sqlalchemy.dialects import sqlite

    from gateway.storage.rawsql import RawStatements

    with pytest.raises(ValueError, match="not a settable column of piles: colour"):
        RawStatements(sqlite.dialect()).pile_update(("colour",), False, False)


# --- against the statements run one by one ---------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    s = Store(engine)
    for p in PILES:
        await s.register_pile(pileid.parse_pile_id(p), T0)
    try:
        yield s
    finally:
        await s.close()


def random_ops(rng: random.Random, n: int) -> list[WriteOp]:
    ops: list[WriteOp] = []
    at = T0
    for _ in range(n):
        at += timedelta(milliseconds=rng.randint(1, 5000))
        pile = rng.choice(PILES)
        node = rng.choice(["n1", "n2"])
        kind = rng.random()
        if kind < 0.3:
            protocol = rng.choice([None, "cbp1", "ocpp1.6"])
            ops.append(PresenceOp(pile, at, True, "connected", None, "c", node, protocol))
        elif kind < 0.55:
            ops.append(PresenceOp(pile, at, False, "closed_clean", "bye", "c", node))
        elif kind < 0.8:
            values: tuple[tuple[str, Any], ...] = (
                ("vendor", rng.choice(["DLH", "ABB", None])),
                ("model", rng.choice(["M1", "M2"])),
                ("last_boot", at),
                ("protocol", rng.choice(["ocpp1.6", "cbp1"])),
            )
            ops.append(PileUpdateOp(pile, values, count_boot=rng.random() < 0.9))
        elif kind < 0.9:
            ops.append(PileUpdateOp(pile, (("model", f"X{rng.randint(0, 9)}"),)))
        elif kind < 0.95:
            ops.append(PileUpdateOp(pile, (("boot_count", rng.randint(0, 3)),)))
        else:
            ops.append(PileUpdateOp(pile, (("first_seen", rng.choice([None, at])),)))
    return ops


async def run_one_by_one(store: Store, ops: list[WriteOp]) -> None:
    """The statements the writer ran per op before the batch path."""
    async with store.sessions() as s, s.begin():
        for op in ops:
            where = Pile.pile_id == op.pile_id
            if isinstance(op, PresenceOp) and op.online:
                await s.execute(
                    update(Pile).where(where, Pile.first_seen.is_(None)).values(first_seen=op.at)
                )
                values: dict[str, Any] = dict(
                    online=True, online_since=op.at, node_id=op.node_id, last_seen=op.at
                )
                if op.protocol:
                    values["protocol"] = op.protocol
                await s.execute(update(Pile).where(where).values(values))
            elif isinstance(op, PresenceOp):
                await s.execute(
                    update(Pile)
                    .where(where, (Pile.node_id == op.node_id) | Pile.node_id.is_(None))
                    .values(online=False, online_since=None, node_id=None)
                )
            elif isinstance(op, PileUpdateOp):
                await s.execute(update(Pile).where(where).values(dict(op.values)))
                if op.count_boot:
                    await s.execute(
                        update(Pile).where(where).values(boot_count=Pile.boot_count + 1)
                    )


async def pile_rows(store: Store) -> dict[str, tuple[Any, ...]]:
    cols = [getattr(Pile, c) for c in COLUMNS]
    async with store.sessions() as s:
        result = await s.execute(select(Pile.pile_id, *cols).order_by(Pile.pile_id))
        return {row[0]: tuple(row[1:]) for row in result}


async def set_start(store: Store, rng: random.Random) -> None:
    """A random starting row per pile (first seen or not, held by a node or not)."""
    async with store.sessions() as s, s.begin():
        for p in PILES:
            node = rng.choice([None, "n1", "n2"])
            await s.execute(
                update(Pile)
                .where(Pile.pile_id == p)
                .values(
                    online=node is not None,
                    online_since=T0 if node else None,
                    node_id=node,
                    last_seen=T0 if node else None,
                    first_seen=rng.choice([None, T0 - timedelta(days=1)]),
                    protocol=None,
                    vendor=None,
                    model=None,
                    last_boot=None,
                    boot_count=rng.randint(0, 2),
                )
            )


async def test_batch_leaves_rows_as_one_by_one_statements(store: Store) -> None:
    rng = random.Random(20261205)
    writer = WriteBehind(store.sessions)
    presence_ops = 0
    for round_ in range(25):
        await set_start(store, rng)
        start = await pile_rows(store)
        ops = random_ops(rng, rng.randint(1, 40))
        await run_one_by_one(store, ops)
        expected = await pile_rows(store)
        # Back to the same start, then the batch path: the ops in a few
        # groups (puts), all in one batch.
        async with store.sessions() as s, s.begin():
            for p, row in start.items():
                await s.execute(
                    update(Pile)
                    .where(Pile.pile_id == p)
                    .values(dict(zip(COLUMNS, row, strict=True)))
                )
        assert await pile_rows(store) == start
        cut = rng.randint(0, len(ops))
        await writer.put(*ops[:cut])
        await writer.put(*ops[cut:])
        await writer.flush()
        assert await pile_rows(store) == expected, f"round {round_}: {ops}"
        presence_ops += sum(isinstance(op, PresenceOp) for op in ops)
    # Every presence op became its event row, in order.
    async with store.sessions() as s:
        count = await s.scalar(select(func.count()).select_from(PresenceEvent))
    assert count == presence_ops
