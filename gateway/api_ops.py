"""Ops API routes over what chargers do: presence, guns, transactions,
meter values, tokens, commands. Mounted by ``gateway.api.create_app``."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from sessions.charging import TokenStatus, TokenType
from sessions.uptime import PresenceChange, uptime

from .commands import QueuedCommand
from .passwords import MAX_LENGTH, MIN_LENGTH, hash_password
from .registry import CommandError

if TYPE_CHECKING:
    from .api import ApiContext


class TokenIn(BaseModel):
    type: TokenType = Field(description="card, vin or password")
    status: TokenStatus = TokenStatus.ACCEPTED
    expiry: datetime | None = Field(None, description="RFC 3339 with offset")
    parent_id_tag: str | None = Field(None, max_length=20)


class CommandIn(BaseModel):
    payload: dict[str, Any] = Field(
        default_factory=dict, description="the OCPP request payload, camelCase as on the wire"
    )
    timeout: float | None = Field(None, gt=0, le=600, description="seconds to wait for the answer")
    queue_ttl: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="if the pile is offline, queue the command this many seconds",
    )


class PasswordIn(BaseModel):
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


def _tx_dict(rec: Any) -> dict[str, Any]:
    d = asdict(rec)
    for k, v in d.items():
        if isinstance(v, datetime):
            d[k] = v.isoformat()
    return d


def build_router(ctx: ApiContext, dependencies: list[Any]) -> APIRouter:
    from .api import ApiError, parse_pile_or_400

    r = APIRouter(dependencies=dependencies)
    store = ctx.store

    async def known(pile_id: str) -> None:
        parse_pile_or_400(ctx, pile_id)
        if await store.get_pile(pile_id) is None:
            raise ApiError(404, "unknown_pile", f"pile {pile_id} is not registered")

    # --- presence and guns -------------------------------------------------------
    @r.get("/api/piles/{pile_id}/uptime", tags=["piles"])
    async def pile_uptime(
        pile_id: str, hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24.0
    ) -> dict[str, Any]:
        """Connection history (online intervals) and uptime over the last ``hours``."""
        await known(pile_id)
        end = ctx.clock()
        start = end - timedelta(hours=hours)
        before, events = await store.presence_between(pile_id, start, end)
        result = uptime(
            before.online if before is not None else False,
            [PresenceChange(e.at, e.online, e.reason) for e in events],
            start,
            end,
        )
        return {
            "pile_id": pile_id,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "online_seconds": round(result.online_seconds, 3),
            "uptime_ratio": round(result.ratio, 6),
            "intervals": [
                {
                    "start": i.start.isoformat(),
                    "end": i.end.isoformat() if i.end else None,
                    "start_reason": i.start_reason,
                    "end_reason": i.end_reason,
                }
                for i in result.intervals
            ],
        }

    @r.get("/api/piles/{pile_id}/guns/{connector_id}/history", tags=["piles"])
    async def gun_history(
        pile_id: str,
        connector_id: int,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        await known(pile_id)
        return [_tx_dict(g) for g in await store.gun_history(pile_id, connector_id, limit)]

    @r.get("/api/piles/{pile_id}/messages", tags=["piles"])
    async def pile_messages(
        pile_id: str,
        kind: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """DataTransfer, FirmwareStatusNotification and DiagnosticsStatusNotification
        messages as the pile sent them."""
        await known(pile_id)
        return [_tx_dict(m) for m in await store.charger_messages(pile_id, kind, limit)]

    @r.put("/api/piles/{pile_id}/password", tags=["piles"], status_code=204)
    async def set_password(pile_id: str, body: PasswordIn) -> Response:
        """Set the pile's HTTP Basic password (OCPP security profile 1)."""
        await known(pile_id)
        await store.set_pile_password_hash(pile_id, hash_password(body.password))
        return Response(status_code=204)

    @r.delete("/api/piles/{pile_id}/kind-mismatch", tags=["piles"], status_code=204)
    async def clear_kind_mismatch(pile_id: str) -> Response:
        """Clear the AC/DC mismatch flag and its evidence after investigation."""
        await known(pile_id)
        await store.clear_kind_mismatch(pile_id)
        return Response(status_code=204)

    # --- transactions ------------------------------------------------------------
    @r.get("/api/transactions", tags=["transactions"])
    async def list_transactions(
        pile: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        if pile is not None:
            parse_pile_or_400(ctx, pile)
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        rows = await store.list_transactions(pile_id=pile, since=since, limit=limit, offset=offset)
        return [_tx_dict(t) for t in rows]

    async def tx_or_404(transaction_id: int) -> Any:
        tx = await store.get_transaction(transaction_id)
        if tx is None:
            raise ApiError(404, "unknown_transaction", f"no transaction {transaction_id}")
        return tx

    @r.get("/api/transactions/{transaction_id}", tags=["transactions"])
    async def get_transaction(transaction_id: int) -> dict[str, Any]:
        return _tx_dict(await tx_or_404(transaction_id))

    @r.get("/api/transactions/{transaction_id}/meter-values", tags=["transactions"])
    async def meter_values(
        transaction_id: int, format: Literal["json", "csv"] = "json"
    ) -> Response:
        """Every sampled value of the transaction, oldest first: the energy
        curve that settles "I got no energy" disputes."""
        tx = await tx_or_404(transaction_id)
        rows = await store.meter_values(transaction_id)
        columns = [
            "at",
            "connector_id",
            "measurand",
            "phase",
            "unit",
            "context",
            "location",
            "format",
            "value",
        ]
        if format == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(columns)
            for m in rows:
                w.writerow([m.at.isoformat()] + [getattr(m, c) for c in columns[1:]])
            return Response(
                buf.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="transaction-{tx.id}.csv"'},
            )
        return JSONResponse(
            {
                "transaction": _tx_dict(tx),
                "samples": [
                    {
                        **{c: getattr(m, c) for c in columns[1:]},
                        "at": m.at.isoformat(),
                        "value_num": m.value_num,
                    }
                    for m in rows
                ],
            }
        )

    @r.get("/api/orphan-stops", tags=["transactions"])
    async def orphan_stops(pile: str | None = None) -> list[dict[str, Any]]:
        """StopTransactions for transaction ids the gateway did not know."""
        return [_tx_dict(o) for o in await store.orphan_stops(pile)]

    # --- tokens ------------------------------------------------------------------
    @r.get("/api/tokens/{id_tag}", tags=["tokens"])
    async def get_token(id_tag: str) -> dict[str, Any]:
        rec = await store.get_token(id_tag)
        if rec is None:
            raise ApiError(404, "unknown_token", f"no token {id_tag!r}")
        return _tx_dict(rec)

    @r.delete("/api/tokens/{id_tag}", tags=["tokens"], status_code=204)
    async def delete_token(id_tag: str) -> Response:
        if not await store.delete_token(id_tag):
            raise ApiError(404, "unknown_token", f"no token {id_tag!r}")
        return Response(status_code=204)

    # --- commands ----------------------------------------------------------------
    @r.post("/api/piles/{pile_id}/commands/{command}", tags=["commands"])
    async def command(
        pile_id: str, command: str, body: Annotated[CommandIn | None, Body()] = None
    ) -> JSONResponse:
        """Send an OCPP command and return the charger's answer.

        409 if the pile is offline (unless ``queue_ttl`` is given: then 202
        with the queued command), 504 if it does not answer in time, 502 with
        the charger's CALLERROR, 400 for a payload the schema refuses.
        """
        await known(pile_id)
        body = body or CommandIn()
        try:
            result = await ctx.commands.execute(
                pile_id, command, body.payload, timeout=body.timeout, queue_ttl=body.queue_ttl
            )
        except CommandError as exc:
            raise ApiError(exc.status, exc.code, str(exc), **exc.extra) from exc
        if isinstance(result, QueuedCommand):
            return JSONResponse(result.to_dict(), status_code=202)
        return JSONResponse({"action": result.action, "response": result.response})

    @r.get("/api/commands/{command_id}", tags=["commands"])
    async def get_command(command_id: int) -> dict[str, Any]:
        """A command queued for an offline pile, with its outcome once sent."""
        cmd = ctx.commands.get(command_id)
        if cmd is None:
            raise ApiError(404, "unknown_command", f"no queued command {command_id}")
        return cmd.to_dict()

    return r


def presence_view(ctx: ApiContext, pile_id: str) -> dict[str, Any]:
    conn = ctx.services.registry.get(pile_id)
    if conn is None:
        return {"connected_here": False}
    return {
        "connected_here": True,
        "conn_id": conn.conn_id,
        "protocol": conn.protocol,
        "connected_at": conn.connected_at.isoformat(),
    }


def evidence(text: str | None) -> Any:
    return json.loads(text) if text else None
