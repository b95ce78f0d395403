"""Property tests of the CBP/1 codec: encode then decode is the identity for
every message type; any byte stream yields only the codec's own events, with
a bounded buffer; any chunking of a stream yields the same events as feeding
it at once; garbage around frames is skipped and reported exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.cloudboard import (
    FIRMWARE_URL_MAX,
    MAX_FRAME_SIZE,
    MESSAGE_CLASSES,
    WHITELIST_ENTRIES_MAX,
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    BadFrame,
    BadFrameReason,
    CbpDecoder,
    Display,
    Event,
    FirmwareStatus,
    FirmwareStatusAck,
    FirmwareStatusCode,
    FirmwareUpdate,
    FirmwareUpdateReply,
    FirmwareUpdateResult,
    FrameReceived,
    GarbageSkipped,
    GunStatus,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    LoginRejectReason,
    LoginReply,
    LoginResult,
    Message,
    Network,
    PileState,
    ReadRealtime,
    RealtimeData,
    Reboot,
    RebootMode,
    RebootReply,
    RebootResult,
    RemoteStart,
    RemoteStartRejectReason,
    RemoteStartReply,
    RemoteStartResult,
    RemoteStop,
    RemoteStopRejectReason,
    RemoteStopReply,
    RemoteStopResult,
    StopReason,
    TimeSync,
    TimeSyncReply,
    TooManyBadFrames,
    TransactionConfirm,
    TransactionConfirmResult,
    TransactionRecord,
    WhitelistAction,
    WhitelistEntry,
    WhitelistMode,
    WhitelistUpdate,
    WhitelistUpdateReply,
    WhitelistUpdateResult,
    WhitelistVersionQuery,
    WhitelistVersionReply,
    body_size,
    decode_body,
    decode_frame,
    decode_message,
    encode_body,
    encode_message,
    encode_raw,
    encode_reply_message,
)

FAST = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# Strategies per field type

piles = st.text(alphabet="0123456789", min_size=20, max_size=20)
guns = st.integers(1, 999)
serials = st.text(alphabet="0123456789", min_size=40, max_size=40).filter(lambda s: s != "0" * 40)
optional_serials = st.none() | serials
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2127, 12, 31, 23, 59, 59, 999_000)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


def ascii_text(size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=size)


tokens = ascii_text(20)
charger_methods = st.sampled_from([AuthMethod.CARD, AuthMethod.VIN, AuthMethod.PASSWORD])
urls = st.builds(
    lambda scheme, rest: (scheme + rest)[:FIRMWARE_URL_MAX],
    st.sampled_from(["http://", "https://"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=170),
)

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Login: st.builds(
        Login,
        pile=piles,
        kind=st.sampled_from(Kind),
        gun_count=u8,
        protocol_version=u8,
        firmware_version=ascii_text(24),
        model=ascii_text(16),
        network=st.sampled_from(Network),
        iccid=st.none()
        | st.text(alphabet="0123456789", min_size=20, max_size=20).filter(lambda s: s != "0" * 20),
        display=st.sampled_from(Display),
        auth_key=ascii_text(16),
    ),
    LoginReply: st.builds(
        LoginReply,
        pile=piles,
        result=st.sampled_from(LoginResult),
        reason=st.sampled_from(LoginRejectReason),
        heartbeat_interval=u8,
        server_time=times,
    ),
    Heartbeat: st.builds(Heartbeat, pile=piles, pile_state=st.sampled_from(PileState)),
    HeartbeatAck: st.builds(HeartbeatAck, pile=piles),
    ReadRealtime: st.builds(ReadRealtime, pile=piles, gun=guns),
    RealtimeData: st.builds(
        RealtimeData,
        pile=piles,
        gun=guns,
        status=st.sampled_from(GunStatus),
        serial=optional_serials,
        voltage_dv=u16,
        current_da=u16,
        power_w=u32,
        meter_wh=u32,
        session_energy_wh=u32,
        soc=st.none() | st.integers(0, 100),
        fault_code=u16,
        sample_time=times,
    ),
    AuthRequest: st.builds(AuthRequest, pile=piles, gun=guns, method=charger_methods, token=tokens),
    AuthResult: st.builds(
        AuthResult,
        pile=piles,
        gun=guns,
        token=tokens,
        result=st.sampled_from(AuthStatus),
        serial=optional_serials,
    ),
    RemoteStartReply: st.builds(
        RemoteStartReply,
        pile=piles,
        gun=guns,
        result=st.sampled_from(RemoteStartResult),
        reason=st.sampled_from(RemoteStartRejectReason),
    ),
    RemoteStart: st.builds(
        RemoteStart, pile=piles, gun=guns, serial=serials, token=tokens, energy_limit_wh=u32
    ),
    RemoteStopReply: st.builds(
        RemoteStopReply,
        pile=piles,
        gun=guns,
        result=st.sampled_from(RemoteStopResult),
        reason=st.sampled_from(RemoteStopRejectReason),
    ),
    RemoteStop: st.builds(RemoteStop, pile=piles, gun=guns, serial=serials),
    TransactionRecord: st.builds(
        TransactionRecord,
        serial=serials,
        pile=piles,
        gun=guns,
        start_time=times,
        stop_time=times,
        meter_start_wh=u32,
        meter_stop_wh=u32,
        energy_wh=u32,
        auth_method=st.sampled_from(AuthMethod),
        offline=st.booleans(),
        token=tokens,
        stop_reason=st.sampled_from(StopReason),
    ),
    TransactionConfirm: st.builds(
        TransactionConfirm, serial=serials, result=st.sampled_from(TransactionConfirmResult)
    ),
    WhitelistUpdateReply: st.builds(
        WhitelistUpdateReply,
        pile=piles,
        version=u32,
        part=u8,
        result=st.sampled_from(WhitelistUpdateResult),
    ),
    WhitelistUpdate: st.builds(
        WhitelistUpdate,
        pile=piles,
        version=u32,
        base_version=u32,
        mode=st.sampled_from(WhitelistMode),
        part=u8,
        last=st.booleans(),
        entries=st.lists(
            st.builds(
                WhitelistEntry,
                action=st.sampled_from(WhitelistAction),
                method=charger_methods,
                token=tokens,
            ),
            max_size=WHITELIST_ENTRIES_MAX,
        ).map(tuple),
    ),
    WhitelistVersionReply: st.builds(
        WhitelistVersionReply, pile=piles, version=u32, entry_count=u16, capacity=u16
    ),
    WhitelistVersionQuery: st.builds(WhitelistVersionQuery, pile=piles),
    TimeSyncReply: st.builds(TimeSyncReply, pile=piles, time=times),
    TimeSync: st.builds(TimeSync, pile=piles, time=times),
    RebootReply: st.builds(RebootReply, pile=piles, result=st.sampled_from(RebootResult)),
    Reboot: st.builds(Reboot, pile=piles, mode=st.sampled_from(RebootMode)),
    FirmwareUpdateReply: st.builds(
        FirmwareUpdateReply, pile=piles, task_id=u32, result=st.sampled_from(FirmwareUpdateResult)
    ),
    FirmwareUpdate: st.builds(
        FirmwareUpdate,
        pile=piles,
        task_id=u32,
        target_version=ascii_text(24),
        sha256=st.binary(min_size=32, max_size=32),
        image_size=u32,
        url=urls,
    ),
    FirmwareStatus: st.builds(
        FirmwareStatus,
        pile=piles,
        task_id=u32,
        status=st.sampled_from(FirmwareStatusCode),
        progress=st.integers(0, 100),
    ),
    FirmwareStatusAck: st.builds(FirmwareStatusAck, pile=piles, task_id=u32),
}

messages: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())
seqs = st.integers(0, 0xFFFF)


def test_a_strategy_for_every_message_type() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_CLASSES.values())


# --------------------------------------------------------------------------
# Encode then decode is the identity


@FAST
@given(message=messages)
def test_body_roundtrip(message: Message) -> None:
    body = encode_body(message)
    size = body_size(message.TYPE)
    assert size is None or len(body) == size
    assert len(body) <= 251
    assert decode_body(message.TYPE, body) == message
    assert encode_body(decode_body(message.TYPE, body)) == body


@FAST
@given(message=messages, seq=seqs)
def test_frame_roundtrip(message: Message, seq: int) -> None:
    wire = encode_message(seq, message)
    frame = decode_frame(wire)
    assert (frame.seq, frame.type, frame.enc, frame.crc_order) == (seq, message.TYPE, 0, "lo_first")
    assert decode_message(frame) == message
    events = CbpDecoder().feed(wire)
    assert events == [FrameReceived(frame, message)]
    assert encode_reply_message(frame.seq_bytes, message) == wire


@settings(deadline=None, max_examples=150)
@given(message=messages, data=st.data())
def test_body_field_bytes_never_crash_decode(message: Message, data: st.DataObject) -> None:
    # Flip bytes of a valid body: the result decodes or raises the codec's own error.
    body = bytearray(encode_body(message))
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(u8)
    try:
        decoded = decode_body(message.TYPE, bytes(body))
    except ValueError as exc:
        assert type(exc).__module__ == "protocol.cloudboard.errors"
    else:
        assert type(decoded) is type(message)


# --------------------------------------------------------------------------
# Streams: any bytes, any chunking


def feed_all(chunks: list[bytes], **options: Any) -> tuple[list[Event], CbpDecoder]:
    decoder = CbpDecoder(**options)
    events: list[Event] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        assert decoder.pending_bytes < MAX_FRAME_SIZE
    events += decoder.end_of_stream()
    assert decoder.pending_bytes == 0
    return events, decoder


def check_accounting(stream: bytes, events: list[Event]) -> None:
    """Every byte is garbage, part of a frame, or the 0x68 of a bad candidate."""
    accounted = 0
    for event in events:
        assert isinstance(event, FrameReceived | GarbageSkipped | BadFrame | TooManyBadFrames)
        if isinstance(event, GarbageSkipped):
            assert event.count > 0
            accounted += event.count
        elif isinstance(event, BadFrame):
            assert isinstance(event.reason, BadFrameReason)
            assert event.size == (1 if event.frame is None else event.frame.size)
            accounted += event.size
        elif isinstance(event, FrameReceived):
            assert type(event.message) is MESSAGE_CLASSES[event.frame.type]
            accounted += event.frame.size
    assert accounted == len(stream)


@settings(deadline=None, max_examples=300)
@given(stream=st.binary(max_size=600))
def test_any_bytes_yield_only_codec_events(stream: bytes) -> None:
    events, decoder = feed_all([stream])
    check_accounting(stream, events)
    assert decoder.bad_frames == sum(
        1 for e in events if isinstance(e, BadFrame) and e.counts_as_bad
    )
    assert decoder.frames_received == sum(1 for e in events if isinstance(e, FrameReceived))


@st.composite
def wire_pieces(draw: st.DrawFn) -> bytes:
    """One piece of a plausible, hostile stream."""
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return encode_message(draw(seqs), draw(messages))
    if kind == 3:  # garbage, 0x68 likely
        return draw(st.binary(max_size=30).map(lambda b: b.replace(b"\x01", b"\x68")))
    if kind == 4:  # a fake start with a large LEN
        return bytes((0x68, draw(st.integers(4, 255)))) + draw(st.binary(max_size=8))
    if kind == 5:  # a valid frame with one byte changed
        changed = bytearray(encode_message(draw(seqs), draw(messages)))
        changed[draw(st.integers(0, len(changed) - 1))] ^= draw(st.integers(1, 255))
        return bytes(changed)
    if kind == 6:  # a valid frame cut short
        wire = encode_message(draw(seqs), draw(messages))
        return wire[: draw(st.integers(1, len(wire) - 1))]
    if kind == 7:  # high byte first CRC
        message = draw(messages)
        return encode_raw(
            draw(st.binary(min_size=2, max_size=2)),
            message.TYPE,
            encode_body(message),
            crc_order="hi_first",
        )
    if kind == 8:  # encrypted or unknown ENC, or unknown TYPE
        return encode_raw(
            draw(st.binary(min_size=2, max_size=2)),
            draw(st.sampled_from([0x05, 0x99, 0xFF, 0x03])),
            draw(st.binary(max_size=40)),
            enc=draw(st.sampled_from([0, 1, 2])),
        )
    return bytes((0x68, draw(st.integers(0, 3))))  # LEN too small


streams = st.lists(wire_pieces(), max_size=8).map(b"".join)


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(stream)]:
        chunks.append(stream[start:point])
        start = point
    return chunks


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_random_chunking_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    at_once, decoder = feed_all([stream])
    check_accounting(stream, at_once)
    chunked, chunked_decoder = feed_all(split(stream, cuts))
    assert chunked == at_once
    assert chunked_decoder.garbage_bytes == decoder.garbage_bytes
    assert chunked_decoder.hi_first_crc_frames == decoder.hi_first_crc_frames


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams)
def test_byte_by_byte_gives_the_same_events(stream: bytes) -> None:
    at_once, _ = feed_all([stream])
    by_byte, _ = feed_all([stream[i : i + 1] for i in range(len(stream))])
    assert by_byte == at_once


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(wire_pieces(), max_size=3).map(b"".join))
def test_every_single_cut_gives_the_same_events(stream: bytes) -> None:
    at_once, _ = feed_all([stream])
    for cut in range(len(stream) + 1):
        two, _ = feed_all([stream[:cut], stream[cut:]])
        assert two == at_once, cut


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, cuts=st.lists(st.integers(0, 2000), max_size=6), limit=st.integers(1, 4))
def test_bad_frame_limit_is_chunking_independent(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    at_once, decoder = feed_all([stream], max_consecutive_bad=limit)
    chunked, _ = feed_all(split(stream, cuts), max_consecutive_bad=limit)
    assert chunked == at_once
    stops = [e for e in at_once if isinstance(e, TooManyBadFrames)]
    assert len(stops) <= 1
    if stops:
        assert at_once[-1] == stops[0] == TooManyBadFrames(limit) and decoder.stopped


no_start_garbage = st.binary(max_size=80).map(lambda b: b.replace(b"\x68", b"\x69"))


@FAST
@given(
    prefix=no_start_garbage,
    suffix=no_start_garbage,
    frames=st.lists(st.tuples(seqs, messages), min_size=1, max_size=4),
    between=st.lists(no_start_garbage, min_size=4, max_size=4),
)
def test_garbage_around_frames(
    prefix: bytes, suffix: bytes, frames: list[tuple[int, Message]], between: list[bytes]
) -> None:
    stream = prefix
    expected: list[object] = [GarbageSkipped(len(prefix))] if prefix else []
    for (seq, message), gap in zip(frames, between, strict=False):
        wire = encode_message(seq, message)
        stream += wire + gap
        expected.append(FrameReceived(decode_frame(wire), message))
        if gap:
            expected.append(GarbageSkipped(len(gap)))
    # Garbage runs are merged: the last gap and the suffix are one run.
    if suffix:
        if expected and isinstance(expected[-1], GarbageSkipped):
            expected[-1] = GarbageSkipped(expected[-1].count + len(suffix))
        else:
            expected.append(GarbageSkipped(len(suffix)))
    stream += suffix
    events, decoder = feed_all([stream])
    assert events == expected
    assert decoder.bad_frames == 0
    assert decoder.garbage_bytes == len(stream) - sum(len(encode_message(s, m)) for s, m in frames)


@FAST
@given(
    noise=st.binary(max_size=20),
    length=st.integers(4, 255),
    frames=st.lists(st.tuples(seqs, messages), min_size=1, max_size=3),
)
def test_fake_start_never_hides_real_frames(
    noise: bytes, length: int, frames: list[tuple[int, Message]]
) -> None:
    # Noise ending in a 0x68 whose LEN runs over the real frames behind it:
    # every real frame comes out as soon as its last byte has been fed.
    decoder = CbpDecoder()
    decoder.feed(noise + bytes((0x68, length)))
    for seq, message in frames:
        events = decoder.feed(encode_message(seq, message))
        assert [e.message for e in events if isinstance(e, FrameReceived)] == [message]
