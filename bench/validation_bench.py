"""Schema validation of the mixed load's three messages: fastjsonschema alone
against jsonschema-rs's ``is_valid`` in front of it (the strict validators
of protocol/ocpp/validation.py), in one run. Prints microseconds per payload.

    .venv/bin/python bench/validation_bench.py [--number 100000]
"""

from __future__ import annotations

import argparse
import functools
import timeit
from typing import Any

import fastjsonschema

from protocol.ocpp import validation as V

SV = {"context": "Sample.Periodic", "location": "Outlet"}
PAYLOADS: dict[str, dict[str, Any]] = {
    "MeterValues": {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": "2026-12-04T08:00:00.123Z",
                "sampledValue": [
                    {
                        **SV,
                        "value": "1234",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    },
                    {
                        **SV,
                        "value": "31.8",
                        "measurand": "Current.Import",
                        "unit": "A",
                        "phase": "L1",
                    },
                    {**SV, "value": "229.7", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
                    {**SV, "value": "7.30", "measurand": "Power.Active.Import", "unit": "kW"},
                ],
            }
        ],
    },
    "StatusNotification": {
        "connectorId": 1,
        "errorCode": "NoError",
        "status": "Charging",
        "timestamp": "2026-12-04T08:00:00.123Z",
    },
    "Heartbeat": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    validator = V.Validator("1.6")
    validator.preload()
    print(f"OCPP 1.6 request payloads, {args.number:,} times each")
    for action, payload in PAYLOADS.items():
        used: set[str] = set()
        file_name = V._schema_files("1.6")[(action, "request")]
        schema = V._prepare(V._load_schema("1.6", file_name), used)
        alone = fastjsonschema.compile(
            schema, formats={n: V._ENUM_CHECKS[n] for n in used}, use_default=False
        )
        validator.validate_request(action, payload)  # valid for both
        alone(payload)
        t_alone = min(
            timeit.repeat(functools.partial(alone, payload), number=args.number, repeat=3)
        )
        t_both = min(
            timeit.repeat(
                functools.partial(validator.validate_request, action, payload),
                number=args.number,
                repeat=3,
            )
        )
        print(
            f"{action}: fastjsonschema {t_alone / args.number * 1e6:.2f} µs, "
            f"jsonschema-rs prefilter (validate_request) {t_both / args.number * 1e6:.2f} µs"
        )


if __name__ == "__main__":
    main()
