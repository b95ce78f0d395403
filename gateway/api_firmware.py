"""Ops API routes of firmware tasks, and the image server chargers download from.

Mounted by ``gateway.api.create_app`` through the firmware extension's
``router()``. Everything under ``/api/firmware`` needs the API token;
``/firmware-images/{id}/{filename}`` is open (chargers cannot send a bearer
token) and supports HEAD and byte ranges, so an interrupted download
resumes where it stopped.

Task views are read from the database (``firmware.report`` over the
persisted records), so any node can answer them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, time
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from firmware import (
    PileRow,
    PileState,
    PileUpgrade,
    TaskProgress,
    TaskSummary,
    pile_rows,
    rows_to_csv,
    summarize,
)

from .firmware_service import FirmwareError, FirmwareService, ImageUpload, upgrades_of
from .storage.firmware_repo import FirmwareEventRecord, ImageRecord, TaskRecordRow

if TYPE_CHECKING:
    from .api import ApiContext

# Multipart text fields are short (a version, a model); anything longer is a mistake.
_MAX_FIELD = 4096


# --- request bodies (pydantic at the edge; values are checked by firmware.task) ---
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExternalImageIn(_Strict):
    version: str = Field(description="firmware version, e.g. DLH_XD32E_210521003")
    model: str = Field(description="charger model the image is for, e.g. XD32E")
    url: str = Field(description="http(s) URL chargers download from (at most 176 characters)")
    sha256: str = Field(description="64 hex digits")
    size: int = Field(description="bytes")
    filename: str | None = None


class WindowIn(_Strict):
    start: time = Field(description="local time the window opens, HH:MM")
    end: time = Field(description="local time it closes (before start: crosses midnight)")
    utc_offset_minutes: int = Field(480, description="local time = UTC + this (480 = UTC+8)")


class ScheduleIn(_Strict):
    start_at: datetime | None = Field(None, description="RFC 3339 with offset; default now")
    window: WindowIn | None = None


class SelectorIn(_Strict):
    operator: str | None = Field(None, description="4-digit operator code")
    region_prefix: str | None = Field(None, description="1 to 6 leading digits of the region")
    kind: Literal["AC", "DC"] | None = None
    model: str | None = None
    current_versions: list[str] | None = Field(None, description="piles running one of these")


class RolloutIn(_Strict):
    canary: int | None = Field(None, description="canary piles, all verified before wave 1")
    waves: list[int] | None = Field(None, description="wave sizes; the last one repeats")
    wave_percent: float | None = Field(None, description="or each wave this % of the piles")
    max_concurrent: int | None = Field(None, description="piles in flight at most")
    failure_threshold: float | None = Field(
        None, description="stop when a wave's failed / (verified + failed) is above this"
    )


class RetriesIn(_Strict):
    max_attempts: int | None = None
    backoff_seconds: float | None = None
    backoff_factor: float | None = None
    backoff_max_seconds: float | None = None


class TimeoutsIn(_Strict):
    download_seconds: float | None = None
    install_seconds: float | None = None
    reboot_seconds: float | None = None


class TaskIn(_Strict):
    image_id: int | None = Field(None, description="the image to install")
    target_version: str | None = Field(
        None, description="or the version (its newest image); with image_id it must match"
    )
    targets: list[str] | SelectorIn = Field(
        description="pile IDs (the rollout order) or a selector (every criterion must match)"
    )
    schedule: ScheduleIn | None = None
    rollout: RolloutIn | None = None
    retries: RetriesIn | None = None
    timeouts: TimeoutsIn | None = None
    allow_downgrade: bool = False


# --- views ---------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _row_dict(row: PileRow) -> dict[str, Any]:
    return {f.name: _json_value(getattr(row, f.name)) for f in fields(row)}


def summary_text(counts: Mapping[str, int], total: int) -> str:
    """``17 verified, 4 failed, 29 pending (of 50)``."""
    parts = [f"{counts[s.value]} {s.value}" for s in PileState if counts.get(s.value)]
    return f"{', '.join(parts) or 'no piles'} (of {total})"


def _task_head(row: TaskRecordRow, counts: Mapping[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    return {
        "id": row.id,
        "state": row.state,
        "reason": row.reason,
        "status_text": f"{row.state}: {row.reason}" if row.reason else row.state,
        "summary": summary_text(counts, total),
        "target_version": row.target_version,
        "image_id": row.image_id,
        "total": total,
        "counts": {s.value: counts.get(s.value, 0) for s in PileState},
        "node_id": row.node_id,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def task_view(
    row: TaskRecordRow,
    upgrades: list[PileUpgrade],
    now: datetime,
    state: PileState | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    summary: TaskSummary = summarize(TaskProgress.from_dict(row.progress), upgrades)
    view = _task_head(row, {s.value: n for s, n in summary.counts.items()})
    rows = pile_rows(upgrades, now, state)
    end = None if limit is None else offset + limit
    view.update(
        in_flight=summary.in_flight,
        done=summary.done,
        waves=[w.to_dict() for w in summary.waves],
        spec=row.spec,
        piles_total=len(rows),
        piles=[_row_dict(r) for r in rows[offset:end]],
    )
    return view


def image_view(service: FirmwareService, image: ImageRecord, base: str | None) -> dict[str, Any]:
    return {
        "id": image.id,
        "version": image.version,
        "model": image.model,
        "sha256": image.sha256,
        "size": image.size,
        "filename": image.filename,
        "external": image.url is not None,
        "url": service.image_url(image, base),
        "created_at": image.created_at.isoformat(),
    }


def _event_view(e: FirmwareEventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "task_id": e.task_id,
        "pile_id": e.pile_id,
        "at": e.at.isoformat(),
        "from_state": e.from_state,
        "to_state": e.to_state,
        "trigger": e.trigger,
        "reason": e.reason,
        "attempt": e.attempt,
    }


# --- multipart/form-data (python-multipart, through Starlette) ----------------------------
async def read_multipart(
    request: Request, upload: ImageUpload
) -> tuple[dict[str, str], str | None]:
    """Read a multipart/form-data body: the one file part is copied into
    ``upload`` in chunks (Starlette spools it to a temporary file, so a large
    image never sits in memory); text fields are returned with the file's
    name."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # malformed bodies raise several parser errors
        raise FirmwareError(400, "invalid_upload", f"malformed multipart body: {exc}") from exc
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise FirmwareError(400, "invalid_upload", "no file part (send the image as 'file')")
        while chunk := await file.read(1 << 20):
            upload.write(chunk)
        texts = {k: v for k, v in form.items() if isinstance(v, str)}
        for key, value in texts.items():
            if len(value) > _MAX_FIELD:
                raise FirmwareError(400, "invalid_upload", f"form field {key!r} is too long")
        return texts, file.filename
    finally:
        await form.close()


