"""Property tests: valid IDs round-trip; each structural corruption trips exactly its rule."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

import pileid
from pileid import GunId, Kind, PileId, PileIdError, Product, Rule, explain, parse_any

# No deadline: a slow CI machine must not turn into a failure (no wall-clock thresholds).
PROPS = settings(deadline=None, max_examples=150)

TABLE = pileid.region_table()
CURRENT = sorted(TABLE.current_codes())
ALL_CODES = sorted(TABLE.by_code)

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


def n_digits(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=n, max_size=n)


@st.composite
def pile_texts(draw: st.DrawFn, regions: list[str] = CURRENT) -> str:
    return "".join(
        (
            draw(st.sampled_from(regions)),
            draw(n_digits(4)),  # operator: any
            draw(n_digits(1)),  # reserved: any
            draw(st.sampled_from(Product)).value,
            draw(st.sampled_from(Kind)).value,
            f"{draw(st.integers(1, 99999)):05d}",
        )
    )


@st.composite
def gun_texts(draw: st.DrawFn) -> str:
    return draw(pile_texts()) + f"{draw(st.integers(1, 999)):03d}"


def rules(text: str) -> set[Rule]:
    try:
        pileid.parse_pile_id(text)
    except PileIdError as exc:
        assert exc.problems, "an error must carry at least one problem"
        assert all(p.severity == "error" for p in exc.problems)
        return {p.rule for p in exc.problems}
    return set()


# --- valid IDs ---------------------------------------------------------------------------


@PROPS
@given(pile_texts())
def test_valid_pile_round_trips(text: str) -> None:
    pile = pileid.parse_pile_id(text)
    assert pile.text == str(pile) == text
    assert pileid.parse_pile_id(str(pile)) == pile
    assert parse_any(text) == pile
    assert pile.region.code == pile.region_code == text[:6]
    assert pile.warnings == ()  # current regions carry no warning
    assert (pile.operator, pile.reserved, pile.serial) == (text[6:10], text[10], text[15:])
    assert pile.product.value + pile.kind.value == text[11:15]
    ex = explain(text)
    assert ex.valid and ex.pile == pile and ex.kind_of_id == "pile"
    assert "".join(s.digits for s in ex.segments) == text
    assert [s.segment.value for s in ex.segments] == [
        "region", "operator", "reserved", "product", "kind", "serial",
    ]  # fmt: skip


@PROPS
@given(pile_texts(regions=ALL_CODES))
def test_every_listed_region_is_accepted(text: str) -> None:
    pile = pileid.parse_pile_id(text)
    expected = [] if pile.region.status == "current" else [Rule.REGION_ABOLISHED]
    assert [w.rule for w in pile.warnings] == expected
    assert all(w.severity == "warning" for w in pile.warnings)


@PROPS
@given(gun_texts())
def test_valid_gun_round_trips(text: str) -> None:
    gun = pileid.parse_gun_id(text)
    assert isinstance(gun, GunId)
    assert gun.text == str(gun) == text
    assert pileid.parse_gun_id(str(gun)) == gun == parse_any(text)
    assert gun.pile == pileid.parse_pile_id(text[:20])
    assert gun.pile.gun(gun.number) == gun
    ex = explain(text)
    assert ex.valid and ex.gun == gun and ex.kind_of_id == "gun"
    assert "".join(s.digits for s in ex.segments) == text


@PROPS
@given(pile_texts(), st.lists(st.integers(0, 20), min_size=1, max_size=4), st.data())
def test_normalize_undoes_separators(text: str, cuts: list[int], data: st.DataObject) -> None:
    mangled = text
    for cut in sorted(cuts, reverse=True):
        mangled = mangled[:cut] + data.draw(st.sampled_from([" ", "-", "_", "\t"])) + mangled[cut:]
    assert pileid.normalize(mangled) == text
    assert pileid.normalize(pileid.normalize(mangled)) == text


# --- corruptions: each is caught by exactly the expected rule -----------------------------


@PROPS
@given(pile_texts(), st.integers(0, 19))
def test_deleting_a_digit_is_a_length_error(text: str, i: int) -> None:
    assert rules(text[:i] + text[i + 1 :]) == {Rule.LENGTH}


@PROPS
@given(pile_texts(), st.integers(0, 20), digits)
def test_inserting_a_digit_is_a_length_error(text: str, i: int, d: str) -> None:
    corrupted = text[:i] + d + text[i:]
    assert rules(corrupted) == {Rule.LENGTH}
    with_any = explain(corrupted)
    assert [e.rule for e in with_any.errors] == [Rule.LENGTH]
    assert "20" in with_any.errors[0].message and "23" in with_any.errors[0].message


@PROPS
@given(pile_texts(), st.integers(0, 19), st.sampled_from(string.ascii_letters))
def test_a_letter_is_a_non_digit_error(text: str, i: int, letter: str) -> None:
    corrupted = text[:i] + letter + text[i + 1 :]
    assert rules(corrupted) == {Rule.NON_DIGIT}
    (problem,) = pileid.explain(corrupted).errors
    assert f"`{letter}` at position {i + 1}" in problem.message


@PROPS
@given(pile_texts(), n_digits(2).filter(lambda k: k not in ("01", "02")))
def test_unknown_kind(text: str, kind: str) -> None:
    assert rules(text[:13] + kind + text[15:]) == {Rule.KIND_UNKNOWN}


@PROPS
@given(pile_texts(), n_digits(2).filter(lambda p: p not in ("00", "01")))
def test_unknown_product(text: str, product: str) -> None:
    assert rules(text[:11] + product + text[13:]) == {Rule.PRODUCT_UNKNOWN}


@PROPS
@given(pile_texts())
def test_zero_serial(text: str) -> None:
    assert rules(text[:15] + "00000") == {Rule.SERIAL_ZERO}


@PROPS
@given(
    pile_texts(),
    n_digits(6).filter(
        lambda c: c not in TABLE and c[:4] + "00" not in TABLE.no_county_prefectures
    ),
)
def test_unknown_region(text: str, region: str) -> None:
    assert rules(region + text[6:]) == {Rule.REGION_UNKNOWN}


@PROPS
@given(pile_texts(), st.lists(st.integers(0, 20), min_size=1, max_size=5))
def test_inserted_spaces(text: str, cuts: list[int]) -> None:
    corrupted = text
    for cut in sorted(cuts, reverse=True):
        corrupted = corrupted[:cut] + " " + corrupted[cut:]
    assert rules(corrupted) == {Rule.CONTAINS_SPACES}


@PROPS
@given(pile_texts())
def test_gun_zero(text: str) -> None:
    try:
        pileid.parse_gun_id(text + "000")
    except PileIdError as exc:
        assert exc.rules == {Rule.GUN_ZERO}
    else:
        raise AssertionError("gun 000 accepted")


# --- explain is total and agrees with the parsers -----------------------------------------


@PROPS
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789 -_aO\t", max_size=30)))
def test_explain_never_raises_and_agrees_with_parse_any(text: str) -> None:
    ex = explain(text)
    assert ex.valid == (not ex.errors)
    assert all(p.severity == "error" for p in ex.errors)
    assert all(p.severity == "warning" for p in ex.warnings)
    assert "".join(s.digits for s in ex.segments) == "".join(c for c in text if not c.isspace())
    ex.to_text()
    ex.to_dict()
    try:
        parsed: PileId | GunId = parse_any(text)
    except PileIdError as exc:
        assert not ex.valid and exc.problems == ex.errors
    else:
        assert ex.valid and (ex.gun or ex.pile) == parsed
