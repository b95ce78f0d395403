"""Fuzzing the CBP/1 listener (hypothesis): hostile byte streams over real
TCP against one real gateway per test.

The codec's own properties are in ``tests/test_cloudboard_properties.py``;
this file checks the gateway around it (docs/cloudboard.md, "Listener
fuzzing"). Every example opens one connection and writes a generated stream
(random bytes, valid frames, corrupted frames) in random chunks with small
pauses, then a valid Login and a Heartbeat, and checks:

* no stuck connection: the Heartbeat is acknowledged or the gateway closes
  the connection, within a time limit (never a hang); and which of the two
  happens is what the gateway's rules say for that stream (a model: the
  codec's decoder with the spec's 10-bad-frames limit and the login rules);
* bounded buffers: the server side of the connection never holds an
  incomplete frame of 259 bytes or more, nor a growing send or read buffer;
* no leak: once the charger hangs up, the gateway forgets the connection
  (connection set, registry, presence tracker);
* no crash: a fresh, well-behaved charger still logs in and gets its
  heartbeat ack after every example, and the gateway logged no error
  (``handler failed``, ``connection failed``, any error-level line) and its
  event loop reported no unhandled exception.

The gateway runs on its own event loop in a background thread, so that the
test itself is an ordinary synchronous hypothesis test that hands each
example to that loop (``GatewayThread.run``, with a hard time limit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
import threading
import time
from collections.abc import Coroutine, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import pytest
import structlog
from hypothesis import HealthCheck, Phase, find, given, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.cloudboard import CbpConnection, CbpServer
from gateway.cloudboard.common import MAX_WRITE_BUFFER
from protocol.cloudboard import (
    MAX_FRAME_SIZE,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION_1_0,
    BadFrame,
    BadFrameReason,
    CbpDecoder,
    Display,
    FrameReceived,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    LoginRejectReason,
    LoginResult,
    Message,
    MessageType,
    Network,
    PileState,
    TooManyBadFrames,
    encode_message,
    encode_raw,
)
from tests.support.cbp_client import CbpCharger, login_message
from tests.support.gateway import running_gateway
from tests.test_cloudboard_properties import MESSAGE_STRATEGIES, ascii_text

# One gateway per test, on SQLite only: the listener does not depend on the
# database backend, and the whole file must stay well under a minute.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

T = TypeVar("T")

SPEC_MAX_BAD = 10  # CBP/1 §1: "After 10 consecutive bad frames the gateway closes"
IO_LIMIT = 5.0  # seconds: any single wait of an example (a hang fails, never blocks)
READ_LIMIT = 65536  # the listener's StreamReader limit (server.py)
# asyncio pauses reading at 2 x limit; one recv adds at most 256 KiB on top.
READ_BUFFER_BOUND = 2 * READ_LIMIT + 256 * 1024
PLACEHOLDER = "44200000010000199999"  # replaced by the example's own pile at render time
ERROR_EVENTS = frozenset({"handler failed", "connection failed", "background task failed"})


# --------------------------------------------------------------------------
# The gateway in a background thread


class GatewayThread:
    """A real gateway (``running_gateway``) on its own event loop in a
    daemon thread; ``run`` executes a coroutine there and waits for it with a
    hard limit, so a stuck gateway fails the test instead of hanging it."""

    def __init__(self, database_url: str, logs: list[MutableMapping[str, Any]]) -> None:
        self.logs = logs
        self.loop_errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._on_loop_exception)
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-gateway", daemon=True
        )
        self._thread.start()
        self._serials = itertools.count(10001)
        self._cm = running_gateway(database_url, command_timeout=2)
        self.gw = self.run(self._cm.__aenter__(), timeout=60)
        self.server = next(e for e in self.gw.extensions if isinstance(e, CbpServer))

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        self.loop_errors.append(f"{ctx.get('message')}: {ctx.get('exception')!r}")
        loop.default_exception_handler(ctx)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the coroutine's own TimeoutError
            future.cancel()
            raise AssertionError(f"stuck: the example did not finish within {timeout} s") from None

    def close(self) -> None:
        try:
            self.run(self._cm.__aexit__(None, None, None), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()

    def fresh_pile(self) -> str:
        """A valid AC pile ID no other connection of this gateway used
        (region 442000, operator 0001, pile, AC, serial 10001...)."""
        return f"442000000100001{next(self._serials):05d}"

    def log_of(self, pile: str) -> list[str]:
        """The log lines of one pile's connections (for failure messages)."""
        return [
            f"{entry.get('event')} {entry!r}"
            for entry in list(self.logs)
            if entry.get("pile_id") == pile or entry.get("pile") == pile
        ]

    def mark(self) -> tuple[int, int]:
        """Where the log and the loop's error list are now (see ``problems``)."""
        return len(self.logs), len(self.loop_errors)

    def problems(self, since: tuple[int, int] = (0, 0)) -> list[str]:
        """Error-level log lines, handler failures and unhandled loop
        exceptions (those after ``since``, a ``mark()``)."""
        found = [
            f"{entry.get('log_level')}: {entry.get('event')} {entry!r}"
            for entry in list(self.logs)[since[0] :]
            if entry.get("log_level") in ("error", "critical") or entry.get("event") in ERROR_EVENTS
        ]
        return found + self.loop_errors[since[1] :]


