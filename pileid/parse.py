"""Parsing and validation of pile and gun IDs.

One analysis (:func:`analyze`) serves both the strict parsers, which raise
:class:`~pileid.model.PileIdError` listing *every* error, and
:func:`pileid.explain`, which never raises and shows the segments even of an
invalid ID.  Keeping a single code path means the ops API's explanation can
never disagree with what the protocol edge accepted.

Layout (20 digits, then 3 for a gun)::

    region(6) operator(4) reserved(1) product(2) kind(2) serial(5) [gun(3)]

The protocol edge passes the ID exactly as the charger sent it.  It never
calls :func:`normalize`: a charger configured with ``3101 0400 ...`` must be
told, not silently fixed, or the same pile would appear under two IDs in the
field and in the back office.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .model import (
    ExplainedSegment,
    GunId,
    Kind,
    PileId,
    PileIdError,
    Problem,
    Product,
    Rule,
    Segment,
)
from .regions import RegionCheck, check_region

__all__ = [
    "GUN_ID_LENGTH",
    "PILE_ID_LENGTH",
    "Analysis",
    "IdKind",
    "analyze",
    "build_pile_id",
    "normalize",
    "parse_any",
    "parse_gun_id",
    "parse_pile_id",
]

PILE_ID_LENGTH = 20
GUN_ID_LENGTH = 23

IdKind = Literal["pile", "gun"]
Expect = Literal["pile", "gun", "any"]

_ASCII_DIGITS = frozenset("0123456789")
_SEPARATORS = frozenset("-_")
# Messages quote what the charger sent; a misbehaving charger can send
# kilobytes, so quotes and position lists are capped to keep log lines sane.
_MAX_SHOWN_CHARS = 40
_MAX_LISTED = 5

_LAYOUT: tuple[tuple[Segment, int, int], ...] = (
    (Segment.REGION, 0, 6),
    (Segment.OPERATOR, 6, 10),
    (Segment.RESERVED, 10, 11),
    (Segment.PRODUCT, 11, 13),
    (Segment.KIND, 13, 15),
    (Segment.SERIAL, 15, 20),
    (Segment.GUN, 20, 23),
)


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything found out about one ID string.

    ``digits`` is the text with whitespace removed: segments are read from it
    so an operator sees the digits even when spaces were the only problem.
    ``pile``/``gun`` are set only when there are no errors.
    """

    text: str
    digits: str
    kind_of_id: IdKind | None
    length_ok: bool
    segments: tuple[ExplainedSegment, ...]
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    pile: PileId | None
    gun: GunId | None


def normalize(text: str) -> str:
    """Remove surrounding and inner whitespace, hyphens and underscores.

    For humans pasting IDs into tools and the ops API search.  The protocol
    edge deliberately does not call it (see the module docstring); it does not
    validate, so parse the result.
    """
    return "".join(c for c in text.strip() if not c.isspace() and c not in _SEPARATORS)


def parse_pile_id(text: str) -> PileId:
    """Parse a 20-digit pile ID; raise :class:`PileIdError` listing every error."""
    result = analyze(text, "pile")
    if result.errors or result.pile is None:
        raise PileIdError(result.errors, text)
    return result.pile


def parse_gun_id(text: str) -> GunId:
    """Parse a 23-digit gun ID (pile ID + gun 001..999); raise :class:`PileIdError`."""
    result = analyze(text, "gun")
    if result.errors or result.gun is None:
        raise PileIdError(result.errors, text)
    return result.gun


def parse_any(text: str) -> PileId | GunId:
    """Parse a pile ID (20 digits) or a gun ID (23 digits), by length."""
    result = analyze(text, "any")
    found = result.gun or result.pile
    if result.errors or found is None:
        raise PileIdError(result.errors, text)
    return found


def build_pile_id(
    region_code: str,
    operator: str,
    kind: Kind,
    serial: int,
    *,
    product: Product = Product.PILE,
    reserved: str = "0",
) -> PileId:
    """Compose a pile ID from its parts (for simulators and tests) and validate it."""
    if not 0 <= serial <= 99999:
        raise ValueError(f"serial must fit in 5 digits, got {serial}")
    return parse_pile_id(
        f"{region_code}{operator}{reserved}{product.value}{kind.value}{serial:05d}"
    )


