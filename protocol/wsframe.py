"""The WebSocket frames of nearly every OCPP-J message, without websockets'
general parser (sans-I/O).

OCPP-J messages are single, unfragmented text frames (OCPP-J 1.6 §3,
RFC 6455 §5). ``next_frame`` recognises such a frame as a client sends it
(FIN, no RSV bits, masked: RFC 6455 §5.2, §5.3) and reports every other frame
by its extent only, so that the caller can hand that one to a complete
parser (websockets) with the bytes untouched. ``text_frame`` builds the
server's unmasked reply frame.

Only the well-formed common case is decided here; everything this module
does not accept (unmasked client frames, RSV bits, reserved opcodes, oversize
or fragmented frames, oversize control frames) comes back as ``OTHER`` and
is left to websockets, whose close codes then apply unchanged.
"""

from __future__ import annotations

from typing import Final

try:  # websockets' C helper; the pure-Python one is its own fallback too.
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - only without the compiled extension
    from websockets.utils import apply_mask

__all__ = ["CONTROL", "NEED_MORE", "OTHER", "TEXT", "next_frame", "text_frame", "unmasked"]

NEED_MORE: Final = 0  # the frame at ``pos`` is not complete yet
TEXT: Final = 1  # a complete FIN, masked text frame within the size limit
CONTROL: Final = 2  # a complete, well-formed masked control frame (ping, pong, close)
OTHER: Final = 3  # anything else: the rest of the stream is the parser's

_TEXT_FIN: Final = 0x81  # FIN + opcode 1, RSV bits clear
_MASKED: Final = 0x80
_CONTROL_FIN: Final = frozenset({0x88, 0x89, 0x8A})  # FIN + close / ping / pong
_CONTROL_MAX: Final = 125  # RFC 6455 §5.5


def next_frame(data: bytes, pos: int, limit: int | None) -> tuple[int, int, int]:
    """Classify the frame starting at ``data[pos]``.

    Returns ``(kind, mask_at, end)``: for TEXT and CONTROL the 4-byte mask is
    at ``data[mask_at:mask_at + 4]``, the masked payload runs to ``end`` (the
    next frame's start). For NEED_MORE and OTHER only ``kind`` is meaningful.
    ``limit`` is the largest payload accepted (websockets' ``max_size``).
    """
    n = len(data)
    if n - pos < 2:
        return NEED_MORE, 0, 0
    b0 = data[pos]
    b1 = data[pos + 1]
    if not b1 & _MASKED:  # a client must mask (RFC 6455 §5.3)
        return OTHER, 0, 0
    length = b1 & 0x7F
    at = pos + 2
    if length == 126:
        if n - pos < 4:
            return NEED_MORE, 0, 0
        length = (data[pos + 2] << 8) | data[pos + 3]
        at = pos + 4
    elif length == 127:
        if n - pos < 10:
            return NEED_MORE, 0, 0
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        at = pos + 10
    if b0 == _TEXT_FIN:
        if limit is not None and length > limit:
            return OTHER, 0, 0
        kind = TEXT
    elif b0 in _CONTROL_FIN and length <= _CONTROL_MAX:
        kind = CONTROL
    else:
        return OTHER, 0, 0
    end = at + 4 + length
    if end > n:
        return NEED_MORE, 0, 0
    return kind, at, end


def unmasked(data: bytes, mask_at: int, end: int) -> bytes:
    """The payload of a frame ``next_frame`` found."""
    return apply_mask(data[mask_at + 4 : end], data[mask_at : mask_at + 4])


def text_frame(payload: bytes) -> bytes:
    """A server's unfragmented, unmasked text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + payload
    if n < 65536:
        return bytes((_TEXT_FIN, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_TEXT_FIN, 127)) + n.to_bytes(8, "big") + payload
