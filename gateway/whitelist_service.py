"""Whitelist sync: drives ``sessions.whitelist.PileWhitelistSync`` for every
pile connected to this node, over OCPP 1.6 (GetConfiguration,
GetLocalListVersion, SendLocalList) or CBP/1 (0x48/0x47, 0x44/0x43).

The engine is pure; this adapter executes its actions in order: requests go
out through the pile's connection (sharing its one-outstanding-call rule
with operators' commands), held records and statuses are persisted in
``pile_whitelists``, statuses are published as ``whitelist.sync`` events.

Desired lists are recomputed for connected piles when the lists change:
at once after a change through this node's API, and within
``POLL_SECONDS`` on every node (a fingerprint of the list tables is polled),
so several nodes stay consistent without a message of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select

from sessions.tokens import TokenBinding as Binding
from sessions.whitelist import (
    ArmRetry,
    ChangeKind,
    Entry,
    ForgetHeld,
    Held,
    PileWhitelistSync,
    QueryVersion,
    ReadConfig,
    RecordHeld,
    ReportStatus,
    SendChunk,
    SendResult,
    SyncAction,
    SyncPolicy,
    Transport,
    UpdateType,
    Whitelist,
    effective_list,
)

from .events import WhitelistSync
from .registry import CommandError, PileConnection
from .storage.models import Token, TokenBinding, WhitelistAssignment, WhitelistRow, WhitelistToken
from .storage.whitelist_repo import WhitelistStore, entry_from_json, entry_to_json

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .api import ApiContext
    from .commands import CommandService
    from .services import Services

log = structlog.get_logger("pilegate.whitelist")

POLL_SECONDS = 5.0
OCPP_KEYS = ("SendLocalListMaxLength", "LocalAuthListMaxLength")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def ocpp_entry(kind: ChangeKind, e: Entry) -> dict[str, Any]:
    """A localAuthorizationList item (OCPP 1.6 §7.4 AuthorizationData):
    without idTagInfo it removes the token (differential updates)."""
    if kind is ChangeKind.REMOVE:
        return {"idTag": e.id_tag}
    info: dict[str, Any] = {"status": e.status.value.capitalize()}
    if e.expiry is not None:
        info["expiryDate"] = _iso(e.expiry)
    if e.parent_id_tag:
        info["parentIdTag"] = e.parent_id_tag
    return {"idTag": e.id_tag, "idTagInfo": info}


_OCPP_RESULTS = {
    "Accepted": SendResult.ACCEPTED,
    "Failed": SendResult.FAILED,
    "NotSupported": SendResult.NOT_SUPPORTED,
    "VersionMismatch": SendResult.VERSION_MISMATCH,
}


def _int_or_none(value: Any, minimum: int) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= minimum else None


class WhitelistService:
    def __init__(
        self, services: Services, commands: CommandService, policy: SyncPolicy | None = None
    ) -> None:
        self.services = services
        self.commands = commands
        self.store = WhitelistStore(services.store.sessions)
        self.policy = policy or SyncPolicy()
        self.engines: dict[str, PileWhitelistSync] = {}
        self.conns: dict[str, PileConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._poller: asyncio.Task[Any] | None = None
        self._recompute = asyncio.Event()
        self._cache: tuple[list[Whitelist], dict[str, Binding]] | None = None
        # Bounded database work of this engine, so it never takes the whole
        # connection pool from the charger-facing path during a storm.
        self._db_slots = asyncio.Semaphore(4)
        # Piles with a sync state row (managed even with no list assigned now).
        self._managed: set[str] = set()

    # --- extension ---------------------------------------------------------------
    async def start(self) -> None:
        self.services.observers.add(self)
        self._fingerprint = await self._lists_fingerprint()
        self._managed = await self.store.managed_pile_ids()
        self._poller = self.services.spawn(self._poll(), "whitelist-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def router(self, ctx: ApiContext, dependencies: list[Any]) -> APIRouter | None:
        from .api_whitelist import build_router

        return build_router(ctx, dependencies, self)

    # --- observer ------------------------------------------------------------------
    def pile_connected(self, conn: PileConnection) -> None:
        cache = self._cache
        if cache is not None and self._unmanaged(conn.pile_id, cache[0]):
            # Decided without a task when the lists are loaded: in a reconnect
            # storm a task per unmanaged pile was 4 % of the gateway's CPU.
            return
        self.services.spawn(self._connected(conn), f"whitelist-connect-{conn.pile_id}")

    def pile_disconnected(self, pile_id: str, conn_id: str) -> None:
        engine = self.engines.pop(pile_id, None)
        conn = self.conns.get(pile_id)
        if conn is not None and conn.conn_id == conn_id:
            del self.conns[pile_id]
        timer = self._timers.pop(pile_id, None)
        if timer is not None:
            timer.cancel()
        if engine is not None:
            engine.disconnected(time.monotonic())

    def pile_booted(self, *args: Any) -> None:
        pass

    def firmware_status(self, *args: Any) -> None:
        pass

    def charging_changed(self, *args: Any) -> None:
        pass

    # --- desired lists -----------------------------------------------------------------
    async def desired_for(
        self, pile_id: str, transport: Transport | None = None, *, persist: bool = True
    ) -> Any:
        """Compute the pile's effective list; bump and persist its desired
        version when the content changed. Returns (version, entries, eff).
        ``persist=False`` (the ops API's view) only tells what the version
        would be: a read must not write, or it races with the sync writing
        the pile's status (a view read while the engine stored ``in_sync``
        wrote the ``pending`` it had read before)."""
        now = self.services.clock()
        lists, bindings = await self._snapshot()
        eff = effective_list(pile_id, lists, bindings, now=now)
        if not persist:
            state = await self.store.pile_state(pile_id)
            return self._desired_version(state, eff), dict(eff.entries), eff
        # Read and write the pile's state under its lock: the engine stores
        # the sync's status under the same lock, and a status read before it
        # and written back after would undo it (a connect and the poller
        # both recomputing a new pile wrote "pending" over "in_sync").
        async with self._lock(pile_id):
            state = await self.store.pile_state(pile_id)
            version = self._desired_version(state, eff)
            if state is None or state.desired_hash != eff.content_hash:
                self._managed.add(pile_id)
                await self.store.save_pile_state(
                    pile_id,
                    now,
                    desired_version=version,
                    desired_hash=eff.content_hash,
                    desired_count=len(eff),
                    status="pending" if state is None else state.status,
                )
        return version, dict(eff.entries), eff

    @staticmethod
    def _desired_version(state: Any, eff: Any) -> int:
        """The pile's desired version for ``eff``: the stored one while the
        content is unchanged, else one above both it and what the pile was
        ever sent (so a one-message sync ends with the pile reporting the
        gateway's own version)."""
        if state is not None and state.desired_hash == eff.content_hash:
            return int(state.desired_version)
        floor = state.held_version or 0 if state else 0
        return max((state.desired_version if state else 0) + 1, floor + 1)

    def poke(self) -> None:
        """Lists changed on this node: recompute connected piles now."""
        self._cache = None
        self._recompute.set()

    async def _lists_fingerprint(self) -> tuple[Any, ...]:
        async with self.services.store.sessions() as s:
            parts: list[Any] = []
            for col in (WhitelistRow.updated_at, Token.updated_at):
                parts.extend((await s.execute(select(func.count(), func.max(col)))).one())
            for table in (WhitelistToken, WhitelistAssignment, TokenBinding):
                parts.append(await s.scalar(select(func.count()).select_from(table)))
            return tuple(str(p) for p in parts)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recompute.wait(), POLL_SECONDS)
            self._recompute.clear()
            try:
                fp = await self._lists_fingerprint()
                if fp != self._fingerprint:
                    self._fingerprint = fp
                    self._cache = None
                    self._managed = await self.store.managed_pile_ids()
                    await self.refresh_connected()
            except Exception:
                log.exception("whitelist recompute failed")

    async def _snapshot(self) -> tuple[list[Whitelist], dict[str, Binding]]:
        """Lists and bindings, loaded once per change of the list tables (the
        poller drops the cache): a reconnect storm of thousands of piles must
        not load every list once per pile."""
        if self._cache is None:
            async with self._db_slots:
                if self._cache is None:
                    self._cache = (await self.store.whitelists(), await self.store.bindings())
        return self._cache

    async def _has_lists(self, pile_id: str) -> bool:
        lists, _ = await self._snapshot()
        return any(w.applies_to(pile_id) for w in lists)

    def _unmanaged(self, pile_id: str, lists: list[Whitelist]) -> bool:
        """No list applies and none ever did: nothing to do for this pile."""
        return pile_id not in self._managed and not any(w.applies_to(pile_id) for w in lists)

    async def refresh_connected(self) -> None:
        for conn in list(self.services.registry):
            if conn.pile_id not in self.engines:
                await self._connected(conn)
        for pile_id, engine in list(self.engines.items()):
            version, entries, _ = await self.desired_for(pile_id, engine.transport)
            async with self._lock(pile_id):
                if self.engines.get(pile_id) is engine:
                    await self._desire(pile_id, engine, version, entries)

    async def resync(self, pile_id: str) -> bool:
        engine = self.engines.get(pile_id)
        if engine is None:
            return False
        async with self._lock(pile_id):
            await self._execute(pile_id, engine.force_resync(time.monotonic()))
        return True

    # --- connection -------------------------------------------------------------------
    def _lock(self, pile_id: str) -> asyncio.Lock:
        lock = self._locks.get(pile_id)
        if lock is None:
            lock = self._locks[pile_id] = asyncio.Lock()
        return lock

    async def _connected(self, conn: PileConnection) -> None:
        pile_id = conn.pile_id
        transport = Transport.CBP1 if conn.protocol == "cbp1" else Transport.OCPP16
        lists, _ = await self._snapshot()
        if self._unmanaged(pile_id, lists):
            # Unmanaged and nothing assigned: no database work at all (the
            # common case during a reconnect storm without whitelists).
            return
        # Under the pile's lock: the previous connection's engine may still be
        # storing what the pile confirmed just before the link dropped (a
        # SendLocalList reply, then the link closed). Read before that write,
        # the record is stale and the list goes out again.
        async with self._lock(pile_id), self._db_slots:
            state = await self.store.pile_state(pile_id)
        held = None
        if state is not None and state.held_entries is not None and state.held_version is not None:
            held = Held(
                version=state.held_version,
                entries={t: entry_from_json(t, d) for t, d in state.held_entries.items()},
            )
        engine = PileWhitelistSync(
            transport,
            self.policy,
            held=held,
            version_floor=state.held_version or 0 if state else 0,
        )
        if state is not None:
            self._managed.add(pile_id)
        if state is None and not await self._has_lists(pile_id):
            # No list was ever assigned to this pile: pilegate does not
            # manage its local list (and must not wipe one an operator put
            # there by other means). It starts when a list is assigned.
            return
        version, entries, _ = await self.desired_for(pile_id, transport)
        if self.services.registry.get(pile_id) is not conn or pile_id in self.engines:
            return  # gone (or replaced) meanwhile, or already driven
        self.engines[pile_id] = engine
        self.conns[pile_id] = conn
        now = time.monotonic()
        async with self._lock(pile_id):
            await self._desire(pile_id, engine, version, entries)
            await self._execute(pile_id, engine.connected(now))

    async def _desire(
        self, pile_id: str, engine: PileWhitelistSync, version: int, entries: dict[str, Entry]
    ) -> None:
        # Two recomputations may race (an API change and a connect); the
        # engine refuses a lower version, and a lower one is stale anyway.
        current = engine.desired()
        if current is not None and version < current[0]:
            return
        await self._execute(pile_id, engine.desired_changed(version, entries, time.monotonic()))

    async def _execute(self, pile_id: str, actions: list[SyncAction]) -> None:
        """Run the engine's actions in order (caller holds the pile's lock)."""
        for action in actions:
            if isinstance(action, ReadConfig | QueryVersion | SendChunk):
                self.services.spawn(self._request(pile_id, action), f"whitelist-request-{pile_id}")
            elif isinstance(action, ArmRetry):
                self._arm(pile_id, action.at)
            elif isinstance(action, ReportStatus):
                await self._report(pile_id, action)
            elif isinstance(action, RecordHeld):
                await self._record_held(pile_id, action)
            elif isinstance(action, ForgetHeld):
                await self.store.save_pile_state(
                    pile_id, self.services.clock(), held_entries=None, held_version=None
                )
                log.info("held whitelist forgotten", pile_id=pile_id, reason=action.reason)

    def _arm(self, pile_id: str, at: float) -> None:
        old = self._timers.pop(pile_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        # loop.time() is time.monotonic(), the engine's clock.
        self._timers[pile_id] = loop.call_at(
            max(at, loop.time()),
            lambda: self.services.spawn(self._retry(pile_id), f"whitelist-retry-{pile_id}"),
        )

    async def _retry(self, pile_id: str) -> None:
        self._timers.pop(pile_id, None)
        engine = self.engines.get(pile_id)
        if engine is None:
            return
        async with self._lock(pile_id):
            await self._execute(pile_id, engine.retry_due(time.monotonic()))

    async def _report(self, pile_id: str, action: ReportStatus) -> None:
        status = action.status
        engine = self.engines.get(pile_id)
        snap = engine.snapshot() if engine is not None else None
        now = self.services.clock()
        extra: dict[str, Any] = {}
        if snap is not None:
            extra = {"capacity": snap.capacity, "max_chunk": snap.max_chunk}
        await self.store.save_pile_state(
            pile_id, now, status=status.kind.value, reason=status.reason, **extra
        )
        self.services.metrics.whitelist_status.labels(status=status.kind.value).inc()
        log.info("whitelist status", pile_id=pile_id, status=str(status))
        ops = self.services.events.op(
            "whitelist.sync",
            pile_id,
            now,
            WhitelistSync(
                status=status.kind.value,
                held_version=snap.held_version if snap else None,
                desired_version=snap.desired_version if snap else None,
                reason=status.reason,
            ),
        )
        if ops:
            await self.services.writer.put(*ops)

    async def _record_held(self, pile_id: str, action: RecordHeld) -> None:
        state = await self.store.pile_state(pile_id)
        held: dict[str, dict[str, Any]] = {}
        if not action.replace and state is not None and state.held_entries is not None:
            held = dict(state.held_entries)
        for tag in action.removals:
            held.pop(tag, None)
        for entry in action.upserts:
            held[entry.id_tag] = entry_to_json(entry)
        await self.store.save_pile_state(
            pile_id, self.services.clock(), held_entries=held, held_version=action.version
        )

    async def _request(self, pile_id: str, action: ReadConfig | QueryVersion | SendChunk) -> None:
        conn = self.conns.get(pile_id)
        engine = self.engines.get(pile_id)
        if conn is None or engine is None:
            return
        timeout = self.services.settings.command_timeout
        try:
            if engine.transport is Transport.CBP1:
                result = await self._cbp_request(conn, action, timeout)
            else:
                result = await self._ocpp_request(conn, action, timeout)
        except CommandError as exc:
            if self.engines.get(pile_id) is not engine:
                return
            async with self._lock(pile_id):
                if exc.code == "pile_offline":
                    return  # the disconnect event handles it
                await self._execute(
                    pile_id, engine.request_failed(action.request_id, str(exc), time.monotonic())
                )
            return
        if self.engines.get(pile_id) is not engine:
            return
        async with self._lock(pile_id):
            await self._execute(pile_id, result(engine, time.monotonic()))

    async def _ocpp_request(
        self, conn: PileConnection, action: ReadConfig | QueryVersion | SendChunk, timeout: float
    ) -> Any:
        rid = action.request_id
        if isinstance(action, ReadConfig):
            r = await conn.call("GetConfiguration", {"key": list(OCPP_KEYS)}, timeout)
            values = {
                k.get("key"): k.get("value") for k in r.response.get("configurationKey") or []
            }
            chunk = _int_or_none(values.get("SendLocalListMaxLength"), 1)
            cap = _int_or_none(values.get("LocalAuthListMaxLength"), 0)
            return lambda e, now: e.config_read(rid, chunk, cap, now)
        if isinstance(action, QueryVersion):
            r = await conn.call("GetLocalListVersion", {}, timeout)
            version = int(r.response["listVersion"])
            return lambda e, now: e.version_reported(rid, version, now)
        payload = {
            "listVersion": action.version,
            "updateType": "Full" if action.update_type is UpdateType.FULL else "Differential",
            "localAuthorizationList": [ocpp_entry(c.kind, c.entry) for c in action.entries],
        }
        r = await conn.call("SendLocalList", payload, timeout)
        status = _OCPP_RESULTS.get(str(r.response.get("status")), SendResult.FAILED)
        return lambda e, now: e.send_result(rid, status, now)

    async def _cbp_request(
        self, conn: PileConnection, action: ReadConfig | QueryVersion | SendChunk, timeout: float
    ) -> Any:
        from protocol.cloudboard import messages as m

        rid = action.request_id
        request = getattr(conn, "request", None)
        if request is None:
            raise CommandError(409, "pile_offline", "connection cannot carry CBP/1 requests")
        if isinstance(action, ReadConfig):  # not used by CBP/1; answer "unknown limits"
            return lambda e, now: e.config_read(rid, None, None, now)
        if isinstance(action, QueryVersion):
            reply = await request(m.WhitelistVersionQuery(pile=conn.pile_id))
            return lambda e, now: e.version_reported(
                rid, reply.version, now, held_count=reply.entry_count, capacity=reply.capacity
            )
        entries = tuple(
            m.WhitelistEntry(
                action=m.WhitelistAction.REMOVE
                if c.kind is ChangeKind.REMOVE
                else m.WhitelistAction.ADD,
                method=m.AuthMethod(_CBP_METHOD[c.entry.type.value]),
                token=c.entry.id_tag,
            )
            for c in action.entries
        )
        reply = await request(
            m.WhitelistUpdate(
                pile=conn.pile_id,
                version=action.version,
                base_version=action.base_version,
                mode=m.WhitelistMode.FULL
                if action.update_type is UpdateType.FULL
                else m.WhitelistMode.DIFFERENTIAL,
                part=action.part,
                last=action.last,
                entries=entries,
            )
        )
        status = _CBP_RESULTS.get(int(reply.result), SendResult.FAILED)
        return lambda e, now: e.send_result(rid, status, now)

    # --- ops view -------------------------------------------------------------------------
    async def pile_view(self, pile_id: str) -> dict[str, Any]:
        state = await self.store.pile_state(pile_id)
        if state is None and not await self._has_lists(pile_id):
            return {
                "pile_id": pile_id,
                "managed": False,
                "status": "unmanaged",
                "reason": None,
                "desired_version": None,
                "desired_count": 0,
                "lists": [],
                "held_version": None,
                "held_count": None,
                "capacity": None,
                "max_chunk": None,
                "difference": {"add": [], "remove": [], "change": []},
                "driven_here": False,
                "engine": None,
            }
        version, desired, eff = await self.desired_for(pile_id, persist=False)
        state = await self.store.pile_state(pile_id)
        held: Mapping[str, dict[str, Any]] = (state.held_entries or {}) if state else {}
        desired_json = {t: entry_to_json(e) for t, e in desired.items()}
        to_add = sorted(t for t in desired_json if t not in held)
        to_remove = sorted(t for t in held if t not in desired_json)
        to_change = sorted(t for t in desired_json if t in held and held[t] != desired_json[t])
        engine = self.engines.get(pile_id)
        snap = engine.snapshot() if engine is not None else None
        managed = state is not None or bool(eff.lists)
        return {
            "pile_id": pile_id,
            "managed": managed,
            # Content the sync has not taken up yet (the poller recomputes
            # within seconds, at once after a change on this node) is pending.
            "status": (state.status if state and state.desired_version == version else "pending")
            if managed
            else "unmanaged",
            "reason": state.reason if state else None,
            "desired_version": version,
            "desired_count": len(desired),
            "lists": list(eff.lists),
            "held_version": state.held_version if state else None,
            "held_count": len(held) if state and state.held_entries is not None else None,
            "capacity": state.capacity if state else None,
            "max_chunk": state.max_chunk if state else None,
            "difference": {"add": to_add, "remove": to_remove, "change": to_change},
            "driven_here": engine is not None,
            "engine": None
            if snap is None
            else {
                "state": snap.state.value,
                "attempts": snap.attempts,
                "last_error": snap.last_error,
                "in_flight": None if snap.in_flight is None else snap.in_flight.kind.value,
                "pile_reported_version": snap.pile_reported_version,
            },
        }


_CBP_METHOD = {"card": 1, "vin": 2, "password": 3}
_CBP_RESULTS = {
    0: SendResult.ACCEPTED,
    1: SendResult.FAILED,
    2: SendResult.VERSION_MISMATCH,
    3: SendResult.CAPACITY_EXCEEDED,
}