@pytest.fixture
def gateway(database_url: str) -> Iterator[GatewayThread]:
    # merge_contextvars: the lines carry the conn_id and pile_id the gateway binds.
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        g = GatewayThread(database_url, logs)
        try:
            yield g
        finally:
            g.close()
        # Also what was logged after an example had ended, and at shutdown.
        assert g.problems() == []


# --------------------------------------------------------------------------
# Server-side checks (run on the gateway's loop)


async def server_side(g: GatewayThread, charger: CbpCharger) -> CbpConnection:
    """The gateway's CbpConnection of this client socket."""
    host, port = charger.writer.get_extra_info("sockname")[:2]
    remote = f"{host}:{port}"
    async with asyncio.timeout(IO_LIMIT):
        while True:
            for conn in list(g.server._all):
                if conn.remote == remote:
                    return conn
            await asyncio.sleep(0.005)


def check_bounded(conn: CbpConnection) -> None:
    """What the gateway holds for one connection stays bounded."""
    assert conn.decoder.pending_bytes < MAX_FRAME_SIZE, conn.decoder.pending_bytes
    assert conn.writer.transport.get_write_buffer_size() <= MAX_WRITE_BUFFER
    # Bytes read from the socket and not yet taken by the listener (asyncio's
    # StreamReader; its flow control is what bounds it).
    unread = len(conn.reader._buffer)  # type: ignore[attr-defined]
    assert unread <= READ_BUFFER_BOUND, unread


async def forgotten(g: GatewayThread, conn: CbpConnection) -> None:
    """After the link ended the gateway keeps nothing of the connection."""
    services = g.gw.services
    assert services is not None
    try:
        async with asyncio.timeout(IO_LIMIT):
            while conn in g.server._all:
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError("the gateway still serves a connection the charger closed") from None
    assert conn not in g.server.connections
    assert services.registry.by_conn_id(conn.conn_id) is None
    assert conn.conn_id not in services.tracker
    check_bounded(conn)


async def healthy(g: GatewayThread) -> None:
    """A fresh, well-behaved charger logs in and gets its heartbeat ack."""
    charger = await CbpCharger.connect(g.server.port, g.fresh_pile())
    try:
        async with asyncio.timeout(IO_LIMIT):
            reply = await charger.login()
            assert (reply.result, reply.reason) == (LoginResult.ACCEPTED, LoginRejectReason.NONE)
            _, ack = await charger.request(
                Heartbeat(charger.pile, PileState.NORMAL), MessageType.HEARTBEAT_ACK
            )
            assert isinstance(ack, HeartbeatAck) and ack.pile == charger.pile
    finally:
        await charger.close()


