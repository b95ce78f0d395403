"""websockets' server connection with a direct hand-off of text messages.

websockets' asyncio connection puts every received frame into a queue and
wakes the task blocked in ``recv()``: a future and a task switch per message
(about a tenth of the gateway's CPU under mixed load, docs/benchmarks.md).
Here a connection may install a ``sink``: each complete, unfragmented,
valid UTF-8 text message is then passed to it inside ``data_received``.

While a sink is installed the connection also does the framing of those
messages itself (``protocol/wsframe.py``): websockets' generator-based
parser cost about 3 µs per message against 0.5 µs (docs/benchmarks.md). It
takes over only at a frame boundary of websockets' parser and hands
websockets complete frames only, so that parser is always between frames:
each control frame (ping, pong, close) as it comes, so that websockets
answers pings, tracks pongs and runs the closing handshake as before; and
any frame that is not a plain text message (or a text message larger than
``HOLD_MAX`` still arriving), with all that follows it in the same read.
Those frames reach ``process_event`` like before the framing took over, and
the framing resumes at the next frame boundary.

A fragmented or binary message, or text that is not UTF-8, makes the
connection give the sink up for good: the sink is told with ``None`` and
that frame and every later one take websockets' own path (``recv()``), with
its checks and close codes unchanged (1007 for bad UTF-8, 1009 for too big,
1002 for a protocol error).
"""

from __future__ import annotations

from collections.abc import Callable

import websockets.version
from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event, State
from websockets.streams import StreamReader

from protocol.wsframe import CONTROL, NEED_MORE, TEXT, next_frame, unmasked

# The framing reads websockets' parser state (``reader.buffer``,
# ``current_size``, ``parser``, ``max_message_size``, ``max_fragment_size``)
# as of 17.x; with another version websockets frames everything.
FRAMING = int(websockets.version.version.split(".")[0]) >= 17
_AT_EOF = StreamReader.at_eof.__code__
# A frame still arriving is held back up to this size; a larger one is left
# to websockets' parser (no copying of a growing buffer per chunk).
HOLD_MAX = 65_536


class _Direct:
    """A connection's direct-path state, in one slotted object: websockets'
    connections share their ``__dict__`` keys, and a few more instance
    attributes made that dict un-share (about 1.3 KiB more per connection,
    15.0 -> 16.2 KiB per idle charger in scenario 2)."""

    __slots__ = ("framing", "held", "limit", "sink")

    def __init__(self, sink: Callable[[str | None], None]) -> None:
        self.sink = sink
        self.framing = False  # this connection frames text messages itself
        self.held = b""  # the start of a frame not complete yet (framing only)
        self.limit: int | None = None  # websockets' max_size


class OcppServerConnection(ServerConnection):
    # A class-level default: no per-instance cost until a connection sets it
    # (10,000 idle chargers).
    _direct: _Direct | None = None

    @property
    def sink(self) -> Callable[[str | None], None] | None:
        direct = self._direct
        return None if direct is None else direct.sink

    @property
    def framing(self) -> bool:
        direct = self._direct
        return direct is not None and direct.framing

    def install_sink(self, sink: Callable[[str | None], None]) -> None:
        self._direct = _Direct(sink)
        self._start_framing()

    def remove_sink(self) -> None:
        direct = self._direct
        if direct is not None:
            self._direct = None
            self._stop_framing(direct)

    def _at_frame_boundary(self) -> bool:
        """Whether websockets' parser holds nothing: no buffered bytes, no
        fragmented message, and suspended between frames (in ``at_eof``,
        not inside ``Frame.parse`` after a header it already read)."""
        protocol = self.protocol
        if (
            protocol.state is not State.OPEN
            or protocol.reader.buffer
            or protocol.current_size is not None
        ):
            return False
        gen = protocol.parser
        while (inner := getattr(gen, "gi_yieldfrom", None)) is not None:
            gen = inner
        return getattr(gen, "gi_code", None) is _AT_EOF

    def _start_framing(self) -> None:
        direct = self._direct
        if FRAMING and direct is not None and self._at_frame_boundary():
            protocol = self.protocol
            sizes = [s for s in (protocol.max_message_size, protocol.max_fragment_size) if s]
            direct.limit = min(sizes) if sizes else None
            direct.framing = True

    def _stop_framing(self, direct: _Direct) -> None:
        """Back to websockets' parser, with the bytes held back."""
        if direct.framing:
            direct.framing = False
            held = direct.held
            if held:
                direct.held = b""
                super().data_received(held)

    def data_received(self, data: bytes) -> None:
        direct = self._direct
        if direct is not None and direct.framing:
            data = self._frames(direct, data)
            if not data:
                return
        super().data_received(data)
        direct = self._direct
        if direct is not None and not direct.framing:
            # After a frame websockets parsed (or a sink installed while
            # websockets was inside a frame): take over at the next boundary.
            self._start_framing()

    def _frames(self, direct: _Direct, data: bytes) -> bytes:
        """Deliver the text messages at the start of ``data``; returns the
        bytes websockets' parser must take (framing is then off), or b""."""
        held = direct.held
        if held:
            data = held + data
            direct.held = b""
        protocol = self.protocol
        limit = direct.limit
        sink = direct.sink
        pos = 0
        n = len(data)
        while pos < n:
            if self._direct is not direct or protocol.state is not State.OPEN:
                break
            kind, mask_at, end = next_frame(data, pos, limit)
            if kind == TEXT:
                try:
                    text = str(unmasked(data, mask_at, end), "utf-8")
                except UnicodeDecodeError:
                    break  # websockets' path: 1007
                pos = end
                sink(text)
            elif kind == CONTROL:
                # websockets answers pings, tracks pongs, runs the closing
                # handshake; its parser is at a frame boundary again after.
                super().data_received(data[pos:end])
                pos = end
            elif kind == NEED_MORE and n - pos <= HOLD_MAX:
                direct.held = data[pos:]
                return b""
            else:
                # Not a plain text message, or a large one still arriving:
                # websockets parses it (process_event below decides).
                break
        else:
            return b""
        direct.framing = False
        return data[pos:]

    def eof_received(self) -> None:
        direct = self._direct
        if direct is not None:
            self._stop_framing(direct)
        super().eof_received()

    def process_event(self, event: Event) -> None:
        # Frames websockets parsed while a sink is installed: before the
        # framing took over, control frames, and those _frames leaves to it.
        direct = self._direct
        if direct is not None and type(event) is Frame:
            opcode = event.opcode
            if opcode is Opcode.TEXT and event.fin:
                try:
                    text = str(event.data, "utf-8")
                except UnicodeDecodeError:
                    pass  # websockets' path closes with 1007
                else:
                    direct.sink(text)
                    return
            if opcode in DATA_OPCODES:
                self._direct = None
                direct.sink(None)
        super().process_event(event)
