"""Constants, time conversion and the CBP/1 ↔ domain vocabularies of the
cloud-board adapter (docs/cloudboard.md, "Gateway behaviour")."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from protocol.cloudboard import (
    AuthMethod,
    AuthStatus,
    GunStatus,
    MessageType,
    StopReason,
    make_serial,
)
from sessions.charging import AuthMethod as DomainAuthMethod
from sessions.charging import AuthStatus as DomainAuthStatus

PROTOCOL: Final = "cbp1"
"""Protocol name of a cloud-board connection (``piles.protocol``, metrics, events)."""

LOGIN_TIMEOUT: Final = 30.0
"""CBP/1 §1: no login within 30 s of connecting closes the connection.
:class:`~gateway.cloudboard.server.CbpServer` copies it into ``login_timeout``
(tests shorten it there)."""

MAX_CONSECUTIVE_BAD: Final = 10
"""CBP/1 §1: the connection is closed after 10 consecutive bad frames."""

HEARTBEAT_MAX: Final = 255
"""The login reply's heartbeat interval is a u8 (CBP/1 §3 0x02)."""

CHARGER_UTC_OFFSET: Final = timedelta(hours=8)
"""CBP/1 §2 TIME is the charger's local time, "UTC+8 unless configured".
:class:`~gateway.cloudboard.server.CbpServer` copies it into ``utc_offset``."""

MAX_WRITE_BUFFER: Final = 64 * 1024
"""Bytes waiting to be sent to one charger beyond which the link is taken as
dead and aborted (a half-open link never drains; nothing the gateway sends a
charger is that large)."""

SERIAL_TTL: Final = 24 * 3600.0
"""How long the gateway remembers a SERIAL it assigned (0x32 / 0x34) until the
charger reports the session (0x13 with that SERIAL, or its 0x3B record)."""


def heartbeat_interval(configured: int) -> int:
    """The login reply's heartbeat interval: the gateway's setting capped to a u8."""
    return max(1, min(HEARTBEAT_MAX, configured))


def to_local(at: datetime, offset: timedelta = CHARGER_UTC_OFFSET) -> datetime:
    """An aware time as the naive local time of the charger (CBP/1 §2 TIME)."""
    return (at.astimezone(UTC) + offset).replace(tzinfo=None)


def from_local(local: datetime, offset: timedelta = CHARGER_UTC_OFFSET) -> datetime:
    """A charger's naive local time as an aware UTC time."""
    return (local - offset).replace(tzinfo=UTC)


# --- vocabularies ---------------------------------------------------------------------------

GUN_STATUS: Final[dict[GunStatus, str]] = {
    GunStatus.AVAILABLE: "Available",
    GunStatus.PREPARING: "Preparing",
    GunStatus.CHARGING: "Charging",
    GunStatus.SUSPENDED: "SuspendedEV",
    GunStatus.FINISHING: "Finishing",
    GunStatus.FAULTED: "Faulted",
    GunStatus.UNAVAILABLE: "Unavailable",
}
"""CBP/1 gun status → OCPP 1.6 ChargePointStatus (one vocabulary for both protocols)."""

SESSION_STATUSES: Final = frozenset({GunStatus.CHARGING, GunStatus.SUSPENDED, GunStatus.FINISHING})
"""A 0x13 with a gateway-assigned SERIAL and one of these statuses proves the
session runs: the transaction is opened then (see the handlers)."""

AUTH_METHOD: Final[dict[AuthMethod, DomainAuthMethod]] = {
    AuthMethod.REMOTE: DomainAuthMethod.REMOTE,
    AuthMethod.CARD: DomainAuthMethod.CARD,
    AuthMethod.VIN: DomainAuthMethod.VIN,
    AuthMethod.PASSWORD: DomainAuthMethod.PASSWORD,
}

AUTH_RESULT: Final[dict[DomainAuthStatus, AuthStatus]] = {
    DomainAuthStatus.ACCEPTED: AuthStatus.ACCEPTED,
    DomainAuthStatus.INVALID: AuthStatus.INVALID,
    DomainAuthStatus.BLOCKED: AuthStatus.BLOCKED,
    DomainAuthStatus.EXPIRED: AuthStatus.EXPIRED,
    DomainAuthStatus.CONCURRENT_TX: AuthStatus.ALREADY_IN_USE,
}
"""The token store's verdict (OCPP AuthorizationStatus) → 0x32 result."""

STOP_REASON: Final[dict[StopReason, str]] = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_FULL: "EVFull",
    StopReason.ENERGY_LIMIT: "EnergyLimit",
    StopReason.TIME_LIMIT: "TimeLimit",
    StopReason.FAULT: "Fault",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.UNPLUGGED: "EVDisconnected",
    StopReason.OTHER: "Other",
}
"""0x3B stop reason → ``transactions.stop_reason``: the OCPP 1.6 Reason where
OCPP has one, otherwise a CamelCase name of the CBP/1 reason."""

REPLY_TYPE: Final[dict[MessageType, MessageType]] = {
    MessageType.READ_REALTIME: MessageType.REALTIME_DATA,
    MessageType.REMOTE_START: MessageType.REMOTE_START_REPLY,
    MessageType.REMOTE_STOP: MessageType.REMOTE_STOP_REPLY,
    MessageType.WHITELIST_UPDATE: MessageType.WHITELIST_UPDATE_REPLY,
    MessageType.WHITELIST_VERSION_QUERY: MessageType.WHITELIST_VERSION_REPLY,
    MessageType.TIME_SYNC: MessageType.TIME_SYNC_REPLY,
    MessageType.REBOOT: MessageType.REBOOT_REPLY,
    MessageType.FIRMWARE_UPDATE: MessageType.FIRMWARE_UPDATE_REPLY,
}
"""Requests the gateway originates and the TYPE that answers each (CBP/1 §3)."""


# --- serials the gateway assigned -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingSession:
    """A SERIAL the gateway handed out (0x32 accepted, or 0x34 remote start)
    and what it knows about the session until the charger reports it."""

    pile_id: str
    gun: int
    token: str
    method: DomainAuthMethod
    remote: bool
    at: float  # monotonic time it was handed out


class SerialBook:
    """The SERIALs this node assigned, until the session shows up (bounded,
    time-limited, in memory: after a restart the 0x3B record alone is enough)."""

    def __init__(self, ttl: float = SERIAL_TTL, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._by_serial: OrderedDict[str, PendingSession] = OrderedDict()
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._by_serial)

    def new_serial(self, pile_id: str, gun: int, local_now: datetime) -> str:
        """pile + gun + ``yyMMddHHmmss`` + a counter (CBP/1 §2 SERIAL)."""
        return make_serial(
            pile_id, gun, local_now.replace(microsecond=0), next(self._counter) % 10_000
        )

    def remember(self, serial: str, session: PendingSession) -> None:
        self._by_serial.pop(serial, None)
        self._by_serial[serial] = session
        while len(self._by_serial) > self._max:
            self._by_serial.popitem(last=False)

    def get(self, serial: str, now: float | None = None) -> PendingSession | None:
        session = self._by_serial.get(serial)
        if session is None:
            return None
        t = time.monotonic() if now is None else now
        if t - session.at > self.ttl:
            del self._by_serial[serial]
            return None
        return session

    def pop(self, serial: str, now: float | None = None) -> PendingSession | None:
        session = self.get(serial, now)
        if session is not None:
            del self._by_serial[serial]
        return session
