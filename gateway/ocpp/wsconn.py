"""websockets' server connection with a direct hand-off of text messages.

websockets' asyncio connection puts every received frame into a queue and
wakes the task blocked in ``recv()``: a future and a task switch per message
(about a tenth of the gateway's CPU under mixed load, docs/benchmarks.md).
Here a connection may install a ``sink``: each complete, unfragmented,
valid UTF-8 text message is then passed to it inside ``data_received``.

Anything else (a fragmented or binary message, text that is not UTF-8) makes
the connection give the sink up for good: the sink is told with ``None`` and
that frame and every later one take websockets' own path (``recv()``), with
its checks and close codes unchanged (1007 for bad UTF-8, 1009 for too many
fragments; the size limit, 1009, is enforced by the protocol parser before
either path). Control frames always take websockets' path.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event


class OcppServerConnection(ServerConnection):
    # A class-level default: no per-instance cost until a connection sets it
    # (10,000 idle chargers).
    sink: Callable[[str | None], None] | None = None

    def process_event(self, event: Event) -> None:
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