def _required(name: str, value: str | None) -> str:
    if not value or not value.strip():
        raise FirmwareError(400, "invalid_image", f"{name} is required", field=name)
    return value.strip()


# --- the router ----------------------------------------------------------------------
def build_router(ctx: ApiContext, service: FirmwareService, dependencies: list[Any]) -> APIRouter:
    from .api import ApiError

    public = APIRouter()
    api = APIRouter(dependencies=dependencies, prefix="/api/firmware", tags=["firmware"])
    repo = service.repo

    def fail(exc: FirmwareError) -> ApiError:
        return ApiError(exc.status, exc.code, str(exc), **exc.extra)

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def task_or_404(task_id: int) -> TaskRecordRow:
        row = await repo.task(task_id)
        if row is None:
            raise ApiError(404, "unknown_task", f"no firmware task {task_id}")
        return row

    async def view(
        task_id: int, state: PileState | None = None, limit: int | None = None, offset: int = 0
    ) -> dict[str, Any]:
        row = await task_or_404(task_id)
        upgrades = upgrades_of(await repo.task_piles(task_id))
        return task_view(row, upgrades, ctx.clock(), state, limit, offset)

    # --- the image server (no token: chargers download from it) --------------------
    image_path = "/firmware-images/{image_id}/{filename}"

    @public.get(image_path, tags=["firmware"])
    async def download_image(image_id: int, filename: str) -> Response:
        """The image bytes, no token needed; HEAD too. ``Range: bytes=...``
        gives 206 with Content-Range (416 for a range outside the file), so
        downloads resume."""
        path = await service.image_file(image_id, filename)
        if path is None:
            raise ApiError(404, "unknown_image", f"no stored image {image_id}/{filename}")
        return FileResponse(path, media_type="application/octet-stream")

    public.add_api_route(image_path, download_image, methods=["HEAD"], include_in_schema=False)

    # --- images ----------------------------------------------------------------------
    @api.post(
        "/images",
        status_code=201,
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file", "version", "model"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "version": {"type": "string"},
                                "model": {"type": "string"},
                            },
                        }
                    },
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                    },
                    "application/json": {"schema": ExternalImageIn.model_json_schema()},
                }
            }
        },
    )
    async def upload_image(
        request: Request,
        version: str | None = None,
        model: str | None = None,
        filename: str | None = None,
    ) -> JSONResponse:
        """Add an image: multipart (``file``, ``version``, ``model``); or the raw
        bytes as application/octet-stream with ``?version=&model=&filename=``;
        or JSON ``{version, model, url, sha256, size}`` for an image kept
        elsewhere. The SHA-256 and size of uploads are computed here."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                try:
                    body = ExternalImageIn.model_validate_json(await request.body())
                except ValueError as exc:
                    raise FirmwareError(400, "invalid_image", str(exc)) from None
                image = await service.add_external_image(**body.model_dump())
            elif content_type in ("multipart/form-data", "application/octet-stream"):
                upload = service.new_upload()
                try:
                    if content_type == "multipart/form-data":
                        texts, sent_name = await read_multipart(request, upload)
                    else:
                        async for chunk in request.stream():
                            upload.write(chunk)
                        texts, sent_name = {}, None
                    image = await service.finish_upload(
                        upload,
                        version=_required("version", texts.get("version") or version),
                        model=_required("model", texts.get("model") or model),
                        filename=texts.get("filename") or sent_name or filename,
                    )
                except BaseException:
                    upload.discard()
                    raise
            else:
                raise FirmwareError(
                    415,
                    "unsupported_media_type",
                    "send multipart/form-data, application/octet-stream or application/json",
                )
        except FirmwareError as exc:
            raise fail(exc) from exc
        return JSONResponse(image_view(service, image, base_of(request)), status_code=201)

    @api.get("/images")
    async def list_images(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        images = await repo.images(limit=limit, offset=offset)
        return [image_view(service, i, base_of(request)) for i in images]

    @api.get("/images/{image_id}")
    async def get_image(request: Request, image_id: int) -> dict[str, Any]:
        image = await repo.image(image_id)
        if image is None:
            raise ApiError(404, "unknown_image", f"no firmware image {image_id}")
        return image_view(service, image, base_of(request))

    # --- tasks -----------------------------------------------------------------------
    @api.post("/tasks", status_code=201)
    async def create_task(request: Request, body: TaskIn) -> JSONResponse:
        """Create a task and start it (at ``schedule.start_at``). 400/404/409
        name the culprit: ``field`` for an invalid value, ``piles`` for
        unknown, busy or mismatching piles."""
        try:
            created = await service.create_task(
                body.model_dump(mode="json", exclude_none=True), base_of(request)
            )
        except FirmwareError as exc:
            raise fail(exc) from exc
        result = await view(created.task_id)
        result["excluded"] = created.excluded
        return JSONResponse(result, status_code=201)

    @api.get("/tasks")
    async def list_tasks(
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        """Newest first, with pile counts per state."""
        return [
            _task_head(row, counts)
            for row, counts in await repo.tasks(state=state, limit=limit, offset=offset)
        ]

    @api.get("/tasks/{task_id}")
    async def get_task(
        task_id: int,
        state: PileState | None = None,
        limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Counts per state, waves, and a row per pile (last status, attempts,
        timings); ``?state=failed`` keeps only the piles in that state;
        ``?limit=&offset=`` pages the pile rows (``piles_total`` counts them)."""
        return await view(task_id, state, limit, offset)

    @api.get("/tasks/{task_id}/piles.csv")
    async def task_csv(task_id: int, state: PileState | None = None) -> Response:
        await task_or_404(task_id)
        upgrades = upgrades_of(await repo.task_piles(task_id))
        return Response(
            rows_to_csv(pile_rows(upgrades, ctx.clock(), state)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="firmware-task-{task_id}.csv"'},
        )

    @api.get("/tasks/{task_id}/events")
    async def task_events(
        task_id: int,
        pile: str | None = None,
        after_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Every transition, oldest first (task ones have ``pile_id`` null)."""
        await task_or_404(task_id)
        events = await repo.events(task_id, pile_id=pile, after_id=after_id, limit=limit)
        return [_event_view(e) for e in events]

    async def control(task_id: int, operation: str) -> dict[str, Any]:
        try:
            await service.control(task_id, operation)
        except FirmwareError as exc:
            raise fail(exc) from exc
        return await view(task_id)

    @api.post("/tasks/{task_id}/pause")
    async def pause_task(task_id: int) -> dict[str, Any]:
        """Dispatch nothing new; piles in flight are still followed."""
        return await control(task_id, "pause")

    @api.post("/tasks/{task_id}/resume")
    async def resume_task(task_id: int) -> dict[str, Any]:
        return await control(task_id, "resume")

    @api.post("/tasks/{task_id}/cancel")
    async def cancel_task(task_id: int) -> dict[str, Any]:
        """Cancel every pile not yet sent; those in flight are followed to their end."""
        return await control(task_id, "cancel")

    public.include_router(api)
    return public
