"""Ops HTTP API (FastAPI), served by uvicorn inside the gateway process.

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a message
naming what was wrong, for every status the API returns.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import pileid
from pileid import PileIdError

from .api_ops import build_router, evidence, presence_view
from .commands import CommandService
from .config import Settings
from .metrics import Metrics
from .services import Services
from .storage.db import ping
from .storage.repo import PileExists, PileRecord, PresenceRecord, Store

_bearer = HTTPBearer(auto_error=False)


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    metrics: Metrics
    clock: Any  # () -> aware UTC datetime
    services: Services
    commands: CommandService
    extensions: list[Any] = field(default_factory=list)


class ApiError(HTTPException):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code
        self.extra = extra


def _error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


# --- response models (pydantic at the edge) ----------------------------------
class PileOut(BaseModel):
    pile_id: str
    region_code: str
    operator_code: str
    product_code: str
    kind: str
    serial: str
    protocol: str | None
    vendor: str | None
    model: str | None
    firmware_version: str | None
    registered_at: datetime
    first_seen: datetime | None
    last_seen: datetime | None
    last_boot: datetime | None
    online: bool
    online_since: datetime | None
    node_id: str | None
    charge_point_serial: str | None
    charge_box_serial: str | None
    iccid: str | None
    imsi: str | None
    meter_type: str | None
    meter_serial: str | None
    boot_count: int
    kind_mismatch: bool
    kind_mismatch_evidence: list[dict[str, Any]] | None
    has_password: bool

    @classmethod
    def of(cls, rec: PileRecord) -> PileOut:
        d = asdict(rec)
        d["kind_mismatch_evidence"] = evidence(rec.kind_mismatch_evidence)
        return cls(**d)


class GunOut(BaseModel):
    connector_id: int
    gun_id: str
    status: str
    error_code: str | None
    info: str | None
    vendor_error_code: str | None
    status_at: datetime


class PileDetail(PileOut):
    pile_id_explained: dict[str, Any]
    guns: list[GunOut]
    presence: dict[str, Any]


class PileList(BaseModel):
    total: int
    items: list[PileOut]


class PileCreate(BaseModel):
    pile_id: str = Field(description="20-digit pile ID")
    vendor: str | None = Field(None, max_length=64)
    model: str | None = Field(None, max_length=64)


class PresenceOut(BaseModel):
    id: int
    pile_id: str
    at: datetime
    online: bool
    reason: str
    detail: str | None
    connection_id: str | None
    node_id: str | None

    @classmethod
    def of(cls, rec: PresenceRecord) -> PresenceOut:
        return cls(**asdict(rec))


def parse_pile_or_400(ctx: ApiContext, text: str) -> pileid.PileId:
    try:
        return pileid.parse_pile_id(text)
    except PileIdError as exc:
        for problem in exc.problems:
            ctx.metrics.pileid_rejections.labels(rule=problem.rule.value, source="api").inc()
        raise ApiError(
            400,
            "invalid_pile_id",
            f"invalid pile ID {text!r}: {exc}",
            problems=[
                {"rule": p.rule.value, "segment": p.segment.value, "message": p.message}
                for p in exc.problems
            ],
        ) from exc


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="pilegate ops API",
        version="0.1.0",
        description="Operations API of the pilegate charge point gateway.",
    )
    token = ctx.settings.api_token.get_secret_value() if ctx.settings.api_token else None

    async def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if token is None:  # dev mode without a token (config refuses this otherwise)
            return
        if creds is None:
            raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer ...)")
        if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "bearer token is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            body = _error_body(exc.code, str(exc.detail), **exc.extra)
        else:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
            msg = str(exc.detail)
            if exc.status_code == 404 and msg == "Not Found":
                msg = f"no such endpoint: {request.url.path}"
            body = _error_body(code, msg)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(
            _error_body("invalid_request", message, problems=problems), status_code=422
        )

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.api_requests.labels(route=path, status=str(response.status_code)).inc()
        return response

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        try:
            await ping(ctx.store.engine)
        except Exception as exc:  # any driver error means "not ready"
            ctx.metrics.db_ready.set(0)
            return JSONResponse(
                _error_body("database_unreachable", f"database not reachable: {exc}"),
                status_code=503,
            )
        ctx.metrics.db_ready.set(1)
        return JSONResponse({"status": "ready", "database": "ok"})

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    api = [Depends(require_token)]

    @app.get("/api/pileid/{text}", tags=["pile IDs"], dependencies=api)
    async def explain_pile_id(text: str) -> dict[str, Any]:
        """Decode a pile or gun ID; lists every reason it is invalid."""
        result: dict[str, Any] = pileid.explain(text).to_dict()
        return result

    @app.get("/api/piles", tags=["piles"], dependencies=api)
    async def list_piles(
        online: bool | None = None,
        kind: Literal["AC", "DC"] | None = None,
        q: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> PileList:
        rows, total = await ctx.store.list_piles(
            online=online, kind=kind, q=q, limit=limit, offset=offset
        )
        return PileList(total=total, items=[PileOut.of(r) for r in rows])

    @app.post("/api/piles", tags=["piles"], dependencies=api, status_code=201)
    async def register_pile(body: PileCreate) -> PileOut:
        pile = parse_pile_or_400(ctx, body.pile_id)
        try:
            rec = await ctx.store.register_pile(
                pile, ctx.clock(), vendor=body.vendor, model=body.model
            )
        except PileExists as exc:
            raise ApiError(409, "pile_exists", str(exc)) from exc
        return PileOut.of(rec)

    async def _known_pile(pile_id: str) -> PileRecord:
        parse_pile_or_400(ctx, pile_id)
        rec = await ctx.store.get_pile(pile_id)
        if rec is None:
            raise ApiError(404, "unknown_pile", f"pile {pile_id} is not registered")
        return rec

    @app.get("/api/piles/{pile_id}", tags=["piles"], dependencies=api)
    async def get_pile(pile_id: str) -> PileDetail:
        rec = await _known_pile(pile_id)
        guns = await ctx.store.guns(pile_id)
        return PileDetail(
            **PileOut.of(rec).model_dump(),
            pile_id_explained=pileid.explain(pile_id).to_dict(),
            guns=[GunOut(**{k: v for k, v in asdict(g).items() if k != "pile_id"}) for g in guns],
            presence=presence_view(ctx, pile_id),
        )

    @app.get("/api/piles/{pile_id}/events", tags=["piles"], dependencies=api)
    async def pile_events(
        pile_id: str,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: int | None = None,
    ) -> list[PresenceOut]:
        await _known_pile(pile_id)
        rows = await ctx.store.presence_events(pile_id, limit=limit, before_id=before_id)
        return [PresenceOut.of(r) for r in rows]

    app.include_router(build_router(ctx, api))
    for ext in ctx.extensions:
        router = ext.router(ctx, api)
        if router is not None:
            app.include_router(router)
    return app
