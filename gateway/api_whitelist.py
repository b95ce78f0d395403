"""Ops API for tokens, named whitelists and each pile's local list."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from pileid import Kind, PileIdError, parse_pile_id
from sessions.charging import TokenStatus, TokenType
from sessions.tokens import check_token, normalize_id_tag

from .storage.models import Pile, Token
from .storage.whitelist_repo import ListExists

if TYPE_CHECKING:
    from .api import ApiContext
    from .whitelist_service import WhitelistService


class TokenBody(BaseModel):
    type: TokenType = Field(description="card, vin or password")
    status: TokenStatus = TokenStatus.ACCEPTED
    expiry: datetime | None = Field(None, description="RFC 3339 with offset")
    parent_id_tag: str | None = Field(None, max_length=20)
    pile_ids: list[str] = Field(default_factory=list, description="bind to these piles only")
    operators: list[str] = Field(
        default_factory=list, description="bind to piles of these 4-digit operator codes"
    )


class TokenCreate(TokenBody):
    id_tag: str = Field(min_length=1, max_length=40)


class ListCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = Field(None, max_length=255)


class ListTokens(BaseModel):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class AssignmentBody(BaseModel):
    pile_ids: list[str] = Field(default_factory=list)
    operators: list[str] = Field(default_factory=list)
    region_prefixes: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list, description='"AC" and/or "DC"')


CSV_COLUMNS = [
    "id_tag",
    "type",
    "status",
    "expiry",
    "parent_id_tag",
    "pile_ids",
    "operators",
    "lists",
]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


def build_router(ctx: ApiContext, dependencies: list[Any], service: WhitelistService) -> APIRouter:
    from .api import ApiError, parse_pile_or_400

    r = APIRouter(dependencies=dependencies)
    store = ctx.store
    wl = service.store

    async def unknown_piles(pile_ids: list[str]) -> list[str]:
        bad: list[str] = []
        for p in pile_ids:
            try:
                parse_pile_id(p)
            except PileIdError as exc:
                raise ApiError(400, "invalid_pile_id", f"invalid pile ID {p!r}: {exc}") from exc
        if not pile_ids:
            return bad
        async with store.sessions() as s:
            known = set(await s.scalars(select(Pile.pile_id).where(Pile.pile_id.in_(pile_ids))))
        return sorted(set(pile_ids) - known)

    def checked_binding(body: TokenBody) -> None:
        for code in body.operators:
            if not (len(code) == 4 and code.isdigit()):
                raise ApiError(400, "invalid_binding", f"operator code {code!r} is not 4 digits")

    async def validate_token(id_tag: str, body: TokenBody) -> tuple[str, list[dict[str, str]]]:
        problems = check_token(id_tag, body.type)
        errors = [p.to_dict() for p in problems if p.is_error]
        if errors:
            raise ApiError(
                400,
                "invalid_token",
                f"invalid {body.type.value} token {id_tag!r}: "
                + "; ".join(e["message"] for e in errors),
                problems=errors,
            )
        if body.expiry is not None and body.expiry.tzinfo is None:
            raise ApiError(400, "invalid_token", "expiry needs a time zone offset")
        checked_binding(body)
        missing = await unknown_piles(body.pile_ids)
        if missing:
            raise ApiError(404, "unknown_pile", f"unknown pile(s) in binding: {', '.join(missing)}")
        warnings = [p.to_dict() for p in problems if not p.is_error]
        return normalize_id_tag(id_tag, body.type), warnings

    async def same_key(id_tag: str) -> str | None:
        async with store.sessions() as s:
            found: str | None = await s.scalar(
                select(Token.id_tag).where(func.upper(Token.id_tag) == id_tag.upper())
            )
            return found

    async def save(id_tag: str, body: TokenBody) -> tuple[dict[str, Any], bool]:
        rec, created = await store.put_token(
            id_tag,
            body.type.value,
            body.status.value,
            ctx.clock(),
            expiry=body.expiry,
            parent_id_tag=body.parent_id_tag,
        )
        await wl.set_binding(id_tag, body.pile_ids, body.operators)
        service.poke()
        return _jsonable(asdict(rec)), created

    # --- tokens -------------------------------------------------------------------
    @r.post("/api/tokens", tags=["tokens"], status_code=201)
    async def create_token(body: TokenCreate) -> JSONResponse:
        """Create a token; 409 when it (or the same token in other letter
        case) exists already."""
        id_tag, warnings = await validate_token(body.id_tag, body)
        existing = await same_key(id_tag)
        if existing is not None:
            raise ApiError(409, "duplicate_token", f"token {existing!r} already exists")
        rec, _ = await save(id_tag, body)
        return JSONResponse({**rec, "warnings": warnings}, status_code=201)

    @r.put("/api/tokens/{id_tag}", tags=["tokens"])
    async def put_token(id_tag: str, body: TokenBody) -> JSONResponse:
        """Create or replace a token (type, status, expiry, parent, binding)."""
        id_tag, warnings = await validate_token(id_tag, body)
        existing = await same_key(id_tag)
        if existing is not None and existing != id_tag:
            raise ApiError(409, "duplicate_token", f"token {existing!r} already exists")
        rec, created = await save(id_tag, body)
        return JSONResponse({**rec, "warnings": warnings}, status_code=201 if created else 200)

    @r.post("/api/tokens/{id_tag}/block", tags=["tokens"])
    async def block_token(id_tag: str) -> dict[str, Any]:
        rec = await store.get_token(id_tag)
        if rec is None:
            raise ApiError(404, "unknown_token", f"no token {id_tag!r}")
        new, _ = await store.put_token(
            id_tag,
            rec.type,
            "blocked",
            ctx.clock(),
            expiry=rec.expiry,
            parent_id_tag=rec.parent_id_tag,
        )
        service.poke()
        return _jsonable(asdict(new))

    @r.get("/api/tokens", tags=["tokens"])
    async def list_tokens(
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        return [_jsonable(asdict(t)) for t in await store.list_tokens(limit=limit, offset=offset)]

    @r.get("/api/tokens.csv", tags=["tokens"])
    async def export_tokens() -> Response:
        """Every token as CSV (columns: id_tag, type, status, expiry,
        parent_id_tag, pile_ids, operators, lists; lists separated by ';')."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        memberships: dict[str, list[str]] = {}
        for name in await wl.list_names():
            for tag in await wl.list_tokens(name) or []:
                memberships.setdefault(tag, []).append(name)
        offset = 0
        while True:
            batch = await store.list_tokens(limit=1000, offset=offset)
            if not batch:
                break
            for t in batch:
                binding = await wl.binding_of(t.id_tag)
                w.writerow(
                    [
                        t.id_tag,
                        t.type,
                        t.status,
                        t.expiry.isoformat() if t.expiry else "",
                        t.parent_id_tag or "",
                        ";".join(binding["pile_ids"]),
                        ";".join(binding["operators"]),
                        ";".join(memberships.get(t.id_tag, [])),
                    ]
                )
            offset += len(batch)
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8")

    @r.post("/api/tokens/import", tags=["tokens"])
    async def import_tokens(request: Request) -> dict[str, Any]:
        """Import tokens from CSV (the export's columns; ``type`` and
        ``id_tag`` required). All or nothing: any bad row refuses the file
        with every problem listed by line."""
        text = (await request.body()).decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"id_tag", "type"} <= set(reader.fieldnames):
            raise ApiError(400, "invalid_csv", "CSV needs a header with at least id_tag,type")
        rows: list[tuple[str, TokenBody, list[str]]] = []
        errors: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        lists = set(await wl.list_names())
        for line, row in enumerate(reader, start=2):
            try:
                body = TokenBody(
                    type=TokenType((row.get("type") or "").strip().lower()),
                    status=TokenStatus((row.get("status") or "accepted").strip().lower()),
                    expiry=datetime.fromisoformat(row["expiry"].replace("Z", "+00:00"))
                    if row.get("expiry")
                    else None,
                    parent_id_tag=(row.get("parent_id_tag") or None),
                    pile_ids=[p for p in (row.get("pile_ids") or "").split(";") if p],
                    operators=[o for o in (row.get("operators") or "").split(";") if o],
                )
                id_tag, _ = await validate_token((row.get("id_tag") or "").strip(), body)
            except ApiError as exc:
                errors.append({"line": line, "message": str(exc.detail)})
                continue
            except ValueError as exc:
                errors.append({"line": line, "message": str(exc)})
                continue
            key = id_tag.upper()
            if key in seen:
                errors.append(
                    {"line": line, "message": f"duplicate token {id_tag!r} (line {seen[key]})"}
                )
                continue
            seen[key] = line
            wanted = [x for x in (row.get("lists") or "").split(";") if x]
            unknown = [x for x in wanted if x not in lists]
            if unknown:
                errors.append({"line": line, "message": f"unknown list(s): {', '.join(unknown)}"})
                continue
            rows.append((id_tag, body, wanted))
        if errors:
            raise ApiError(
                400, "invalid_csv", f"{len(errors)} bad row(s); nothing imported", rows=errors
            )
        # One transaction for the tokens, one for their bindings: a file of
        # 10,000 cards must not cost 10,000 commits.
        created, updated = await store.put_tokens_bulk(
            [(tag, b.type.value, b.status.value, b.expiry, b.parent_id_tag) for tag, b, _ in rows],
            ctx.clock(),
        )
        await wl.set_bindings_bulk(
            {tag: (b.pile_ids, b.operators) for tag, b, _ in rows if b.pile_ids or b.operators}
        )
        by_list: dict[str, list[str]] = {}
        for id_tag, _, wanted in rows:
            for name in wanted:
                by_list.setdefault(name, []).append(id_tag)
        for name, tags in by_list.items():
            await wl.set_list_tokens(name, tags, [], ctx.clock())
        service.poke()
        return {"created": created, "updated": updated}

    # --- lists --------------------------------------------------------------------
    def list_json(info: Any) -> dict[str, Any]:
        return _jsonable(asdict(info))

    @r.post("/api/whitelists", tags=["whitelists"], status_code=201)
    async def create_list(body: ListCreate) -> dict[str, Any]:
        try:
            info = await wl.create_list(body.name, body.description, ctx.clock())
        except ListExists as exc:
            raise ApiError(409, "duplicate_list", str(exc)) from exc
        return list_json(info)

    @r.get("/api/whitelists", tags=["whitelists"])
    async def lists() -> list[dict[str, Any]]:
        out = []
        for name in await wl.list_names():
            info = await wl.get_list(name)
            if info is not None:
                out.append(list_json(info))
        return out

    async def list_or_404(name: str) -> Any:
        info = await wl.get_list(name)
        if info is None:
            raise ApiError(404, "unknown_list", f"no whitelist named {name!r}")
        return info

    @r.get("/api/whitelists/{name}", tags=["whitelists"])
    async def get_list(name: str) -> dict[str, Any]:
        info = await list_or_404(name)
        return {**list_json(info), "tokens": await wl.list_tokens(name)}

    @r.delete("/api/whitelists/{name}", tags=["whitelists"], status_code=204)
    async def delete_list(name: str) -> Response:
        if not await wl.delete_list(name):
            raise ApiError(404, "unknown_list", f"no whitelist named {name!r}")
        service.poke()
        return Response(status_code=204)

    @r.put("/api/whitelists/{name}/tokens", tags=["whitelists"])
    async def change_tokens(name: str, body: ListTokens) -> dict[str, Any]:
        """Add and remove tokens (by id tag); unknown tokens refuse the change."""
        await list_or_404(name)
        unknown, missing = await wl.set_list_tokens(name, body.add, body.remove, ctx.clock())
        if unknown:
            raise ApiError(404, "unknown_token", f"unknown token(s): {', '.join(unknown)}")
        service.poke()
        info = await list_or_404(name)
        return {**list_json(info), "not_in_list": missing}

    @r.put("/api/whitelists/{name}/assignments", tags=["whitelists"])
    async def assign(name: str, body: Annotated[list[AssignmentBody], Body()]) -> dict[str, Any]:
        """Replace the list's assignments: each one matches explicit pile IDs,
        or piles passing all its non-empty filters (operators, region code
        prefixes, kinds AC/DC)."""
        await list_or_404(name)
        clean = []
        for i, a in enumerate(body):
            missing = await unknown_piles(a.pile_ids)
            if missing:
                raise ApiError(
                    404, "unknown_pile", f"assignment {i}: unknown pile(s) " + ", ".join(missing)
                )
            try:
                kinds = [Kind[k.upper()].name for k in a.kinds]
            except KeyError as exc:
                raise ApiError(
                    400, "invalid_assignment", f"assignment {i}: kinds are AC or DC, got {a.kinds}"
                ) from exc
            d = {
                "pile_ids": a.pile_ids,
                "operators": a.operators,
                "region_prefixes": a.region_prefixes,
                "kinds": kinds,
            }
            try:
                from .storage.whitelist_repo import assignment_of

                assignment_of(d)
            except ValueError as exc:
                raise ApiError(400, "invalid_assignment", f"assignment {i}: {exc}") from exc
            clean.append(d)
        await wl.set_assignments(name, clean, ctx.clock())
        service.poke()
        return list_json(await list_or_404(name))

    # --- piles ----------------------------------------------------------------------
    @r.get("/api/piles/{pile_id}/whitelist", tags=["whitelists"])
    async def pile_whitelist(pile_id: str) -> dict[str, Any]:
        """The list the pile should hold, what it confirmed holding, the
        difference, and the sync status (in_sync, pending, failed + reason)."""
        parse_pile_or_400(ctx, pile_id)
        if await store.get_pile(pile_id) is None:
            raise ApiError(404, "unknown_pile", f"pile {pile_id} is not registered")
        return await service.pile_view(pile_id)

    @r.post("/api/piles/{pile_id}/whitelist/resync", tags=["whitelists"], status_code=202)
    async def resync(pile_id: str) -> dict[str, Any]:
        """Forget backoff and failures and send the full list again."""
        parse_pile_or_400(ctx, pile_id)
        if await service.resync(pile_id):
            return {"pile_id": pile_id, "resync": "started"}
        holder = await store.pile_node(pile_id)
        if holder is not None and holder != ctx.settings.node_id:
            raise ApiError(
                409, "other_node", f"pile {pile_id} is connected to node {holder}; resync there"
            )
        raise ApiError(
            409,
            "pile_offline",
            f"pile {pile_id} is offline; its list is checked when it reconnects",
        )

    @r.get("/api/whitelist/status", tags=["whitelists"])
    async def statuses(
        status: Annotated[str | None, Query(pattern="^(in_sync|pending|failed)$")] = None,
    ) -> list[dict[str, Any]]:
        rows = await wl.all_pile_states()
        return [
            {
                "pile_id": x.pile_id,
                "status": x.status,
                "reason": x.reason,
                "desired_version": x.desired_version,
                "held_version": x.held_version,
                "desired_count": x.desired_count,
                "updated_at": x.updated_at.isoformat(),
            }
            for x in rows
            if status is None or x.status == status
        ]

    return r
