"""CBP/1 stream decoder: reassembly, resynchronisation, counting (CBP/1 §1, §4)."""

from __future__ import annotations

import pytest

from protocol.cloudboard import (
    MAX_FRAME_SIZE,
    BadFrame,
    BadFrameReason,
    CbpDecoder,
    CbpError,
    Event,
    FrameReceived,
    GarbageSkipped,
    Heartbeat,
    PileState,
    TooManyBadFrames,
    crc16_modbus,
    encode_body,
    encode_message,
    encode_raw,
)
from tests.test_cloudboard_codec import (
    HEARTBEAT,
    HEARTBEAT_ACK_BYTES,
    HEARTBEAT_BYTES,
    LOGIN,
    LOGIN_BYTES,
    LOGIN_REPLY_BYTES,
    PILE,
    REJECTED_LOGIN_REPLY_BYTES,
)


def received(events: list[Event]) -> list[object]:
    return [e.message for e in events if isinstance(e, FrameReceived)]


def bad(events: list[Event]) -> list[BadFrameReason]:
    return [e.reason for e in events if isinstance(e, BadFrame)]


def heartbeat(seq: int) -> bytes:
    return encode_message(seq, Heartbeat(PILE, PileState.NORMAL))


def test_all_vectors_in_one_read() -> None:
    decoder = CbpDecoder()
    stream = (
        LOGIN_BYTES
        + LOGIN_REPLY_BYTES
        + HEARTBEAT_BYTES
        + HEARTBEAT_ACK_BYTES
        + REJECTED_LOGIN_REPLY_BYTES
    )
    events = decoder.feed(stream)
    assert [type(e) for e in events] == [FrameReceived] * 5
    assert received(events)[0] == LOGIN
    assert decoder.frames_received == 5
    assert decoder.pending_bytes == 0
    assert decoder.end_of_stream() == []


def test_frame_split_across_reads() -> None:
    decoder = CbpDecoder()
    assert decoder.feed(LOGIN_BYTES[:1]) == []
    assert decoder.feed(LOGIN_BYTES[1:2]) == []
    assert decoder.feed(LOGIN_BYTES[2:50]) == []
    assert decoder.pending_bytes == 50
    events = decoder.feed(LOGIN_BYTES[50:] + HEARTBEAT_BYTES[:3])
    assert received(events) == [LOGIN]
    assert decoder.pending_bytes == 3
    assert received(decoder.feed(HEARTBEAT_BYTES[3:])) == [HEARTBEAT]


def test_garbage_is_reported_when_its_run_ends() -> None:
    decoder = CbpDecoder()
    assert decoder.feed(b"AT+CSQ\r\n") == []
    assert decoder.garbage_bytes == 8  # counted at once, reported when the run ends
    assert decoder.feed(b"OK\r\n") == []
    events = decoder.feed(HEARTBEAT_BYTES + b"\r\n")
    assert events[0] == GarbageSkipped(12)
    assert received(events) == [HEARTBEAT] and len(events) == 2
    assert decoder.end_of_stream() == [GarbageSkipped(2)]
    assert decoder.garbage_bytes == 14
    assert decoder.bad_frames == 0


def test_hi_first_crc_is_accepted_and_counted() -> None:
    decoder = CbpDecoder()
    wire = encode_raw(b"\x02\x00", 0x03, encode_body(HEARTBEAT), crc_order="hi_first")
    events = decoder.feed(wire + HEARTBEAT_BYTES)
    assert received(events) == [HEARTBEAT, HEARTBEAT]
    frames = [e.frame for e in events if isinstance(e, FrameReceived)]
    assert [f.crc_order for f in frames] == ["hi_first", "lo_first"]
    assert decoder.hi_first_crc_frames == 1


