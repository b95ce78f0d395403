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
import time
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any

import uvicorn

from sessions.presence import DeclareOffline, PresencePolicy, PresenceTracker, SendPing

from . import extensions
from .api import ApiContext, create_app
from .clock import Clock, utcnow
from .commands import CommandService
from .config import Settings
from .eventbus import EventSink
from .events import PileDisconnected, Presence
from .logging import get_logger
from .metrics import Metrics
from .mqtt import MqttBridge
from .ocpp.server import OcppServer
from .registry import Registry
from .services import BootLimiter, Services
from .storage import db
from .storage.repo import Store
from .storage.writer import WriteBehind

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
        self.services: Services | None = None
        self.ocpp: OcppServer | None = None
        self.commands: CommandService | None = None
        self.writer: WriteBehind | None = None
        self.bridge: MqttBridge | None = None
        self._mqtt_task: asyncio.Task[Any] | None = None
        self._lease_task: asyncio.Task[Any] | None = None
        self.extensions: list[extensions.Extension] = []
        self._api: _EmbeddedServer | None = None
        self._ticker: asyncio.Task[Any] | None = None
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
        engine = db.create_engine(
            s.database_url, echo=s.database_echo, sqlite_cache_mib=s.sqlite_cache_mib
        )
        if s.database_migrate_on_start:
            rev = await db.upgrade(engine)
            log.info("database migrated", revision=rev, url=_safe_url(s.database_url))
        self.store = Store(engine)
        self.writer = WriteBehind(self.store.sessions, metrics=self.metrics)
        self.spawn(self.writer.run(), "write-behind")
        policy = PresencePolicy(
            ping_interval=s.ping_interval,
            pong_timeout=s.pong_timeout,
            heartbeat_multiple=s.heartbeat_multiple,
            min_silence=s.watchdog_min_silence,
        )
        self.services = Services(
            settings=s,
            store=self.store,
            writer=self.writer,
            metrics=self.metrics,
            registry=Registry(),
            tracker=PresenceTracker(policy),
            clock=self.clock,
            boot_limiter=BootLimiter(s.boot_rate_limit),
            spawn=self.spawn,
            events=EventSink(s.node_id, s.mqtt_topic_prefix, enabled=s.mqtt_url is not None),
        )
        self.commands = CommandService(self.services)
        # This node held no connection before it started: piles the database
        # still shows online here were left by a previous run that died.
        await self._release_own_piles()
        await self.store.node_heartbeat(s.node_id, self.clock())
        if s.mqtt_url is not None:
            self.bridge = MqttBridge(self.services, s.mqtt_url)
            self.bridge.commands = self.commands
            self.commands.bridge = self.bridge
            self.writer.on_flush = self.bridge.notify
            self._mqtt_task = self.spawn(self.bridge.run(), "mqtt-bridge")
        self._lease_task = self.spawn(self._node_leases(), "node-leases")
        self.extensions = extensions.build(self.services, self.commands)
        for ext in self.extensions:
            await ext.start()
        self.ocpp = OcppServer(
            self.services, on_connect=self.commands.pile_connected, bridge=self.bridge
        )
        await self.ocpp.start()
        self._ticker = self.spawn(self._presence_ticker(), "presence-ticker")
        app = create_app(
            ApiContext(
                settings=s,
                store=self.store,
                metrics=self.metrics,
                clock=self.clock,
                services=self.services,
                commands=self.commands,
                extensions=self.extensions,
            )
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

    @property
    def ocpp_port(self) -> int:
        assert self.ocpp is not None
        return self.ocpp.port

    @property
    def cbp_port(self) -> int:
        """The bound port of the cloud-board listener (``cbp_port`` 0 binds any)."""
        from .cloudboard.server import CbpServer

        server = next((e for e in self.extensions if isinstance(e, CbpServer)), None)
        assert server is not None, "the CBP/1 listener is not running"
        return server.port

    def _tick_period(self) -> float:
        s = self.settings
        # Deadlines are noticed up to one period late; keep that small
        # against the pong timeout (docs/ocpp16.md, "Presence").
        return max(0.05, min(1.0, s.pong_timeout / 4))

    async def _presence_ticker(self) -> None:
        assert self.services is not None
        services = self.services
        period = self._tick_period()
        while True:
            await asyncio.sleep(period)
            for action in services.tracker.tick(time.monotonic()):
                conn = services.registry.by_conn_id(action.key)
                if conn is None:
                    continue
                if isinstance(action, SendPing):
                    conn.send_ping()
                elif isinstance(action, DeclareOffline):
                    self.metrics.presence_declared_offline.labels(reason=action.reason.value).inc()
                    log.warning(
                        "dead link",
                        pile_id=conn.pile_id,
                        conn_id=conn.conn_id,
                        reason=action.reason.value,
                        silent_for=round(action.silent_for, 1),
                        detail=action.detail,
                    )
                    conn.set_offline_detail(action.detail)
                    conn.abort(action.reason.value)

    def _disconnect_rows(self, pile_id: str, at: Any) -> tuple[tuple[str, str, str, bool], ...]:
        assert self.services is not None
        return self.services.events.rows(
            "pile.disconnected",
            pile_id,
            at,
            PileDisconnected(reason="node_lost", detail="node lost"),
            Presence(pile_id=pile_id, online=False, reason="node_lost", at=at, node_id=None),
        )

    async def _release_own_piles(self) -> None:
        assert self.store is not None and self.services is not None
        events = self._disconnect_rows if self.services.events.enabled else None
        piles = await self.store.release_node_piles(
            self.settings.node_id, self.clock(), "node_lost", self.settings.node_id, events
        )
        if piles:
            log.warning("piles left online by a previous run marked offline", count=len(piles))

    async def _node_leases(self) -> None:
        """Renew this node's lease; mark the piles of dead nodes offline."""
        assert self.store is not None and self.services is not None
        lease = self.settings.node_lease_seconds
        events = self._disconnect_rows if self.services.events.enabled else None
        while True:
            await asyncio.sleep(max(0.2, lease / 3))
            try:
                now = self.clock()
                await self.store.node_heartbeat(self.settings.node_id, now)
                for dead in await self.store.dead_nodes(now, lease):
                    piles = await self.store.release_node_piles(
                        dead,
                        now,
                        "node_lost",
                        self.settings.node_id,
                        events,
                        cutoff=now - timedelta(seconds=lease),
                    )
                    if piles is not None:
                        self.metrics.nodes_lost.inc()
                        log.warning(
                            "node lost; its piles marked offline", node=dead, piles=len(piles)
                        )
                if self.bridge is not None:
                    await self.bridge.refresh_backlog_metrics()
            except Exception:
                # The database may be restarting; the lease loop must survive.
                log.exception("node lease round failed")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("gateway stopping")
        grace = self.settings.shutdown_grace_seconds
        for task in (self._ticker, self._lease_task):
            if task is not None:
                task.cancel()
        for ext in reversed(self.extensions):
            try:
                await asyncio.wait_for(ext.stop(), grace)
            except Exception:
                log.exception("extension did not stop cleanly", extension=type(ext).__name__)
        if self.ocpp is not None:
            # Stop accepting, then close every charger with 1001 (going away);
            # their offline events ("gateway_shutdown") go into the queue.
            self.ocpp.stop_accepting()
            try:
                await asyncio.wait_for(self.ocpp.close_all("gateway_shutdown"), grace)
            except TimeoutError:
                log.warning("chargers did not close in time")
        if self.writer is not None:
            # Everything in the queue was answered to a charger, which will
            # not send it again: shutdown waits until it is all stored (no
            # timeout; cancelling a flush half-way would lose it). Progress
            # is logged so an operator sees why the process is still there.
            flush = asyncio.ensure_future(self.writer.close())
            while True:
                done, _ = await asyncio.wait({flush}, timeout=5.0)
                if done:
                    flush.result()
                    break
                log.warning("flushing write queue before exit", left=len(self.writer))
        if self.bridge is not None and self._mqtt_task is not None:
            # Publish what the shutdown itself produced (offline events) if
            # the broker is there; the rest stays in the outbox.
            deadline = time.monotonic() + min(grace, 5.0)
            while self.bridge.connected.is_set() and time.monotonic() < deadline:
                assert self.store is not None
                count, _ = await self.store.outbox_stats(self.settings.node_id)
                if count == 0:
                    break
                self.bridge.notify()
                await asyncio.sleep(0.05)
            self._mqtt_task.cancel()
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
