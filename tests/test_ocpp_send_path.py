"""OcppConnection._send: the direct write for an open, writable connection and
the fall back to ``ws.send`` in every other case (docs/benchmarks.md, "Earlier: batch writes below
the ORM, a direct message path")."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Close
from websockets.protocol import State

from gateway.ocpp import connection
from gateway.ocpp.connection import OcppConnection


class FakeProtocol:
    def __init__(self, state: State) -> None:
        self.state = state
        self.debug = False
        self.writes: list[bytes] = []  # websockets' output not yet written
        self.sent: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.sent.append(data)


def payload_of(frame: bytes) -> bytes:
    """The payload of a server's unmasked FIN text frame (RFC 6455 §5.2)."""
    assert frame[0] == 0x81 and not frame[1] & 0x80
    n, at = frame[1], 2
    if n == 126:
        n, at = int.from_bytes(frame[2:4], "big"), 4
    assert len(frame) == at + n
    return frame[at:]


class FakeTransport:
    def __init__(self, owner: FakeWs, closing: bool = False) -> None:
        self.owner = owner
        self.closing = closing
        self.aborted = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True

    def write(self, frame: bytes) -> None:
        self.owner.wrote(payload_of(frame))


class FakeWs:
    """The parts of websockets' asyncio Connection that ``_send`` touches."""

    def __init__(
        self,
        *,
        state: State = State.OPEN,
        paused: bool = False,
        in_progress: bool = False,
        closing: bool = False,
        pause_after_write: bool = False,
        write_error: Exception | None = None,
        pending: bool = False,
    ) -> None:
        self.protocol = FakeProtocol(state)
        if pending:
            self.protocol.writes.append(b"\x8a\x00")  # a pong websockets queued
        self.transport = FakeTransport(self, closing)
        self.paused = paused
        self.send_in_progress: Any = object() if in_progress else None
        self.pause_after_write = pause_after_write
        self.write_error = write_error
        self.written: list[bytes] = []
        self.via_websockets: list[bytes] = []  # protocol.send_text + send_data
        self.via_send: list[str] = []
        self.drained = 0
        self.connection_exc: BaseException | None = None

    def wrote(self, payload: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.append(payload)
        if self.pause_after_write:
            self.paused = True

    def send_data(self) -> None:
        self.protocol.writes.clear()
        for data in self.protocol.sent:
            self.via_websockets.append(data)
            self.wrote(data)
        self.protocol.sent.clear()

    async def drain(self) -> None:
        self.drained += 1
        self.paused = False

    async def send(self, text: str) -> None:
        if self.protocol.state is not State.OPEN:
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
        self.via_send.append(text)

    def set_connection_exc(self, exc: BaseException) -> None:
        self.connection_exc = exc


class Holder:
    """Stands in for the connection: ``_send`` uses ``self.ws`` and the
    connection's own ``_writable`` and ``_write``."""

    _writable = OcppConnection._writable
    _write = OcppConnection._write

    def __init__(self, ws: FakeWs) -> None:
        self.ws = ws


async def send(ws: FakeWs, text: str = '[3,"1",{}]') -> None:
    await OcppConnection._send(Holder(ws), text)  # type: ignore[arg-type]


def test_the_installed_websockets_has_what_the_direct_write_uses() -> None:
    assert connection.DIRECT_SEND


async def test_open_writable_connection_is_written_directly() -> None:
    ws = FakeWs()
    await send(ws, '[3,"1",{"currentTime":"2026-12-04T08:00:00Z"}]')
    assert ws.written == [b'[3,"1",{"currentTime":"2026-12-04T08:00:00Z"}]']
    assert ws.via_send == [] and ws.via_websockets == [] and ws.drained == 0
    long = '[3,"1",{"x":"' + "y" * 300 + '"}]'  # 16-bit length (RFC 6455 §5.2)
    await send(ws, long)
    assert ws.written[-1] == long.encode()


async def test_output_websockets_has_waiting_goes_first() -> None:
    """A pong websockets queued and not yet written stays ahead of the reply:
    the reply then takes websockets' own frame path."""
    ws = FakeWs(pending=True)
    await send(ws)
    assert ws.via_websockets == [b'[3,"1",{}]'] and ws.protocol.writes == []


@pytest.mark.parametrize(
    "ws",
    [
        FakeWs(paused=True),  # write buffer over the high-water mark: ws.send waits
        FakeWs(in_progress=True),  # a fragmented send in progress
        FakeWs(closing=True),  # transport closing
        FakeWs(state=State.CLOSING),  # closing handshake started
    ],
    ids=["paused", "fragmented-send", "transport-closing", "closing"],
)
async def test_anything_else_goes_through_ws_send(ws: FakeWs) -> None:
    await send(ws)  # ConnectionClosed from ws.send is swallowed (the loop sees the close)
    assert ws.written == []
    if ws.protocol.state is State.OPEN:
        assert ws.via_send == ['[3,"1",{}]']


async def test_crossing_the_high_water_mark_waits_for_the_drain() -> None:
    ws = FakeWs(pause_after_write=True)
    await send(ws)
    assert ws.written == [b'[3,"1",{}]'] and ws.drained == 1


async def test_a_failing_write_ends_the_link_like_ws_send() -> None:
    error = OSError("broken pipe")
    ws = FakeWs(write_error=error)
    await send(ws)
    assert ws.connection_exc is error and ws.transport.aborted
