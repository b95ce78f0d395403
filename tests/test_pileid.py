"""Unit tests for pileid: seed IDs from the field, every rule, messages, explain, normalize."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable

import pytest

import pileid
from pileid import (
    GunId,
    Kind,
    PileId,
    PileIdError,
    Problem,
    Product,
    Rule,
    Segment,
    explain,
    normalize,
    parse_any,
    parse_gun_id,
    parse_pile_id,
)

Parser = Callable[[str], object]


def rules_of(text: str, parse: Parser = parse_pile_id) -> set[Rule]:
    with pytest.raises(PileIdError) as info:
        parse(text)
    return {p.rule for p in info.value.problems}


def error_of(text: str, parse: Parser = parse_pile_id) -> PileIdError:
    with pytest.raises(PileIdError) as info:
        parse(text)
    return info.value


# --- seed IDs that must decode --------------------------------------------------------


def test_seed_dc_pile_in_yantian() -> None:
    pile = parse_pile_id("44030800010000200005")
    assert str(pile) == pile.text == "44030800010000200005"
    assert pile.region_code == "440308"
    assert pile.region.name == "盐田区"
    assert pile.region.province == "广东省"
    assert pile.region.prefecture == "深圳市"
    assert pile.region.full_name == "广东省 深圳市 盐田区"
    assert pile.region.status == "current"
    assert (pile.operator, pile.reserved, pile.serial) == ("0001", "0", "00005")
    assert pile.product is Product.PILE
    assert pile.kind is Kind.DC and pile.kind.label == "DC"
    assert pile.is_dc and not pile.is_ac
    assert pile.serial_number == 5
    assert pile.warnings == ()


def test_seed_ac_pile_in_zhongshan_prefecture_code() -> None:
    # The after-sales case: this AC pile was shown as DC to drivers.
    pile = parse_pile_id("44200000010000100001")
    assert pile.kind is Kind.AC and pile.is_ac and not pile.is_dc
    assert pile.region.code == "442000"
    assert pile.region.name == "中山市"
    assert pile.region.prefecture is None
    assert pile.region.full_name == "广东省 中山市"
    assert pile.warnings == ()


def test_seed_zhongshan_sub_area_is_valid_with_warning() -> None:
    pile = parse_pile_id("44200100010000100005")
    assert pile.region_code == "442001"
    assert pile.region.status == "unlisted"
    assert pile.region.province == "广东省"
    assert pile.region.prefecture == "中山市"
    assert pile.region.first_revision is None and pile.region.last_revision is None
    assert [w.rule for w in pile.warnings] == [Rule.REGION_UNLISTED]
    (warning,) = pile.warnings
    assert warning.severity == "warning"
    assert warning.segment is Segment.REGION
    assert warning.message == (
        "region code 442001 is not in GB/T 2260; accepted as a sub-area of 442000 中山市, "
        "a prefecture-level city without county-level divisions"
    )


def test_seed_hong_kong_pile() -> None:
    pile = parse_pile_id("81000000560000100003")
    assert pile.region.name == "香港特别行政区"
    assert pile.region.province is None and pile.region.full_name == "香港特别行政区"
    assert pile.operator == "0056"
    assert pile.kind is Kind.AC
    assert pile.serial == "00003"


def test_seed_gun_two_of_dc_pile() -> None:
    gun = parse_gun_id("44030800010000200005002")
    assert isinstance(gun, GunId)
    assert str(gun) == gun.text == "44030800010000200005002"
    assert gun.number == 2
    assert gun.pile == parse_pile_id("44030800010000200005")
    assert gun.pile.is_dc
    assert gun.pile.gun(2) == gun
    assert parse_any("44030800010000200005002") == gun


def test_parse_any_dispatches_on_length() -> None:
    assert isinstance(parse_any("44030800010000200005"), PileId)
    assert isinstance(parse_any("44030800010000200005999"), GunId)


# --- seed IDs that must fail ------------------------------------------------------------


def test_sixteen_digit_id_from_the_field() -> None:
    err = error_of("4420000001100001")
    assert err.rules == {Rule.LENGTH}
    (problem,) = err.problems
    assert problem.segment is Segment.WHOLE and problem.severity == "error"
    assert problem.message == "pile ID has 16 digits, expected 20 (`4420000001100001`)"
    assert str(err) == problem.message
    assert err.text == "4420000001100001"


def test_length_message_for_any_and_gun() -> None:
    any_err = error_of("4420000001100001", parse_any)
    assert any_err.rules == {Rule.LENGTH}
    assert any_err.problems[0].message == (
        "ID has 16 digits, expected 20 (pile ID) or 23 (gun ID) (`4420000001100001`)"
    )
    gun_err = error_of("44030800010000200005", parse_gun_id)
    assert gun_err.rules == {Rule.LENGTH}
    assert gun_err.problems[0].message.startswith("gun ID has 20 digits, expected 23")
    assert "20 digits is a pile ID" in gun_err.problems[0].message
    pile_err = error_of("44030800010000200005002")
    assert pile_err.problems[0].message.endswith("; 23 digits is a gun ID")


def test_id_with_spaces_gets_its_own_rule_not_non_digit() -> None:
    err = error_of("3101 0400 0500 0050 0011")
    # With the spaces gone the ID still has kind 05; every error is listed.
    assert err.rules == {Rule.CONTAINS_SPACES, Rule.KIND_UNKNOWN}
    spaces = next(p for p in err.problems if p.rule is Rule.CONTAINS_SPACES)
    assert spaces.segment is Segment.WHOLE
    assert spaces.message == (
        "ID contains spaces; with them removed it is a valid-length pile ID "
        "`31010400050000500011` (use pileid.normalize)"
    )


def test_spaces_in_an_otherwise_valid_id() -> None:
    err = error_of(" 44030800010000200005")
    assert err.rules == {Rule.CONTAINS_SPACES}
    assert "valid-length pile ID `44030800010000200005`" in str(err)


def test_surrounding_newline_is_whitespace() -> None:
    err = error_of("44030800010000200005\n")
    assert err.rules == {Rule.CONTAINS_SPACES}
    assert str(err).startswith("ID contains whitespace; with it removed")


def test_spaces_that_do_not_fix_the_length() -> None:
    err = error_of("4403 0800")
    assert err.rules == {Rule.CONTAINS_SPACES, Rule.LENGTH}
    messages = [p.message for p in err.problems]
    assert "ID contains spaces at position 5" in messages
    assert "with whitespace removed, pile ID has 8 digits, expected 20 (`4403 0800`)" in messages


def test_unknown_kind_code() -> None:
    err = error_of("31010400050000500011")
    assert err.rules == {Rule.KIND_UNKNOWN}
    assert err.problems[0].segment is Segment.KIND
    assert err.problems[0].message == "kind code `05` is unknown (expected 01 AC or 02 DC)"


def test_all_errors_are_listed_not_just_the_first() -> None:
    err = error_of("31010400050000500000")
    assert [p.rule for p in err.problems] == [Rule.KIND_UNKNOWN, Rule.SERIAL_ZERO]
    assert str(err) == (
        "kind code `05` is unknown (expected 01 AC or 02 DC); "
        "serial `00000` is not allowed (serials start at 00001)"
    )


def test_serial_zero() -> None:
    err = error_of("44030800010000200000")
    assert err.rules == {Rule.SERIAL_ZERO}
    assert err.problems[0].segment is Segment.SERIAL
    assert err.problems[0].message == "serial `00000` is not allowed (serials start at 00001)"


def test_unknown_product_code() -> None:
    err = error_of("44030800010020200005")
    assert err.rules == {Rule.PRODUCT_UNKNOWN}
    assert err.problems[0].segment is Segment.PRODUCT
    assert err.problems[0].message == (
        "product code `02` is unknown (expected 00 pile or 01 ground lock)"
    )


def test_ground_lock_is_a_product() -> None:
    lock = parse_pile_id("44030800010010100005")
    assert lock.product is Product.GROUND_LOCK and lock.product.label == "ground lock"


def test_unknown_region() -> None:
    err = error_of("99000000010000100001")
    assert err.rules == {Rule.REGION_UNKNOWN}
    assert err.problems[0].segment is Segment.REGION
    assert err.problems[0].message == (
        "region code `990000` is not a GB/T 2260 code in any revision"
    )
    assert error_of("99999900010000100001").problems[0].message == (
        "region code `999999` is not a GB/T 2260 code in any revision"
    )


def test_gun_zero() -> None:
    err = error_of("44030800010000200005000", parse_gun_id)
    assert err.rules == {Rule.GUN_ZERO}
    assert err.problems[0].segment is Segment.GUN
    assert err.problems[0].message == "gun number `000` is not allowed (guns are numbered from 001)"
    assert rules_of("44030800010000200005000", parse_any) == {Rule.GUN_ZERO}


def test_pile_gun_method_bounds() -> None:
    pile = parse_pile_id("44030800010000200005")
    assert pile.gun(999).text == "44030800010000200005999"
    with pytest.raises(PileIdError) as info:
        pile.gun(0)
    assert info.value.rules == {Rule.GUN_ZERO}
    for bad in (-1, 1000):
        with pytest.raises(ValueError, match=r"1\.\.999"):
            pile.gun(bad)


def test_gun_of_an_invalid_pile_lists_pile_errors_too() -> None:
    assert rules_of("44030800010000200000000", parse_gun_id) == {Rule.SERIAL_ZERO, Rule.GUN_ZERO}


# --- regions -----------------------------------------------------------------------------


def test_abolished_region_is_accepted_with_warning() -> None:
    # 469003 儋州市 was county-level until 儋州 became prefecture-level 460400.
    pile = parse_pile_id("46900300010000100001")
    assert pile.region.status == "abolished"
    assert pile.region.last_revision == "2015-09"
    (warning,) = pile.warnings
    assert warning.rule is Rule.REGION_ABOLISHED and warning.severity == "warning"
    assert warning.message == (
        "region code 469003 (海南省 儋州市) was abolished after revision 2015-09; "
        "accepted because old piles keep their codes"
    )


def test_province_and_prefecture_codes_are_regions() -> None:
    assert parse_pile_id("44000000010000100001").region.full_name == "广东省"
    assert parse_pile_id("44030000010000100001").region.full_name == "广东省 深圳市"
    assert parse_pile_id("71000000010000100001").region.name == "台湾省"


@pytest.mark.parametrize(
    ("code", "prefecture"),
    [("441901", "东莞市"), ("442099", "中山市"), ("460401", "儋州市"), ("620201", "嘉峪关市")],
)
def test_sub_areas_of_cities_without_counties(code: str, prefecture: str) -> None:
    pile = parse_pile_id(f"{code}00010000100001")
    assert pile.region.status == "unlisted"
    assert pile.region.prefecture == prefecture
    assert [w.rule for w in pile.warnings] == [Rule.REGION_UNLISTED]
    assert f"sub-area of {code[:4]}00 {prefecture}" in pile.warnings[0].message


def test_unlisted_code_under_a_city_with_counties_is_unknown() -> None:
    assert rules_of("44039900010000100001") == {Rule.REGION_UNKNOWN}  # 深圳 has districts


def test_no_county_prefectures_are_derived_from_the_data() -> None:
    table = pileid.region_table()
    assert table.no_county_prefectures == {"441900", "442000", "460400", "620200"}


def test_check_region_and_lookup() -> None:
    ok = pileid.check_region("440308")
    assert ok.ok and ok.problem is None and ok.region is not None
    bad = pileid.check_region("990000")
    assert not bad.ok and bad.problem is not None and bad.problem.rule is Rule.REGION_UNKNOWN
    assert pileid.lookup_region("440308") == ok.region
    assert pileid.lookup_region("442001") is None  # unlisted sub-areas are not in the table


# --- characters ----------------------------------------------------------------------------


def test_letter_is_non_digit_in_its_segment() -> None:
    err = error_of("4403080001000020000A")
    assert err.rules == {Rule.NON_DIGIT}
    assert err.problems[0].segment is Segment.SERIAL
    assert err.problems[0].message == "character `A` at position 20 is not a digit"


def test_several_non_digits_are_all_named() -> None:
    err = error_of("44030800O10000200OO5")
    assert err.rules == {Rule.NON_DIGIT}
    assert err.problems[0].segment is Segment.WHOLE
    assert err.problems[0].message == (
        "characters `O` (position 9), `O` (position 18), `O` (position 19) are not digits"
    )


def test_separators_hint_at_normalize() -> None:
    err = error_of("440308-0001-0-00-02-00005")
    assert err.rules == {Rule.NON_DIGIT, Rule.LENGTH}
    non_digit = next(p for p in err.problems if p.rule is Rule.NON_DIGIT)
    assert "with separators removed it is a valid-length pile ID `44030800010000200005`" in (
        non_digit.message
    )
    length = next(p for p in err.problems if p.rule is Rule.LENGTH)
    assert length.message.startswith("pile ID has 25 characters, expected 20")


def test_full_width_digits_are_not_ascii_digits() -> None:
    err = error_of("４4030800010000200005")
    assert err.rules == {Rule.NON_DIGIT}
    assert "`４` at position 1" in str(err) and "only ASCII digits" in str(err)


def test_control_characters_are_escaped_in_messages() -> None:
    err = error_of("4403080001000020000\x00")
    assert err.problems[0].message == "character U+0000 at position 20 is not a digit"


def test_empty_and_huge_inputs() -> None:
    assert error_of("").problems[0].message == "pile ID is empty, expected 20 digits"
    huge = "7" * 10_000
    message = str(error_of(huge))
    assert "10000 digits" in message and len(message) < 200


# --- error object --------------------------------------------------------------------------


def test_pile_id_error_is_a_value_error_that_pickles() -> None:
    err = error_of("31010400050000500000")
    assert isinstance(err, ValueError)
    assert all(p.severity == "error" for p in err.problems)
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and again.text == err.text and str(again) == str(err)


def test_rule_values_are_stable() -> None:
    # Metric labels and API JSON depend on these exact strings.
    assert {r.value for r in Rule} == {
        "length",
        "non_digit",
        "contains_spaces",
        "region_unknown",
        "product_unknown",
        "kind_unknown",
        "serial_zero",
        "gun_zero",
        "region_abolished",
        "region_unlisted",
    }
    assert {Rule.REGION_ABOLISHED, Rule.REGION_UNLISTED} == pileid.WARNING_RULES
    assert Problem.of(Rule.REGION_ABOLISHED, Segment.REGION, "x").severity == "warning"
    assert Problem.of(Rule.LENGTH, Segment.WHOLE, "x").severity == "error"


def test_enums() -> None:
    assert Kind("01") is Kind.AC and Kind.AC.label == "AC" and Kind.DC.label == "DC"
    assert Product("00") is Product.PILE and Product.PILE.label == "pile"
    assert [s.value for s in Segment] == [
        "region", "operator", "reserved", "product", "kind", "serial", "gun", "whole",
    ]  # fmt: skip


def test_values_are_hashable_and_frozen() -> None:
    pile = parse_pile_id("44200100010000100005")
    assert {pile, parse_pile_id("44200100010000100005")} == {pile}
    with pytest.raises(AttributeError):
        pile.serial = "00006"  # type: ignore[misc]


def test_build_pile_id() -> None:
    pile = pileid.build_pile_id("440308", "0001", Kind.DC, 5)
    assert pile == parse_pile_id("44030800010000200005")
    lock = pileid.build_pile_id("442000", "0001", Kind.AC, 1, product=Product.GROUND_LOCK)
    assert lock.text == "44200000010010100001"
    with pytest.raises(ValueError, match="5 digits"):
        pileid.build_pile_id("440308", "0001", Kind.DC, 100_000)
    with pytest.raises(PileIdError):
        pileid.build_pile_id("440308", "0001", Kind.DC, 0)


# --- normalize ----------------------------------------------------------------------------


def test_normalize() -> None:
    assert normalize("3101 0400 0500 0050 0011") == "31010400050000500011"
    assert normalize("  4403-0800_0100-0020-0005\t\n") == "44030800010000200005"
    assert normalize("44O3") == "44O3"  # it does not validate or guess
    assert normalize(normalize(" 1-2 3_4 ")) == normalize(" 1-2 3_4 ") == "1234"


def test_normalize_then_parse_fixes_spacing_only() -> None:
    assert parse_pile_id(normalize(" 4403 0800 0100 0020 0005 ")).text == "44030800010000200005"
    assert rules_of(normalize("3101 0400 0500 0050 0011")) == {Rule.KIND_UNKNOWN}


# --- explain -------------------------------------------------------------------------------


def test_explain_valid_pile_dict() -> None:
    ex = explain("44030800010000200005")
    assert ex.valid and ex.kind_of_id == "pile" and ex.segments_certain
    assert ex.pile == parse_pile_id("44030800010000200005") and ex.gun is None
    d = ex.to_dict()
    assert json.loads(json.dumps(d, ensure_ascii=False)) == d
    assert d["segments"] == [
        {"segment": "region", "digits": "440308", "meaning": "广东省 深圳市 盐田区"},
        {"segment": "operator", "digits": "0001", "meaning": "operator 0001"},
        {"segment": "reserved", "digits": "0", "meaning": "reserved"},
        {"segment": "product", "digits": "00", "meaning": "pile"},
        {"segment": "kind", "digits": "02", "meaning": "DC"},
        {"segment": "serial", "digits": "00005", "meaning": "serial 5"},
    ]
    assert d["errors"] == [] and d["warnings"] == []
    assert d["pile"]["kind"] == "DC" and d["pile"]["region"]["code"] == "440308"
    assert d["pile"]["region"]["full_name"] == "广东省 深圳市 盐田区"
    assert d["gun"] is None


def test_explain_valid_pile_text() -> None:
    assert explain("44030800010000200005").to_text() == "\n".join(
        [
            "44030800010000200005: valid DC pile ID",
            "  region    440308  广东省 深圳市 盐田区",
            "  operator  0001    operator 0001",
            "  reserved  0       reserved",
            "  product   00      pile",
            "  kind      02      DC",
            "  serial    00005   serial 5",
        ]
    )


def test_explain_gun() -> None:
    ex = explain("44030800010000200005002")
    assert ex.valid and ex.kind_of_id == "gun" and ex.gun is not None and ex.gun.number == 2
    assert ex.pile == ex.gun.pile
    assert ex.segments[-1] == (Segment.GUN, "002", "gun 2")
    assert ex.to_dict()["gun"] == {
        "id": "44030800010000200005002",
        "pile_id": "44030800010000200005",
        "number": 2,
    }
    assert ex.to_text().splitlines()[0] == (
        "44030800010000200005002: valid gun ID: gun 2 of DC pile 44030800010000200005"
    )


def test_explain_warning_is_valid() -> None:
    ex = explain("44200100010000100005")
    assert ex.valid and ex.errors == ()
    assert [w.rule for w in ex.warnings] == [Rule.REGION_UNLISTED]
    assert ex.to_dict()["warnings"][0]["rule"] == "region_unlisted"
    assert "  warning: region code 442001 is not in GB/T 2260" in ex.to_text()


def test_explain_wrong_length_still_shows_segments() -> None:
    ex = explain("4420000001100001")
    assert not ex.valid and ex.kind_of_id is None and ex.pile is None
    assert not ex.segments_certain
    assert [e.rule for e in ex.errors] == [Rule.LENGTH]
    assert "16" in ex.errors[0].message and "20" in ex.errors[0].message
    assert "23" in ex.errors[0].message
    assert ex.segments[0] == (Segment.REGION, "442000", "广东省 中山市")
    assert ex.segments[-1] == (Segment.SERIAL, "1", "incomplete (1 of 5 digits)")
    assert "".join(s.digits for s in ex.segments) == "4420000001100001"
    text = ex.to_text()
    assert text.startswith("4420000001100001: invalid ID\n")
    assert "length is wrong" in text
    assert "  error: ID has 16 digits" in text and text.endswith("[length]")
    d = ex.to_dict()
    assert d["valid"] is False and [e["rule"] for e in d["errors"]] == ["length"]


def test_explain_invalid_pile_of_right_length() -> None:
    ex = explain("3101 0400 0500 0050 0011")
    assert not ex.valid and ex.kind_of_id == "pile" and ex.segments_certain
    assert {e.rule for e in ex.errors} == {Rule.CONTAINS_SPACES, Rule.KIND_UNKNOWN}
    assert ex.segments[4] == (Segment.KIND, "05", "unknown kind code")
    assert ex.to_text().startswith("'3101 0400 0500 0050 0011': invalid pile ID")
    assert ex.to_dict()["pile"] is None


def test_explain_extra_digits_and_non_digits() -> None:
    ex = explain("1" * 25)
    assert ex.segments[-1] == (Segment.WHOLE, "11", "2 extra")
    ex = explain("4403080001000020000A")
    assert ex.segments[-1] == (Segment.SERIAL, "0000A", "contains non-digits")
    assert explain("").segments == () and not explain("").valid
