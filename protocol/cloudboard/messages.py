"""CBP/1 messages (CBP/1 §3): one frozen dataclass per TYPE, BODY in and out.

:func:`encode_body` turns a message into its BODY bytes; :func:`decode_body`
turns a TYPE and BODY back into a message. Both check the exact BODY size of
the TYPE and every range and enumeration CBP/1 §2-§3 states, in both
directions; values the specification leaves open (protocol version, gun
count, heartbeat interval, ...) are passed through for the gateway to judge.

Field layout is declared once, next to each field (``metadata`` of the
dataclass field), in wire order; wire units stay in the names
(``voltage_dv`` is 0.1 V, ``meter_wh`` is Wh).

Which side sends a TYPE: odd = charger to gateway, even = gateway to charger
(CBP/1 §1); see :func:`is_from_charger`. The codec decodes both directions
(the simulator speaks the charger's side); the gateway refuses the wrong one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Final, Generic, TypeVar

from protocol.cloudboard.errors import BodyError, FieldError, UnknownTypeError
from protocol.cloudboard.fields import (
    GUN_SIZE,
    PILE_SIZE,
    SERIAL_SIZE,
    TIME_SIZE,
    TOKEN_SIZE,
    decode_ascii,
    decode_bcd,
    decode_gun,
    decode_pile,
    decode_serial,
    decode_time,
    decode_token,
    decode_uint,
    encode_ascii,
    encode_bcd,
    encode_gun,
    encode_pile,
    encode_serial,
    encode_time,
    encode_token,
    encode_u8,
)

__all__ = [
    "FIRMWARE_URL_MAX",
    "MESSAGE_CLASSES",
    "PROTOCOL_VERSION_1_0",
    "WHITELIST_ENTRIES_MAX",
    "AuthMethod",
    "AuthRequest",
    "AuthResult",
    "AuthStatus",
    "Display",
    "FirmwareStatus",
    "FirmwareStatusAck",
    "FirmwareStatusCode",
    "FirmwareUpdate",
    "FirmwareUpdateReply",
    "FirmwareUpdateResult",
    "GunStatus",
    "Heartbeat",
    "HeartbeatAck",
    "Kind",
    "Login",
    "LoginRejectReason",
    "LoginReply",
    "LoginResult",
    "Message",
    "MessageType",
    "Network",
    "PileState",
    "ReadRealtime",
    "RealtimeData",
    "Reboot",
    "RebootMode",
    "RebootReply",
    "RebootResult",
    "RemoteStart",
    "RemoteStartRejectReason",
    "RemoteStartReply",
    "RemoteStartResult",
    "RemoteStop",
    "RemoteStopRejectReason",
    "RemoteStopReply",
    "RemoteStopResult",
    "StopReason",
    "TimeSync",
    "TimeSyncReply",
    "TransactionConfirm",
    "TransactionConfirmResult",
    "TransactionRecord",
    "WhitelistAction",
    "WhitelistEntry",
    "WhitelistMode",
    "WhitelistUpdate",
    "WhitelistUpdateReply",
    "WhitelistUpdateResult",
    "WhitelistVersionQuery",
    "WhitelistVersionReply",
    "body_size",
    "decode_body",
    "encode_body",
    "is_from_charger",
]

PROTOCOL_VERSION_1_0: Final = 10
"""Login protocol version byte of CBP/1.0 (CBP/1 §3 0x01: ``10`` = 1.0)."""
WHITELIST_ENTRIES_MAX: Final = 10
"""Entries per 0x44 part (CBP/1 §3 0x44: count 0..10)."""
FIRMWARE_URL_MAX: Final = 176
"""Longest firmware URL (CBP/1 §3 0x94: L <= 176)."""
_FIRMWARE_URL_SCHEMES: Final = ("http://", "https://")


# --------------------------------------------------------------------------
# Enumerations (CBP/1 §2 "Enumerations used below" and §3)


class MessageType(enum.IntEnum):
    """TYPE byte of every message of CBP/1 §3 (odd: charger to gateway)."""

    LOGIN = 0x01
    LOGIN_REPLY = 0x02
    HEARTBEAT = 0x03
    HEARTBEAT_ACK = 0x04
    READ_REALTIME = 0x12
    REALTIME_DATA = 0x13
    AUTH_REQUEST = 0x31
    AUTH_RESULT = 0x32
    REMOTE_START_REPLY = 0x33
    REMOTE_START = 0x34
    REMOTE_STOP_REPLY = 0x35
    REMOTE_STOP = 0x36
    TRANSACTION_RECORD = 0x3B
    TRANSACTION_CONFIRM = 0x40
    WHITELIST_UPDATE_REPLY = 0x43
    WHITELIST_UPDATE = 0x44
    WHITELIST_VERSION_REPLY = 0x47
    WHITELIST_VERSION_QUERY = 0x48
    TIME_SYNC_REPLY = 0x55
    TIME_SYNC = 0x56
    REBOOT_REPLY = 0x91
    REBOOT = 0x92
    FIRMWARE_UPDATE_REPLY = 0x93
    FIRMWARE_UPDATE = 0x94
    FIRMWARE_STATUS = 0x95
    FIRMWARE_STATUS_ACK = 0x96


def is_from_charger(message_type: int) -> bool:
    """CBP/1 §1: odd TYPE = charger to gateway, even = gateway to charger."""
    return bool(message_type & 1)


class Kind(enum.IntEnum):
    """CBP/1 §2 kind: the same codes as the pile ID's kind (detail) code."""

    AC = 1
    DC = 2