def test_crc_with_equal_bytes_is_low_byte_first() -> None:
    body = encode_body(HEARTBEAT)
    seq = next(
        s
        for s in range(65536)
        if (c := crc16_modbus(s.to_bytes(2, "little") + b"\x00\x03" + body)) & 0xFF == c >> 8
    )
    decoder = CbpDecoder()
    events = decoder.feed(encode_message(seq, HEARTBEAT))
    assert isinstance(events[0], FrameReceived)
    assert events[0].frame.crc_order == "lo_first"
    assert decoder.hi_first_crc_frames == 0


def test_encrypted_frame_is_rejected_and_counted() -> None:
    decoder = CbpDecoder()
    encrypted = encode_raw(b"\x05\x00", 0x03, b"\x11" * 16, enc=0x01)
    events = decoder.feed(encrypted + HEARTBEAT_BYTES)
    assert isinstance(events[0], BadFrame)
    assert events[0].reason is BadFrameReason.ENCRYPTED
    assert events[0].size == len(encrypted)
    assert events[0].frame is not None and events[0].frame.seq == 5
    assert received(events) == [HEARTBEAT]
    assert decoder.bad_frames == 1
    assert decoder.consecutive_bad == 0  # the heartbeat ended the run
    assert decoder.bad_frames_by_reason() == {BadFrameReason.ENCRYPTED: 1}


def test_unknown_type_is_discarded_counted_and_not_bad() -> None:
    decoder = CbpDecoder()
    broken = HEARTBEAT_BYTES[:-1] + bytes((HEARTBEAT_BYTES[-1] ^ 1,))
    unknown = encode_raw(b"\x09\x00", 0x05, b"vendor")
    events = decoder.feed(broken + unknown)
    assert bad(events) == [BadFrameReason.BAD_CRC, BadFrameReason.UNKNOWN_TYPE]
    unknown_event = events[-1]
    assert isinstance(unknown_event, BadFrame)
    assert not unknown_event.counts_as_bad
    assert unknown_event.frame is not None and unknown_event.size == len(unknown)
    assert decoder.unknown_type_frames == 1
    assert decoder.bad_frames == 1
    assert decoder.consecutive_bad == 0  # a well-formed frame ends a run of bad ones


def test_undecodable_body_keeps_the_frame() -> None:
    decoder = CbpDecoder()
    body = bytearray(encode_body(LOGIN))
    body[10] = 7  # kind
    wire = encode_raw(b"\x01\x00", 0x01, bytes(body))
    events = decoder.feed(wire)
    assert len(events) == 1 and isinstance(events[0], BadFrame)
    assert events[0].reason is BadFrameReason.UNDECODABLE_BODY
    assert "Login.kind" in events[0].detail
    assert events[0].frame is not None and events[0].frame.seq_bytes == b"\x01\x00"
    assert decoder.consecutive_bad == 1


def test_len_too_small_skips_one_byte() -> None:
    decoder = CbpDecoder()
    events = decoder.feed(b"\x68\x03" + HEARTBEAT_BYTES)
    assert bad(events) == [BadFrameReason.LEN_TOO_SMALL]
    assert events[1] == GarbageSkipped(1)  # the LEN byte
    assert received(events) == [HEARTBEAT]


def test_bad_crc_resyncs_inside_the_candidate() -> None:
    # A real heartbeat whose CRC is wrong, with the next frame right behind it.
    broken = HEARTBEAT_BYTES[:-2] + b"\x00\x00"
    decoder = CbpDecoder()
    events = decoder.feed(broken + HEARTBEAT_ACK_BYTES)
    assert bad(events) == [BadFrameReason.BAD_CRC]
    assert events[1] == GarbageSkipped(len(broken) - 1)
    assert isinstance(events[2], FrameReceived)


def test_fake_start_does_not_hold_real_frames_back() -> None:
    # A 0x68 in modem noise with LEN 255, then a login: the charger waits for
    # its reply and sends nothing more. The login must come out now.
    decoder = CbpDecoder()
    events = decoder.feed(b"+CME \x68\xff" + LOGIN_BYTES)
    assert received(events) == [LOGIN]
    assert bad(events) == [BadFrameReason.SUPERSEDED]
    assert events[0] == GarbageSkipped(5)
    assert decoder.pending_bytes == 0


