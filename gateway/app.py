"""The gateway process: owns every listener, background task and resource.

Start order: logging → database (migrations) → ops API (and, from the OCPP
issue on, the charger listeners). Stop order is the reverse and graceful:
stop accepting, close chargers with a proper close code, flush queues, stop
the API, dispose the engine. Every task is tracked in ``self._tasks`` and
cancelled if it has not finished within ``shutdown_grace_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from .api import ApiContext, create_app
from .clock import Clock, utcnow
from .config import Settings
from .logging import get_logger
from .metrics import Metrics
from .storage import db
from .storage.repo import Store

log = get_logger("pilegate.gateway")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    def __init__(self, settings: Settings, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store | None = None
        self._api: _EmbeddedServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # --- task ownership ------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            log.error("background task failed", task=task.get_name(), exc_info=task.exception())

    # --- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        engine = db.create_engine(s.database_url, echo=s.database_echo)
        if s.database_migrate_on_start:
            rev = await db.upgrade(engine)
            log.info("database migrated", revision=rev, url=_safe_url(s.database_url))
        self.store = Store(engine)
        app = create_app(
            ApiContext(settings=s, store=self.store, metrics=self.metrics, clock=self.clock)
        )
        config = uvicorn.Config(
            app,
            host=s.api_host,
            port=s.api_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(s.shutdown_grace_seconds),
        )
        self._api = _EmbeddedServer(config)
        api_task = self.spawn(self._api.serve(), "ops-api")
        while not self._api.started:
            if api_task.done():
                await api_task  # re-raise why it could not start (port taken...)
                raise RuntimeError("ops API stopped during startup")
            await asyncio.sleep(0.01)
        log.info("ops API listening", host=s.api_host, port=self.api_port, dev=s.dev)

    @property
    def api_port(self) -> int:
        assert self._api is not None and self._api.servers
        port: int = self._api.servers[0].sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("gateway stopping")
        grace = self.settings.shutdown_grace_seconds
        if self._api is not None:
            self._api.should_exit = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
        log.info("gateway stopped")

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
