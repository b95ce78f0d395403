"""WebSocket framing of one OCPP-J message: websockets' parser and serializer
against the direct framing (protocol/wsframe.py), in one run.

Receive: a client's masked MeterValues frame (4 sampled values, as
bench/loadgen.py sends it) through websockets' sans-I/O ``ServerProtocol``
(``receive_data``, ``events_received``, ``data_to_send``, UTF-8 decode)
against ``next_frame`` + ``unmasked`` + UTF-8 decode. Send: a CALLRESULT
through ``send_text`` + ``data_to_send`` against ``text_frame``. Both sides
produce the same message and the same bytes (checked before timing). Prints
microseconds per frame.

    .venv/bin/python bench/ws_framing.py [--number 200000]
"""

from __future__ import annotations

import argparse
import timeit

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from protocol.wsframe import TEXT, next_frame, text_frame, unmasked

SV = '{"value":"%s","context":"Sample.Periodic","measurand":"%s","location":"Outlet","unit":"%s"}'
MESSAGE = (
    '[2,"1a","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":'
    '"2026-12-04T08:00:00.123Z","sampledValue":['
    + ",".join(
        SV % args
        for args in (
            ("1234", "Energy.Active.Import.Register", "Wh"),
            ("31.8", "Current.Import", "A"),
            ("229.7", "Voltage", "V"),
            ("7.30", "Power.Active.Import", "kW"),
        )
    )
    + "]}]}]"
)
REPLY = '[3,"1a",{}]'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    frame = Frame(Opcode.TEXT, MESSAGE.encode()).serialize(mask=True)
    receiver = ServerProtocol(state=State.OPEN)

    def websockets_receive() -> str:
        receiver.receive_data(frame)
        (event,) = receiver.events_received()
        receiver.data_to_send()
        assert isinstance(event, Frame)
        return str(event.data, "utf-8")

    def direct_receive() -> str:
        kind, mask_at, end = next_frame(frame, 0, 2**20)
        assert kind == TEXT
        return str(unmasked(frame, mask_at, end), "utf-8")

    sender = ServerProtocol(state=State.OPEN)

    def websockets_send() -> bytes:
        sender.send_text(REPLY.encode())
        return b"".join(sender.data_to_send())

    def direct_send() -> bytes:
        return text_frame(REPLY.encode())

    assert websockets_receive() == direct_receive() == MESSAGE
    assert websockets_send() == direct_send()
    print(f"one MeterValues frame ({len(frame)} bytes) and one CALLRESULT, {args.number:,} times")
    for name, fn in (
        ("receive, websockets ServerProtocol", websockets_receive),
        ("receive, protocol/wsframe", direct_receive),
        ("send, websockets send_text", websockets_send),
        ("send, protocol/wsframe text_frame", direct_send),
    ):
        seconds = min(timeit.repeat(fn, number=args.number, repeat=3))
        print(f"{name}: {seconds / args.number * 1e6:.2f} µs per frame")


if __name__ == "__main__":
    main()
