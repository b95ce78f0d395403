"""Errors of the CBP/1 codec, and why a frame was rejected.

Every error is a :class:`CbpError` (a :class:`ValueError`): a field value
that cannot be encoded or decoded (:class:`FieldError`), a BODY that does not
fit its TYPE (:class:`BodyError`, :class:`UnknownTypeError`) or bytes that are
not one frame (:class:`FrameError`). The stream decoder never raises them: it
turns them into :class:`~protocol.cloudboard.stream.BadFrame` events.
"""

from __future__ import annotations

import enum

__all__ = [
    "BadFrameReason",
    "BodyError",
    "CbpError",
    "FieldError",
    "FrameError",
    "UnknownTypeError",
]


class BadFrameReason(enum.StrEnum):
    """Why bytes that started with ``0x68`` were not delivered as a message."""

    LEN_TOO_SMALL = "len_too_small"
    """LEN < 4 (CBP/1 §1): discarded, decoding resumes at the next 0x68."""
    BAD_CRC = "bad_crc"
    """The CRC matches in neither byte order (CBP/1 §1)."""
    SUPERSEDED = "superseded"
    """A 0x68 whose LEN runs over a complete, fully valid frame that starts
    inside it: it cannot be a frame (see :mod:`protocol.cloudboard.stream`)."""
    TRUNCATED = "truncated"
    """The stream ended (or a single buffer was too short) before LEN was satisfied."""
    ENCRYPTED = "encrypted"
    """ENC ``0x01`` (3DES) is reserved: reject the frame, count it (CBP/1 §1)."""
    UNKNOWN_ENC = "unknown_enc"
    """ENC other than ``0x00`` and ``0x01``: not defined by CBP/1 §1."""
    UNKNOWN_TYPE = "unknown_type"
    """A well-formed frame of a TYPE not in CBP/1 §3: "discarded and counted;
    the connection stays up" (CBP/1 §4). Not a bad frame for the 10-in-a-row rule."""
    UNDECODABLE_BODY = "undecodable_body"
    """The BODY does not fit its TYPE: wrong size, BCD nibble > 9, bad TIME,
    value outside the specification's range or enumeration (CBP/1 §2, §3)."""
    NO_START = "no_start"
    """:func:`~protocol.cloudboard.frame.decode_frame` only: data does not begin with 0x68."""
    LENGTH_MISMATCH = "length_mismatch"
    """:func:`~protocol.cloudboard.frame.decode_frame` only: more bytes than LEN says."""

    @property
    def counts_as_bad(self) -> bool:
        """Whether a frame rejected for this reason counts towards the
        "10 consecutive bad frames" rule (CBP/1 §1). Only an unknown TYPE does not."""
        return self is not BadFrameReason.UNKNOWN_TYPE


class CbpError(ValueError):
    """Base class of every error of the CBP/1 codec."""


class FieldError(CbpError):
    """A field value that cannot be encoded, or field bytes that are invalid
    (CBP/1 §2). ``field`` names the message field when known."""

    field: str | None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BodyError(CbpError):
    """A BODY that is not a valid message of its TYPE (CBP/1 §3)."""

    message_type: int
    field: str | None

    def __init__(self, message: str, *, message_type: int, field: str | None = None) -> None:
        super().__init__(message)
        self.message_type = message_type
        self.field = field


class UnknownTypeError(BodyError):
    """A TYPE that CBP/1 §3 does not define."""


class FrameError(CbpError):
    """Bytes that are not one valid frame; ``reason`` says why (CBP/1 §1)."""

    reason: BadFrameReason

    def __init__(self, reason: BadFrameReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
