"""What every protocol adapter shares: storage, queues, registry, presence."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sessions.presence import PresenceTracker

from .clock import Clock
from .config import Settings
from .eventbus import EventSink
from .metrics import Metrics
from .observers import Observers
from .passwords import VerifiedCache
from .registry import Registry
from .storage.repo import Store
from .storage.writer import WriteBehind


class BootLimiter:
    """Token bucket over BootNotifications of this node.

    During a reconnect storm (a site's power returns, a 4G cell comes back)
    every charger boots at once; above ``rate`` boots per second the
    gateway answers Pending with a randomized retry instead of letting the
    storage queue grow without bound.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._last = time.monotonic()

    def allow(self, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        self._tokens = min(self.capacity, self._tokens + (t - self._last) * self.rate)
        self._last = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class RemoteStarts:
    """Remote starts the gateway sent recently, so the StartTransaction that
    follows is recorded with auth method "remote" (OCPP 1.6 has no field for
    it). Bounded and time-limited."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._sent: OrderedDict[tuple[str, str], float] = OrderedDict()

    def remember(self, pile_id: str, id_tag: str, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        key = (pile_id, id_tag)
        self._sent.pop(key, None)
        self._sent[key] = t
        while len(self._sent) > self._max:
            self._sent.popitem(last=False)

    def take(self, pile_id: str, id_tag: str, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        sent = self._sent.pop((pile_id, id_tag), None)
        return sent is not None and t - sent <= self.ttl


@dataclass
class Services:
    settings: Settings
    store: Store
    writer: WriteBehind
    metrics: Metrics
    registry: Registry
    tracker: PresenceTracker[str]
    clock: Clock
    boot_limiter: BootLimiter
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    events: EventSink
    remote_starts: RemoteStarts = field(default_factory=RemoteStarts)
    verified: VerifiedCache = field(default_factory=VerifiedCache)
    observers: Observers = field(default_factory=Observers)

    @property
    def node_id(self) -> str:
        return self.settings.node_id
