"""Storage of tokens' bindings, named whitelists and per-pile list state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pileid import Kind
from sessions.charging import TokenStatus, TokenType
from sessions.tokens import TokenBinding as Binding
from sessions.whitelist import Assignment, Entry, Whitelist

from .models import (
    PileWhitelistState,
    Token,
    TokenBinding,
    WhitelistAssignment,
    WhitelistRow,
    WhitelistToken,
)
from .writer import insert_ignore


class ListExists(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ListInfo:
    id: int
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    token_count: int
    assignments: tuple[dict[str, list[str]], ...]


@dataclass(frozen=True, slots=True)
class PileListState:
    pile_id: str
    desired_version: int
    desired_hash: str
    desired_count: int
    held_version: int | None
    held_entries: dict[str, dict[str, Any]] | None
    status: str
    reason: str | None
    capacity: int | None
    max_chunk: int | None
    updated_at: datetime


def entry_to_json(e: Entry) -> dict[str, Any]:
    return {
        "type": e.type.value,
        "status": e.status.value,
        "expiry": e.expiry.isoformat() if e.expiry else None,
        "parent_id_tag": e.parent_id_tag,
    }


def entry_from_json(id_tag: str, d: dict[str, Any]) -> Entry:
    return Entry(
        id_tag=id_tag,
        type=TokenType(d["type"]),
        status=TokenStatus(d["status"]),
        expiry=datetime.fromisoformat(d["expiry"]) if d.get("expiry") else None,
        parent_id_tag=d.get("parent_id_tag"),
    )


def _assignment_dict(a: WhitelistAssignment) -> dict[str, list[str]]:
    return {
        "pile_ids": json.loads(a.pile_ids),
        "operators": json.loads(a.operators),
        "region_prefixes": json.loads(a.region_prefixes),
        "kinds": json.loads(a.kinds),
    }


def assignment_of(d: dict[str, list[str]]) -> Assignment:
    return Assignment(
        pile_ids=frozenset(d.get("pile_ids", [])),
        operators=frozenset(d.get("operators", [])),
        region_prefixes=frozenset(d.get("region_prefixes", [])),
        kinds=frozenset(Kind(k) if k in ("01", "02") else Kind[k] for k in d.get("kinds", [])),
    )


class WhitelistStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # --- bindings ------------------------------------------------------------
    async def set_binding(self, id_tag: str, pile_ids: list[str], operators: list[str]) -> None:
        async with self._sessions() as s, s.begin():
            await s.execute(delete(TokenBinding).where(TokenBinding.id_tag == id_tag))
            for p in pile_ids:
                s.add(TokenBinding(id_tag=id_tag, pile_id=p, operator_code=None))
            for o in operators:
                s.add(TokenBinding(id_tag=id_tag, pile_id=None, operator_code=o))

    async def set_bindings_bulk(self, bindings: dict[str, tuple[list[str], list[str]]]) -> None:
        """Replace the bindings of many tokens in one transaction."""
        if not bindings:
            return
        async with self._sessions() as s, s.begin():
            await s.execute(delete(TokenBinding).where(TokenBinding.id_tag.in_(list(bindings))))
            for id_tag, (piles, ops) in bindings.items():
                for p in piles:
                    s.add(TokenBinding(id_tag=id_tag, pile_id=p, operator_code=None))
                for o in ops:
                    s.add(TokenBinding(id_tag=id_tag, pile_id=None, operator_code=o))

    async def bindings(self) -> dict[str, Binding]:
        async with self._sessions() as s:
            rows = await s.scalars(select(TokenBinding))
            piles: dict[str, list[str]] = {}
            ops: dict[str, list[str]] = {}
            for r in rows:
                if r.pile_id:
                    piles.setdefault(r.id_tag, []).append(r.pile_id)
                if r.operator_code:
                    ops.setdefault(r.id_tag, []).append(r.operator_code)
        return {
            tag: Binding.of(piles.get(tag, ()), ops.get(tag, ())) for tag in set(piles) | set(ops)
        }

    async def binding_of(self, id_tag: str) -> dict[str, list[str]]:
        async with self._sessions() as s:
            rows = list(await s.scalars(select(TokenBinding).where(TokenBinding.id_tag == id_tag)))
        return {
            "pile_ids": sorted(r.pile_id for r in rows if r.pile_id),
            "operators": sorted(r.operator_code for r in rows if r.operator_code),
        }

    # --- lists ---------------------------------------------------------------
    async def create_list(self, name: str, description: str | None, now: datetime) -> ListInfo:
        async with self._sessions() as s:
            row = WhitelistRow(name=name, description=description, created_at=now, updated_at=now)
            s.add(row)
            try:
                await s.commit()
            except IntegrityError as exc:
                raise ListExists(f"a whitelist named {name!r} already exists") from exc
        info = await self.get_list(name)
        assert info is not None
        return info

    async def delete_list(self, name: str) -> bool:
        async with self._sessions() as s, s.begin():
            row = await s.scalar(select(WhitelistRow).where(WhitelistRow.name == name))
            if row is None:
                return False
            await s.execute(delete(WhitelistToken).where(WhitelistToken.whitelist_id == row.id))
            await s.execute(
                delete(WhitelistAssignment).where(WhitelistAssignment.whitelist_id == row.id)
            )
            await s.delete(row)
            return True

    async def _list_row(self, s: AsyncSession, name: str) -> WhitelistRow | None:
        return await s.scalar(select(WhitelistRow).where(WhitelistRow.name == name))

    async def get_list(self, name: str) -> ListInfo | None:
        async with self._sessions() as s:
            row = await self._list_row(s, name)
            if row is None:
                return None
            count = len(
                list(
                    await s.scalars(
                        select(WhitelistToken.id_tag).where(WhitelistToken.whitelist_id == row.id)
                    )
                )
            )
            assigns = await s.scalars(
                select(WhitelistAssignment)
                .where(WhitelistAssignment.whitelist_id == row.id)
                .order_by(WhitelistAssignment.id)
            )
            return ListInfo(
                id=row.id,
                name=row.name,
                description=row.description,
                created_at=row.created_at,
                updated_at=row.updated_at,
                token_count=count,
                assignments=tuple(_assignment_dict(a) for a in assigns),
            )

    async def list_names(self) -> list[str]:
        async with self._sessions() as s:
            return list(await s.scalars(select(WhitelistRow.name).order_by(WhitelistRow.name)))

    async def list_tokens(self, name: str) -> list[str] | None:
        async with self._sessions() as s:
            row = await self._list_row(s, name)
            if row is None:
                return None
            return list(
                await s.scalars(
                    select(WhitelistToken.id_tag)
                    .where(WhitelistToken.whitelist_id == row.id)
                    .order_by(WhitelistToken.id_tag)
                )
            )

    async def set_list_tokens(
        self, name: str, add: list[str], remove: list[str], now: datetime
    ) -> tuple[list[str], list[str]]:
        """Add and remove tokens of a list; returns (unknown tokens, unknown
        removals) and changes nothing when the first is not empty."""
        async with self._sessions() as s, s.begin():
            row = await self._list_row(s, name)
            if row is None:
                raise KeyError(name)
            known = (
                set(await s.scalars(select(Token.id_tag).where(Token.id_tag.in_(add))))
                if add
                else set()
            )
            unknown = sorted(set(add) - known)
            if unknown:
                return unknown, []
            present = set(
                await s.scalars(
                    select(WhitelistToken.id_tag).where(WhitelistToken.whitelist_id == row.id)
                )
            )
            for tag in sorted(set(add) - present):
                s.add(WhitelistToken(whitelist_id=row.id, id_tag=tag))
            missing = sorted(set(remove) - present)
            if remove:
                await s.execute(
                    delete(WhitelistToken).where(
                        WhitelistToken.whitelist_id == row.id, WhitelistToken.id_tag.in_(remove)
                    )
                )
            row.updated_at = now
            return [], missing

    async def set_assignments(
        self, name: str, assignments: list[dict[str, list[str]]], now: datetime
    ) -> None:
        async with self._sessions() as s, s.begin():
            row = await self._list_row(s, name)
            if row is None:
                raise KeyError(name)
            await s.execute(
                delete(WhitelistAssignment).where(WhitelistAssignment.whitelist_id == row.id)
            )
            for a in assignments:
                s.add(
                    WhitelistAssignment(
                        whitelist_id=row.id,
                        pile_ids=json.dumps(sorted(a.get("pile_ids", []))),
                        operators=json.dumps(sorted(a.get("operators", []))),
                        region_prefixes=json.dumps(sorted(a.get("region_prefixes", []))),
                        kinds=json.dumps(sorted(a.get("kinds", []))),
                    )
                )
            row.updated_at = now

    async def whitelists(self) -> list[Whitelist]:
        """Every list with its entries (from the token store) and assignments."""
        async with self._sessions() as s:
            lists = list(await s.scalars(select(WhitelistRow).order_by(WhitelistRow.name)))
            members = (
                await s.execute(
                    select(WhitelistToken.whitelist_id, Token).join(
                        Token, Token.id_tag == WhitelistToken.id_tag
                    )
                )
            ).all()
            assigns = list(await s.scalars(select(WhitelistAssignment)))
        by_list: dict[int, list[Entry]] = {}
        for list_id, tok in members:
            by_list.setdefault(list_id, []).append(
                Entry(
                    id_tag=tok.id_tag,
                    type=TokenType(tok.type),
                    status=TokenStatus(tok.status),
                    expiry=tok.expiry,
                    parent_id_tag=tok.parent_id_tag,
                )
            )
        assign_by: dict[int, list[Assignment]] = {}
        for a in assigns:
            assign_by.setdefault(a.whitelist_id, []).append(assignment_of(_assignment_dict(a)))
        return [
            Whitelist(
                name=w.name,
                entries=tuple(by_list.get(w.id, [])),
                assignments=tuple(assign_by.get(w.id, [])),
            )
            for w in lists
        ]

    # --- per-pile state --------------------------------------------------------
    async def pile_state(self, pile_id: str) -> PileListState | None:
        async with self._sessions() as s:
            row = await s.get(PileWhitelistState, pile_id)
            return _state(row) if row is not None else None

    async def managed_pile_ids(self) -> set[str]:
        async with self._sessions() as s:
            return set(await s.scalars(select(PileWhitelistState.pile_id)))

    async def all_pile_states(self) -> list[PileListState]:
        async with self._sessions() as s:
            rows = await s.scalars(select(PileWhitelistState).order_by(PileWhitelistState.pile_id))
            return [_state(r) for r in rows]

    async def save_pile_state(self, pile_id: str, now: datetime, **values: Any) -> None:
        """Create or update the pile's row; ``held_entries`` is JSON-encoded here."""
        if "held_entries" in values and values["held_entries"] is not None:
            values["held_entries"] = json.dumps(values["held_entries"], sort_keys=True)
        async with self._sessions() as s, s.begin():
            # Insert-if-absent then update: two tasks (a connect and an API
            # read) may create the row at the same moment.
            await s.execute(
                insert_ignore(
                    s,
                    PileWhitelistState,
                    [
                        {
                            "pile_id": pile_id,
                            "desired_version": 0,
                            "desired_hash": "",
                            "desired_count": 0,
                            "status": "pending",
                            "updated_at": now,
                        }
                    ],
                )
            )
            await s.execute(
                update(PileWhitelistState)
                .where(PileWhitelistState.pile_id == pile_id)
                .values(**values, updated_at=now)
            )


def _state(row: PileWhitelistState) -> PileListState:
    return PileListState(
        pile_id=row.pile_id,
        desired_version=row.desired_version,
        desired_hash=row.desired_hash,
        desired_count=row.desired_count,
        held_version=row.held_version,
        held_entries=json.loads(row.held_entries) if row.held_entries else None,
        status=row.status,
        reason=row.reason,
        capacity=row.capacity,
        max_chunk=row.max_chunk,
        updated_at=row.updated_at,
    )