async def send_or_closed(charger: CbpCharger, data: bytes) -> bool:
    """Write and drain; False once the gateway has closed the connection."""
    if charger.closed.is_set():
        return False
    try:
        async with asyncio.timeout(IO_LIMIT):
            await charger.send_raw(data)
    except (ConnectionError, OSError):
        return False
    except TimeoutError:
        raise AssertionError("stuck: the gateway stopped reading an open connection") from None
    return True


Outcome = Literal["acked", "closed"]


async def acked_or_closed(charger: CbpCharger, seq_bytes: bytes) -> Outcome:
    """Wait for the HeartbeatAck echoing ``seq_bytes`` or for the gateway to
    close the connection, whichever comes first (bounded)."""
    deadline = time.monotonic() + IO_LIMIT
    while True:
        for frame, message in list(charger.received):
            if isinstance(message, HeartbeatAck) and frame.seq_bytes == seq_bytes:
                return "acked"
        if charger.closed.is_set():
            return "closed"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"stuck connection: neither a heartbeat ack nor a close within {IO_LIMIT} s"
            )
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------
# What the gateway must do with a stream (the model)


def login_accepted(login: Login, pile: str) -> bool:
    """The generated Logins: the example's valid pile and protocol 1.0 are
    accepted (registration open, no auth key required, kind only flagged);
    another pile (always an invalid ID here) or another version is refused."""
    return login.pile == pile and login.protocol_version == PROTOCOL_VERSION_1_0


def decide(wire: bytes, pile: str, final_seq: bytes) -> tuple[Outcome | None, str]:
    """Closed or acked, by the rules of docs/cloudboard.md ("Login", "Frames
    after the login"), and the rule that decided; None when the stream
    leaves it undecided."""
    decoder = CbpDecoder(max_consecutive_bad=SPEC_MAX_BAD)
    logged_in = False
    for event in decoder.feed(wire):
        if isinstance(event, TooManyBadFrames):
            return "closed", "10 bad frames " + ("after" if logged_in else "before") + " login"
        if isinstance(event, FrameReceived):
            message = event.message
            if isinstance(message, Login):
                if not login_accepted(message, pile):
                    return "closed", "login refused"
                logged_in = True
            elif not logged_in:
                return "closed", "not login first"
            elif isinstance(message, Heartbeat) and event.frame.seq_bytes == final_seq:
                return "acked", "acked"
        elif (
            isinstance(event, BadFrame)
            and not logged_in
            and event.frame is not None
            and event.reason not in (BadFrameReason.ENCRYPTED, BadFrameReason.UNKNOWN_ENC)
        ):
            # A readable frame before the login that is not a decodable Login.
            return "closed", "not login first"
    return None, "undecided"


# --------------------------------------------------------------------------
# Strategies: a stream is a list of pieces, rendered with the example's pile


@dataclass(frozen=True)
class Piece:
    kind: str
    message: Message | None = None
    seq: int = 0
    data: bytes = b""
    at: int = 0
    value: int = 1
    own_pile: bool = True

    def frame(self, pile: str) -> bytes:
        assert self.message is not None
        message = self.message
        if self.own_pile and hasattr(message, "pile"):
            message = replace(message, pile=pile)  # type: ignore[arg-type]
        elif getattr(message, "pile", None) == PLACEHOLDER:
            message = replace(message, pile="99" + pile[2:])  # type: ignore[arg-type]
        return encode_message(self.seq, message)

    def render(self, pile: str) -> bytes:
        kind = self.kind
        if kind == "garbage":
            return self.data
        if kind == "burst":  # a run of bad frames: LEN < 4, or a frame with a bad CRC
            wire = self.frame(pile)
            bad = (
                bytes((0x68, self.value % 4)) if self.at else wire[:-1] + bytes((wire[-1] ^ 0xFF,))
            )
            return bad * (1 + self.seq % 14)
        if kind == "len_small":
            return bytes((0x68, self.value % 4)) + self.data[:4]
        if kind == "fake_start":
            return bytes((0x68, 4 + self.value % 252)) + self.data[:8]
        if kind == "unknown_type":
            return encode_raw(self.seq.to_bytes(2, "little"), self.value, self.data)
        if kind == "undecodable":  # a known TYPE with a body of the wrong size or content
            return encode_raw(self.seq.to_bytes(2, "little"), self.value, self.data)
        wire = self.frame(pile)
        if kind == "frame":
            return wire
        if kind == "flipped":
            out = bytearray(wire)
            out[self.at % len(out)] ^= self.value
            return bytes(out)
        if kind == "bad_crc":
            out = bytearray(wire)
            out[-1 - self.at % 2] ^= self.value
            return bytes(out)
        if kind == "truncated":
            return wire[: 1 + self.at % (len(wire) - 1)]
        assert self.message is not None
        seq_bytes, frame_type, body = wire[2:4], wire[5], wire[6:-2]
        if kind == "hi_first":
            return encode_raw(seq_bytes, frame_type, body, crc_order="hi_first")
        if kind == "enc":  # 0x01 3DES (reserved) or an unknown ENC
            return encode_raw(seq_bytes, frame_type, body, enc=self.value)
        raise AssertionError(kind)


