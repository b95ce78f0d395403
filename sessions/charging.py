"""Pure rules of charging sessions, shared by OCPP and cloud-board.

No I/O and no clock: times come in as arguments.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class AuthMethod(enum.StrEnum):
    """How a charge was authorized (design: every transaction records it)."""

    REMOTE = "remote"  # app / QR code: RemoteStartTransaction, CBP/1 0x34
    CARD = "card"
    VIN = "vin"
    PASSWORD = "password"
    UNKNOWN = "unknown"  # a token the gateway does not know


class TokenType(enum.StrEnum):
    CARD = "card"
    VIN = "vin"
    PASSWORD = "password"


class TokenStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    BLOCKED = "blocked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TokenView:
    id_tag: str
    type: TokenType
    status: TokenStatus
    expiry: datetime | None
    parent_id_tag: str | None


class AuthStatus(enum.StrEnum):
    """OCPP 1.6 AuthorizationStatus values (§7.2)."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"


def authorize(token: TokenView | None, now: datetime) -> AuthStatus:
    """The verdict for a token: unknown tokens are Invalid; an expiry in the
    past makes an accepted token Expired."""
    if token is None:
        return AuthStatus.INVALID
    if token.status is TokenStatus.BLOCKED:
        return AuthStatus.BLOCKED
    if token.status is TokenStatus.EXPIRED:
        return AuthStatus.EXPIRED
    if token.expiry is not None and token.expiry <= now:
        return AuthStatus.EXPIRED
    return AuthStatus.ACCEPTED


def auth_method(token: TokenView | None, remote_started: bool) -> AuthMethod:
    """A remote start wins (the idTag is the app user's account); otherwise
    the token's own type says card, VIN or password."""
    if remote_started:
        return AuthMethod.REMOTE
    if token is None:
        return AuthMethod.UNKNOWN
    return AuthMethod(token.type.value)


def started_offline(start_at: datetime, connected_at: datetime, tolerance: timedelta) -> bool:
    """A transaction whose start lies before the current connection (beyond
    the charger clock's tolerated skew) was started while the pile had no
    link to the gateway, i.e. authorized locally (offline)."""
    return start_at < connected_at - tolerance


def energy_wh(meter_start: int, meter_stop: int) -> int:
    """Energy of a transaction from its meter register readings. A register
    that went backwards (meter replaced, firmware bug) yields 0, never a
    negative bill."""
    return max(0, meter_stop - meter_start)
