"""CBP/1 frames (CBP/1 §1): one frame in, one frame out.

::

    offset  size  field
    0       1     START  0x68
    1       1     LEN    bytes from SEQ to the end of BODY: 4 + N, so 4..255
    2       2     SEQ    uint16 little-endian; a reply echoes the request's two bytes as received
    4       1     ENC    0x00 plain; 0x01 (3DES) reserved: reject, count, never crash
    5       1     TYPE   odd = charger to gateway, even = gateway to charger
    6       N     BODY   N <= 251
    6+N     2     CRC    CRC-16/MODBUS over bytes [2, 6+N), low byte first
                         (decoders also accept high byte first, and count it)

:func:`encode_frame` / :func:`encode_reply` build frames, :func:`decode_frame`
parses exactly one complete frame, :func:`decode_message` turns a frame into
a typed message. Reassembly of a TCP byte stream is
:class:`protocol.cloudboard.stream.CbpDecoder`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from protocol.cloudboard.crc import crc16_modbus
from protocol.cloudboard.errors import (
    BadFrameReason,
    BodyError,
    CbpError,
    FrameError,
    UnknownTypeError,
)
from protocol.cloudboard.messages import Message, decode_body, encode_body

__all__ = [
    "BODY_MAX",
    "ENC_3DES",
    "ENC_PLAIN",
    "LEN_MAX",
    "LEN_MIN",
    "MAX_FRAME_SIZE",
    "MIN_FRAME_SIZE",
    "START",
    "CrcOrder",
    "Frame",
    "check_crc",
    "decode_frame",
    "decode_message",
    "encode_frame",
    "encode_message",
    "encode_raw",
    "encode_reply",
    "encode_reply_message",
]

START: Final = 0x68
"""START byte (CBP/1 §1)."""
LEN_MIN: Final = 4
"""Smallest LEN: SEQ + ENC + TYPE, empty BODY (CBP/1 §1)."""
LEN_MAX: Final = 255
BODY_MAX: Final = LEN_MAX - LEN_MIN
"""251 (CBP/1 §1)."""
MIN_FRAME_SIZE: Final = 2 + LEN_MIN + 2
"""START + LEN + 4 + CRC: 8 bytes."""
MAX_FRAME_SIZE: Final = 2 + LEN_MAX + 2
"""START + LEN + 255 + CRC: 259 bytes, the most a decoder ever has to hold."""
ENC_PLAIN: Final = 0x00
ENC_3DES: Final = 0x01
"""Reserved (CBP/1 §1): frames with it are rejected."""

CrcOrder = Literal["lo_first", "hi_first"]
"""Byte order of the received CRC. ``lo_first`` is CBP/1; ``hi_first`` is what
some firmware sends, accepted and counted (CBP/1 §1)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame whose LEN and CRC were right (CBP/1 §1)."""

    seq: int
    """SEQ read little-endian."""
    seq_bytes: bytes
    """The two SEQ bytes as received: a reply echoes exactly these (CBP/1 §1)."""
    enc: int
    type: int
    body: bytes
    crc_order: CrcOrder = "lo_first"

    @property
    def size(self) -> int:
        """Bytes on the wire: START, LEN, SEQ, ENC, TYPE, BODY, CRC."""
        return 8 + len(self.body)

    @property
    def from_charger(self) -> bool:
        """Odd TYPE: charger to gateway (CBP/1 §1)."""
        return bool(self.type & 1)


# --------------------------------------------------------------------------
# Encoding


def encode_raw(
    seq_bytes: bytes,
    message_type: int,
    body: bytes,
    *,
    enc: int = ENC_PLAIN,
    crc_order: CrcOrder = "lo_first",
) -> bytes:
    """A frame from its parts, with any ENC and CRC byte order.

    For tests and the simulator's fault injection; the gateway sends with
    :func:`encode_frame` and :func:`encode_reply` only.
    """
    if len(seq_bytes) != 2:
        raise CbpError(f"SEQ is 2 bytes, got {len(seq_bytes)}")
    if not 0 <= message_type <= 0xFF:
        raise CbpError(f"TYPE must be 0..255, got {message_type}")
    if not 0 <= enc <= 0xFF:
        raise CbpError(f"ENC must be 0..255, got {enc}")
    if len(body) > BODY_MAX:
        raise CbpError(f"BODY is at most {BODY_MAX} bytes, got {len(body)}")
    span = bytes((*seq_bytes, enc, message_type)) + body
    crc = crc16_modbus(span)
    lo, hi = crc & 0xFF, crc >> 8
    return (
        bytes((START, len(span))) + span + bytes((lo, hi) if crc_order == "lo_first" else (hi, lo))
    )


def _seq_bytes(seq: int) -> bytes:
    if not 0 <= seq <= 0xFFFF:
        raise CbpError(f"SEQ must be 0..65535, got {seq}")
    return seq.to_bytes(2, "little")


def encode_frame(seq: int, message_type: int, body: bytes) -> bytes:
    """A plain frame (ENC 0x00) of a request the sender originates, SEQ
    ``seq`` little-endian, CRC low byte first (CBP/1 §1)."""
    return encode_raw(_seq_bytes(seq), message_type, body)


def encode_reply(request_seq_bytes: bytes, message_type: int, body: bytes) -> bytes:
    """A plain frame answering a request: its SEQ is the request's two SEQ
    bytes **as received** (:attr:`Frame.seq_bytes`), whatever their order (CBP/1 §1)."""
    return encode_raw(bytes(request_seq_bytes), message_type, body)


def encode_message(seq: int, message: Message) -> bytes:
    """:func:`encode_frame` of a typed message."""
    return encode_frame(seq, message.TYPE, encode_body(message))


def encode_reply_message(request_seq_bytes: bytes, message: Message) -> bytes:
    """:func:`encode_reply` of a typed message."""
    return encode_reply(request_seq_bytes, message.TYPE, encode_body(message))


# --------------------------------------------------------------------------
# Decoding


def check_crc(span: bytes | bytearray | memoryview, crc: bytes | bytearray) -> CrcOrder | None:
    """Which byte order the two ``crc`` bytes of ``span`` (bytes [2, 6+N) of a
    frame) are in, or ``None`` when neither matches (CBP/1 §1). When both
    orders match (equal bytes) it is ``lo_first``."""
    value = crc16_modbus(span)
    lo, hi = value & 0xFF, value >> 8
    if crc[0] == lo and crc[1] == hi:
        return "lo_first"
    if crc[0] == hi and crc[1] == lo:
        return "hi_first"
    return None


def decode_frame(data: bytes) -> Frame:
    """Exactly one complete frame; :class:`FrameError` otherwise.

    Checks START, LEN (>= 4 and equal to the data), and the CRC in either
    byte order. ENC, TYPE and BODY are not looked at: see :func:`decode_message`.
    """
    if not data or data[0] != START:
        raise FrameError(BadFrameReason.NO_START, "a frame starts with 0x68")
    if len(data) < 2:
        raise FrameError(BadFrameReason.TRUNCATED, "LEN byte missing")
    length = data[1]
    if length < LEN_MIN:
        raise FrameError(BadFrameReason.LEN_TOO_SMALL, f"LEN {length} < {LEN_MIN}")
    total = length + 4
    if len(data) < total:
        raise FrameError(
            BadFrameReason.TRUNCATED, f"LEN {length} needs {total} bytes, got {len(data)}"
        )
    if len(data) > total:
        raise FrameError(
            BadFrameReason.LENGTH_MISMATCH, f"LEN {length} needs {total} bytes, got {len(data)}"
        )
    span = data[2 : 2 + length]
    order = check_crc(span, data[2 + length : total])
    if order is None:
        raise FrameError(BadFrameReason.BAD_CRC, "CRC matches in neither byte order")
    return Frame(
        seq=span[0] | span[1] << 8,
        seq_bytes=bytes(span[0:2]),
        enc=span[2],
        type=span[3],
        body=bytes(span[4:]),
        crc_order=order,
    )


def decode_message(frame: Frame) -> Message:
    """The typed message of a frame; :class:`FrameError` with reason
    ``encrypted`` (ENC 0x01), ``unknown_enc``, ``unknown_type`` or
    ``undecodable_body`` otherwise (CBP/1 §1, §3, §4)."""
    if frame.enc == ENC_3DES:
        raise FrameError(BadFrameReason.ENCRYPTED, "ENC 0x01 (3DES) is reserved")
    if frame.enc != ENC_PLAIN:
        raise FrameError(BadFrameReason.UNKNOWN_ENC, f"ENC {frame.enc:#04x} is not defined")
    try:
        return decode_body(frame.type, frame.body)
    except UnknownTypeError as exc:
        raise FrameError(BadFrameReason.UNKNOWN_TYPE, str(exc)) from None
    except BodyError as exc:
        raise FrameError(BadFrameReason.UNDECODABLE_BODY, str(exc)) from None
