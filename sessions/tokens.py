"""Tokens: what may be stored as a card number, a VIN or an offline password,
and where a token may be used.

Pure: no I/O, no clock. The token store (gateway/storage) calls
:func:`check_token` before it stores or imports a token (ops API, CSV import),
and :func:`token_applies` when it computes a pile's effective whitelist.

Limits that apply to every token, whatever its type:

* 1..20 characters: OCPP 1.6 §7.28 ``IdToken`` is a ``CiString20Type`` and
  CBP/1 §2 ``TOKEN`` is ``ASCII20``. A longer token cannot be sent on either
  protocol, so it is an error, not something to truncate.
* printable ASCII only (0x20..0x7E): ``CiString`` is ASCII and ``ASCII20`` is
  NUL-padded on the right, so a NUL *inside* a token would end it early on a
  cloud-board charger (the charger would see a different, shorter token).

Type rules:

* **VIN** (:func:`check_vin`): exactly 17 ASCII letters and digits (ISO 3779).
  Letters I, O, Q and a wrong check digit (position 9, ISO 3779 / North
  American and GB 16735 rule) are *warnings*: test VINs such as
  ``1234567890QWERTYU`` are in use and must be storable. Lowercase letters are
  normalised to upper case with a warning (decision below).
* **Password** (offline password typed at the charger): 4..20 ASCII letters
  or digits (decision below).
* **Card**: the common rules only. Card numbers come from many reader and card
  formats (hex UIDs, printed numbers with dashes), so nothing narrower holds.

Decisions:

* *Lowercase VIN letters are normalised, not rejected.* A VIN has no case
  (ISO 3779 uses capital letters only, and a DC pile reads it from the car
  as registered, e.g. in the GB/T 27930 BRM message), so
  ``1m8gdm9axkp042788`` can only be a typing
  artefact of ``1M8GDM9AXKP042788``. Rejecting it would push operators to
  retype; storing it as typed would create a token the car never presents.
  :attr:`VinCheck.vin` and :func:`normalize_id_tag` give the upper-case form
  to store; the ``vin_lowercase`` warning says it was changed.
* *Passwords are 4..20 letters or digits.* Fewer than 4 characters can be
  guessed at a keypad in minutes (4 digits, 10,000 combinations, is the usual
  minimum for PINs); more than 20 does not fit the token field. Letters are
  allowed for touch-screen piles; punctuation and spaces are not, because
  keypads cannot type them and leading/trailing spaces are invisible to the
  operator who hands the password out.
* *Leading/trailing spaces on a card number are a warning*, not an error: they
  are legal ``CiString`` characters, but almost always a copy-paste artefact.

Case: OCPP 1.6 compares ``IdToken`` values case-insensitively (``CiString``),
so ``abc`` and ``ABC`` are one token to an OCPP charger. :func:`id_tag_key`
gives the key under which the token store should enforce uniqueness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from .charging import TokenStatus, TokenType

__all__ = [
    "ID_TAG_MAX_LENGTH",
    "PASSWORD_MAX_LENGTH",
    "PASSWORD_MIN_LENGTH",
    "TOKEN_WARNING_RULES",
    "UNBOUND",
    "VIN_LENGTH",
    "TokenBinding",
    "TokenProblem",
    "TokenRule",
    "TokenSeverity",
    "TokenStatus",
    "TokenType",
    "VinCheck",
    "check_pile_id",
    "check_token",
    "check_vin",
    "id_tag_key",
    "normalize_id_tag",
    "operator_of",
    "token_applies",
    "vin_check_digit",
]

ID_TAG_MAX_LENGTH = 20  # OCPP 1.6 §7.28 CiString20Type; CBP/1 §2 TOKEN = ASCII20
VIN_LENGTH = 17  # ISO 3779
PASSWORD_MIN_LENGTH = 4
PASSWORD_MAX_LENGTH = ID_TAG_MAX_LENGTH

TokenSeverity = Literal["error", "warning"]

_DIGITS = frozenset("0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_ALNUM = _DIGITS | _UPPER | _LOWER

# ISO 3779 / 49 CFR 565.15 transliteration: letters to the values used by the
# check digit. I, O and Q are not allowed in a VIN, so they have no value.
_VIN_VALUES: dict[str, int] = {str(d): d for d in range(10)} | {
    "A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "G": 7, "H": 8,
    "J": 1, "K": 2, "L": 3, "M": 4, "N": 5, "P": 7, "R": 9,
    "S": 2, "T": 3, "U": 4, "V": 5, "W": 6, "X": 7, "Y": 8, "Z": 9,
}  # fmt: skip
# Weight of each position; position 9 (the check digit itself) weighs 0.
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_VIN_CHECK_POSITION = 9  # 1-based, as the standards count
_VIN_FORBIDDEN = "IOQ"  # ISO 3779 §5: easily confused with 1 and 0


# --------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------
class TokenRule(StrEnum):
    """Why a token was rejected or flagged.

    Values are stable (ops API JSON, CSV import reports, metrics labels):
    renaming one is a breaking change.
    """

    EMPTY = "empty"
    LENGTH = "length"
    NUL = "nul"
    CHARACTERS = "characters"
    PASSWORD_LENGTH = "password_length"
    PASSWORD_CHARACTERS = "password_characters"
    VIN_LENGTH = "vin_length"
    VIN_CHARACTERS = "vin_characters"
    # Warnings: the token is accepted, but someone should know.
    WHITESPACE = "whitespace"
    VIN_LOWERCASE = "vin_lowercase"
    VIN_LETTERS_IOQ = "vin_letters_ioq"
    VIN_CHECK_DIGIT = "vin_check_digit"


TOKEN_WARNING_RULES = frozenset(
    {
        TokenRule.WHITESPACE,
        TokenRule.VIN_LOWERCASE,
        TokenRule.VIN_LETTERS_IOQ,
        TokenRule.VIN_CHECK_DIGIT,
    }
)


@dataclass(frozen=True, slots=True)
class TokenProblem:
    """One thing wrong (or worth a warning) with a token, as a sentence for humans."""

    rule: TokenRule
    message: str
    severity: TokenSeverity = "error"

    @classmethod
    def of(cls, rule: TokenRule, message: str) -> TokenProblem:
        """A problem whose severity follows from its rule, so the two never disagree."""
        return cls(rule, message, "warning" if rule in TOKEN_WARNING_RULES else "error")

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule.value, "severity": self.severity, "message": self.message}


def _show(c: str) -> str:
    """A character as an operator can read it in a message: ``'-'``, ``U+0000``."""
    if " " < c <= "~":
        return repr(c)
    if c == " ":
        return "space"
    return f"U+{ord(c):04X}"


def _bad_listing(text: str, allowed: frozenset[str]) -> list[str]:
    """``'-' at position 5`` for every character not in ``allowed`` (1-based positions)."""
    return [f"{_show(c)} at position {i}" for i, c in enumerate(text, 1) if c not in allowed]


def _join(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{shown} and {more} more" if more > 0 else shown


# --------------------------------------------------------------------------
# VIN
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VinCheck:
    """Result of :func:`check_vin`.

    ``vin`` is the normalised (upper-case) VIN to store, or None when there is
    an error. ``problems`` holds errors and warnings, in the order found.
    """

    text: str
    vin: str | None
    problems: tuple[TokenProblem, ...]

    @property
    def ok(self) -> bool:
        return self.vin is not None

    @property
    def errors(self) -> tuple[TokenProblem, ...]:
        return tuple(p for p in self.problems if p.is_error)

    @property
    def warnings(self) -> tuple[TokenProblem, ...]:
        return tuple(p for p in self.problems if not p.is_error)


def vin_check_digit(vin: str) -> str | None:
    """The check digit (``0``..``9`` or ``X``) that position 9 of ``vin`` should hold.

    ISO 3779 / 49 CFR 565.15: transliterate letters to numbers, weight each
    position, sum, modulo 11; 10 is written ``X``. None when it cannot be
    computed: not 17 characters, or a character without a value (I, O, Q,
    anything not an upper-case letter or digit).
    """
    if len(vin) != VIN_LENGTH:
        return None
    total = 0
    for c, weight in zip(vin, _VIN_WEIGHTS, strict=True):
        value = _VIN_VALUES.get(c)
        if value is None:
            return None
        total += value * weight
    rest = total % 11
    return "X" if rest == 10 else str(rest)


def check_vin(text: str) -> VinCheck:
    """Validate a VIN: 17 ASCII letters/digits are required; the rest are warnings.

    Errors (the VIN cannot be stored): ``vin_length`` (not 17 characters),
    ``vin_characters`` (anything but ASCII letters and digits, named with its
    position). Warnings: ``vin_lowercase`` (normalised to upper case),
    ``vin_letters_ioq`` (I, O, Q are not allowed by ISO 3779 but used by test
    VINs), ``vin_check_digit`` (position 9 does not match, or cannot be
    computed because of I, O, Q).
    """
    if not isinstance(text, str):
        raise TypeError(f"a VIN must be a str, got {type(text).__name__}")
    problems: list[TokenProblem] = []
    if len(text) != VIN_LENGTH:
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_LENGTH,
                f"a VIN has exactly {VIN_LENGTH} characters (ISO 3779), got {len(text)}",
            )
        )
    bad = _bad_listing(text, _ALNUM)
    if bad:
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_CHARACTERS,
                f"a VIN may contain only letters A-Z and digits 0-9; found {_join(bad)}",
            )
        )
    if problems:
        return VinCheck(text, None, tuple(problems))

    vin = text.upper()
    if vin != text:
        lower = [f"{_show(c)} at position {i}" for i, c in enumerate(text, 1) if c in _LOWER]
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_LOWERCASE,
                f"lowercase letters normalised to upper case ({_join(lower)}); stored as {vin}",
            )
        )
    forbidden = [f"{_show(c)} at position {i}" for i, c in enumerate(vin, 1) if c in _VIN_FORBIDDEN]
    if forbidden:
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_LETTERS_IOQ,
                f"letters I, O and Q do not occur in real VINs (ISO 3779); found "
                f"{_join(forbidden)}: accepted as a test VIN",
            )
        )
    expected = vin_check_digit(vin)
    actual = vin[_VIN_CHECK_POSITION - 1]
    if expected is None:
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_CHECK_DIGIT,
                "the check digit (position 9) cannot be verified: I, O and Q have no value "
                "in the ISO 3779 check-digit calculation",
            )
        )
    elif expected != actual:
        problems.append(
            TokenProblem.of(
                TokenRule.VIN_CHECK_DIGIT,
                f"check digit (position 9) is {actual!r}, the ISO 3779 / North American "
                f"calculation gives {expected!r}; accepted (not every region uses it)",
            )
        )
    return VinCheck(text, vin, tuple(problems))


# --------------------------------------------------------------------------
# any token
# --------------------------------------------------------------------------
_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))


def _check_common(id_tag: str) -> list[TokenProblem]:
    """Rules every id tag obeys on both protocols (length, printable ASCII, no NUL)."""
    if not id_tag:
        return [
            TokenProblem.of(
                TokenRule.EMPTY,
                f"a token has 1..{ID_TAG_MAX_LENGTH} characters "
                "(OCPP 1.6 CiString20, CBP/1 ASCII20), got an empty one",
            )
        ]
    problems: list[TokenProblem] = []
    if len(id_tag) > ID_TAG_MAX_LENGTH:
        problems.append(
            TokenProblem.of(
                TokenRule.LENGTH,
                f"a token has at most {ID_TAG_MAX_LENGTH} characters "
                f"(OCPP 1.6 CiString20, CBP/1 ASCII20), got {len(id_tag)}",
            )
        )
    nul = [i for i, c in enumerate(id_tag, 1) if c == "\0"]
    if nul:
        problems.append(
            TokenProblem.of(
                TokenRule.NUL,
                f"NUL at position {_join([str(i) for i in nul])}: CBP/1 stores tokens as "
                "NUL-padded ASCII20, so a cloud-board charger would cut the token there",
            )
        )
    bad = [
        f"{_show(c)} at position {i}"
        for i, c in enumerate(id_tag, 1)
        if c not in _PRINTABLE and c != "\0"
    ]
    if bad:
        problems.append(
            TokenProblem.of(
                TokenRule.CHARACTERS,
                f"a token may contain only printable ASCII characters; found {_join(bad)}",
            )
        )
    if not problems and id_tag != id_tag.strip(" "):
        problems.append(
            TokenProblem.of(
                TokenRule.WHITESPACE,
                "leading or trailing spaces are part of the token and must be presented "
                "exactly so; usually a copy-paste artefact",
            )
        )
    return problems


def _check_password(id_tag: str) -> list[TokenProblem]:
    problems: list[TokenProblem] = []
    if not PASSWORD_MIN_LENGTH <= len(id_tag) <= PASSWORD_MAX_LENGTH:
        problems.append(
            TokenProblem.of(
                TokenRule.PASSWORD_LENGTH,
                f"an offline password has {PASSWORD_MIN_LENGTH}..{PASSWORD_MAX_LENGTH} "
                f"characters, got {len(id_tag)}",
            )
        )
    bad = _bad_listing(id_tag, _ALNUM)
    if bad:
        problems.append(
            TokenProblem.of(
                TokenRule.PASSWORD_CHARACTERS,
                f"an offline password may contain only letters A-Z, a-z and digits 0-9 "
                f"(what a charger keypad can type); found {_join(bad)}",
            )
        )
    return problems


def check_token(id_tag: str, type: TokenType) -> list[TokenProblem]:
    """Errors and warnings for ``id_tag`` as a token of ``type``; empty when clean.

    The token may be stored when no problem has ``severity == "error"``. Store
    :func:`normalize_id_tag` of it (a VIN in upper case).
    """
    if not isinstance(id_tag, str):
        raise TypeError(f"an id tag must be a str, got {id_tag.__class__.__name__}")
    token_type = TokenType(type)
    if token_type is TokenType.VIN:
        # Stricter than the common rules (17 letters/digits implies 1..20
        # printable ASCII), so its own messages are the useful ones.
        return list(check_vin(id_tag).problems)
    if token_type is TokenType.PASSWORD:
        return _check_password(id_tag)
    return _check_common(id_tag)


def normalize_id_tag(id_tag: str, type: TokenType) -> str:
    """The form to store: VINs in upper case (see the module notes); others as given."""
    return id_tag.upper() if TokenType(type) is TokenType.VIN else id_tag


def id_tag_key(id_tag: str) -> str:
    """Uniqueness key of a token: OCPP 1.6 §7.28 IdToken is case-insensitive
    (CiString20Type), so ``abc`` and ``ABC`` must not be two tokens."""
    return id_tag.upper()


# --------------------------------------------------------------------------
# binding: where a token may be used
# --------------------------------------------------------------------------
_PILE_ID_LENGTH = 20
_OPERATOR = slice(6, 10)  # region (6) + operator (4): characters 7-10 of a pile ID


def check_pile_id(pile_id: str) -> str:
    """``pile_id`` if it has the shape of a pile ID (20 ASCII digits), else ValueError.

    Shape only: full validation (region table, product and kind codes) is
    :func:`pileid.parse_pile_id`'s job at the handshake; here the ID is a key.
    """
    if (
        not isinstance(pile_id, str)
        or len(pile_id) != _PILE_ID_LENGTH
        or not set(pile_id) <= _DIGITS
    ):
        raise ValueError(f"a pile ID is {_PILE_ID_LENGTH} digits, got {pile_id!r}")
    return pile_id


def operator_of(pile_id: str) -> str:
    """The 4-digit operator segment of a pile ID (characters 7-10)."""
    return check_pile_id(pile_id)[_OPERATOR]


def _check_operator(code: str) -> str:
    if not isinstance(code, str) or len(code) != 4 or not set(code) <= _DIGITS:
        raise ValueError(f"an operator code is 4 digits, got {code!r}")
    return code


@dataclass(frozen=True, slots=True)
class TokenBinding:
    """Where a token may be used: specific piles and/or operators.

    A token applies on a pile that is listed in ``pile_ids`` *or* whose
    operator segment is in ``operators``. Unbound (both empty) means valid
    everywhere, so that binding is opt-in: a VIN bound to one test pile is the
    exception, most cards work on every pile their lists reach.
    """

    pile_ids: frozenset[str] = frozenset()
    operators: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        piles = frozenset(self.pile_ids)
        operators = frozenset(self.operators)
        for pile_id in piles:
            check_pile_id(pile_id)
        for code in operators:
            _check_operator(code)
        # Accept any iterable of strings; store frozensets (hashable, immutable).
        object.__setattr__(self, "pile_ids", piles)
        object.__setattr__(self, "operators", operators)

    @classmethod
    def of(cls, pile_ids: Iterable[str] = (), operators: Iterable[str] = ()) -> TokenBinding:
        return cls(frozenset(pile_ids), frozenset(operators))

    @property
    def unbound(self) -> bool:
        return not self.pile_ids and not self.operators


UNBOUND = TokenBinding()


def token_applies(binding: TokenBinding | None, pile_id: str) -> bool:
    """Whether a token with ``binding`` may be used on ``pile_id`` (None = unbound)."""
    check_pile_id(pile_id)
    if binding is None or binding.unbound:
        return True
    return pile_id in binding.pile_ids or pile_id[_OPERATOR] in binding.operators
