"""Coverage-guided fuzzing of the CBP/1 stream decoder with atheris (libFuzzer).

Bounded: it stops by itself after ``-runs`` inputs or ``-max_total_time``
seconds (``-max_total_time=60`` when neither is given) and exits 0 when no
input broke a property.

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_cloudboard.py                      # 60 s
    .venv/bin/python bench/fuzz_cloudboard.py -runs=200000 -seed=1

The fuzzer's bytes do not go to the decoder as they are: they are a recipe
for a stream (libFuzzer cannot guess CRCs, so without this it would never get
past the CRC check). Each step of the recipe appends one of

* raw bytes (garbage, fake starts, anything),
* a frame with a correct CRC (either byte order) around a fuzzed TYPE, ENC
  and BODY of any length,
* a frame with a correct CRC around a BODY of exactly the size its TYPE
  needs, whose bytes are fuzzed (so coverage guidance reaches every field
  decoder: BCD, TIME, enumerations, ASCII, URL, whitelist entries),
* a chunk boundary.

For every input it checks the properties the test suite checks with
hypothesis (tests/test_cloudboard_properties.py):

* only the codec's own events come out, never another exception;
* the decoder never holds a whole frame's worth of bytes (< 259) between calls;
* every byte is accounted for (garbage, frame, or the 0x68 of a bad candidate);
* feeding the stream in the recipe's chunks, byte by byte, or at once gives
  exactly the same events;
* every decoded message encodes and decodes back to itself.

A failing input is saved by libFuzzer as ``crash-<sha1>`` in the working
directory; rerun with that file as the only argument to reproduce.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["protocol.cloudboard"]):
    from protocol.cloudboard import (
        MAX_FRAME_SIZE,
        MESSAGE_CLASSES,
        BadFrame,
        CbpDecoder,
        Event,
        FrameReceived,
        GarbageSkipped,
        TooManyBadFrames,
        body_size,
        decode_body,
        encode_body,
        encode_raw,
    )

TYPES = sorted(MESSAGE_CLASSES)


def build(data: bytes) -> tuple[bytes, list[int]]:
    """The stream and the chunk boundaries the fuzzer's bytes describe."""
    fdp = atheris.FuzzedDataProvider(data)
    stream = bytearray()
    cuts: list[int] = []
    while fdp.remaining_bytes() and len(stream) < 4096:
        op = fdp.ConsumeIntInRange(0, 4)
        if op == 0:
            stream += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48))
        elif op == 1:
            seq = fdp.ConsumeBytes(2).ljust(2, b"\x00")
            message_type = fdp.ConsumeIntInRange(0, 255)
            enc = fdp.PickValueInList([0, 0, 0, 1, 2])
            order = fdp.PickValueInList(["lo_first", "hi_first"])
            body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 251))
            stream += encode_raw(seq, message_type, body, enc=enc, crc_order=order)
        elif op in (2, 3):
            seq = fdp.ConsumeBytes(2).ljust(2, b"\x00")
            message_type = fdp.PickValueInList(TYPES)
            size = body_size(message_type)
            if size is None:
                size = fdp.ConsumeIntInRange(22, 251)
            body = fdp.ConsumeBytes(size).ljust(size, b"\x00")
            stream += encode_raw(seq, message_type, body)
        else:
            cuts.append(len(stream))
    return bytes(stream), cuts


def run(chunks: list[bytes]) -> list[Event]:
    decoder = CbpDecoder()
    events: list[Event] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        if decoder.pending_bytes >= MAX_FRAME_SIZE:
            raise AssertionError(f"decoder holds {decoder.pending_bytes} bytes")
    events += decoder.end_of_stream()
    if decoder.pending_bytes:
        raise AssertionError("bytes left after end_of_stream")
    return events


def test_one_input(data: bytes) -> None:
    stream, cuts = build(data)
    at_once = run([stream])

    accounted = 0
    for event in at_once:
        if isinstance(event, GarbageSkipped):
            accounted += event.count
        elif isinstance(event, BadFrame):
            accounted += event.size
        elif isinstance(event, FrameReceived):
            accounted += event.frame.size
            message = event.message
            if decode_body(message.TYPE, encode_body(message)) != message:
                raise AssertionError(f"round trip changed {message!r}")
        elif not isinstance(event, TooManyBadFrames):
            raise AssertionError(f"unexpected event {event!r}")
    if accounted != len(stream):
        raise AssertionError(f"accounted for {accounted} of {len(stream)} bytes")

    bounds = [0, *sorted(set(cuts)), len(stream)]
    chunked = run([stream[a:b] for a, b in itertools.pairwise(bounds)])
    if chunked != at_once:
        raise AssertionError("chunked feeding gave other events")
    if len(stream) <= 512:
        by_byte = run([stream[i : i + 1] for i in range(len(stream))])
        if by_byte != at_once:
            raise AssertionError("byte-by-byte feeding gave other events")


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in argv[1:]) and not any(
        not a.startswith("-") for a in argv[1:]
    ):
        argv.append("-max_total_time=60")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
