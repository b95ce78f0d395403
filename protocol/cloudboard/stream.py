"""CBP/1 stream decoder: TCP bytes in, frames and typed messages out (CBP/1 §1).

Sans-I/O: :meth:`CbpDecoder.feed` takes whatever one ``recv`` returned and
gives back a list of events; nothing here reads sockets, clocks or loggers.
The gateway (and the simulator, from the charger's side) reads bytes, feeds
them, and acts on the events.

Events
======

* :class:`FrameReceived`: a frame with the right LEN and CRC whose BODY
  decoded to a message.
* :class:`GarbageSkipped`: bytes that did not start a frame candidate,
  reported once per run, when the run ends (at the next 0x68, or at
  :meth:`CbpDecoder.end_of_stream`).
* :class:`BadFrame`: a 0x68 that did not lead to a message, with a
  :class:`~protocol.cloudboard.errors.BadFrameReason`.
* :class:`TooManyBadFrames`: ``max_consecutive_bad`` was reached; the
  decoder has stopped and ignores further input (the gateway closes).

Resynchronisation (CBP/1 §1 is silent on the details; decided here)
===================================================================

Every 0x68 is a frame *candidate*. Bytes before a candidate are garbage.

1. LEN < 4: bad frame ``len_too_small``.
2. A candidate whose span ``[start, start + LEN + 4)`` has a **complete,
   fully valid frame** inside it (LEN and CRC right, ENC 0x00, known TYPE,
   BODY decodes) ending before the candidate's own end is ``superseded``: a
   real frame cannot contain another frame, but a 0x68 in garbage whose LEN
   runs over real frames can. This is decided as soon as that inner frame
   is complete, so a fake start never holds real frames back waiting for
   up to 259 bytes that may never come (a charger waiting for its login
   reply sends nothing more).
3. Otherwise a complete candidate is checked: CRC right in neither byte
   order → ``bad_crc``.
4. After each of 1-3 exactly **one** byte (the 0x68) is dropped and the
   search resumes at the next 0x68, so real frames inside a fake
   candidate's span are found. The bytes in between are garbage.
5. A candidate with LEN and CRC right is a frame: its bytes are consumed.
   Then ENC 0x01 → ``encrypted``, other ENC → ``unknown_enc``, unknown
   TYPE → ``unknown_type``, BODY not valid for its TYPE → ``undecodable_body``;
   otherwise :class:`FrameReceived`.

Every decision depends only on the bytes up to the point where it is made,
never on how they were split into reads, so any chunking of a stream yields
exactly the same events as feeding it at once (followed by the same
:meth:`CbpDecoder.end_of_stream`).

The price of rule 2: a real frame that happens to contain a complete, fully
valid frame (a 0x68, a LEN fitting inside, a zero byte, a known TYPE with
exactly its BODY size, a matching CRC and a decodable BODY) loses to it.
That needs a 16-bit CRC collision on top of the structure and is far rarer
than the corrupted frames CRC-16 already lets through.

Counting
========

Every rejection except ``unknown_type`` is a bad frame: it counts in
:attr:`CbpDecoder.bad_frames` and :attr:`CbpDecoder.consecutive_bad`. An
unknown TYPE is "discarded and counted; the connection stays up" (CBP/1
§4): it counts in :attr:`CbpDecoder.unknown_type_frames` and, being a frame
with the right LEN and CRC, ends a run of bad frames like any good frame
(``consecutive_bad`` back to 0). Garbage bytes neither count as bad frames
nor end a run.

Memory: between calls the decoder holds at most one incomplete frame
(< :data:`~protocol.cloudboard.frame.MAX_FRAME_SIZE` = 259 bytes), whatever
it is fed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from protocol.cloudboard.errors import BadFrameReason, CbpError, FrameError
from protocol.cloudboard.frame import (
    ENC_PLAIN,
    LEN_MIN,
    MIN_FRAME_SIZE,
    START,
    Frame,
    check_crc,
    decode_message,
)
from protocol.cloudboard.messages import MESSAGE_CLASSES, Message, body_size, decode_body

__all__ = [
    "BadFrame",
    "CbpDecoder",
    "Event",
    "FrameReceived",
    "GarbageSkipped",
    "TooManyBadFrames",
]

_START_BYTE: Final = bytes((START,))
_INNER_HEADER: Final = re.compile(
    # START, LEN >= 4, SEQ, ENC 0x00, a TYPE of CBP/1 §3: the only headers that
    # can begin a fully valid frame (rule 2). Searched in C, then checked in full.
    b"\\x68[\\x04-\\xff]..\\x00["
    + b"".join(b"\\x%02x" % t for t in sorted(MESSAGE_CLASSES))
    + b"]",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid frame and its message."""

    frame: Frame
    message: Message