class Display(enum.IntEnum):
    """CBP/1 §2 display."""

    NONE = 0
    SEGMENT = 1
    """Segment / LED display."""
    TOUCH_SCREEN = 2


class AuthMethod(enum.IntEnum):
    """CBP/1 §2 auth method."""

    REMOTE = 0
    """App / QR code."""
    CARD = 1
    VIN = 2
    PASSWORD = 3
    """Offline password typed at the charger."""


class GunStatus(enum.IntEnum):
    """CBP/1 §2 gun status."""

    AVAILABLE = 1
    PREPARING = 2
    """Plugged in."""
    CHARGING = 3
    SUSPENDED = 4
    FINISHING = 5
    FAULTED = 6
    UNAVAILABLE = 7


class Network(enum.IntEnum):
    """CBP/1 §3 0x01 network."""

    CELLULAR = 0
    ETHERNET = 1
    WIFI = 2
    OTHER = 3


class LoginResult(enum.IntEnum):
    """CBP/1 §3 0x02 result."""

    ACCEPTED = 0
    REJECTED = 1


class LoginRejectReason(enum.IntEnum):
    """CBP/1 §3 0x02 reason."""

    NONE = 0
    UNKNOWN_CHARGER = 1
    INVALID_PILE_ID = 2
    KIND_MISMATCH = 3
    """The login's kind contradicts the pile ID."""
    PROTOCOL_VERSION_NOT_SUPPORTED = 4
    BAD_AUTH_KEY = 5


class PileState(enum.IntEnum):
    """CBP/1 §3 0x03 pile state."""

    NORMAL = 0
    FAULTED = 1


class AuthStatus(enum.IntEnum):
    """CBP/1 §3 0x32 result."""

    ACCEPTED = 0
    INVALID = 1
    BLOCKED = 2
    EXPIRED = 3
    ALREADY_IN_USE = 4


class RemoteStartResult(enum.IntEnum):
    """CBP/1 §3 0x33 result."""

    STARTED = 0
    REJECTED = 1


class RemoteStartRejectReason(enum.IntEnum):
    """CBP/1 §3 0x33 reason."""

    NONE = 0
    GUN_BUSY = 1
    NOT_PLUGGED_IN = 2
    FAULTED = 3
    UNKNOWN_GUN = 4


class RemoteStopResult(enum.IntEnum):
    """CBP/1 §3 0x35 result."""

    STOPPING = 0
    REJECTED = 1


class RemoteStopRejectReason(enum.IntEnum):
    """CBP/1 §3 0x35 reason."""

    NONE = 0
    NOT_CHARGING = 1
    UNKNOWN_SERIAL = 2


class StopReason(enum.IntEnum):
    """CBP/1 §3 0x3B stop reason."""

    LOCAL = 0
    """User at the charger."""
    REMOTE = 1
    EV_FULL = 2
    ENERGY_LIMIT = 3
    TIME_LIMIT = 4
    FAULT = 5
    POWER_LOSS = 6
    EMERGENCY_STOP = 7
    UNPLUGGED = 8
    OTHER = 9


class TransactionConfirmResult(enum.IntEnum):
    """CBP/1 §3 0x40 result."""

    STORED = 0
    REJECTED = 1
    """Rejected: the charger must not re-send the record."""


class WhitelistMode(enum.IntEnum):
    """CBP/1 §3 0x44 mode."""

    FULL = 0
    """Full replace."""
    DIFFERENTIAL = 1


class WhitelistAction(enum.IntEnum):
    """CBP/1 §3 0x44 entry action."""

    ADD = 0
    """Add or update."""
    REMOVE = 1


class WhitelistUpdateResult(enum.IntEnum):
    """CBP/1 §3 0x43 result."""

    ACCEPTED = 0
    FAILED = 1
    VERSION_MISMATCH = 2
    """The base version is not what the charger holds."""
    CAPACITY_EXCEEDED = 3


class RebootMode(enum.IntEnum):
    """CBP/1 §3 0x92 mode."""

    NOW = 0
    WHEN_IDLE = 1
    """When no gun is charging."""


class RebootResult(enum.IntEnum):
    """CBP/1 §3 0x91 result."""

    ACCEPTED = 0
    REJECTED = 1


class FirmwareUpdateResult(enum.IntEnum):
    """CBP/1 §3 0x93 result."""

    ACCEPTED = 0
    REJECTED_CHARGING = 1
    REJECTED_UNSUPPORTED = 2
    ALREADY_AT_TARGET = 3


