"""CRC-16/MODBUS, the frame check of CBP/1 (CBP/1 §1).

Parameters (CBP/1 §1): polynomial 0x8005 processed reflected (0xA001),
initial value 0xFFFF, input and output reflected, no final XOR. Check value:
``crc16_modbus(b"123456789") == 0x4B37``.

Table driven: one lookup per byte. Pure; no state between calls except the
optional running ``crc`` a caller passes back in to checksum data in pieces.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CRC16_MODBUS_CHECK", "CRC16_MODBUS_INIT", "crc16_modbus"]

CRC16_MODBUS_INIT: Final = 0xFFFF
"""Initial register value (CBP/1 §1)."""

CRC16_MODBUS_CHECK: Final = 0x4B37
"""CRC of ASCII ``123456789`` (CBP/1 §1)."""

_POLY_REFLECTED: Final = 0xA001


def _make_table() -> tuple[int, ...]:
    table: list[int] = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _make_table()


def crc16_modbus(data: bytes | bytearray | memoryview, crc: int = CRC16_MODBUS_INIT) -> int:
    """CRC-16/MODBUS of ``data``; pass a previous result as ``crc`` to continue it."""
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc
