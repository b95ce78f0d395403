"""Which connection holds which pile on this node (protocol neutral).

The newest connection of a pile wins: ``attach`` returns the connection it
replaced so the caller can close it, and ``detach`` only removes a
connection that is still the current one, so a replaced connection's late
close cannot mark the pile offline under its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class CommandError(Exception):
    """A command could not be carried out; ``status`` is the HTTP status to report."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


class CallGate:
    """One request in flight per charger (OCPP-J 1.6 §4.1.1; CBP/1 §4), at
    most ``limit`` more waiting behind it; the next one is refused with 429."""

    __slots__ = ("_lock", "waiting")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def turn(self, pile_id: str, limit: int) -> AsyncIterator[None]:
        if self.waiting >= limit:
            raise CommandError(
                429,
                "command_queue_full",
                f"pile {pile_id} already has {self.waiting} commands waiting",
            )
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


@dataclass
class CommandResult:
    action: str
    response: dict[str, Any]


class PileConnection(Protocol):
    pile_id: str
    conn_id: str
    protocol: str
    kind: str
    connected_at: datetime
    # Set when a newer connection of the pile took over: its late frames and
    # its close must not change the pile's state.
    replaced: bool
    offline_reason: str | None

    def presence_ops(self, online: bool, reason: str, detail: str | None) -> tuple[Any, ...]:
        """The presence change and its outbox events, to enqueue together."""
        ...

    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> CommandResult: ...

    async def close(self, reason: str, code: int = 1000) -> None: ...

    def abort(self, reason: str) -> None: ...

    def send_ping(self) -> None: ...

    def set_offline_detail(self, detail: str) -> None: ...


@dataclass
class Registry:
    _by_pile: dict[str, PileConnection] = field(default_factory=dict)
    _by_conn: dict[str, PileConnection] = field(default_factory=dict)

    def attach(self, conn: PileConnection) -> PileConnection | None:
        old = self._by_pile.get(conn.pile_id)
        self._by_pile[conn.pile_id] = conn
        self._by_conn[conn.conn_id] = conn
        if old is not None:
            self._by_conn.pop(old.conn_id, None)
        return old

    def detach(self, conn: PileConnection) -> bool:
        """Remove ``conn``; True if it was the pile's current connection."""
        self._by_conn.pop(conn.conn_id, None)
        if self._by_pile.get(conn.pile_id) is conn:
            del self._by_pile[conn.pile_id]
            return True
        return False

    def is_current(self, conn: PileConnection) -> bool:
        return self._by_pile.get(conn.pile_id) is conn

    def get(self, pile_id: str) -> PileConnection | None:
        return self._by_pile.get(pile_id)

    def by_conn_id(self, conn_id: str) -> PileConnection | None:
        return self._by_conn.get(conn_id)

    def __len__(self) -> int:
        return len(self._by_pile)

    def __iter__(self) -> Iterator[PileConnection]:
        return iter(list(self._by_pile.values()))
