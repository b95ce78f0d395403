"""OcppConnection._send: the direct write for an open, writable connection and
the fall back to ``ws.send`` in every other case (docs/benchmarks.md, "Latest")."""

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
        self.sent: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.sent.append(data)


class FakeTransport:
    def __init__(self, closing: bool = False) -> None:
        self.closing = closing
        self.aborted = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


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
    ) -> None:
        self.protocol = FakeProtocol(state)
        self.transport = FakeTransport(closing)
        self.paused = paused
        self.send_in_progress: Any = object() if in_progress else None
        self.pause_after_write = pause_after_write
        self.write_error = write_error
        self.written: list[bytes] = []
        self.via_send: list[str] = []
        self.drained = 0
        self.connection_exc: BaseException | None = None

    def send_data(self) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written.extend(self.protocol.sent)
        self.protocol.sent.clear()
        if self.pause_after_write:
            self.paused = True

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
    assert ws.via_send == [] and ws.drained == 0


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