u8 = st.integers(0, 0xFF)
seqs = st.integers(0, 0xFFFF)

OTHER_VERSIONS = [v for v in range(0x100) if v != PROTOCOL_VERSION_1_0]
good_logins = st.builds(
    Login,
    pile=st.just(PLACEHOLDER),
    kind=st.sampled_from(Kind),  # a contradicting kind is only flagged (kind_policy flag)
    gun_count=u8,
    protocol_version=st.just(PROTOCOL_VERSION_1_0),
    firmware_version=ascii_text(24),
    model=ascii_text(16),
    network=st.sampled_from(Network),
    iccid=st.none() | st.text(alphabet="0123456789", min_size=20, max_size=20),
    display=st.sampled_from(Display),
    auth_key=ascii_text(16),
).map(lambda m: m if m.iccid != "0" * 20 else replace(m, iccid=None))
bad_logins = st.one_of(
    good_logins.flatmap(
        lambda m: st.sampled_from(OTHER_VERSIONS).map(lambda v: replace(m, protocol_version=v))
    ),
    good_logins.map(lambda m: replace(m, pile="99" + m.pile[2:])),  # region 99: invalid ID
)
heartbeats = st.builds(Heartbeat, pile=st.just(PLACEHOLDER), pile_state=st.sampled_from(PileState))
CHARGER_CLASSES = [c for c in MESSAGE_STRATEGIES if c.TYPE & 1 and c not in (Login, Heartbeat)]
GATEWAY_CLASSES = [c for c in MESSAGE_STRATEGIES if not c.TYPE & 1]
# Mostly the charger's messages, so that every handler runs often; then
# Logins, Heartbeats and the gateway's own TYPEs (wrong direction).
any_messages: st.SearchStrategy[Message] = st.sampled_from(
    [heartbeats, heartbeats, good_logins]
    + [MESSAGE_STRATEGIES[c] for c in CHARGER_CLASSES] * 2
    + [st.sampled_from(GATEWAY_CLASSES).flatmap(lambda c: MESSAGE_STRATEGIES[c])] * 3
).flatmap(lambda strategy: strategy)
unknown_types = st.sampled_from([t for t in range(0x100) if t not in MESSAGE_CLASSES])


@st.composite
def pieces(draw: st.DrawFn) -> Piece:
    kind = draw(
        st.sampled_from(
            # Valid frames half of the time, so that every handler runs often.
            ["frame"] * 14
            + [
                "garbage",
                "flipped",
                "bad_crc",
                "truncated",
                "hi_first",
                "enc",
                "len_small",
                "fake_start",
                "unknown_type",
                "undecodable",
                "bad_login",
                "burst",
                "burst",
            ]
        )
    )
    if kind == "garbage":  # 0x68 frequent
        data = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\x01", b"\x68")))
        return Piece(kind, data=data)
    if kind == "burst":
        return Piece(
            kind,
            message=draw(heartbeats),
            seq=draw(st.integers(3, 13)),
            at=draw(st.integers(0, 1)),
            value=draw(u8),
        )
    if kind in ("len_small", "fake_start"):
        return Piece(kind, value=draw(u8), data=draw(st.binary(max_size=8)))
    if kind == "unknown_type":
        return Piece(
            kind, seq=draw(seqs), value=draw(unknown_types), data=draw(st.binary(max_size=60))
        )
    if kind == "undecodable":
        frame_type = draw(st.sampled_from(sorted(MESSAGE_CLASSES)))
        return Piece(kind, seq=draw(seqs), value=frame_type, data=draw(st.binary(max_size=90)))
    if kind == "bad_login":
        return Piece("frame", message=draw(bad_logins), seq=draw(seqs))
    message = draw(any_messages)
    return Piece(
        kind,
        message=message,
        seq=draw(seqs),
        at=draw(st.integers(0, 300)),
        value=draw(st.integers(1, 0xFF) if kind != "enc" else st.sampled_from([1, 1, 2, 0x80])),
        own_pile=draw(st.sampled_from([True] * 5 + [False])),
    )