def analyze(text: str, expect: Expect = "any") -> Analysis:
    """Check ``text`` against every rule; never raises."""
    errors: list[Problem] = []
    digits = "".join(c for c in text if not c.isspace())
    n = len(digits)
    expected = _expected_lengths(expect)
    length_ok = n in expected
    kind_of_id: IdKind | None = None
    if length_ok:
        kind_of_id = "pile" if n == PILE_ID_LENGTH else "gun"

    spaces = [i for i, c in enumerate(text) if c.isspace()]
    if spaces:
        errors.append(_spaces_problem(text, spaces, digits, kind_of_id))
    bad = [(i, c) for i, c in enumerate(text) if not c.isspace() and c not in _ASCII_DIGITS]
    if bad:
        errors.append(_non_digit_problem(text, bad, length_ok))
    if not length_ok:
        errors.append(_length_problem(text, digits, expect))

    segments: list[ExplainedSegment] = []
    warnings: list[Problem] = []
    region: RegionCheck | None = None
    layout_end = PILE_ID_LENGTH if n <= PILE_ID_LENGTH else GUN_ID_LENGTH
    for segment, start, end in _LAYOUT:
        if start >= min(n, layout_end):
            break
        part = digits[start:end]
        if len(part) < end - start:
            segments.append(
                ExplainedSegment(segment, part, f"incomplete ({len(part)} of {end - start} digits)")
            )
            continue
        if not set(part) <= _ASCII_DIGITS:
            segments.append(ExplainedSegment(segment, part, "contains non-digits"))
            continue
        if segment is Segment.REGION:
            region = check_region(part)
        meaning, problem = _decode(segment, part, region)
        segments.append(ExplainedSegment(segment, part, meaning))
        # Segment rules only apply once the length is right; otherwise the
        # boundaries are a guess and the length error says it all.
        if problem is not None and length_ok:
            (warnings if problem.severity == "warning" else errors).append(problem)
    if n > GUN_ID_LENGTH:
        segments.append(
            ExplainedSegment(Segment.WHOLE, digits[GUN_ID_LENGTH:], f"{n - GUN_ID_LENGTH} extra")
        )

    pile: PileId | None = None
    gun: GunId | None = None
    if not errors and region is not None and region.region is not None:
        pile = PileId(
            text=digits[:PILE_ID_LENGTH],
            region=region.region,
            region_code=digits[0:6],
            operator=digits[6:10],
            reserved=digits[10:11],
            product=Product(digits[11:13]),
            kind=Kind(digits[13:15]),
            serial=digits[15:20],
            warnings=tuple(warnings),
        )
        if n == GUN_ID_LENGTH:
            gun = GunId(digits, pile, int(digits[PILE_ID_LENGTH:]))
    return Analysis(
        text=text,
        digits=digits,
        kind_of_id=kind_of_id,
        length_ok=length_ok,
        segments=tuple(segments),
        errors=tuple(errors),
        warnings=tuple(warnings),
        pile=pile,
        gun=gun,
    )


def _expected_lengths(expect: Expect) -> tuple[int, ...]:
    if expect == "pile":
        return (PILE_ID_LENGTH,)
    if expect == "gun":
        return (GUN_ID_LENGTH,)
    return (PILE_ID_LENGTH, GUN_ID_LENGTH)


# --- segment decoding --------------------------------------------------------------


def _decode(segment: Segment, part: str, region: RegionCheck | None) -> tuple[str, Problem | None]:
    """(meaning, problem) for one all-digit segment of the right width."""
    if segment is Segment.REGION and region is not None:
        if region.region is None:
            return "unknown region code", region.problem
        meaning = region.region.full_name
        if region.region.status == "abolished":
            meaning += f" (abolished after {region.region.last_revision})"
        return meaning, region.problem
    return _DECODERS[segment](part)


def _operator(part: str) -> tuple[str, Problem | None]:
    return f"operator {part}", None


def _reserved(part: str) -> tuple[str, Problem | None]:
    # No rule: the standard reserves the digit without giving it values, and
    # rejecting a pile over it would help nobody.
    return "reserved", None


def _product(part: str) -> tuple[str, Problem | None]:
    try:
        return Product(part).label, None
    except ValueError:
        return "unknown product code", Problem.of(
            Rule.PRODUCT_UNKNOWN,
            Segment.PRODUCT,
            f"product code `{part}` is unknown (expected 00 pile or 01 ground lock)",
        )


def _kind(part: str) -> tuple[str, Problem | None]:
    try:
        return Kind(part).label, None
    except ValueError:
        return "unknown kind code", Problem.of(
            Rule.KIND_UNKNOWN,
            Segment.KIND,
            f"kind code `{part}` is unknown (expected 01 AC or 02 DC)",
        )


def _serial(part: str) -> tuple[str, Problem | None]:
    if int(part) == 0:
        return "serial 00000 (not allowed)", Problem.of(
            Rule.SERIAL_ZERO,
            Segment.SERIAL,
            f"serial `{part}` is not allowed (serials start at 00001)",
        )
    return f"serial {int(part)}", None


