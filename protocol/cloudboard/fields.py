"""CBP/1 field types (CBP/1 §2): integers, BCD, ASCII, PILE, GUN, SERIAL, TIME, TOKEN.

Each ``encode_*`` takes a Python value and returns exactly the field's bytes,
or raises :class:`~protocol.cloudboard.errors.FieldError`; each ``decode_*``
takes exactly the field's bytes and returns the value, or raises
:class:`~protocol.cloudboard.errors.FieldError`. Whatever bytes a decoder
accepts, encoding its result gives the same bytes back, except where noted
(TIME weekday 0, TIME below one millisecond).

Pile IDs are carried as 20-digit strings: the GB/T rules (region, kind code,
...) are checked by the gateway at login, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from protocol.cloudboard.errors import FieldError

__all__ = [
    "GUN_MAX",
    "GUN_SIZE",
    "PILE_DIGITS",
    "PILE_SIZE",
    "SERIAL_DIGITS",
    "SERIAL_SIZE",
    "TIME_SIZE",
    "TOKEN_SIZE",
    "SerialParts",
    "decode_ascii",
    "decode_bcd",
    "decode_gun",
    "decode_pile",
    "decode_serial",
    "decode_time",
    "decode_token",
    "decode_uint",
    "encode_ascii",
    "encode_bcd",
    "encode_gun",
    "encode_pile",
    "encode_serial",
    "encode_time",
    "encode_token",
    "encode_u8",
    "encode_u16",
    "encode_u32",
    "make_serial",
    "parse_serial",
]

PILE_SIZE: Final = 10
"""PILE is BCD10 (CBP/1 §2)."""
PILE_DIGITS: Final = 20
GUN_SIZE: Final = 2
"""GUN is BCD2 (CBP/1 §2)."""
GUN_MAX: Final = 999
SERIAL_SIZE: Final = 20
"""SERIAL is BCD20 (CBP/1 §2)."""
SERIAL_DIGITS: Final = 40
TIME_SIZE: Final = 7
"""TIME is CP56Time2a, 7 bytes (CBP/1 §2)."""
TOKEN_SIZE: Final = 20
"""TOKEN is ASCII20 (CBP/1 §2)."""

_TIME_YEAR_MIN: Final = 2000
_TIME_YEAR_MAX: Final = 2000 + 0x7F


# --------------------------------------------------------------------------
# Integers (CBP/1 §2: unsigned, little-endian)


def _encode_uint(value: int, size: int) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise FieldError(f"{value} does not fit in u{8 * size} (0..{(1 << (8 * size)) - 1})")
    return value.to_bytes(size, "little")


def encode_u8(value: int) -> bytes:
    """u8 (CBP/1 §2)."""
    return _encode_uint(value, 1)


def encode_u16(value: int) -> bytes:
    """u16, little-endian (CBP/1 §2)."""
    return _encode_uint(value, 2)


def encode_u32(value: int) -> bytes:
    """u32, little-endian (CBP/1 §2)."""
    return _encode_uint(value, 4)


def decode_uint(data: bytes) -> int:
    """u8 / u16 / u32, little-endian (CBP/1 §2): every byte string is valid."""
    return int.from_bytes(data, "little")


# --------------------------------------------------------------------------
# BCD (CBP/1 §2: packed, high nibble first; a nibble > 9 makes the frame invalid)


def _is_digits(text: str) -> bool:
    # str.isdigit() alone also accepts non-ASCII digits such as "²".
    return text.isascii() and text.isdigit()


def encode_bcd(digits: str, size: int) -> bytes:
    """``2 * size`` decimal digits as ``size`` bytes of packed BCD, high nibble first."""
    if len(digits) != 2 * size or not _is_digits(digits):
        raise FieldError(f"BCD{size} needs exactly {2 * size} digits 0-9, got {digits!r}")
    return bytes.fromhex(digits)


def decode_bcd(data: bytes) -> str:
    """Packed BCD, high nibble first, as a string of ``2 * len(data)`` digits."""
    digits = data.hex()
    if not digits.isdigit():
        raise FieldError(f"BCD{len(data)} {digits.upper()} has a nibble greater than 9")
    return digits


# --------------------------------------------------------------------------
# ASCII (CBP/1 §2: n bytes, NUL-padded on the right)


def encode_ascii(text: str, size: int) -> bytes:
    """``text`` NUL-padded to ``size`` bytes. Refuses non-ASCII, NUL (it would
    end the text early) and text longer than ``size``."""
    if not text.isascii():
        raise FieldError(f"ASCII{size} takes ASCII only, got {text!r}")
    if "\x00" in text:
        raise FieldError(f"ASCII{size} text must not contain NUL, got {text!r}")
    if len(text) > size:
        raise FieldError(f"ASCII{size} holds at most {size} characters, got {len(text)}: {text!r}")
    return text.encode("ascii").ljust(size, b"\x00")


def decode_ascii(data: bytes) -> str:
    """The text of a NUL-padded ASCII field, trailing NULs stripped.

    Bytes >= 0x80 are refused, and so is anything but NUL after the first NUL:
    the field is text then padding (CBP/1 §2), and guessing which part is
    the value could e.g. authorize the wrong token.
    """
    text = data.rstrip(b"\x00")
    if b"\x00" in text:
        raise FieldError(f"ASCII{len(data)} {data!r} has data after its NUL padding")
    if not text.isascii():
        raise FieldError(f"ASCII{len(data)} {data!r} has a byte above 0x7F")
    return text.decode("ascii")


# --------------------------------------------------------------------------
# PILE, GUN, TOKEN (CBP/1 §2)


def encode_pile(pile: str) -> bytes:
    """PILE: the 20-digit pile ID as BCD10. Only "20 digits" is checked."""
    if len(pile) != PILE_DIGITS or not _is_digits(pile):
        raise FieldError(f"PILE needs exactly 20 digits, got {pile!r}")
    return bytes.fromhex(pile)


def decode_pile(data: bytes) -> str:
    """PILE: BCD10 as the 20-digit pile ID (leading zeros kept)."""
    return decode_bcd(data)


def encode_gun(gun: int) -> bytes:
    """GUN: gun number 1..999 as BCD2 (gun 2 is ``00 02``)."""
    if not 1 <= gun <= GUN_MAX:
        raise FieldError(f"GUN must be 1..{GUN_MAX}, got {gun}")
    return bytes.fromhex(f"{gun:04d}")


def decode_gun(data: bytes) -> int:
    """GUN: BCD2 as the gun number 1..999."""
    gun = int(decode_bcd(data))
    if not 1 <= gun <= GUN_MAX:
        raise FieldError(f"GUN must be 1..{GUN_MAX}, got {gun}")
    return gun


def encode_token(token: str) -> bytes:
    """TOKEN: card number, VIN or offline password as ASCII20."""
    return encode_ascii(token, TOKEN_SIZE)


def decode_token(data: bytes) -> str:
    """TOKEN: ASCII20 (empty string when all NUL)."""
    return decode_ascii(data)


# --------------------------------------------------------------------------
# SERIAL (CBP/1 §2: BCD20 = PILE (20) + gun (4) + yyMMddHHmmss (12) + counter (4);
# all zero = none)


def encode_serial(serial: str | None) -> bytes:
    """SERIAL: a 40-digit transaction serial as BCD20; ``None`` is all zeros.

    The all-zero string is refused (pass ``None``): it means "none" on the
    wire and would not decode back to itself.
    """
    if serial is None:
        return bytes(SERIAL_SIZE)
    if len(serial) != SERIAL_DIGITS or not _is_digits(serial):
        raise FieldError(f"SERIAL needs exactly 40 digits, got {serial!r}")
    if serial == "0" * SERIAL_DIGITS:
        raise FieldError("SERIAL of all zeros means none: pass None")
    return bytes.fromhex(serial)


def decode_serial(data: bytes) -> str | None:
    """SERIAL: BCD20 as a 40-digit string, ``None`` when all zero.

    Only BCD is checked, not the parts: a serial is an opaque key for the
    gateway's idempotence (CBP/1 §3 0x3B), even one a charger built badly
    offline. :func:`parse_serial` splits it when its parts are needed.
    """
    if not any(data):
        return None
    return decode_bcd(data)


@dataclass(frozen=True, slots=True)
class SerialParts:
    """The parts of a SERIAL (CBP/1 §2)."""

    pile: str
    """20-digit pile ID."""
    gun: int
    """Gun number 1..999 (4 digits in the serial)."""
    time: datetime
    """When the serial was made, ``yyMMddHHmmss`` (naive local time of the charger)."""
    counter: int
    """0..9999."""


def make_serial(pile: str, gun: int, time: datetime, counter: int) -> str:
    """Build a 40-digit SERIAL: pile + 4-digit gun + ``yyMMddHHmmss`` + 4-digit counter.

    ``time`` is naive (local time of the charger), year 2000..2099; seconds
    are the finest unit kept. The result is never all zeros (the gun is >= 1).
    """
    if len(pile) != PILE_DIGITS or not _is_digits(pile):
        raise FieldError(f"SERIAL pile needs exactly 20 digits, got {pile!r}")
    if not 1 <= gun <= GUN_MAX:
        raise FieldError(f"SERIAL gun must be 1..{GUN_MAX}, got {gun}")
    if time.tzinfo is not None:
        raise FieldError("SERIAL time must be a naive local datetime")
    if not 2000 <= time.year <= 2099:
        raise FieldError(f"SERIAL time year must be 2000..2099, got {time.year}")
    if not 0 <= counter <= 9999:
        raise FieldError(f"SERIAL counter must be 0..9999, got {counter}")
    return f"{pile}{gun:04d}{time:%y%m%d%H%M%S}{counter:04d}"


def parse_serial(serial: str) -> SerialParts:
    """Split a 40-digit SERIAL into its parts; :class:`FieldError` when a part is invalid."""
    if len(serial) != SERIAL_DIGITS or not _is_digits(serial):
        raise FieldError(f"SERIAL needs exactly 40 digits, got {serial!r}")
    gun = int(serial[20:24])
    if not 1 <= gun <= GUN_MAX:
        raise FieldError(f"SERIAL gun must be 1..{GUN_MAX}, got {gun}")
    stamp = serial[24:36]
    try:
        time = datetime.strptime(stamp, "%y%m%d%H%M%S")
    except ValueError:
        raise FieldError(f"SERIAL time {stamp} is not a valid yyMMddHHmmss") from None
    # strptime maps %y 69..99 to 1969..1999; CBP/1 serials are from 2000 on.
    time = time.replace(year=2000 + int(stamp[:2]))
    return SerialParts(serial[:20], gun, time, int(serial[36:]))


# --------------------------------------------------------------------------
# TIME: CP56Time2a (CBP/1 §2; IEC 60870-5-4 §6.8)
#
#   byte 0-1  u16 milliseconds within the minute (0..59999)
#   byte 2    minute, bits 0-5           (bit 6 reserved, bit 7 IV "invalid")
#   byte 3    hour, bits 0-4             (bits 5-6 reserved, bit 7 SU "summer time")
#   byte 4    day of month, bits 0-4; ISO weekday (1 = Monday .. 7), bits 5-7
#   byte 5    month, bits 0-3            (bits 4-7 reserved)
#   byte 6    year - 2000, bits 0-6      (bit 7 reserved)
#
# CBP/1 names only the fields; every other bit must be zero on decode. A
# weekday of 0 ("not used" in IEC 60870-5-4) is accepted; any other weekday
# must be the date's. Encoding always writes the ISO weekday.


def encode_time(when: datetime) -> bytes:
    """A naive local datetime (the charger's local time, CBP/1 §2) as CP56Time2a.

    Years 2000..2127. Microseconds are truncated to milliseconds, the unit of
    the format; aware datetimes are refused (convert to the charger's offset,
    UTC+8 unless configured, and drop ``tzinfo`` first).
    """
    if when.tzinfo is not None:
        raise FieldError("TIME takes a naive local datetime, got an aware one")
    if not _TIME_YEAR_MIN <= when.year <= _TIME_YEAR_MAX:
        raise FieldError(f"TIME year must be {_TIME_YEAR_MIN}..{_TIME_YEAR_MAX}, got {when.year}")
    millis = when.second * 1000 + when.microsecond // 1000
    return bytes(
        (
            millis & 0xFF,
            millis >> 8,
            when.minute,
            when.hour,
            when.day | (when.isoweekday() << 5),
            when.month,
            when.year - _TIME_YEAR_MIN,
        )
    )


def decode_time(data: bytes) -> datetime:
    """CP56Time2a as a naive local datetime (millisecond precision)."""
    if len(data) != TIME_SIZE:
        raise FieldError(f"TIME is {TIME_SIZE} bytes, got {len(data)}")
    millis = data[0] | data[1] << 8
    minute_b, hour_b, day_b, month_b, year_b = data[2:7]
    if millis > 59_999:
        raise FieldError(f"TIME milliseconds {millis} > 59999")
    if minute_b & 0xC0:
        raise FieldError(f"TIME minute byte {minute_b:#04x} has reserved/IV bits set")
    if hour_b & 0xE0:
        raise FieldError(f"TIME hour byte {hour_b:#04x} has reserved/SU bits set")
    if month_b & 0xF0:
        raise FieldError(f"TIME month byte {month_b:#04x} has reserved bits set")
    if year_b & 0x80:
        raise FieldError(f"TIME year byte {year_b:#04x} has its reserved bit set")
    minute = minute_b
    hour = hour_b
    day = day_b & 0x1F
    weekday = day_b >> 5
    try:
        when = datetime(
            _TIME_YEAR_MIN + year_b,
            month_b,
            day,
            hour,
            minute,
            millis // 1000,
            (millis % 1000) * 1000,
        )
    except ValueError as exc:
        raise FieldError(
            f"TIME {data.hex(' ').upper()} is not a valid date and time: {exc}"
        ) from None
    if weekday and weekday != when.isoweekday():
        raise FieldError(
            f"TIME weekday {weekday} is not the ISO weekday {when.isoweekday()} "
            f"of {when.date().isoformat()}"
        )
    return when