class FirmwareStatusCode(enum.IntEnum):
    """CBP/1 §3 0x95 status."""

    DOWNLOADING = 1
    DOWNLOADED = 2
    DOWNLOAD_FAILED = 3
    CHECKSUM_FAILED = 4
    INSTALLING = 5
    INSTALLED = 6
    """The charger reboots and logs in again; the firmware version of that
    login is the proof of the upgrade."""
    INSTALL_FAILED = 7


# --------------------------------------------------------------------------
# Wire layouts of fields

T = TypeVar("T")
E = TypeVar("E", bound=enum.IntEnum)


class _Wire(Generic[T]):
    """How one message field is laid out. ``size`` is ``None`` when variable."""

    size: int | None = None

    def write(self, value: T) -> bytes:
        raise NotImplementedError

    def read(self, data: bytes, offset: int) -> tuple[T, int]:
        raise NotImplementedError


class _Fixed(_Wire[T]):
    """A fixed-size field: ``encode`` / ``decode`` exactly ``size`` bytes."""

    size: int

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, value: T) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> T:
        raise NotImplementedError

    def write(self, value: T) -> bytes:
        return self.encode(value)

    def read(self, data: bytes, offset: int) -> tuple[T, int]:
        end = offset + self.size
        if end > len(data):
            raise FieldError(
                f"needs {self.size} bytes at offset {offset}, body ends at {len(data)}"
            )
        return self.decode(data[offset:end]), end


class _UInt(_Fixed[int]):
    def __init__(self, size: int, low: int = 0, high: int | None = None) -> None:
        super().__init__(size)
        self.low = low
        self.high = (1 << (8 * size)) - 1 if high is None else high

    def _check(self, value: int) -> int:
        if not self.low <= value <= self.high:
            raise FieldError(f"must be {self.low}..{self.high}, got {value}")
        return value

    def encode(self, value: int) -> bytes:
        return self._check(value).to_bytes(self.size, "little")

    def decode(self, data: bytes) -> int:
        return self._check(decode_uint(data))


class _Enum(_Fixed[E]):
    """A u8 enumeration; ``allowed`` narrows it where §3 does (auth method 1..3)."""

    def __init__(self, enum_type: type[E], allowed: tuple[E, ...] | None = None) -> None:
        super().__init__(1)
        self.enum_type = enum_type
        self.allowed: tuple[E, ...] = tuple(enum_type) if allowed is None else allowed

    def _check(self, value: int) -> E:
        for member in self.allowed:
            if member == value:
                return member
        choices = ", ".join(f"{int(m)} {m.name}" for m in self.allowed)
        raise FieldError(f"{value} is not a {self.enum_type.__name__} ({choices})")

    def encode(self, value: E) -> bytes:
        return encode_u8(int(self._check(value)))

    def decode(self, data: bytes) -> E:
        return self._check(data[0])


class _Bool(_Fixed[bool]):
    """A u8 flag: ``0`` or ``1`` only."""

    def __init__(self) -> None:
        super().__init__(1)

    def encode(self, value: bool) -> bytes:
        return b"\x01" if value else b"\x00"

    def decode(self, data: bytes) -> bool:
        if data[0] > 1:
            raise FieldError(f"flag must be 0 or 1, got {data[0]}")
        return data[0] == 1


class _Zero(_Fixed[None]):
    """A constant ``0x00`` byte (CBP/1 §3 0x04: "PILE, 0x00")."""

    def __init__(self) -> None:
        super().__init__(1)

    def encode(self, value: None) -> bytes:
        return b"\x00"

    def decode(self, data: bytes) -> None:
        if data[0]:
            raise FieldError(f"must be 0x00, got {data[0]:#04x}")


class _Pile(_Fixed[str]):
    def __init__(self) -> None:
        super().__init__(PILE_SIZE)

    def encode(self, value: str) -> bytes:
        return encode_pile(value)

    def decode(self, data: bytes) -> str:
        return decode_pile(data)


class _Gun(_Fixed[int]):
    def __init__(self) -> None:
        super().__init__(GUN_SIZE)

    def encode(self, value: int) -> bytes:
        return encode_gun(value)

    def decode(self, data: bytes) -> int:
        return decode_gun(data)


class _OptionalSerial(_Fixed[str | None]):
    """SERIAL where zeros mean none (0x13 when not charging, 0x32 when not accepted)."""

    def __init__(self) -> None:
        super().__init__(SERIAL_SIZE)

    def encode(self, value: str | None) -> bytes:
        return encode_serial(value)

    def decode(self, data: bytes) -> str | None:
        return decode_serial(data)


