"""Meter readings: one stored row per OCPP MeterValue element.

OCPP 1.6 §7.31 MeterValue is a timestamp and the list of sampledValue taken
at that time (§7.43 SampledValue). The gateway stores each element as one
row of ``meter_readings``: its key (pile, transaction key, connector,
timestamp, digest) and the sampled values as the charger sent them, as JSON
text. Storing one row per sampled value instead cost 2.0-2.3x more per
MeterValues on SQLite and 4.2x on PostgreSQL (bench/meter_row_shape.py,
docs/benchmarks.md "One row per MeterValue element").

What readers see does not change (docs/architecture.md "Meter readings"):

- the §7.43 defaults (measurand Energy.Active.Import.Register, context
  Sample.Periodic, location Outlet, format Raw, unit Wh for energy) are
  filled in when reading, as they were when writing;
- the duplicate rule is the same: per connector, time, measurand, phase,
  location and context, the first value received wins. A retransmitted
  element has the same text, so the same digest, and is stored once (the
  primary key); an element sent again with other text (a re-ordered or
  corrected list) is stored beside it and loses to the first at read time.

Pure: no database, no I/O (tested in tests/test_meter_readings.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from hashlib import blake2b
from math import isfinite
from typing import Any, NamedTuple

import orjson

DEFAULT_MEASURAND = "Energy.Active.Import.Register"


class Sample(NamedTuple):
    """One sampled value with the §7.43 defaults filled in."""

    measurand: str
    phase: str  # "" when the charger gave none
    unit: str
    context: str
    location: str
    format: str
    value: str
    value_num: float | None


class StoredReading(NamedTuple):
    """A ``meter_readings`` row as a reader gets it."""

    connector_id: int
    at: datetime
    samples: str
    received_at: datetime


class MergedSample(NamedTuple):
    """One sampled value of a reading, after the duplicate rule."""

    at: datetime
    connector_id: int
    sample: Sample
    received_at: datetime


def float_or_none(value: str) -> float | None:
    """The number a sampled value's text holds, if it is a finite one.

    SignedData and vendor formats are kept as text only. "NaN" and "inf"
    parse as floats but are no reading, and JSON cannot carry them (the
    meter-values export answered 500 for a transaction holding one)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if isfinite(number) else None


def encode(sampled_values: Sequence[dict[str, Any]]) -> tuple[str, int]:
    """The stored text of a sampledValue list and its digest.

    The digest is the first 8 bytes of BLAKE2b over that text, as a signed
    64-bit integer (a BIGINT on both backends). orjson writes the same bytes
    for the same list, so a retransmission has the same key. A collision
    between two different lists of one pile, connector and timestamp (one in
    2^64) would drop the second as a retransmission."""
    raw = orjson.dumps(sampled_values)
    digest = int.from_bytes(blake2b(raw, digest_size=8).digest(), "big", signed=True)
    return raw.decode(), digest


def sample(sv: dict[str, Any]) -> Sample:
    """A §7.43 SampledValue (already schema-validated) with defaults."""
    value: str = sv["value"]
    measurand: str = sv.get("measurand", DEFAULT_MEASURAND)
    return Sample(
        measurand,
        sv.get("phase", ""),
        sv.get("unit", "Wh" if measurand.startswith("Energy") else ""),
        sv.get("context", "Sample.Periodic"),
        sv.get("location", "Outlet"),
        sv.get("format", "Raw"),
        value,
        float_or_none(value),
    )


def samples_of(text: str) -> list[Sample]:
    """The sampled values of a stored reading, in the order sent."""
    return [sample(sv) for sv in orjson.loads(text)]


def measurands(sampled_values: Iterable[dict[str, Any]]) -> set[str]:
    return {sv.get("measurand", DEFAULT_MEASURAND) for sv in sampled_values}


def merge(readings: Iterable[StoredReading]) -> list[MergedSample]:
    """The sampled values of a transaction's readings, as stored one row per
    value before (migration 0008): per (connector, time, measurand, phase,
    location, context) the first received wins (within one element, the
    first in its list); sorted by time, measurand, phase, location, context
    and connector. Readings received at the same time are taken in the
    order of their text, so the answer does not depend on row order."""
    seen: set[tuple[int, datetime, str, str, str, str]] = set()
    out: list[MergedSample] = []
    for r in sorted(readings, key=lambda r: (r.received_at, r.samples)):
        for x in samples_of(r.samples):
            key = (r.connector_id, r.at, x.measurand, x.phase, x.location, x.context)
            if key in seen:
                continue
            seen.add(key)
            out.append(MergedSample(r.at, r.connector_id, x, r.received_at))
    out.sort(
        key=lambda m: (
            m.at,
            m.sample.measurand,
            m.sample.phase,
            m.sample.location,
            m.sample.context,
            m.connector_id,
        )
    )
    return out
