"""Commands to chargers from the ops API (and later MQTT), protocol neutral.

A command for a connected pile is sent at once and awaited with a timeout.
For an offline pile it fails at once (409) unless the caller gives a
``queue_ttl``: then it waits in memory and is sent when the pile connects
again within that time; its outcome is kept for ``GET /api/commands/{id}``.
Queued commands live in this node's memory only (they do not survive a
gateway restart); this is stated in the API documentation.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from .registry import CommandError, CommandResult, PileConnection
from .services import Services

if TYPE_CHECKING:
    from .mqtt import MqttBridge

log = structlog.get_logger("pilegate.commands")

# Commands of OCPP 1.6 the ops API exposes (issue scope: Core, Remote Trigger).
OCPP16_COMMANDS = frozenset(
    {
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "ChangeConfiguration",
        "GetConfiguration",
        "TriggerMessage",
        "UnlockConnector",
        "ChangeAvailability",
        "ClearCache",
        # Raw access for QA and support; the whitelist and firmware engines
        # notice what these change (version checks at the next connect).
        "GetLocalListVersion",
        "SendLocalList",
        "UpdateFirmware",
        "GetDiagnostics",
    }
)

_ids = itertools.count(1)


@dataclass
class QueuedCommand:
    id: int
    pile_id: str
    action: str
    payload: dict[str, Any]
    created_at: datetime
    expires_mono: float
    timeout: float
    status: str = "queued"  # queued | sent | answered | failed | expired
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pile_id": self.pile_id,
            "action": self.action,
            "payload": self.payload,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "response": self.response,
            "error": self.error,
        }


@dataclass
class CommandService:
    services: Services
    _queued: dict[str, deque[QueuedCommand]] = field(default_factory=dict)
    _history: OrderedDict[int, QueuedCommand] = field(default_factory=OrderedDict)
    max_history: int = 10_000
    bridge: MqttBridge | None = None

    def check_action(self, action: str) -> None:
        if action not in OCPP16_COMMANDS:
            raise CommandError(
                404,
                "unknown_command",
                f"unknown command {action!r}; available: {', '.join(sorted(OCPP16_COMMANDS))}",
            )

    async def execute(
        self,
        pile_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        timeout: float | None = None,
        queue_ttl: float | None = None,
    ) -> CommandResult | QueuedCommand:
        self.check_action(action)
        budget = timeout if timeout is not None else self.services.settings.command_timeout
        conn = self.services.registry.get(pile_id)
        if conn is None and self.bridge is not None:
            holder = await self.services.store.pile_node(pile_id)
            if holder is not None and holder != self.services.node_id:
                # The pile is connected to another node: carry the command
                # there over MQTT (same errors as a local command).
                return await self.bridge.forward(
                    holder, pile_id, action, payload, budget, queue_ttl
                )
        if conn is None:
            if queue_ttl is None:
                raise CommandError(
                    409,
                    "pile_offline",
                    f"pile {pile_id} is offline; pass queue_ttl to send the command "
                    "when it reconnects",
                )
            return self._enqueue(pile_id, action, payload, budget, queue_ttl)
        return await self._send(conn, action, payload, budget)

    async def _send(
        self, conn: PileConnection, action: str, payload: dict[str, Any], timeout: float
    ) -> CommandResult:
        result = await conn.call(action, payload, timeout)
        if action == "RemoteStartTransaction" and result.response.get("status") == "Accepted":
            self.services.remote_starts.remember(conn.pile_id, str(payload.get("idTag")))
        log.info(
            "command answered",
            pile_id=conn.pile_id,
            action=action,
            status=result.response.get("status"),
        )
        return result

    def _enqueue(
        self, pile_id: str, action: str, payload: dict[str, Any], timeout: float, ttl: float
    ) -> QueuedCommand:
        # Validate now, so a bad payload is refused to the operator at once
        # rather than failing silently when the pile comes back.
        from .ocpp.connection import check_command_payload

        check_command_payload(action, payload)
        cmd = QueuedCommand(
            id=next(_ids),
            pile_id=pile_id,
            action=action,
            payload=payload,
            created_at=self.services.clock(),
            expires_mono=time.monotonic() + ttl,
            timeout=timeout,
        )
        q = self._queued.setdefault(pile_id, deque())
        self._expire(q)
        if len(q) >= self.services.settings.command_queue_size:
            raise CommandError(
                429, "command_queue_full", f"pile {pile_id} already has {len(q)} queued commands"
            )
        q.append(cmd)
        self._remember(cmd)
        log.info(
            "command queued for offline pile",
            pile_id=pile_id,
            action=action,
            ttl=ttl,
            command_id=cmd.id,
        )
        return cmd

    def _remember(self, cmd: QueuedCommand) -> None:
        self._history[cmd.id] = cmd
        while len(self._history) > self.max_history:
            self._history.popitem(last=False)

    def _expire(self, q: deque[QueuedCommand]) -> None:
        """Drop commands whose time-to-live ran out (they free their slot)."""
        now = time.monotonic()
        for cmd in [c for c in q if now > c.expires_mono]:
            q.remove(cmd)
            cmd.status = "expired"
            cmd.finished_at = self.services.clock()
            log.info("queued command expired", command_id=cmd.id, action=cmd.action)

    def get(self, command_id: int) -> QueuedCommand | None:
        cmd = self._history.get(command_id)
        if cmd is not None and cmd.status == "queued":
            self._expire(self._queued.get(cmd.pile_id, deque()))
        return cmd

    def queued_for(self, pile_id: str) -> list[QueuedCommand]:
        q = self._queued.get(pile_id, deque())
        self._expire(q)
        return list(q)

    def pile_connected(self, conn: PileConnection) -> None:
        """Send what waited for this pile, in order, in a task of its own."""
        if self._queued.get(conn.pile_id):
            self.services.spawn(self._drain(conn), f"drain-commands-{conn.pile_id}")

    async def _drain(self, conn: PileConnection) -> None:
        q = self._queued.get(conn.pile_id)
        while q:
            cmd = q.popleft()
            if time.monotonic() > cmd.expires_mono:
                cmd.status = "expired"
                cmd.finished_at = self.services.clock()
                log.info("queued command expired", command_id=cmd.id, action=cmd.action)
                continue
            cmd.status = "sent"
            try:
                result = await self._send(conn, cmd.action, cmd.payload, cmd.timeout)
            except CommandError as exc:
                if exc.code == "pile_offline":
                    # Gone again before answering: keep it for the next connect.
                    cmd.status = "queued"
                    q.appendleft(cmd)
                    return
                cmd.status = "failed"
                cmd.error = {"code": exc.code, "message": str(exc), **exc.extra}
            else:
                cmd.status = "answered"
                cmd.response = result.response
            cmd.finished_at = self.services.clock()
        self._queued.pop(conn.pile_id, None)