@dataclass(frozen=True)
class Case:
    login_first: Login | None
    pieces: list[Piece]
    cuts: list[int]
    pauses_ms: list[int] = field(default_factory=list)

    def stream(self, pile: str) -> bytes:
        head = b""
        if self.login_first is not None:
            head = encode_message(1, replace(self.login_first, pile=pile))
        return head + b"".join(piece.render(pile) for piece in self.pieces)

    def chunks(self, stream: bytes) -> list[bytes]:
        points = sorted({c % (len(stream) + 1) for c in self.cuts} - {0})
        out, start = [], 0
        for point in [*points, len(stream)]:
            if point > start:
                out.append(stream[start:point])
                start = point
        return out


cases = st.builds(
    Case,
    # A valid Login first three times in four (st.one_of would weigh branches alike).
    login_first=st.sampled_from([good_logins] * 3 + [st.none()]).flatmap(lambda s: s),
    pieces=st.lists(pieces(), min_size=1, max_size=16),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
    pauses_ms=st.lists(st.integers(0, 15), min_size=1, max_size=10),
)


def unused_seq(stream: bytes) -> bytes:
    """SEQ bytes that appear nowhere in the stream, so that only the final
    Heartbeat's ack can echo them."""
    for seq in range(0xFFFF, -1, -1):
        seq_bytes = seq.to_bytes(2, "little")
        if seq_bytes not in stream:
            return seq_bytes
    raise AssertionError("no unused SEQ")  # pragma: no cover (streams are < 64 KiB)


def final_frames(pile: str, final_seq: bytes) -> bytes:
    """What every example ends with: a valid Login and a Heartbeat."""
    heartbeat = Heartbeat(pile, PileState.NORMAL)
    return encode_message(0, login_message(pile)) + encode_message(
        int.from_bytes(final_seq, "little"), heartbeat
    )


# --------------------------------------------------------------------------
# One example


async def fuzz_one(
    g: GatewayThread, pile: str, chunks: list[bytes], pauses_ms: list[int], final_seq: bytes
) -> Outcome:
    """Write the chunks, then the final Login and Heartbeat; the outcome."""
    final = final_frames(pile, final_seq)
    charger = await CbpCharger.connect(g.server.port, pile)
    # Only the generated bytes go out: an automatic answer (to the gateway's
    # time sync) would land in the middle of a frame split across chunks.
    charger.answers.clear()
    try:
        conn = await server_side(g, charger)
        pauses = itertools.cycle(pauses_ms)
        for chunk in chunks:
            if not await send_or_closed(charger, chunk):
                break
            await asyncio.sleep(next(pauses) / 1000)
            check_bounded(conn)
        await send_or_closed(charger, final)
        outcome = await acked_or_closed(charger, final_seq)
        check_bounded(conn)
        if outcome == "acked":
            services = g.gw.services
            assert services is not None
            assert conn.logged_in and conn in g.server.connections
            assert services.registry.get(pile) is conn
    finally:
        await charger.close()
    await forgotten(g, conn)
    await healthy(g)
    return outcome


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=cases)
@sqlite_only
def test_fuzzed_streams_never_crash_hang_or_grow_the_listener(
    gateway: GatewayThread, case: Case
) -> None:
    mark = gateway.mark()
    pile = gateway.fresh_pile()
    stream = case.stream(pile)
    chunks = case.chunks(stream)
    final_seq = unused_seq(stream)
    expected, why = decide(stream + final_frames(pile, final_seq), pile, final_seq)
    note(f"pile {pile}, stream {stream.hex()}, chunks {[len(c) for c in chunks]}")
    note(f"the rules say: {expected} ({why})")
    outcome = gateway.run(fuzz_one(gateway, pile, chunks, case.pauses_ms, final_seq), timeout=60)
    hypothesis_event(f"gateway: {outcome}; rules: {why}")
    if expected is not None:
        assert outcome == expected, (
            f"gateway: {outcome}, rules: {expected}; its log: {gateway.log_of(pile)}"
        )
    assert gateway.problems(since=mark) == []


