"""firmware.version: vendor version strings parsed and ordered; the rest opaque."""

from __future__ import annotations

import itertools
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.version import (
    FirmwareVersion,
    OpaqueVersion,
    Version,
    VersionFormatError,
    VersionOrderError,
    parse_version,
)

OLD = "DLH_XD32E_201110002"
NEW = "DLH_XD32E_210521003"


# --------------------------------------------------------------------------
# the field record
# --------------------------------------------------------------------------
def test_field_record_versions_parse_and_the_target_is_newer() -> None:
    old, new = parse_version(OLD), parse_version(NEW)
    assert isinstance(old, FirmwareVersion) and isinstance(new, FirmwareVersion)
    assert (new.vendor, new.model, new.build_date, new.build) == (
        "DLH",
        "XD32E",
        date(2021, 5, 21),
        3,
    )
    assert (old.build_date, old.build) == (date(2020, 11, 10), 2)
    assert old < new and new > old and old <= new and new >= old and old != new
    assert old.same_line(new) and old.product_line == ("DLH", "XD32E")
    assert str(new) == NEW and new.raw == NEW and new.semver is None


def test_build_number_orders_builds_of_the_same_day() -> None:
    assert parse_version("DLH_XD32E_210521002") < parse_version("DLH_XD32E_210521010")


# --------------------------------------------------------------------------
# tolerated variants
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "dlh_xd32e_210521003",  # lower case
        "Dlh_Xd32e_210521003",
        "DLH-XD32E-210521003",  # dashes
        "DLH-XD32E_210521003",
        "DLH_XD32E_210521003\x00\x00\x00\x00\x00",  # CBP/1 ASCII24 NUL padding
        "  DLH_XD32E_210521003\r\n",
    ],
)
def test_presentation_variants_equal_the_canonical_form(text: str) -> None:
    version = parse_version(text)
    assert isinstance(version, FirmwareVersion)
    assert version == parse_version(NEW) and hash(version) == hash(parse_version(NEW))
    assert str(version) == NEW
    assert version.raw == text.strip(" \r\n\x00")  # what the charger said, for the audit


def test_semantic_suffix_breaks_ties_only() -> None:
    plain = parse_version("DLH_XD32E_210521003")
    v120 = parse_version("DLH_XD32E_210521003_V1.2.0")
    v123 = parse_version("dlh-xd32e-210521003-v1.2.3")
    later = parse_version("DLH_XD32E_210522001_V0.0.1")
    assert isinstance(v123, FirmwareVersion) and v123.semver == (1, 2, 3)
    assert str(v123) == "DLH_XD32E_210521003_V1.2.3"
    assert plain < v120 < v123 < later  # the build date still dominates
    assert parse_version("DLH_XD32E_210521003_V01.2.3") == v123  # leading zeros normalised


@pytest.mark.parametrize(
    "text",
    [
        "SIM_1.0.0",  # the simulator's default
        "V1.2.3",
        "DLH_XD32E_210231003",  # 31 February: not a build date
        "DLH_XD32E_211301003",  # month 13
        "DLH_XD32E_21052103",  # 2-digit build
        "DLH_XD32E_2105210003",  # 4-digit build
        "DLH_XD32E_210521003_V1.2",  # incomplete semantic suffix
        "DLH_XD32E_210521003_1.2.3",  # suffix without V
        "DLH__XD32E_210521003",
        "DLH.XD32E.210521003",
        "1DLH_XD32E_210521003",  # vendor must start with a letter
        "D_XD32E_210521003",  # vendor of one letter
        "DLH_XD32E-EXTRA_210521003",
        "DLH_XD32E_210521003 beta",
    ],
)
def test_anything_else_is_opaque(text: str) -> None:
    version = parse_version(text)
    assert isinstance(version, OpaqueVersion)
    with pytest.raises(VersionFormatError):
        FirmwareVersion.parse(text)
    assert str(version) == text and version == parse_version(text)


def test_opaque_versions_compare_for_equality_only() -> None:
    a, b = parse_version("SIM_1.0.0"), parse_version("SIM_1.0.1")
    assert a == parse_version("SIM_1.0.0\x00") and a != b
    assert parse_version("sim_1.0.0") != a  # unknown format: case is kept
    assert a != parse_version(NEW)
    for left, right in [(a, b), (a, parse_version(NEW)), (parse_version(NEW), a)]:
        with pytest.raises(VersionOrderError):
            left < right  # noqa: B015
        with pytest.raises(VersionOrderError):
            left >= right  # noqa: B015
    with pytest.raises(TypeError):  # VersionOrderError is a TypeError, like any unorderable
        sorted([a, b])
    assert not a.same_line(a)


def test_ordering_against_other_types_is_not_implemented() -> None:
    version = parse_version(NEW)
    with pytest.raises(TypeError):
        version < "DLH_XD32E_210521004"  # type: ignore[operator]  # noqa: B015
    with pytest.raises(TypeError):
        parse_version("SIM") < 3  # type: ignore[operator]  # noqa: B015
    assert version != NEW  # a version is not its string


