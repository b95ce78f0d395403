"""sessions.tokens: token rules (card, VIN, password) and token bindings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.charging import TokenStatus as ChargingTokenStatus
from sessions.charging import TokenType as ChargingTokenType
from sessions.tokens import (
    ID_TAG_MAX_LENGTH,
    TOKEN_WARNING_RULES,
    UNBOUND,
    TokenBinding,
    TokenProblem,
    TokenRule,
    TokenStatus,
    TokenType,
    check_pile_id,
    check_token,
    check_vin,
    id_tag_key,
    normalize_id_tag,
    operator_of,
    token_applies,
    vin_check_digit,
)

AC_PILE = "44200000010000100001"  # operator 0001, AC
DC_PILE = "44030800020000200005"  # operator 0002, DC


def rules(problems: tuple[TokenProblem, ...] | list[TokenProblem]) -> set[TokenRule]:
    return {p.rule for p in problems}


def errors(problems: list[TokenProblem]) -> list[TokenProblem]:
    return [p for p in problems if p.is_error]


def test_token_enums_are_the_charging_ones() -> None:
    # Reused, not duplicated: a TokenView and a whitelist entry share them.
    assert TokenType is ChargingTokenType
    assert TokenStatus is ChargingTokenStatus


# --------------------------------------------------------------------------
# VIN
# --------------------------------------------------------------------------
def test_test_vin_is_valid_with_warnings() -> None:
    check = check_vin("1234567890QWERTYU")
    assert check.ok
    assert check.vin == "1234567890QWERTYU"
    assert check.errors == ()
    assert rules(check.warnings) == {TokenRule.VIN_LETTERS_IOQ, TokenRule.VIN_CHECK_DIGIT}
    ioq = next(p for p in check.warnings if p.rule is TokenRule.VIN_LETTERS_IOQ)
    assert "'Q' at position 11" in ioq.message
    digit = next(p for p in check.warnings if p.rule is TokenRule.VIN_CHECK_DIGIT)
    assert "cannot be verified" in digit.message


@pytest.mark.parametrize(
    "vin",
    [
        "1M8GDM9AXKP042788",  # check digit X (sum 351, 351 mod 11 = 10)
        "11111111111111111",  # the classic all-ones VIN: check digit 1
        "LSVAU033812345679",  # made up, Chinese WMI LSV, check digit computed: 8
    ],
)
def test_real_vin_with_correct_check_digit_has_no_problems(vin: str) -> None:
    check = check_vin(vin)
    assert check.ok and check.vin == vin
    assert check.problems == ()
    assert check_token(vin, TokenType.VIN) == []


def test_vin_check_digit_values() -> None:
    assert vin_check_digit("1M8GDM9AXKP042788") == "X"
    assert vin_check_digit("11111111111111111") == "1"
    assert vin_check_digit("LSVAU033812345679") == "8"
    assert vin_check_digit("1234567890QWERTYU") is None  # Q has no value
    assert vin_check_digit("1M8GDM9AXKP04278") is None  # 16 characters


def test_wrong_check_digit_is_a_warning_naming_both_digits() -> None:
    check = check_vin("1M8GDM9A5KP042788")
    assert check.ok
    assert rules(check.problems) == {TokenRule.VIN_CHECK_DIGIT}
    assert check.problems[0].severity == "warning"
    assert "'5'" in check.problems[0].message and "'X'" in check.problems[0].message


@pytest.mark.parametrize(
    ("text", "length"),
    [("1M8GDM9AXKP04278", 16), ("1M8GDM9AXKP0427888", 18), ("", 0)],
)
def test_vin_length_is_an_error_naming_the_length(text: str, length: int) -> None:
    check = check_vin(text)
    assert not check.ok and check.vin is None
    assert rules(check.errors) == {TokenRule.VIN_LENGTH}
    assert f"got {length}" in check.errors[0].message
    assert errors(check_token(text, TokenType.VIN))


def test_vin_bad_characters_are_an_error_naming_them() -> None:
    check = check_vin("1M8GDM9AX-P04278\x00")
    assert not check.ok
    assert rules(check.errors) == {TokenRule.VIN_CHARACTERS}
    message = check.errors[0].message
    assert "'-' at position 10" in message and "U+0000 at position 17" in message


def test_vin_non_ascii_letters_and_digits_are_errors() -> None:
    # str.isalnum() would accept these; ISO 3779 does not.
    assert not check_vin("1M8GDM9AXKP04278É").ok
    assert not check_vin("1M8GDM9AXKP04278٣").ok  # ARABIC-INDIC DIGIT THREE


def test_lowercase_vin_is_normalised_with_a_warning() -> None:
    check = check_vin("1m8gdm9axkp042788")
    assert check.ok
    assert check.vin == "1M8GDM9AXKP042788"
    assert rules(check.problems) == {TokenRule.VIN_LOWERCASE}
    assert "stored as 1M8GDM9AXKP042788" in check.problems[0].message
    assert normalize_id_tag("1m8gdm9axkp042788", TokenType.VIN) == "1M8GDM9AXKP042788"
    problems = check_token("1m8gdm9axkp042788", TokenType.VIN)
    assert not errors(problems)


def test_lowercase_i_o_q_are_flagged_after_normalising() -> None:
    check = check_vin("1m8gdm9axkp0427o8")
    assert check.ok
    assert {TokenRule.VIN_LOWERCASE, TokenRule.VIN_LETTERS_IOQ} <= rules(check.problems)


def test_check_vin_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        check_vin(12345678901234567)  # type: ignore[arg-type]


_VIN_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O, Q


@given(st.text(_VIN_ALPHABET, min_size=17, max_size=17))
def test_vin_with_computed_check_digit_is_clean(text: str) -> None:
    digit = vin_check_digit(text)
    assert digit is not None
    vin = text[:8] + digit + text[9:]
    assert check_vin(vin).problems == ()


@given(st.text(_VIN_ALPHABET, min_size=17, max_size=17), st.sampled_from(_VIN_ALPHABET))
def test_any_other_check_digit_is_only_a_warning(text: str, other: str) -> None:
    digit = vin_check_digit(text)
    vin = text[:8] + other + text[9:]
    check = check_vin(vin)
    assert check.ok
    assert (TokenRule.VIN_CHECK_DIGIT in rules(check.problems)) == (other != digit)


# --------------------------------------------------------------------------
# any token
# --------------------------------------------------------------------------
@pytest.mark.parametrize("id_tag", ["A", "04E1B2C3D4E5F6", "x" * ID_TAG_MAX_LENGTH, "card-0001 #7"])
def test_clean_card_numbers(id_tag: str) -> None:
    assert check_token(id_tag, TokenType.CARD) == []


@pytest.mark.parametrize(
    ("id_tag", "rule", "fragment"),
    [
        ("", TokenRule.EMPTY, "empty"),
        ("x" * 21, TokenRule.LENGTH, "got 21"),
        ("1234\x005678", TokenRule.NUL, "position 5"),
        ("carté", TokenRule.CHARACTERS, "U+00E9 at position 5"),
        ("tab\there", TokenRule.CHARACTERS, "U+0009 at position 4"),
    ],
)
def test_card_errors(id_tag: str, rule: TokenRule, fragment: str) -> None:
    problems = check_token(id_tag, TokenType.CARD)
    found = [p for p in problems if p.rule is rule]
    assert found and found[0].is_error
    assert fragment in found[0].message


def test_nul_message_explains_ascii20() -> None:
    (problem,) = check_token("ab\x00", TokenType.CARD)
    assert "ASCII20" in problem.message


def test_leading_or_trailing_space_is_a_warning() -> None:
    problems = check_token(" 1234", TokenType.CARD)
    assert [p.rule for p in problems] == [TokenRule.WHITESPACE]
    assert problems[0].severity == "warning"
    assert check_token("12 34", TokenType.CARD) == []  # inside: nothing to say


@pytest.mark.parametrize("password", ["1234", "abcd", "Pa55word", "9" * 20])
def test_clean_passwords(password: str) -> None:
    assert check_token(password, TokenType.PASSWORD) == []


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("123", TokenRule.PASSWORD_LENGTH),
        ("", TokenRule.PASSWORD_LENGTH),
        ("9" * 21, TokenRule.PASSWORD_LENGTH),
        ("12 34", TokenRule.PASSWORD_CHARACTERS),
        ("12-34", TokenRule.PASSWORD_CHARACTERS),
        ("12\x0034", TokenRule.PASSWORD_CHARACTERS),
    ],
)
def test_password_errors(password: str, rule: TokenRule) -> None:
    problems = check_token(password, TokenType.PASSWORD)
    assert rule in rules(problems)
    assert all(p.is_error for p in problems)


def test_check_token_accepts_the_type_as_its_value() -> None:
    assert check_token("1234", "password") == []  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_token("1234", "pin")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_token(1234, TokenType.CARD)  # type: ignore[arg-type]


@given(st.text(max_size=30), st.sampled_from(list(TokenType)))
def test_check_token_never_raises_and_severity_follows_rule(text: str, kind: TokenType) -> None:
    for problem in check_token(text, kind):
        assert (problem.severity == "warning") == (problem.rule in TOKEN_WARNING_RULES)
        assert problem.message
        assert problem.to_dict()["rule"] == problem.rule.value


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20))
def test_printable_ascii_up_to_20_is_a_valid_card(text: str) -> None:
    assert check_token(text, TokenType.CARD) == []


@given(st.text(max_size=30))
def test_an_error_free_token_fits_both_protocols(text: str) -> None:
    if not errors(check_token(text, TokenType.CARD)):
        assert 1 <= len(text) <= 20
        assert text.isascii() and text.isprintable() and "\x00" not in text
        assert len(text.encode("ascii")) <= 20  # CBP/1 ASCII20


def test_normalize_and_key() -> None:
    assert normalize_id_tag("abc", TokenType.CARD) == "abc"
    assert normalize_id_tag("abcd", TokenType.PASSWORD) == "abcd"
    assert id_tag_key("04e1b2") == id_tag_key("04E1B2")  # OCPP CiString: case-insensitive


# --------------------------------------------------------------------------
# bindings
# --------------------------------------------------------------------------
def test_unbound_token_applies_everywhere() -> None:
    assert token_applies(None, AC_PILE)
    assert token_applies(UNBOUND, DC_PILE)
    assert TokenBinding().unbound


def test_pile_binding() -> None:
    binding = TokenBinding.of(pile_ids=[AC_PILE])
    assert token_applies(binding, AC_PILE)
    assert not token_applies(binding, DC_PILE)


def test_operator_binding_uses_characters_7_to_10() -> None:
    assert operator_of(AC_PILE) == "0001"
    assert operator_of(DC_PILE) == "0002"
    binding = TokenBinding.of(operators=["0002"])
    assert token_applies(binding, DC_PILE)
    assert not token_applies(binding, AC_PILE)
    # Same operator, other region: still applies.
    assert token_applies(binding, "11010100020000100001")


def test_pile_and_operator_binding_is_a_union() -> None:
    binding = TokenBinding.of(pile_ids=[AC_PILE], operators=["0002"])
    assert token_applies(binding, AC_PILE)
    assert token_applies(binding, DC_PILE)
    assert not token_applies(binding, "44030800030000200005")


@pytest.mark.parametrize("bad", ["4420000001100001", "4420000001000010000X", ""])
def test_bad_pile_ids_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="20 digits"):
        check_pile_id(bad)
    with pytest.raises(ValueError):
        TokenBinding.of(pile_ids=[bad])
    with pytest.raises(ValueError):
        token_applies(None, bad)


@pytest.mark.parametrize("bad", ["001", "00011", "00a1"])
def test_bad_operator_codes_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="4 digits"):
        TokenBinding.of(operators=[bad])


def test_binding_is_hashable_and_normalised_to_frozensets() -> None:
    binding = TokenBinding(pile_ids={AC_PILE}, operators=["0001"])  # type: ignore[arg-type]
    assert isinstance(binding.pile_ids, frozenset) and isinstance(binding.operators, frozenset)
    assert hash(binding) == hash(TokenBinding.of([AC_PILE], ["0001"]))