# --------------------------------------------------------------------------
# Megabytes of junk


def junk(size: int, seed: int) -> bytes:
    """Random bytes, one in eight a 0x68 (a frame candidate)."""
    rng = random.Random(seed)
    out = bytearray(rng.randbytes(size))
    for i in range(0, size - 7, 8):
        out[i + rng.randrange(8)] = 0x68
    return bytes(out)


async def flood(g: GatewayThread, *, log_in: bool) -> CbpConnection:
    pile = g.fresh_pile()
    data = junk(2 * 1024 * 1024, seed=7 if log_in else 8)
    charger = await CbpCharger.connect(g.server.port, pile)
    charger.answers.clear()  # nothing but the junk after the login
    try:
        conn = await server_side(g, charger)
        if log_in:
            reply = await charger.login()
            assert reply.result == LoginResult.ACCEPTED
        # The decoder stops after 10 bad candidates and the gateway closes
        # the link: the writes fail or the rest lands in a closed socket.
        for offset in range(0, len(data), 256 * 1024):
            if not await send_or_closed(charger, data[offset : offset + 256 * 1024]):
                break
            check_bounded(conn)
        try:
            await charger.wait_closed(timeout=10)
        except TimeoutError:
            raise AssertionError("2 MiB of junk did not get the connection closed") from None
        check_bounded(conn)
    finally:
        await charger.close()
    await forgotten(g, conn)
    await healthy(g)
    return conn


@sqlite_only
def test_megabytes_of_junk_before_login_close_the_connection(gateway: GatewayThread) -> None:
    events = CbpDecoder(max_consecutive_bad=SPEC_MAX_BAD).feed(junk(2 * 1024 * 1024, seed=8))
    assert isinstance(events[-1], TooManyBadFrames)  # the seed gives no readable frame
    conn = gateway.run(flood(gateway, log_in=False), timeout=60)
    assert conn.decoder.stopped and not conn.logged_in
    assert gateway.problems() == []


@sqlite_only
def test_megabytes_of_junk_after_login_close_the_connection(gateway: GatewayThread) -> None:
    conn = gateway.run(flood(gateway, log_in=True), timeout=60)
    assert conn.decoder.stopped
    assert conn.end_reason() == ("bad_messages", f"{SPEC_MAX_BAD} bad frames in a row")
    assert gateway.problems() == []


def test_generator_reaches_every_rule() -> None:
    """Not a gateway property: the generated streams reach every rule of the
    model, so that the fuzz test can catch a gateway that breaks one (pure,
    no gateway)."""
    pile = "44200000010000110001"

    def rule(case: Case) -> str:
        stream = case.stream(pile)
        final_seq = unused_seq(stream)
        return decide(stream + final_frames(pile, final_seq), pile, final_seq)[1]

    quick = settings(database=None, max_examples=3000, phases=[Phase.generate])
    for wanted in (
        "acked",
        "10 bad frames after login",
        "10 bad frames before login",
        "login refused",
        "not login first",
    ):

        def reaches(case: Case, wanted: str = wanted) -> bool:
            return rule(case) == wanted

        find(cases, reaches, settings=quick)
    find(cases, lambda c: rule(c) == "acked" and len(c.pieces) >= 6, settings=quick)