@pytest.mark.parametrize("text", ["", "   ", "\x00\x00"])
def test_empty_is_not_a_version(text: str) -> None:
    with pytest.raises(VersionFormatError, match="empty"):
        parse_version(text)
    with pytest.raises(VersionFormatError):
        OpaqueVersion(text)


def test_an_opaque_version_cannot_hide_a_vendor_version() -> None:
    with pytest.raises(VersionFormatError, match="parse_version"):
        OpaqueVersion("dlh_xd32e_210521003")
    assert OpaqueVersion("DLH_XD32E_210231003").text == "DLH_XD32E_210231003"


def test_direct_construction_is_validated_and_canonical() -> None:
    built = FirmwareVersion("DLH", "XD32E", date(2021, 5, 21), 3)
    assert built == parse_version(NEW) and built.raw == NEW
    for bad in [
        dict(vendor="dlh", model="XD32E", build_date=date(2021, 5, 21), build=3),
        dict(vendor="DLH", model="XD32E", build_date=date(1999, 5, 21), build=3),
        dict(vendor="DLH", model="XD32E", build_date=date(2021, 5, 21), build=1000),
        dict(vendor="DLH", model="XD_32", build_date=date(2021, 5, 21), build=3),
    ]:
        with pytest.raises(VersionFormatError):
            FirmwareVersion(**bad)  # type: ignore[arg-type]


def test_same_line() -> None:
    a = parse_version("DLH_XD32E_210521003")
    assert isinstance(a, FirmwareVersion)
    assert a.same_line(parse_version("dlh-xd32e-200101001"))
    assert not a.same_line(parse_version("DLH_XD40E_210521003"))
    assert not a.same_line(parse_version("ABC_XD32E_210521003"))
    assert not a.same_line(parse_version("SIM_1.0.0"))


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------
_vendors = st.from_regex(r"[A-Z][A-Z0-9]{1,7}", fullmatch=True)
_models = st.from_regex(r"[A-Z0-9]{1,16}", fullmatch=True)
_dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))
_semvers = st.none() | st.tuples(*[st.integers(0, 999_999)] * 3)


@st.composite
def firmware_versions(draw: st.DrawFn) -> FirmwareVersion:
    # Few vendors/models, so that many pairs share a line and the deeper
    # fields of the order get exercised.
    vendor = draw(st.sampled_from(["DLH", "XJ2"]) | _vendors)
    model = draw(st.sampled_from(["XD32E", "7KW"]) | _models)
    return FirmwareVersion(vendor, model, draw(_dates), draw(st.integers(0, 999)), draw(_semvers))


@st.composite
def renderings(draw: st.DrawFn, version: FirmwareVersion) -> str:
    """Any spelling of ``version`` the parser promises to accept."""

    def case(text: str) -> str:
        return "".join(c.lower() if draw(st.booleans()) else c for c in text)

    def sep() -> str:
        return draw(st.sampled_from(["_", "-"]))

    text = (
        f"{case(version.vendor)}{sep()}{case(version.model)}{sep()}"
        f"{version.build_date:%y%m%d}{version.build:03d}"
    )
    if version.semver is not None:
        text += f"{sep()}{case('V')}{'.'.join(map(str, version.semver))}"
    padding = draw(st.sampled_from(["", "\x00\x00", " ", "\n"]))
    return draw(st.sampled_from(["", " "])) + text + padding


@given(firmware_versions())
def test_str_round_trips(version: FirmwareVersion) -> None:
    again = parse_version(str(version))
    assert again == version and hash(again) == hash(version) and str(again) == str(version)


@given(st.data())
def test_every_accepted_spelling_parses_to_the_same_version(data: st.DataObject) -> None:
    version = data.draw(firmware_versions())
    text = data.draw(renderings(version))
    assert parse_version(text) == version
    assert parse_version(text).raw == text.strip(" \n\x00")


@given(firmware_versions(), firmware_versions(), firmware_versions())
def test_ordering_is_a_total_order(
    a: FirmwareVersion, b: FirmwareVersion, c: FirmwareVersion
) -> None:
    for x, y in itertools.permutations((a, b, c), 2):
        assert (x < y) + (x == y) + (x > y) == 1  # trichotomy (so totality)
        assert (x <= y) == (x < y or x == y) and (x >= y) == (x > y or x == y)
        assert (x < y) == (y > x)
        if x == y:
            assert hash(x) == hash(y)
    for x, y, z in itertools.permutations((a, b, c)):
        if x <= y and y <= z:
            assert x <= z  # transitivity
    assert sorted([a, b, c]) == sorted([c, b, a])


@given(st.text(max_size=40))
def test_parse_version_never_crashes(text: str) -> None:
    if not text.strip(" \t\r\n\x00"):
        with pytest.raises(VersionFormatError):
            parse_version(text)
        return
    version: Version = parse_version(text)
    assert parse_version(str(version)) == version
    if isinstance(version, OpaqueVersion):
        with pytest.raises(VersionOrderError):
            version < version  # noqa: B015
