"""A batch's updates of ``piles`` rows, merged per pile and written as a few
executemany statements.

Each connect, disconnect and boot updates its pile's row (presence: online,
since, node, first seen; boot: what the charger said, the boot count).
Written one statement at a time, through SQLAlchemy and aiosqlite, each
cost 0.25-0.6 ms, and a reconnect storm of 10,000 piles queued 40,000 of
them: the writer then held the event loop's core for half a minute
(docs/benchmarks.md, "Pile rows in batches"). Here the updates of one batch
are folded per pile in enqueue order (a later value of a column wins, a
boot adds one to the count, "first seen" is set once) and written grouped
by the set of columns, one executemany per group.

Order is kept where it matters. An offline update is conditional on the
row (only if this node still holds the pile), so it is not merged: offlines
are written after the merged updates, in order, and a merged update of a
pile with an offline pending first writes everything pending. Piles of
different merged groups are different rows, so the groups' order among
themselves does not matter. Anything else that reads or writes piles (a
durable write, kind evidence) is preceded by :meth:`PileWrites.flush` in
the writer.

The merging is pure (no I/O); :meth:`PileWrites.flush` runs the statements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from .rawsql import RawStatements, executemany


@dataclass(slots=True)
class PileDelta:
    """What a batch does to one pile row, folded in order."""

    sets: dict[str, Any] = field(default_factory=dict)
    first_seen_if_null: datetime | None = None  # first_seen = COALESCE(first_seen, this)
    boot_inc: int = 0  # boot_count = boot_count + this

    def set(self, values: tuple[tuple[str, Any], ...]) -> None:
        for column, value in values:
            self.sets[column] = value
            # A plain value replaces what conditional updates before it did.
            if column == "first_seen":
                self.first_seen_if_null = None
            elif column == "boot_count":
                self.boot_inc = 0

    def first_seen(self, at: datetime) -> None:
        """first_seen = at unless already set (by the row or earlier in the batch)."""
        if "first_seen" in self.sets:
            if self.sets["first_seen"] is None:
                self.sets["first_seen"] = at
        elif self.first_seen_if_null is None:
            self.first_seen_if_null = at

    def count_boot(self) -> None:
        if "boot_count" in self.sets and self.sets["boot_count"] is not None:
            self.sets["boot_count"] += 1
        else:
            self.boot_inc += 1

    def shape(self) -> tuple[tuple[str, ...], bool, bool]:
        """The statement this delta needs: its plain columns (sorted, so that
        piles with the same columns share it) and the two conditional ones."""
        return tuple(sorted(self.sets)), self.first_seen_if_null is not None, self.boot_inc > 0

    def params(self, pile_id: str) -> dict[str, Any]:
        out = {f"v_{k}": v for k, v in self.sets.items()}
        out["p_pile_id"] = pile_id
        if self.first_seen_if_null is not None:
            out["v_first_seen_if_null"] = self.first_seen_if_null
        if self.boot_inc:
            out["v_boot_inc"] = self.boot_inc
        return out


@dataclass(slots=True)
class PileWrites:
    """The pending pile updates of one batch."""

    deltas: dict[str, PileDelta] = field(default_factory=dict)
    offline: list[dict[str, Any]] = field(default_factory=list)
    _offline_piles: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.deltas or self.offline)

    def needs_flush_before_merge(self, pile_id: str) -> bool:
        """A merged update of ``pile_id`` must wait for its pending offline."""
        return pile_id in self._offline_piles

    def delta(self, pile_id: str) -> PileDelta:
        found = self.deltas.get(pile_id)
        if found is None:
            found = self.deltas[pile_id] = PileDelta()
        return found

    def online(self, pile_id: str, at: datetime, node_id: str | None, protocol: str | None) -> None:
        d = self.delta(pile_id)
        d.first_seen(at)
        values: tuple[tuple[str, Any], ...] = (
            ("online", True),
            ("online_since", at),
            ("node_id", node_id),
            ("last_seen", at),
        )
        if protocol:
            values += (("protocol", protocol),)
        d.set(values)

    def go_offline(self, pile_id: str, node_id: str | None) -> None:
        """Offline only if this node still holds the pile (after a takeover
        by another node, the old node's late offline must not hide the new
        connection)."""
        self.offline.append({"p_pile_id": pile_id, "p_node_id": node_id})
        self._offline_piles.add(pile_id)

    def groups(self) -> dict[tuple[tuple[str, ...], bool, bool], list[dict[str, Any]]]:
        out: dict[tuple[tuple[str, ...], bool, bool], list[dict[str, Any]]] = {}
        for pile_id, d in self.deltas.items():
            out.setdefault(d.shape(), []).append(d.params(pile_id))
        return out

    async def flush(self, s: AsyncSession, raw: RawStatements) -> None:
        for (columns, first_seen, boot_inc), rows in self.groups().items():
            await executemany(s, raw.pile_update(columns, first_seen, boot_inc), rows)
        # After the merged updates: every offline pending here came after
        # the merged updates of its pile (a merge after an offline flushes
        # first, needs_flush_before_merge).
        await executemany(s, raw.pile_offline, self.offline)
        self.deltas.clear()
        self.offline.clear()
        self._offline_piles.clear()