def test_fake_start_fed_byte_by_byte() -> None:
    decoder = CbpDecoder()
    stream = b"\x68\xf0\x00\x68\x10" + LOGIN_BYTES + HEARTBEAT_BYTES
    events: list[Event] = []
    for index in range(len(stream)):
        events += decoder.feed(stream[index : index + 1])
        if index == 4 + len(LOGIN_BYTES):
            assert received(events) == [LOGIN]  # as soon as its last byte arrived
    assert received(events) == [LOGIN, HEARTBEAT]
    assert events == CbpDecoder().feed(stream)


def test_fake_start_running_past_the_stream_end_is_truncated() -> None:
    decoder = CbpDecoder()
    assert decoder.feed(b"\x68\x40" + b"\x00" * 10) == []
    events = decoder.end_of_stream()
    assert events == [
        BadFrame(BadFrameReason.TRUNCATED, "stream ended 12 bytes into a frame of 68", 1),
        GarbageSkipped(11),
    ]
    assert decoder.pending_bytes == 0


def test_ten_bad_frames_in_a_row() -> None:
    decoder = CbpDecoder()
    decoder.feed(b"\x68\x00" * 10)
    assert decoder.consecutive_bad == 10
    decoder.feed(HEARTBEAT_BYTES)
    assert decoder.consecutive_bad == 0
    assert decoder.bad_frames == 10


def test_max_consecutive_bad_stops_the_decoder() -> None:
    decoder = CbpDecoder(max_consecutive_bad=10)
    events = decoder.feed(b"\x68\x00" * 9 + HEARTBEAT_BYTES + b"\x68\x00" * 12 + HEARTBEAT_BYTES)
    assert events[-1] == TooManyBadFrames(10)
    assert received(events) == [HEARTBEAT]  # the first run of 9 was ended by it
    assert decoder.stopped
    assert decoder.pending_bytes == 0
    assert decoder.feed(HEARTBEAT_BYTES) == []
    assert decoder.end_of_stream() == []
    with pytest.raises(CbpError):
        CbpDecoder(max_consecutive_bad=0)


def test_buffer_is_bounded_by_one_frame() -> None:
    decoder = CbpDecoder()
    for _ in range(50):
        decoder.feed(b"\x68\xff" + b"\x00" * 40)
        assert decoder.pending_bytes < MAX_FRAME_SIZE
    decoder.feed(b"\x68" * 10_000)
    assert decoder.pending_bytes < MAX_FRAME_SIZE


def test_random_chunks_of_a_long_session() -> None:
    stream = b"".join(heartbeat(seq) for seq in range(300))
    decoder = CbpDecoder()
    events: list[Event] = []
    step = 1
    index = 0
    while index < len(stream):
        events += decoder.feed(stream[index : index + step])
        index += step
        step = step % 37 + 1
    assert len(received(events)) == 300
    assert [e.frame.seq for e in events if isinstance(e, FrameReceived)] == list(range(300))


def test_only_a_fully_valid_inner_frame_supersedes() -> None:
    # A frame with the right CRC whose BODY does not decode (pile state 5) is not
    # proof that the 0x68 before it is fake: the decoder keeps waiting.
    undecodable = encode_raw(b"\x03\x00", 0x03, encode_body(HEARTBEAT)[:-1] + b"\x05")
    decoder = CbpDecoder()
    assert decoder.feed(b"\x68\xff" + undecodable) == []
    assert decoder.pending_bytes == 2 + len(undecodable)
    events = decoder.feed(HEARTBEAT_BYTES)
    assert bad(events) == [BadFrameReason.SUPERSEDED, BadFrameReason.UNDECODABLE_BODY]
    assert events[1] == GarbageSkipped(1)
    assert received(events) == [HEARTBEAT]
    assert all(e.frame is None or e.frame.from_charger for e in events if isinstance(e, BadFrame))
