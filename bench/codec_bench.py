"""Micro-benchmark of the OCPP-J codec: decode + validate per second on one core.

Load: an equal mix of Heartbeat, MeterValues (one meterValue with 4 sampled
values: energy, current, voltage, power, each with measurand / phase / unit /
context / location) and StatusNotification CALL frames, as text, each with
its own unique id, the way the WebSocket layer hands them over.

Compared in the same run with the ``ocpp`` package's own per-message path:
``ocpp.messages.unpack`` then payload validation, once called synchronously
(``_validate_payload``, jsonschema Draft4Validator) and once the way its
``ChargePoint`` does it (``await validate_payload(...)``, which runs the
validation in the default thread pool executor).

    .venv/bin/python bench/codec_bench.py [--messages 30000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastjsonschema

from protocol.ocpp import Call, Validator, decode
from protocol.ocpp.validation import _load_schema, _schema_files

TS = "2021-05-27T14:20:00Z"


def _sampled(measurand: str, value: str, unit: str, phase: str | None = None) -> dict[str, Any]:
    out = {
        "value": value,
        "context": "Sample.Periodic",
        "measurand": measurand,
        "location": "Outlet",
        "unit": unit,
    }
    if phase:
        out["phase"] = phase
    return out


PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("Heartbeat", {}),
    (
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": 300,
            "meterValue": [
                {
                    "timestamp": TS,
                    "sampledValue": [
                        _sampled("Energy.Active.Import.Register", "12345.6", "Wh"),
                        _sampled("Current.Import", "31.8", "A", "L1"),
                        _sampled("Voltage", "229.7", "V", "L1-N"),
                        _sampled("Power.Active.Import", "7.30", "kW"),
                    ],
                }
            ],
        },
    ),
    (
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": TS},
    ),
]


def make_frames(count: int) -> list[str]:
    frames = []
    for i in range(count):
        action, payload = PAYLOADS[i % len(PAYLOADS)]
        frames.append(orjson.dumps([2, f"{i:08x}-bench", action, payload]).decode())
    return frames


def best_rate(run: Callable[[list[str]], None], frames: list[str], repeat: int) -> float:
    """Messages per second of the fastest of ``repeat`` runs over ``frames``."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        run(frames)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def pilegate_decode_and_validate(frames: list[str]) -> None:
    validator = VALIDATOR
    for frame in frames:
        msg = decode(frame)
        if isinstance(msg, Call):
            validator.validate_request(msg.action, msg.payload)


def pilegate_decode_only(frames: list[str]) -> None:
    for frame in frames:
        decode(frame)


_RAW: dict[str, Callable[[Any], Any]] = {}


def pilegate_decode_and_raw_schema(frames: list[str]) -> None:
    """Same, with the OCA schemas compiled as shipped (no enum / annotation rewrite)."""
    for frame in frames:
        msg = decode(frame)
        if isinstance(msg, Call):
            check = _RAW.get(msg.action)
            if check is None:
                file_name = _schema_files("1.6")[(msg.action, "request")]
                check = fastjsonschema.compile(_load_schema("1.6", file_name), use_default=False)
                _RAW[msg.action] = check
            check(msg.payload)


def ocpp_sync(frames: list[str]) -> None:
    from ocpp.messages import _validate_payload, unpack

    for frame in frames:
        _validate_payload(unpack(frame), "1.6")


def ocpp_as_charge_point(frames: list[str]) -> None:
    from ocpp.messages import unpack, validate_payload

    async def main() -> None:
        for frame in frames:
            await validate_payload(unpack(frame), "1.6")

    asyncio.run(main())


VALIDATOR = Validator("1.6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    frames = make_frames(args.messages)
    # Warm up: compile the three schemas on both sides before timing.
    pilegate_decode_and_validate(frames[:30])
    ocpp_sync(frames[:30])
    pilegate_decode_and_raw_schema(frames[:30])

    print(
        f"{len(frames)} CALL frames, Heartbeat / MeterValues(4 values) / StatusNotification 1:1:1"
    )
    print(f"best of {args.repeat} runs, one core, Python {sys.version.split()[0]}\n")
    rows: list[tuple[str, float]] = [
        ("pilegate decode only (orjson)", best_rate(pilegate_decode_only, frames, args.repeat)),
        (
            "pilegate decode + validate (fastjsonschema)",
            best_rate(pilegate_decode_and_validate, frames, args.repeat),
        ),
        (
            "  same, OCA schemas compiled unmodified",
            best_rate(pilegate_decode_and_raw_schema, frames, args.repeat),
        ),
        (
            "ocpp unpack + _validate_payload (jsonschema, sync)",
            best_rate(ocpp_sync, frames, args.repeat),
        ),
    ]
    few = frames[: max(3, len(frames) // 5)]
    rows.append(
        (
            "ocpp unpack + await validate_payload (executor)",
            best_rate(ocpp_as_charge_point, few, max(1, args.repeat // 2)),
        )
    )
    ours = rows[1][1]
    for label, rate in rows:
        print(f"{label:<52} {rate:>12,.0f} msg/s  {1e6 / rate:7.2f} us/msg  x{ours / rate:6.1f}")
    print("\n(the last column is how many times faster pilegate decode + validate is)")
    print(
        "note: the ocpp package's Draft4Validator has no format checker, so it does not "
        "check date-time; pilegate does."
    )


if __name__ == "__main__":
    main()