@dataclass(frozen=True, slots=True)
class GarbageSkipped:
    """``count`` consecutive bytes that did not start a frame candidate."""

    count: int


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A 0x68 that did not become a message.

    ``size`` is how many bytes were dropped with it: 1 (the 0x68) when LEN or
    CRC were wrong, the whole frame when they were right. ``frame`` is set in
    the latter case (``encrypted``, ``unknown_enc``, ``unknown_type``,
    ``undecodable_body``), so the gateway can log it or, e.g., still answer a
    Login whose BODY it could not decode.
    """

    reason: BadFrameReason
    detail: str
    size: int
    frame: Frame | None = None

    @property
    def counts_as_bad(self) -> bool:
        """Whether it counts towards the 10-in-a-row rule (all but ``unknown_type``)."""
        return self.reason.counts_as_bad


@dataclass(frozen=True, slots=True)
class TooManyBadFrames:
    """``count`` consecutive bad frames: the decoder stopped (CBP/1 §1: the gateway closes)."""

    count: int


Event = FrameReceived | GarbageSkipped | BadFrame | TooManyBadFrames
"""What :meth:`CbpDecoder.feed` returns."""


class CbpDecoder:
    """Reassembles CBP/1 frames from a TCP byte stream (CBP/1 §1).

    ``max_consecutive_bad``: stop after that many consecutive bad frames,
    emitting :class:`TooManyBadFrames` and ignoring all further input (the
    gateway passes 10, CBP/1 §1). ``None`` (the default) never stops; the
    caller can still watch :attr:`consecutive_bad`.
    """

    __slots__ = (
        "_bad_by_reason",
        "_bad_frames",
        "_base",
        "_buf",
        "_consecutive_bad",
        "_frames",
        "_garbage_bytes",
        "_garbage_run",
        "_hi_first",
        "_limit",
        "_stopped",
        "_strict_memo",
        "_unknown_types",
    )

    def __init__(self, *, max_consecutive_bad: int | None = None) -> None:
        if max_consecutive_bad is not None and max_consecutive_bad < 1:
            raise CbpError(f"max_consecutive_bad must be >= 1, got {max_consecutive_bad}")
        self._limit = max_consecutive_bad
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._garbage_run = 0  # garbage bytes not reported yet
        self._strict_memo: dict[int, bool] = {}  # stream offset -> fully valid frame there
        self._stopped = False
        self._frames = 0
        self._garbage_bytes = 0
        self._bad_frames = 0
        self._consecutive_bad = 0
        self._hi_first = 0
        self._unknown_types = 0
        self._bad_by_reason: dict[BadFrameReason, int] = {}

    # ---------------------------------------------------------------- counters

    @property
    def frames_received(self) -> int:
        """Frames delivered as :class:`FrameReceived`."""
        return self._frames

    @property
    def garbage_bytes(self) -> int:
        """Bytes skipped as garbage so far (including a run not yet reported)."""
        return self._garbage_bytes

    @property
    def bad_frames(self) -> int:
        """Bad frames (every :class:`BadFrame` but ``unknown_type``)."""
        return self._bad_frames

    @property
    def consecutive_bad(self) -> int:
        """Bad frames since the last :class:`FrameReceived` or ``unknown_type``
        frame (CBP/1 §1: the gateway closes at 10)."""
        return self._consecutive_bad

    @property
    def hi_first_crc_frames(self) -> int:
        """Frames whose CRC came high byte first (accepted, CBP/1 §1)."""
        return self._hi_first

    @property
    def unknown_type_frames(self) -> int:
        """Well-formed frames of a TYPE not in CBP/1 §3, discarded (CBP/1 §4)."""
        return self._unknown_types

    def bad_frames_by_reason(self) -> dict[BadFrameReason, int]:
        """A copy of the bad-frame counts per reason (``unknown_type`` included)."""
        return dict(self._bad_by_reason)

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an incomplete frame (always < 259)."""
        return len(self._buf)

    @property
    def stopped(self) -> bool:
        """``max_consecutive_bad`` was reached; input is ignored."""
        return self._stopped

    # ---------------------------------------------------------------- input

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Add bytes from the stream; return the events they complete."""
        if self._stopped or not data:
            return []
        self._buf += data
        return self._process(eof=False)

    def end_of_stream(self) -> list[Event]:
        """The stream has ended: settle what is pending.

        An incomplete candidate becomes ``truncated`` (and the bytes after its
        0x68 are searched once more); a garbage run not yet reported is. The
        decoder is then empty and could take a new stream.
        """
        if self._stopped:
            return []
        events = self._process(eof=True)
        self._flush_garbage(events)
        return events

    # ---------------------------------------------------------------- engine

    def _flush_garbage(self, events: list[Event]) -> None:
        if self._garbage_run:
            events.append(GarbageSkipped(self._garbage_run))
            self._garbage_run = 0

    def _process(self, *, eof: bool) -> list[Event]:
        events: list[Event] = []
        buf = self._buf
        n = len(buf)
        pos = 0
        while pos < n and not self._stopped:
            if buf[pos] != START:
                nxt = buf.find(_START_BYTE, pos)
                skipped = (n if nxt < 0 else nxt) - pos
                self._garbage_bytes += skipped
                self._garbage_run += skipped
                if nxt < 0:
                    pos = n
                    break
                pos = nxt
            # A frame candidate starts at pos: the garbage run before it ends here.
            self._flush_garbage(events)
            avail = n - pos
            if avail < 2:
                if not eof:
                    break
                self._bad(events, BadFrameReason.TRUNCATED, "stream ended after START", 1)
                pos += 1
                continue
            length = buf[pos + 1]
            if length < LEN_MIN:
                self._bad(events, BadFrameReason.LEN_TOO_SMALL, f"LEN {length} < {LEN_MIN}", 1)
                pos += 1
                continue
            total = length + 4
            complete = avail >= total
            # Rule 2: an inner fully valid frame must end before this candidate's end.
            if self._has_inner_frame(pos, pos + total - 1 if complete else n):
                self._bad(
                    events,
                    BadFrameReason.SUPERSEDED,
                    f"LEN {length} runs over a valid frame that starts inside it",
                    1,
                )
                pos += 1
                continue
            if not complete:
                if not eof:
                    break
                self._bad(
                    events,
                    BadFrameReason.TRUNCATED,
                    f"stream ended {avail} bytes into a frame of {total}",
                    1,
                )
                pos += 1
                continue
            order = check_crc(buf[pos + 2 : pos + 2 + length], buf[pos + 2 + length : pos + total])
            if order is None:
                self._bad(events, BadFrameReason.BAD_CRC, "CRC matches in neither byte order", 1)
                pos += 1
                continue
            frame = Frame(
                seq=buf[pos + 2] | buf[pos + 3] << 8,
                seq_bytes=bytes(buf[pos + 2 : pos + 4]),
                enc=buf[pos + 4],
                type=buf[pos + 5],
                body=bytes(buf[pos + 6 : pos + 2 + length]),
                crc_order=order,
            )
            pos += total
            self._deliver(frame, events)
        if self._stopped:
            pos = n
        if pos:
            del buf[:pos]
            self._base += pos
            if self._strict_memo:
                base = self._base
                self._strict_memo = {k: v for k, v in self._strict_memo.items() if k >= base}
        return events

    def _has_inner_frame(self, start: int, limit: int) -> bool:
        """Whether a fully valid frame starts after ``start`` and ends at or before ``limit``."""
        buf = self._buf
        # The header is 6 bytes and a frame at least 8: q + 6 <= limit - 2.
        endpos = limit - (MIN_FRAME_SIZE - 6)
        match = _INNER_HEADER.search(buf, start + 1, endpos)
        while match is not None:
            q = match.start()
            length = buf[q + 1]
            if q + length + 4 <= limit and self._fully_valid(q, length):
                return True
            match = _INNER_HEADER.search(buf, q + 1, endpos)
        return False

    def _fully_valid(self, q: int, length: int) -> bool:
        """A complete frame at ``q`` with the right CRC, ENC 0x00, a known TYPE
        and a BODY that decodes (memoised by stream offset: its bytes are final)."""
        key = self._base + q
        known = self._strict_memo.get(key)
        if known is not None:
            return known
        buf = self._buf
        message_type = buf[q + 5]
        valid = False
        if buf[q + 4] == ENC_PLAIN and message_type in MESSAGE_CLASSES:
            size = body_size(message_type)
            if size is None or size == length - 4:
                end = q + length + 2
                if check_crc(buf[q + 2 : end], buf[end : end + 2]) is not None:
                    try:
                        decode_body(message_type, bytes(buf[q + 6 : end]))
                    except CbpError:
                        pass
                    else:
                        valid = True
        self._strict_memo[key] = valid
        return valid

    def _bad(
        self,
        events: list[Event],
        reason: BadFrameReason,
        detail: str,
        size: int,
        frame: Frame | None = None,
    ) -> None:
        self._bad_frames += 1
        self._consecutive_bad += 1
        self._bad_by_reason[reason] = self._bad_by_reason.get(reason, 0) + 1
        events.append(BadFrame(reason, detail, size, frame))
        if self._limit is not None and self._consecutive_bad >= self._limit:
            self._stopped = True
            self._buf.clear()
            self._garbage_run = 0
            events.append(TooManyBadFrames(self._consecutive_bad))

    def _deliver(self, frame: Frame, events: list[Event]) -> None:
        if frame.crc_order == "hi_first":
            self._hi_first += 1
        try:
            message = decode_message(frame)
        except FrameError as exc:
            if exc.reason is BadFrameReason.UNKNOWN_TYPE:
                # CBP/1 §4: discarded and counted; a well-formed frame ends a bad run.
                self._unknown_types += 1
                self._consecutive_bad = 0
                self._bad_by_reason[exc.reason] = self._bad_by_reason.get(exc.reason, 0) + 1
                events.append(BadFrame(exc.reason, str(exc), frame.size, frame))
            else:
                self._bad(events, exc.reason, str(exc), frame.size, frame)
            return
        self._frames += 1
        self._consecutive_bad = 0
        events.append(FrameReceived(frame, message))
