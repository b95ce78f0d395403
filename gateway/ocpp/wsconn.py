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


class OcppServerConnection(ServerConnection):
    # Class-level defaults: no per-instance cost until a connection sets them
    # (10,000 idle chargers).
    sink: Callable[[str | None], None] | None = None
    framing = False  # this connection frames text messages itself
    _held = b""  # the start of a frame not complete yet (framing only)
    _limit: int | None = None

    def install_sink(self, sink: Callable[[str | None], None]) -> None:
        self.sink = sink
        self._start_framing()

    def remove_sink(self) -> None:
        self.sink = None
        self._stop_framing()

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
        if FRAMING and self.sink is not None and self._at_frame_boundary():
            protocol = self.protocol
            sizes = [s for s in (protocol.max_message_size, protocol.max_fragment_size) if s]
            self._limit = min(sizes) if sizes else None
            self.framing = True

    def _stop_framing(self) -> None:
        """Back to websockets' parser, with the bytes held back."""
        if self.framing:
            self.framing = False
            held = self._held
            if held:
                self._held = b""
                super().data_received(held)

    def data_received(self, data: bytes) -> None:
        if self.framing:
            data = self._frames(data)
            if not data:
                return
        super().data_received(data)
        if self.sink is not None and not self.framing:
            # After a frame websockets parsed (or a sink installed while
            # websockets was inside a frame): take over at the next boundary.
            self._start_framing()

    def _frames(self, data: bytes) -> bytes:
        """Deliver the text messages at the start of ``data``; returns the
        bytes websockets' parser must take (framing is then off), or b""."""
        held = self._held
        if held:
            data = held + data
            self._held = b""
        protocol = self.protocol
        limit = self._limit
        pos = 0
        n = len(data)
        while pos < n:
            sink = self.sink
            if sink is None or protocol.state is not State.OPEN:
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
                self._held = data[pos:]
                return b""
            else:
                # Not a plain text message, or a large one still arriving:
                # websockets parses it (process_event below decides).
                break
        else:
            return b""
        self.framing = False
        return data[pos:]

    def eof_received(self) -> None:
        self._stop_framing()
        super().eof_received()

    def process_event(self, event: Event) -> None:
        # Frames websockets parsed while a sink is installed: before the
        # framing took over, control frames, and those _frames leaves to it.
        sink = self.sink
        if sink is not None and type(event) is Frame:
            opcode = event.opcode
            if opcode is Opcode.TEXT and event.fin:
                try:
                    text = str(event.data, "utf-8")
                except UnicodeDecodeError:
                    pass  # websockets' path closes with 1007
                else:
                    sink(text)
                    return
            if opcode in DATA_OPCODES:
                self.sink = None
                sink(None)
        super().process_event(event)