def _gun(part: str) -> tuple[str, Problem | None]:
    if int(part) == 0:
        return "gun 000 (not allowed)", Problem.of(
            Rule.GUN_ZERO,
            Segment.GUN,
            f"gun number `{part}` is not allowed (guns are numbered from 001)",
        )
    return f"gun {int(part)}", None


_DECODERS: dict[Segment, Callable[[str], tuple[str, Problem | None]]] = {
    Segment.OPERATOR: _operator,
    Segment.RESERVED: _reserved,
    Segment.PRODUCT: _product,
    Segment.KIND: _kind,
    Segment.SERIAL: _serial,
    Segment.GUN: _gun,
}


# --- whole-ID problems -------------------------------------------------------------


def _show(text: str) -> str:
    """``text`` fit for a one-line message: capped, control characters escaped."""
    shown = text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "…"
    if shown.isprintable() and "`" not in shown:
        return shown
    return repr(shown)[1:-1].replace("`", "\\`")


def _char(c: str) -> str:
    return f"`{c}`" if c.isprintable() and not c.isspace() and c != "`" else f"U+{ord(c):04X}"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def _spaces_problem(text: str, spaces: list[int], digits: str, kind: IdKind | None) -> Problem:
    word, them = ("spaces", "them") if all(text[i] == " " for i in spaces) else ("whitespace", "it")
    if kind is not None:
        message = (
            f"ID contains {word}; with {them} removed it is a valid-length {kind} ID "
            f"`{_show(digits)}` (use pileid.normalize)"
        )
    else:
        where = _listing([str(i + 1) for i in spaces])
        plural = "s" if len(spaces) > 1 else ""
        message = f"ID contains {word} at position{plural} {where}"
    return Problem.of(Rule.CONTAINS_SPACES, Segment.WHOLE, message)


def _non_digit_problem(text: str, bad: list[tuple[int, str]], length_ok: bool) -> Problem:
    if len(bad) == 1:
        i, c = bad[0]
        message = f"character {_char(c)} at position {i + 1} is not a digit"
    else:
        message = (
            "characters "
            + _listing([f"{_char(c)} (position {i + 1})" for i, c in bad])
            + " are not digits"
        )
    if any(c in _SEPARATORS for _, c in bad):
        cleaned = normalize(text)
        if len(cleaned) in (PILE_ID_LENGTH, GUN_ID_LENGTH) and set(cleaned) <= _ASCII_DIGITS:
            kind = "pile" if len(cleaned) == PILE_ID_LENGTH else "gun"
            message += (
                f"; with separators removed it is a valid-length {kind} ID `{cleaned}`"
                " (use pileid.normalize)"
            )
        else:
            message += "; separators can be removed with pileid.normalize"
    if any(c.isdigit() for _, c in bad):
        message += "; only ASCII digits 0-9 are allowed"
    return Problem.of(Rule.NON_DIGIT, _segment_of(text, bad, length_ok), message)


def _segment_of(text: str, bad: list[tuple[int, str]], length_ok: bool) -> Segment:
    """The one segment holding every bad character, else WHOLE."""
    if not length_ok:
        return Segment.WHOLE
    found: set[Segment] = set()
    for i, _ in bad:
        # Position among the non-whitespace characters, i.e. in the ID proper.
        pos = i - sum(1 for c in text[:i] if c.isspace())
        found.update(seg for seg, start, end in _LAYOUT if start <= pos < end)
    return found.pop() if len(found) == 1 else Segment.WHOLE


def _length_problem(text: str, digits: str, expect: Expect) -> Problem:
    n = len(digits)
    unit = "digits" if set(digits) <= _ASCII_DIGITS else "characters"
    subject = {"pile": "pile ID", "gun": "gun ID", "any": "ID"}[expect]
    wanted = {
        "pile": "20",
        "gun": "23",
        "any": "20 (pile ID) or 23 (gun ID)",
    }[expect]
    prefix = "with whitespace removed, " if len(digits) != len(text) else ""
    if n == 0:
        message = f"{subject} is empty, expected {wanted} digits"
    else:
        message = f"{prefix}{subject} has {n} {unit}, expected {wanted} (`{_show(text)}`)"
    if expect == "pile" and n == GUN_ID_LENGTH:
        message += "; 23 digits is a gun ID"
    elif expect == "gun" and n == PILE_ID_LENGTH:
        message += "; 20 digits is a pile ID, a gun ID adds the 3-digit gun number"
    return Problem.of(Rule.LENGTH, Segment.WHOLE, message)