class _Serial(_Fixed[str]):
    """SERIAL that the message cannot do without (0x34, 0x36, 0x3B, 0x40)."""

    def __init__(self) -> None:
        super().__init__(SERIAL_SIZE)

    def encode(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise FieldError("a serial is required here")
        return encode_serial(value)

    def decode(self, data: bytes) -> str:
        serial = decode_serial(data)
        if serial is None:
            raise FieldError("is all zeros (none), but a serial is required here")
        return serial


class _OptionalBcd(_Fixed[str | None]):
    """BCD*n* digits where all zeros mean none (0x01 SIM ICCID)."""

    def encode(self, value: str | None) -> bytes:
        if value is None:
            return bytes(self.size)
        if value == "0" * (2 * self.size):
            raise FieldError("all zeros means none: pass None")
        return encode_bcd(value, self.size)

    def decode(self, data: bytes) -> str | None:
        return None if not any(data) else decode_bcd(data)


class _Time(_Fixed[datetime]):
    def __init__(self) -> None:
        super().__init__(TIME_SIZE)

    def encode(self, value: datetime) -> bytes:
        return encode_time(value)

    def decode(self, data: bytes) -> datetime:
        return decode_time(data)


class _Ascii(_Fixed[str]):
    def encode(self, value: str) -> bytes:
        return encode_ascii(value, self.size)

    def decode(self, data: bytes) -> str:
        return decode_ascii(data)


class _Token(_Fixed[str]):
    def __init__(self) -> None:
        super().__init__(TOKEN_SIZE)

    def encode(self, value: str) -> bytes:
        return encode_token(value)

    def decode(self, data: bytes) -> str:
        return decode_token(data)


class _Soc(_Fixed[int | None]):
    """SoC u8: 0..100 %, ``0xFF`` unknown (``None``; always for AC), CBP/1 §3 0x13."""

    def __init__(self) -> None:
        super().__init__(1)

    def encode(self, value: int | None) -> bytes:
        if value is None:
            return b"\xff"
        if not 0 <= value <= 100:
            raise FieldError(f"SoC must be 0..100 or None (unknown), got {value}")
        return encode_u8(value)

    def decode(self, data: bytes) -> int | None:
        if data[0] == 0xFF:
            return None
        if data[0] > 100:
            raise FieldError(f"SoC must be 0..100 or 0xFF (unknown), got {data[0]}")
        return data[0]


class _Bytes(_Fixed[bytes]):
    """Raw bytes (0x94 SHA-256)."""

    def encode(self, value: bytes) -> bytes:
        if len(value) != self.size:
            raise FieldError(f"must be {self.size} bytes, got {len(value)}")
        return bytes(value)

    def decode(self, data: bytes) -> bytes:
        return bytes(data)


class _Url(_Wire[str]):
    """0x94: URL length L u8, then L bytes of URL (L <= 176; http:// or https://).

    The URL must be printable ASCII without spaces (0x21..0x7E) and have
    something after the scheme; the scheme is lowercase, as CBP/1 §3 writes it.
    """

    @staticmethod
    def _check(url: str) -> str:
        if not url.isascii() or not all("\x21" <= c <= "\x7e" for c in url):
            raise FieldError(f"URL must be printable ASCII without spaces, got {url!r}")
        if len(url) > FIRMWARE_URL_MAX:
            raise FieldError(f"URL is {len(url)} characters, at most {FIRMWARE_URL_MAX}")
        if not any(url.startswith(s) and len(url) > len(s) for s in _FIRMWARE_URL_SCHEMES):
            raise FieldError(f"URL must be http://... or https://..., got {url!r}")
        return url

    def write(self, value: str) -> bytes:
        url = self._check(value).encode("ascii")
        return encode_u8(len(url)) + url

    def read(self, data: bytes, offset: int) -> tuple[str, int]:
        if offset >= len(data):
            raise FieldError("URL length byte missing")
        length = data[offset]
        start, end = offset + 1, offset + 1 + length
        if end != len(data):
            raise FieldError(f"URL length L={length} needs a body of {end} bytes, got {len(data)}")
        raw = data[start:end]
        if not raw.isascii():
            raise FieldError(f"URL {raw!r} has a byte above 0x7F")
        return self._check(raw.decode("ascii")), end


# --------------------------------------------------------------------------
# Messages


def _w(wire: _Wire[Any]) -> dict[str, _Wire[Any]]:
    """Field metadata: the field's wire layout."""
    return {"cbp": wire}


_PILE: Final = _w(_Pile())
_GUN: Final = _w(_Gun())
_U8: Final = _w(_UInt(1))
_U16: Final = _w(_UInt(2))
_U32: Final = _w(_UInt(4))
_TIME: Final = _w(_Time())
_TOKEN: Final = _w(_Token())
_SERIAL: Final = _w(_Serial())
_OPT_SERIAL: Final = _w(_OptionalSerial())
_BOOL: Final = _w(_Bool())
_AUTH_AT_CHARGER: Final = (AuthMethod.CARD, AuthMethod.VIN, AuthMethod.PASSWORD)


def _enum(enum_type: type[E], allowed: tuple[E, ...] | None = None) -> dict[str, _Wire[Any]]:
    return _w(_Enum(enum_type, allowed))


@dataclass(frozen=True, slots=True)
class Login:
    """0x01 Login, charger to gateway, 81 bytes (CBP/1 §3).

    The only message accepted before a successful login (CBP/1 §1).
    """

    TYPE: ClassVar[MessageType] = MessageType.LOGIN
    pile: str = field(metadata=_PILE)
    kind: Kind = field(metadata=_enum(Kind))
    gun_count: int = field(metadata=_U8)
    protocol_version: int = field(metadata=_U8)
    """``10`` = 1.0 (:data:`PROTOCOL_VERSION_1_0`); any value decodes, the gateway
    answers an unsupported one with reason 4."""
    firmware_version: str = field(metadata=_w(_Ascii(24)))
    model: str = field(metadata=_w(_Ascii(16)))
    network: Network = field(metadata=_enum(Network))
    iccid: str | None = field(metadata=_w(_OptionalBcd(10)))
    """SIM ICCID, 20 digits; ``None`` when the charger has none (zeros)."""
    display: Display = field(metadata=_enum(Display))
    auth_key: str = field(metadata=_w(_Ascii(16)))
    """Per-charger secret; ``""`` = none (all NUL)."""


@dataclass(frozen=True, slots=True)
class LoginReply:
    """0x02 Login reply, gateway to charger, 20 bytes (CBP/1 §3).

    After a rejection the gateway closes the connection.
    """

    TYPE: ClassVar[MessageType] = MessageType.LOGIN_REPLY
    pile: str = field(metadata=_PILE)
    result: LoginResult = field(metadata=_enum(LoginResult))
    reason: LoginRejectReason = field(metadata=_enum(LoginRejectReason))
    heartbeat_interval: int = field(metadata=_U8)
    """Seconds."""
    server_time: datetime = field(metadata=_TIME)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """0x03 Heartbeat, charger to gateway, 11 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    pile: str = field(metadata=_PILE)
    pile_state: PileState = field(metadata=_enum(PileState))


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """0x04 Heartbeat ack, gateway to charger, 11 bytes: PILE, ``0x00`` (CBP/1 §3).

    The ``0x00`` byte has no field; decoding requires it to be zero.
    """

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT_ACK
    pile: str = field(metadata=_PILE)


@dataclass(frozen=True, slots=True)
class ReadRealtime:
    """0x12 Read real-time data, gateway to charger, 12 bytes (CBP/1 §3).

    Answered by 0x13 echoing the SEQ.
    """

    TYPE: ClassVar[MessageType] = MessageType.READ_REALTIME
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)


@dataclass(frozen=True, slots=True)
class RealtimeData:
    """0x13 Real-time data, charger to gateway, 59 bytes (CBP/1 §3). No reply."""

    TYPE: ClassVar[MessageType] = MessageType.REALTIME_DATA
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    status: GunStatus = field(metadata=_enum(GunStatus))
    serial: str | None = field(metadata=_OPT_SERIAL)
    """``None`` (zeros) when not charging."""
    voltage_dv: int = field(metadata=_U16)
    """0.1 V."""
    current_da: int = field(metadata=_U16)
    """0.1 A."""
    power_w: int = field(metadata=_U32)
    meter_wh: int = field(metadata=_U32)
    """Lifetime import register of this gun."""
    session_energy_wh: int = field(metadata=_U32)
    soc: int | None = field(metadata=_w(_Soc()))
    """0..100 %; ``None`` = unknown (``0xFF``, always for AC)."""
    fault_code: int = field(metadata=_U16)
    """``0`` = none."""
    sample_time: datetime = field(metadata=_TIME)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """0x31 Start authorization request, charger to gateway, 33 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH_REQUEST
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    method: AuthMethod = field(metadata=_enum(AuthMethod, _AUTH_AT_CHARGER))
    """Card, VIN or password (1..3); never remote."""
    token: str = field(metadata=_TOKEN)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """0x32 Authorization result, gateway to charger, 53 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH_RESULT
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    token: str = field(metadata=_TOKEN)
    result: AuthStatus = field(metadata=_enum(AuthStatus))
    serial: str | None = field(metadata=_OPT_SERIAL)
    """Assigned by the gateway when accepted; ``None`` (zeros) otherwise."""


@dataclass(frozen=True, slots=True)
class RemoteStartReply:
    """0x33 Remote start reply, charger to gateway, 14 bytes (CBP/1 §3).

    The echoed SEQ ties it to the 0x34 request.
    """

    TYPE: ClassVar[MessageType] = MessageType.REMOTE_START_REPLY
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    result: RemoteStartResult = field(metadata=_enum(RemoteStartResult))
    reason: RemoteStartRejectReason = field(metadata=_enum(RemoteStartRejectReason))


@dataclass(frozen=True, slots=True)
class RemoteStart:
    """0x34 Remote start, gateway to charger, 56 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.REMOTE_START
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    serial: str = field(metadata=_SERIAL)
    """Assigned by the gateway; required."""
    token: str = field(metadata=_TOKEN)
    """Account of the app user."""
    energy_limit_wh: int = field(metadata=_U32)
    """``0`` = no limit."""


@dataclass(frozen=True, slots=True)
class RemoteStopReply:
    """0x35 Remote stop reply, charger to gateway, 14 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.REMOTE_STOP_REPLY
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    result: RemoteStopResult = field(metadata=_enum(RemoteStopResult))
    reason: RemoteStopRejectReason = field(metadata=_enum(RemoteStopRejectReason))


@dataclass(frozen=True, slots=True)
class RemoteStop:
    """0x36 Remote stop, gateway to charger, 32 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.REMOTE_STOP
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    serial: str = field(metadata=_SERIAL)


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """0x3B Transaction record, charger to gateway, 81 bytes (CBP/1 §3).

    Kept by the charger until confirmed and re-sent after each login; the
    gateway must be idempotent on ``serial``.
    """

    TYPE: ClassVar[MessageType] = MessageType.TRANSACTION_RECORD
    serial: str = field(metadata=_SERIAL)
    """Made by the gateway, or by the charger for sessions started offline; required."""
    pile: str = field(metadata=_PILE)
    gun: int = field(metadata=_GUN)
    start_time: datetime = field(metadata=_TIME)
    stop_time: datetime = field(metadata=_TIME)
    meter_start_wh: int = field(metadata=_U32)
    meter_stop_wh: int = field(metadata=_U32)
    energy_wh: int = field(metadata=_U32)
    auth_method: AuthMethod = field(metadata=_enum(AuthMethod))
    offline: bool = field(metadata=_BOOL)
    """Authorized locally from the offline whitelist or an offline password
    while the charger was offline (``1``)."""
    token: str = field(metadata=_TOKEN)
    stop_reason: StopReason = field(metadata=_enum(StopReason))


@dataclass(frozen=True, slots=True)
class TransactionConfirm:
    """0x40 Transaction record confirm, gateway to charger, 21 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.TRANSACTION_CONFIRM
    serial: str = field(metadata=_SERIAL)
    result: TransactionConfirmResult = field(metadata=_enum(TransactionConfirmResult))


@dataclass(frozen=True, slots=True)
class WhitelistEntry:
    """One entry of a 0x44 whitelist update, 22 bytes (CBP/1 §3)."""

    action: WhitelistAction
    method: AuthMethod
    """Card, VIN or password (1..3)."""
    token: str


_ENTRY_ACTION: Final = _Enum(WhitelistAction)
_ENTRY_METHOD: Final = _Enum(AuthMethod, _AUTH_AT_CHARGER)
_ENTRY_TOKEN: Final = _Token()
_ENTRY_SIZE: Final = 22


class _Entries(_Wire[tuple[WhitelistEntry, ...]]):
    """0x44: count u8 (0..10), then ``count`` entries of 22 bytes, ending the body."""

    def write(self, value: tuple[WhitelistEntry, ...]) -> bytes:
        if len(value) > WHITELIST_ENTRIES_MAX:
            raise FieldError(f"at most {WHITELIST_ENTRIES_MAX} entries per part, got {len(value)}")
        out = bytearray(encode_u8(len(value)))
        for index, entry in enumerate(value):
            try:
                out += _ENTRY_ACTION.encode(entry.action)
                out += _ENTRY_METHOD.encode(entry.method)
                out += _ENTRY_TOKEN.encode(entry.token)
            except FieldError as exc:
                raise FieldError(f"entry {index}: {exc}") from None
        return bytes(out)

    def read(self, data: bytes, offset: int) -> tuple[tuple[WhitelistEntry, ...], int]:
        if offset >= len(data):
            raise FieldError("count byte missing")
        count = data[offset]
        if count > WHITELIST_ENTRIES_MAX:
            raise FieldError(f"count must be 0..{WHITELIST_ENTRIES_MAX}, got {count}")
        end = offset + 1 + _ENTRY_SIZE * count
        if end != len(data):
            raise FieldError(f"count {count} needs a body of {end} bytes, got {len(data)}")
        entries: list[WhitelistEntry] = []
        for index in range(count):
            at = offset + 1 + _ENTRY_SIZE * index
            try:
                entries.append(
                    WhitelistEntry(
                        _ENTRY_ACTION.decode(data[at : at + 1]),
                        _ENTRY_METHOD.decode(data[at + 1 : at + 2]),
                        _ENTRY_TOKEN.decode(data[at + 2 : at + _ENTRY_SIZE]),
                    )
                )
            except FieldError as exc:
                raise FieldError(f"entry {index}: {exc}") from None
        return tuple(entries), end


@dataclass(frozen=True, slots=True)
class WhitelistUpdate:
    """0x44 Whitelist update, gateway to charger, 22 + 22 × count bytes (CBP/1 §3).

    The count byte is ``len(entries)`` (0..10). A list of more than 10
    entries goes in parts, each answered by 0x43; an empty full list (one
    part, no entries, ``last``) clears the whitelist.
    """

    TYPE: ClassVar[MessageType] = MessageType.WHITELIST_UPDATE
    pile: str = field(metadata=_PILE)
    version: int = field(metadata=_U32)
    base_version: int = field(metadata=_U32)
    """Differential: the version the charger must hold; ``0`` for full."""
    mode: WhitelistMode = field(metadata=_enum(WhitelistMode))
    part: int = field(metadata=_U8)
    """0-based."""
    last: bool = field(metadata=_BOOL)
    entries: tuple[WhitelistEntry, ...] = field(metadata=_w(_Entries()))


@dataclass(frozen=True, slots=True)
class WhitelistUpdateReply:
    """0x43 Whitelist update reply, charger to gateway, 16 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.WHITELIST_UPDATE_REPLY
    pile: str = field(metadata=_PILE)
    version: int = field(metadata=_U32)
    part: int = field(metadata=_U8)
    result: WhitelistUpdateResult = field(metadata=_enum(WhitelistUpdateResult))


@dataclass(frozen=True, slots=True)
class WhitelistVersionQuery:
    """0x48 Whitelist version query, gateway to charger, 10 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.WHITELIST_VERSION_QUERY
    pile: str = field(metadata=_PILE)


@dataclass(frozen=True, slots=True)
class WhitelistVersionReply:
    """0x47 Whitelist version reply, charger to gateway, 18 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.WHITELIST_VERSION_REPLY
    pile: str = field(metadata=_PILE)
    version: int = field(metadata=_U32)
    entry_count: int = field(metadata=_U16)
    """Entries held."""
    capacity: int = field(metadata=_U16)


@dataclass(frozen=True, slots=True)
class TimeSyncReply:
    """0x55 Time sync reply, charger to gateway, 17 bytes (CBP/1 §3):
    the charger's clock after setting it."""

    TYPE: ClassVar[MessageType] = MessageType.TIME_SYNC_REPLY
    pile: str = field(metadata=_PILE)
    time: datetime = field(metadata=_TIME)


@dataclass(frozen=True, slots=True)
class TimeSync:
    """0x56 Time sync, gateway to charger, 17 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.TIME_SYNC
    pile: str = field(metadata=_PILE)
    time: datetime = field(metadata=_TIME)


@dataclass(frozen=True, slots=True)
class RebootReply:
    """0x91 Reboot reply, charger to gateway, 11 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.REBOOT_REPLY
    pile: str = field(metadata=_PILE)
    result: RebootResult = field(metadata=_enum(RebootResult))


@dataclass(frozen=True, slots=True)
class Reboot:
    """0x92 Reboot, gateway to charger, 11 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.REBOOT
    pile: str = field(metadata=_PILE)
    mode: RebootMode = field(metadata=_enum(RebootMode))


@dataclass(frozen=True, slots=True)
class FirmwareUpdateReply:
    """0x93 Firmware update reply, charger to gateway, 15 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.FIRMWARE_UPDATE_REPLY
    pile: str = field(metadata=_PILE)
    task_id: int = field(metadata=_U32)
    result: FirmwareUpdateResult = field(metadata=_enum(FirmwareUpdateResult))


@dataclass(frozen=True, slots=True)
class FirmwareUpdate:
    """0x94 Firmware update, gateway to charger, 75 + L bytes (CBP/1 §3).

    The URL length byte L is ``len(url)`` (L <= 176).
    """

    TYPE: ClassVar[MessageType] = MessageType.FIRMWARE_UPDATE
    pile: str = field(metadata=_PILE)
    task_id: int = field(metadata=_U32)
    target_version: str = field(metadata=_w(_Ascii(24)))
    sha256: bytes = field(metadata=_w(_Bytes(32)))
    """SHA-256 of the image, 32 bytes."""
    image_size: int = field(metadata=_U32)
    url: str = field(metadata=_w(_Url()))
    """``http://`` or ``https://``, printable ASCII, at most 176 characters."""


@dataclass(frozen=True, slots=True)
class FirmwareStatus:
    """0x95 Firmware status, charger to gateway, 16 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.FIRMWARE_STATUS
    pile: str = field(metadata=_PILE)
    task_id: int = field(metadata=_U32)
    status: FirmwareStatusCode = field(metadata=_enum(FirmwareStatusCode))
    progress: int = field(metadata=_w(_UInt(1, 0, 100)))
    """0..100 %."""


@dataclass(frozen=True, slots=True)
class FirmwareStatusAck:
    """0x96 Firmware status ack, gateway to charger, 14 bytes (CBP/1 §3)."""

    TYPE: ClassVar[MessageType] = MessageType.FIRMWARE_STATUS_ACK
    pile: str = field(metadata=_PILE)
    task_id: int = field(metadata=_U32)


Message = (
    Login
    | LoginReply
    | Heartbeat
    | HeartbeatAck
    | ReadRealtime
    | RealtimeData
    | AuthRequest
    | AuthResult
    | RemoteStartReply
    | RemoteStart
    | RemoteStopReply
    | RemoteStop
    | TransactionRecord
    | TransactionConfirm
    | WhitelistUpdateReply
    | WhitelistUpdate
    | WhitelistVersionReply
    | WhitelistVersionQuery
    | TimeSyncReply
    | TimeSync
    | RebootReply
    | Reboot
    | FirmwareUpdateReply
    | FirmwareUpdate
    | FirmwareStatus
    | FirmwareStatusAck
)
"""Any CBP/1 message."""

_CLASSES: Final[tuple[type[Message], ...]] = (
    Login,
    LoginReply,
    Heartbeat,
    HeartbeatAck,
    ReadRealtime,
    RealtimeData,
    AuthRequest,
    AuthResult,
    RemoteStartReply,
    RemoteStart,
    RemoteStopReply,
    RemoteStop,
    TransactionRecord,
    TransactionConfirm,
    WhitelistUpdateReply,
    WhitelistUpdate,
    WhitelistVersionReply,
    WhitelistVersionQuery,
    TimeSyncReply,
    TimeSync,
    RebootReply,
    Reboot,
    FirmwareUpdateReply,
    FirmwareUpdate,
    FirmwareStatus,
    FirmwareStatusAck,
)

MESSAGE_CLASSES: Final[dict[int, type[Message]]] = {cls.TYPE: cls for cls in _CLASSES}
"""TYPE byte to message class, for every TYPE of CBP/1 §3."""


@dataclass(frozen=True, slots=True)
class _Layout:
    wires: tuple[tuple[str | None, _Wire[Any]], ...]
    """Field name (``None`` for a constant byte) and layout, in wire order."""
    size: int | None
    """Exact BODY size, ``None`` when it depends on a length byte."""
    min_size: int


def _layout(cls: type[Message]) -> _Layout:
    wires: list[tuple[str | None, _Wire[Any]]] = [(f.name, f.metadata["cbp"]) for f in fields(cls)]
    if cls is HeartbeatAck:
        wires.append((None, _Zero()))  # CBP/1 §3 0x04: "PILE, 0x00"
    fixed = sum(w.size or 0 for _, w in wires)
    variable = any(w.size is None for _, w in wires)
    # A variable tail holds at least its length / count byte.
    return _Layout(tuple(wires), None if variable else fixed, fixed + (1 if variable else 0))


_LAYOUTS: Final[dict[type[Message], _Layout]] = {cls: _layout(cls) for cls in _CLASSES}


def body_size(message_type: int) -> int | None:
    """The exact BODY size of a TYPE, ``None`` for 0x44 and 0x94 (variable).

    Raises :class:`UnknownTypeError` for a TYPE not in CBP/1 §3.
    """
    cls = MESSAGE_CLASSES.get(message_type)
    if cls is None:
        raise UnknownTypeError(
            f"TYPE {message_type:#04x} is not defined by CBP/1", message_type=message_type
        )
    return _LAYOUTS[cls].size


def encode_body(message: Message) -> bytes:
    """The BODY of ``message`` (CBP/1 §3).

    Raises :class:`FieldError` (with ``field`` set) when a value is outside
    what the field type, range or enumeration allows.
    """
    layout = _LAYOUTS.get(type(message))
    if layout is None:
        raise TypeError(f"not a CBP/1 message: {type(message).__name__}")
    out = bytearray()
    for name, wire in layout.wires:
        value = None if name is None else getattr(message, name)
        try:
            out += wire.write(value)
        except FieldError as exc:
            label = name or "reserved"
            raise FieldError(f"{type(message).__name__}.{label}: {exc}", field=label) from None
    return bytes(out)


def decode_body(message_type: int, body: bytes) -> Message:
    """The message of TYPE ``message_type`` carried in ``body`` (CBP/1 §3).

    Raises :class:`UnknownTypeError` for a TYPE not in CBP/1 §3 and
    :class:`BodyError` for a body of the wrong size or with an invalid field
    (BCD nibble > 9, bad TIME, value outside its range or enumeration).
    """
    cls = MESSAGE_CLASSES.get(message_type)
    if cls is None:
        raise UnknownTypeError(
            f"TYPE {message_type:#04x} is not defined by CBP/1", message_type=message_type
        )
    layout = _LAYOUTS[cls]
    name = cls.__name__
    if layout.size is not None and len(body) != layout.size:
        raise BodyError(
            f"{name} BODY must be {layout.size} bytes, got {len(body)}",
            message_type=message_type,
        )
    if len(body) < layout.min_size:
        raise BodyError(
            f"{name} BODY must be at least {layout.min_size} bytes, got {len(body)}",
            message_type=message_type,
        )
    data = bytes(body)
    values: dict[str, Any] = {}
    offset = 0
    for field_name, wire in layout.wires:
        try:
            value, offset = wire.read(data, offset)
        except FieldError as exc:
            label = field_name or "reserved"
            raise BodyError(
                f"{name}.{label}: {exc}", message_type=message_type, field=label
            ) from None
        if field_name is not None:
            values[field_name] = value
    return cls(**values)
