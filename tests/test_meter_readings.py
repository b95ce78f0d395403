"""gateway/storage/meter.py, without a database: the stored text and digest of
a sampledValue list (``encode``), the OCPP 1.6 §7.43 defaults filled in when
reading (``sample``, ``samples_of``) and the duplicate rule of the readers and
of migration 0008's downgrade (``merge``: per connector, time, measurand,
phase, location and context the first received wins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from itertools import permutations
from typing import Any

import orjson
import pytest

from gateway.storage.meter import (
    DEFAULT_MEASURAND,
    MergedSample,
    Sample,
    StoredReading,
    encode,
    float_or_none,
    measurands,
    merge,
    sample,
    samples_of,
)

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
ENERGY = "Energy.Active.Import.Register"


def _sv(value: str, measurand: str = ENERGY, **extra: str) -> dict[str, str]:
    return {"value": value, "measurand": measurand, **extra}


def _reading(
    svs: list[dict[str, Any]],
    *,
    at: datetime = T0,
    received_at: datetime = T0,
    connector_id: int = 1,
) -> StoredReading:
    return StoredReading(connector_id, at, encode(svs)[0], received_at)


def _values(merged: list[MergedSample]) -> list[tuple[str, str, str]]:
    return [(m.sample.measurand, m.sample.phase, m.sample.value) for m in merged]


# --- encode -----------------------------------------------------------------


def test_encode_is_the_orjson_text_and_a_pinned_digest() -> None:
    """Stored digests must stay what they are: a retransmission of an element
    stored before an upgrade of the gateway has to meet the same key."""
    text, digest = encode([{"value": "1000", "measurand": ENERGY}])
    assert text == '[{"value":"1000","measurand":"Energy.Active.Import.Register"}]'
    assert digest == -7178225372510963793
    # The documented definition: the first 8 bytes of BLAKE2b over the text,
    # big-endian, signed.
    raw = blake2b(text.encode(), digest_size=8).digest()
    assert digest == int.from_bytes(raw, "big", signed=True)


def test_encode_is_stable_for_the_same_list() -> None:
    def element() -> list[dict[str, str]]:
        # Built afresh each time, as a retransmission is parsed afresh.
        return [
            _sv("1100"),
            _sv("230.1", "Voltage", phase="L1-N", unit="V"),
            _sv("7000", "Power.Active.Import", unit="W"),
        ]

    first = encode(element())
    assert encode(element()) == first
    assert orjson.loads(first[0]) == element()  # the list as sent, nothing added


@pytest.mark.parametrize(
    "other",
    [
        [_sv("1101"), _sv("7000", "Power.Active.Import")],  # another value
        [_sv("7000", "Power.Active.Import"), _sv("1100")],  # another order
        [_sv("1100")],  # one value fewer
        [_sv("1100"), _sv("7000", "Power.Active.Import"), _sv("40", "SoC")],  # one more
        [_sv("1100", unit="kWh"), _sv("7000", "Power.Active.Import")],  # a field more
        [{"measurand": ENERGY, "value": "1100"}, _sv("7000", "Power.Active.Import")],  # keys
    ],
)
def test_a_different_list_has_a_different_text_and_digest(other: list[dict[str, str]]) -> None:
    text, digest = encode([_sv("1100"), _sv("7000", "Power.Active.Import")])
    other_text, other_digest = encode(other)
    assert other_text != text
    assert other_digest != digest


def test_digests_fit_a_signed_64_bit_integer() -> None:
    digests = {encode([_sv(str(i))])[1] for i in range(2000)}
    assert len(digests) == 2000
    assert all(-(2**63) <= d < 2**63 for d in digests)
    # Signed, not an unsigned 64-bit value (which a BIGINT could not hold) nor
    # a 63-bit one: both halves of the range are used.
    assert min(digests) < -(2**62) and max(digests) > 2**62


# --- sample: the §7.43 defaults ----------------------------------------------


def test_sample_defaults() -> None:
    assert sample({"value": "12345"}) == Sample(
        measurand="Energy.Active.Import.Register",
        phase="",
        unit="Wh",
        context="Sample.Periodic",
        location="Outlet",
        format="Raw",
        value="12345",
        value_num=12345.0,
    )
    assert DEFAULT_MEASURAND == "Energy.Active.Import.Register"


@pytest.mark.parametrize(
    ("measurand", "unit"),
    [
        ("Energy.Active.Import.Register", "Wh"),
        ("Energy.Active.Export.Interval", "Wh"),
        ("Energy.Reactive.Import.Register", "Wh"),  # §7.43: Wh for any "Energy" measurand
        ("Power.Active.Import", ""),
        ("Current.Import", ""),
        ("Voltage", ""),
        ("SoC", ""),
        ("Temperature", ""),
    ],
)
def test_the_default_unit_is_wh_only_for_energy(measurand: str, unit: str) -> None:
    got = sample({"value": "1", "measurand": measurand})
    assert got.measurand == measurand
    assert got.unit == unit


def test_given_fields_override_the_defaults() -> None:
    sv = {
        "value": "1.5",
        "context": "Transaction.End",
        "format": "Raw",
        "measurand": "Energy.Active.Import.Register",
        "phase": "L2",
        "location": "Inlet",
        "unit": "kWh",
    }
    assert sample(sv) == Sample(
        "Energy.Active.Import.Register", "L2", "kWh", "Transaction.End", "Inlet", "Raw", "1.5", 1.5
    )
    # An explicit empty unit is kept too (migration 0008 writes the unit
    # the old row had, even "").
    assert sample({"value": "1", "unit": ""}).unit == ""
    assert sample({"value": "7", "measurand": "Power.Active.Import", "unit": "kW"}).unit == "kW"


@pytest.mark.parametrize(
    ("value", "number"),
    [("12.5", 12.5), ("-3", -3.0), ("0", 0.0), ("1e3", 1000.0), ("230.10", 230.1)],
)
def test_value_num_of_a_number(value: str, number: float) -> None:
    assert sample({"value": value}).value_num == number
    assert float_or_none(value) == number


@pytest.mark.parametrize(
    "value", ["", "abc", "0x1A", "12,5", "3 kWh", "AbCd+/==", "NaN", "nan", "inf", "-Infinity"]
)
def test_value_num_is_none_for_a_non_numeric_value(value: str) -> None:
    got = sample({"value": value, "format": "SignedData"})
    assert got.value == value  # kept as text
    assert got.value_num is None
    assert got.format == "SignedData"


def test_samples_of_keeps_the_order_sent() -> None:
    svs = [_sv("40", "SoC", unit="Percent", location="EV"), {"value": "1100"}, _sv("x", "Voltage")]
    got = samples_of(encode(svs)[0])
    assert [(x.measurand, x.value) for x in got] == [
        ("SoC", "40"),
        (ENERGY, "1100"),
        ("Voltage", "x"),
    ]
    assert got[0].location == "EV" and got[0].unit == "Percent"
    assert got[1].unit == "Wh" and got[1].context == "Sample.Periodic"
    assert got[2].value_num is None
    assert samples_of("[]") == []


def test_measurands_applies_the_default() -> None:
    assert measurands([{"value": "1"}, _sv("2", "SoC"), _sv("3")]) == {ENERGY, "SoC"}
    assert measurands([]) == set()


# --- merge: the duplicate rule -------------------------------------------------


def test_merge_keeps_the_first_received() -> None:
    early = _reading([_sv("1100"), _sv("7000", "Power.Active.Import")], received_at=T0)
    late = _reading(
        [_sv("1105"), _sv("31.9", "Current.Import", phase="L1")],
        received_at=T0 + timedelta(seconds=40),
    )
    for readings in ([early, late], [late, early]):
        got = merge(readings)
        assert _values(got) == [
            ("Current.Import", "L1", "31.9"),
            (ENERGY, "", "1100"),  # not 1105: that one came later
            ("Power.Active.Import", "", "7000"),
        ]
        assert [m.received_at for m in got] == [
            T0 + timedelta(seconds=40),
            T0,
            T0,
        ]


def test_a_retransmission_adds_nothing() -> None:
    svs = [_sv("1100"), _sv("7000", "Power.Active.Import")]
    once = merge([_reading(svs)])
    twice = merge([_reading(svs), _reading(svs, received_at=T0 + timedelta(minutes=5))])
    assert twice == once
    assert len(once) == 2


def test_an_element_sent_again_with_other_text_loses_to_the_first() -> None:
    """A re-ordered list (other keys order, other sample order) has another
    digest, so it is stored beside the first; the reader drops it."""
    first = _reading([_sv("1100"), _sv("7000", "Power.Active.Import")])
    again = _reading(
        [{"measurand": "Power.Active.Import", "value": "7001"}, {"value": "1101"}],
        received_at=T0 + timedelta(seconds=1),
    )
    assert first.samples != again.samples
    assert _values(merge([again, first])) == [
        (ENERGY, "", "1100"),
        ("Power.Active.Import", "", "7000"),
    ]


def test_within_one_element_the_first_in_the_list_wins() -> None:
    got = merge([_reading([_sv("1"), _sv("2"), {"value": "3"}, _sv("4", phase="L1")])])
    assert _values(got) == [(ENERGY, "", "1"), (ENERGY, "L1", "4")]


@pytest.mark.parametrize(
    "field",
    ["connector_id", "at", "measurand", "phase", "location", "context"],
)
def test_each_key_field_keeps_samples_apart(field: str) -> None:
    base: dict[str, Any] = {
        "measurand": "Voltage",
        "phase": "L1-N",
        "location": "Outlet",
        "context": "Sample.Periodic",
    }
    other_sv = dict(base)
    other_at, other_connector = T0, 1
    if field == "connector_id":
        other_connector = 2
    elif field == "at":
        other_at = T0 + timedelta(seconds=1)
    else:
        other_sv[field] = {
            "measurand": "Current.Import",
            "phase": "L2-N",
            "location": "Inlet",
            "context": "Sample.Clock",
        }[field]
    first = _reading([{"value": "1", **base}])
    second = StoredReading(
        other_connector,
        other_at,
        encode([{"value": "2", **other_sv}])[0],
        T0 + timedelta(seconds=5),
    )
    assert sorted(m.sample.value for m in merge([first, second])) == ["1", "2"]


@pytest.mark.parametrize(
    ("field", "other"),
    [("unit", "kWh"), ("format", "SignedData"), ("value", "999")],
)
def test_fields_outside_the_key_do_not_keep_samples_apart(field: str, other: str) -> None:
    first = _reading([{"value": "1", "unit": "Wh", "format": "Raw"}])
    second = _reading(
        [{"value": "1", "unit": "Wh", "format": "Raw", field: other}],
        received_at=T0 + timedelta(seconds=5),
    )
    got = merge([second, first])
    assert len(got) == 1
    assert got[0].sample == Sample(ENERGY, "", "Wh", "Sample.Periodic", "Outlet", "Raw", "1", 1.0)


def test_defaults_and_explicit_values_are_the_same_key() -> None:
    """{"value": ...} and the same sample with its defaults spelled out (as
    migration 0008 writes them) are one sampled value."""
    implicit = _reading([{"value": "1"}], received_at=T0 + timedelta(seconds=1))
    explicit = _reading(
        [
            {
                "value": "2",
                "context": "Sample.Periodic",
                "format": "Raw",
                "measurand": ENERGY,
                "location": "Outlet",
                "unit": "Wh",
            }
        ]
    )
    assert [m.sample.value for m in merge([implicit, explicit])] == ["2"]


def test_ties_in_received_at_do_not_depend_on_the_row_order() -> None:
    """Two different elements received at the same time (one MeterValues
    with two elements of one timestamp, or one CBP/1 frame): the answer is
    the same whatever order the database returns them in; the reading with
    the smaller text is taken first."""
    a = _reading([_sv("111"), _sv("5", "SoC")])
    b = _reading([_sv("222"), _sv("7000", "Power.Active.Import")])
    c = _reading([_sv("333", phase="L1"), _sv("6", "SoC")])
    answers = {tuple(merge(list(p))) for p in permutations([a, b, c])}
    assert len(answers) == 1
    (answer,) = answers
    winner = min((a, b, c), key=lambda r: r.samples)
    assert winner is a  # '[{"value":"111"...' sorts first
    assert _values(list(answer)) == [
        (ENERGY, "", "111"),
        (ENERGY, "L1", "333"),
        ("Power.Active.Import", "", "7000"),
        ("SoC", "", "5"),
    ]


def test_a_tie_is_broken_by_the_text_not_by_the_values() -> None:
    # "1000" < "900" as text: the reading whose text sorts first wins even
    # with the larger number and even when it comes second in the input.
    small_text = _reading([{"value": "1000"}])
    large_text = _reading([{"value": "900"}])
    assert small_text.samples < large_text.samples
    assert [m.sample.value for m in merge([large_text, small_text])] == ["1000"]
    assert [m.sample.value for m in merge([small_text, large_text])] == ["1000"]


def test_merge_sorts_by_time_measurand_phase_location_context_connector() -> None:
    t1 = T0 + timedelta(minutes=1)
    readings = [
        StoredReading(
            2,
            T0,
            encode([_sv("c2", "Power.Active.Import")])[0],
            T0,
        ),
        _reading(
            [
                _sv("p", "Power.Active.Import"),
                _sv("v3", "Voltage", phase="L3-N"),
                _sv("v1", "Voltage", phase="L1-N"),
                _sv("e-clock", context="Sample.Clock"),
                _sv("e-inlet", location="Inlet"),
                _sv("e"),
                _sv("e-l1", phase="L1"),
                _sv("c", "Current.Import"),
            ]
        ),
        _reading([_sv("late-e"), _sv("late-soc", "SoC")], at=t1, received_at=t1),
    ]
    expected = [
        "c",  # Current.Import
        "e-inlet",  # Energy, phase "", Inlet < Outlet
        "e-clock",  # Energy, phase "", Outlet, Sample.Clock < Sample.Periodic
        "e",
        "e-l1",  # phase L1 after ""
        "p",  # Power.Active.Import, connector 1
        "c2",  # Power.Active.Import, connector 2
        "v1",
        "v3",
        "late-e",  # the next time
        "late-soc",
    ]
    for order in permutations(readings):
        got = merge(list(order))
        assert [m.sample.value for m in got] == expected
    got = merge(readings)
    assert [(m.at, m.connector_id) for m in got][-3:] == [(T0, 1), (t1, 1), (t1, 1)]
    assert got[6].connector_id == 2


def test_merge_of_nothing() -> None:
    assert merge([]) == []
    assert merge([_reading([])]) == []
