"""The direct framing of OCPP-J text messages (protocol/wsframe.py and
OcppServerConnection in gateway/ocpp/wsconn.py), with websockets' own frame
code as the oracle: the same bytes, however they are split into reads, give
the same messages in the same order and the same bytes back (pongs, close
frames) as websockets' parser alone."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.connection import Connection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.ocpp import wsconn
from gateway.ocpp.wsconn import HOLD_MAX, OcppServerConnection
from protocol.wsframe import CONTROL, NEED_MORE, OTHER, TEXT, next_frame, text_frame, unmasked


def client(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    """A frame as a client sends it, serialized by websockets."""
    return Frame(opcode, data, fin).serialize(mask=True)


def raw_frame(b0: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A frame websockets would refuse to serialize (oversize control)."""
    n = len(payload)
    head = bytes((b0, (0x80 if masked else 0) | min(n, 126)))
    if n > 125:
        head += n.to_bytes(2, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + unmasked(mask + payload, 0, 4 + n)


# --- the codec -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_the_frame_websockets_builds(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_a_masked_text_frame_is_found_whole_and_unmasked(size: int) -> None:
    payload = ("€" * size).encode()[:size]
    frame = client(Opcode.TEXT, payload) + b"rest"
    kind, mask_at, end = next_frame(frame, 0, None)
    assert kind == TEXT and end == len(frame) - 4
    assert unmasked(frame, mask_at, end) == payload
    # Every proper prefix is incomplete.
    for cut in sorted({0, 1, 2, 3, mask_at, mask_at + 3, end - 1}):
        if 0 <= cut < end:
            assert next_frame(frame[:cut], 0, None)[0] == NEED_MORE, cut


def test_frames_are_found_at_an_offset() -> None:
    first = client(Opcode.TEXT, b"[2]")
    data = first + client(Opcode.PING, b"p") + client(Opcode.TEXT, b"[3]")
    kind, _, end = next_frame(data, len(first), None)
    assert kind == CONTROL
    kind, mask_at, end2 = next_frame(data, end, None)
    assert kind == TEXT and unmasked(data, mask_at, end2) == b"[3]" and end2 == len(data)


@pytest.mark.parametrize(
    "frame",
    [
        client(Opcode.BINARY, b"\x00\x01"),
        client(Opcode.TEXT, b"[2,", fin=False),  # the first fragment of a message
        client(Opcode.CONT, b"1]"),
        raw_frame(0xC1, b"[]"),  # RSV1: compressed (no extension here)
        raw_frame(0x81, b"[]", masked=False),  # a client must mask
        raw_frame(0x83, b"[]"),  # reserved opcode
        raw_frame(0x89, b"p" * 126),  # ping over 125 bytes
        raw_frame(0x09, b"p"),  # fragmented ping
        client(Opcode.TEXT, b"x" * 101),  # over the limit below
    ],
    ids=[
        "binary",
        "fragment",
        "continuation",
        "rsv1",
        "unmasked",
        "reserved-opcode",
        "long-ping",
        "ping-no-fin",
        "oversize",
    ],
)
def test_everything_else_is_left_to_websockets(frame: bytes) -> None:
    assert next_frame(frame, 0, 100)[0] == OTHER


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frames_are_found_whole(opcode: Opcode) -> None:
    data = Close(1000, "bye").serialize() if opcode is Opcode.CLOSE else b"ping"
    frame = client(opcode, data)
    assert next_frame(frame, 0, 100) == (CONTROL, 2, len(frame))
    assert next_frame(frame[:-1], 0, 100)[0] == NEED_MORE


# --- the connection against websockets' own parser ------------------------------


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True


class Wired:
    """An open OcppServerConnection on a fake transport, with a sink."""

    def __init__(self, *, max_size: int | None = 2**20, sink: bool = True) -> None:
        self.ws = OcppServerConnection(
            ServerProtocol(state=State.OPEN, max_size=max_size),
            None,  # type: ignore[arg-type]  # the server object is not used here
            ping_interval=None,
            max_queue=None,
        )
        self.transport = Transport()
        # websockets' Connection part only: no server, no handler task.
        Connection.connection_made(self.ws, self.transport)
        self.ws.request = Request("/ocpp/1", Headers())  # the handshake is over
        self.texts: list[str] = []
        self.gave_up = False
        if sink:
            self.ws.install_sink(self.deliver)

    def deliver(self, text: str | None) -> None:
        if text is None:
            self.gave_up = True
        else:
            assert not self.gave_up
            self.texts.append(text)

    def feed(self, data: bytes, cuts: list[int]) -> None:
        last = 0
        for cut in [*sorted(set(cuts)), len(data)]:
            if last < cut <= len(data):
                self.ws.data_received(data[last:cut])
                last = cut

    async def messages(self) -> list[str | bytes]:
        """What reached the sink, then what websockets queued for recv()."""
        out: list[str | bytes] = list(self.texts)
        frames = self.ws.recv_messages.frames
        while len(frames):
            frame = await frames.get()
            out.append(frame.data.decode() if frame.opcode is Opcode.TEXT else bytes(frame.data))
        return out


def oracle(data: bytes, max_size: int | None = 2**20) -> tuple[list[str | bytes], bytes, State]:
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    protocol.receive_data(data)
    messages: list[str | bytes] = []
    for event in protocol.events_received():
        if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
            messages.append(event.data.decode())
        elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
            messages.append(bytes(event.data))
    return messages, b"".join(protocol.data_to_send()), protocol.state


texts = st.text(max_size=300).map(lambda s: f'[2,"1","DataTransfer",{{"data":"{s}"}}]')
frames = st.lists(
    st.one_of(
        texts.map(lambda s: client(Opcode.TEXT, s.encode())),
        st.binary(max_size=125).map(lambda b: client(Opcode.PING, b)),
        st.binary(max_size=125).map(lambda b: client(Opcode.PONG, b)),
        st.binary(max_size=40).map(lambda b: client(Opcode.BINARY, b)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames, cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=8))
@example(frames=[client(Opcode.TEXT, b"[2]"), client(Opcode.PING, b"")], cuts=[1, 2, 5, 6, 7])
async def test_same_messages_and_replies_as_websockets(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(frames)
    wired = Wired()
    wired.feed(data, cuts)
    expected, replies, state = oracle(data)
    assert await wired.messages() == expected
    assert bytes(wired.transport.out) == replies
    assert wired.ws.protocol.state is state
    # The sink is given up exactly when a binary message came.
    assert wired.gave_up == any(isinstance(m, bytes) for m in expected)
    if not wired.gave_up:
        assert wired.ws.framing


@pytest.mark.parametrize("cut", [1, 2, 4, 6, 8])
async def test_framing_starts_at_the_next_boundary_when_installed_mid_frame(cut: int) -> None:
    wired = Wired(sink=False)
    first = client(Opcode.TEXT, b"[2,1]")
    # 2: websockets has read the header and waits for the mask with nothing
    # buffered; 6: the mask too, and waits for the payload.
    wired.ws.data_received(first[:cut])
    wired.ws.install_sink(wired.deliver)
    assert not wired.ws.framing
    wired.ws.data_received(first[cut:] + client(Opcode.TEXT, b"[2,2]"))
    assert wired.texts == ["[2,1]", "[2,2]"] and wired.ws.framing
    wired.ws.data_received(client(Opcode.TEXT, b"[2,3]"))
    assert wired.texts == ["[2,1]", "[2,2]", "[2,3]"]


async def test_a_large_message_still_arriving_is_parsed_by_websockets() -> None:
    wired = Wired()
    big = ("[" + "1," * HOLD_MAX + "1]").encode()
    data = client(Opcode.TEXT, big) + client(Opcode.TEXT, b"[2]")
    wired.feed(data, list(range(1000, len(data), 1000)))
    assert wired.texts == [big.decode(), "[2]"]
    assert wired.ws.framing and not wired.ws._direct.held


async def test_close_and_oversize_keep_websockets_close_codes() -> None:
    wired = Wired(max_size=100)
    wired.feed(client(Opcode.TEXT, b"[1]") + client(Opcode.TEXT, b"x" * 101), [])
    assert wired.texts == ["[1]"]
    sent = wired.ws.protocol.close_sent  # websockets' PayloadTooBig
    assert sent is not None and sent.code == 1009
    wired = Wired()
    wired.feed(client(Opcode.CLOSE, Close(1000, "bye").serialize()) + client(Opcode.TEXT, b"x"), [])
    assert wired.ws.protocol.state is State.CLOSING and wired.texts == []
    assert bytes(wired.transport.out) == Frame(
        Opcode.CLOSE, Close(1000, "bye").serialize()
    ).serialize(mask=False)


async def test_bad_utf8_is_left_to_websockets() -> None:
    wired = Wired()
    wired.feed(client(Opcode.TEXT, b"[1]") + client(Opcode.TEXT, b"\xff"), [])
    assert wired.texts == ["[1]"] and wired.gave_up  # recv() then fails with 1007
    recv = asyncio.ensure_future(wired.ws.recv())
    for _ in range(100):  # recv() decodes, fails the connection, waits for the TCP close
        if wired.transport.closed:
            break
        await asyncio.sleep(0.01)
    wired.ws.connection_lost(None)
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(recv, 5)
    sent = wired.ws.protocol.close_sent
    assert sent is not None and sent.code == 1007


async def test_a_frame_held_at_eof_reaches_websockets() -> None:
    wired = Wired()
    wired.feed(client(Opcode.TEXT, b"[1]") + client(Opcode.TEXT, b"[2]")[:3], [])
    assert wired.ws._direct.held
    wired.ws.eof_received()
    assert not wired.ws.framing and wired.ws.protocol.state is State.CLOSED
    assert wired.texts == ["[1]"]


def test_the_installed_websockets_has_what_the_framing_reads() -> None:
    assert wsconn.FRAMING


async def test_the_direct_path_adds_one_instance_attribute() -> None:
    """websockets' connections share their __dict__ keys; a few more
    attributes per connection un-share it (about 1.3 KiB more per idle
    charger, scenario 2 of bench/run.py)."""
    plain = Wired(sink=False)
    wired = Wired()
    wired.feed(client(Opcode.TEXT, b"[1]") + client(Opcode.TEXT, b"[2]")[:3], [])
    assert wired.ws.framing and wired.ws._direct is not None and wired.ws._direct.held
    assert set(wired.ws.__dict__) - set(plain.ws.__dict__) == {"_direct"}
    assert sys.getsizeof(wired.ws.__dict__) == sys.getsizeof(plain.ws.__dict__)
