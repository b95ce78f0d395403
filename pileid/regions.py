"""GB/T 2260 region codes: the vendored table and the rules applied to a pile's region.

The table (``pileid/data/regions.csv``, built by ``scripts/build_regions.py``)
holds every code that was valid in any revision we have, because a pile keeps
the code it was given even after its county is merged or renamed.  Decision
rules, in order (see also ``pileid/data/README.md``):

1. code in the table and current  -> accepted;
2. code in the table, abolished    -> accepted with a ``region_abolished`` warning;
3. code not in the table, but its prefecture (first four digits + ``00``) is a
   prefecture-level city without county-level divisions (东莞, 中山, 儋州,
   嘉峪关) -> accepted with a ``region_unlisted`` warning: GB/T 2260 gives such
   cities' sub-areas no code, so operators number them XXXX01..XXXX99;
4. anything else -> ``region_unknown`` error.

The file is read once, lazily, through :mod:`importlib.resources` so it works
from a wheel or a zip as well as from a checkout.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .model import Problem, Region, RegionStatus, Rule, Segment

__all__ = [
    "PLACEHOLDER_NAMES",
    "RegionCheck",
    "RegionTable",
    "check_region",
    "lookup_region",
    "region_table",
]

CSV_COLUMNS = (
    "code",
    "name",
    "province",
    "prefecture",
    "first_revision",
    "last_revision",
    "status",
    "source",
)

# Names GB/T 2260 lists use for grouping rows (XXXX00 "市辖区" under a
# municipality, "省直辖县级行政区划", ...).  They are never a county's
# prefecture and never a "city without county-level divisions".  Keep in sync
# with scripts/build_regions.py (a test checks it).
PLACEHOLDER_NAMES = frozenset(
    {
        "市辖区",
        "县",
        "市",
        "省直辖县级行政区划",
        "省直辖县级行政单位",
        "省直辖行政单位",
        "自治区直辖县级行政区划",
        "自治区直辖县级行政单位",
    }
)


@dataclass(frozen=True, slots=True)
class RegionCheck:
    """Outcome of checking one region code: the region (if accepted) and any finding.

    ``problem`` is a warning when ``region`` is set and an error when it is None.
    """

    code: str
    region: Region | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.region is not None


# eq=False: the table is a singleton holding a mapping, compared by identity.
@dataclass(frozen=True, slots=True, eq=False)
class RegionTable:
    """All region codes ever valid, plus the cities whose sub-areas have no code."""

    by_code: Mapping[str, Region]
    no_county_prefectures: frozenset[str]

    @classmethod
    def from_csv(cls, text: str) -> RegionTable:
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(
                f"regions.csv: expected columns {CSV_COLUMNS}, got {reader.fieldnames}"
            )
        by_code: dict[str, Region] = {}
        for row in reader:
            code = row["code"]
            if len(code) != 6 or not code.isascii() or not code.isdigit() or code in by_code:
                raise ValueError(f"regions.csv: bad or duplicate code {code!r}")
            status = row["status"]
            if status not in ("current", "abolished"):
                raise ValueError(f"regions.csv: bad status {status!r} for {code}")
            by_code[code] = Region(
                code=code,
                name=row["name"],
                province=row["province"] or None,
                prefecture=row["prefecture"] or None,
                status=_status(status),
                first_revision=row["first_revision"],
                last_revision=row["last_revision"],
            )
        return cls(MappingProxyType(by_code), _no_county_prefectures(by_code))

    def __len__(self) -> int:
        return len(self.by_code)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.by_code.values())

    def __contains__(self, code: object) -> bool:
        return code in self.by_code

    def get(self, code: str) -> Region | None:
        """The listed region with this code, or None (unlisted sub-areas are not returned)."""
        return self.by_code.get(code)

    def current_codes(self) -> tuple[str, ...]:
        return tuple(c for c, r in self.by_code.items() if r.status == "current")

    def abolished_codes(self) -> tuple[str, ...]:
        return tuple(c for c, r in self.by_code.items() if r.status == "abolished")

    def check(self, code: str) -> RegionCheck:
        """Apply the decision rules in the module docstring to a 6-digit code."""
        region = self.by_code.get(code)
        if region is not None:
            if region.status == "abolished":
                warning = Problem.of(
                    Rule.REGION_ABOLISHED,
                    Segment.REGION,
                    f"region code {code} ({region.full_name}) was abolished after revision "
                    f"{region.last_revision}; accepted because old piles keep their codes",
                )
                return RegionCheck(code, region, warning)
            return RegionCheck(code, region, None)
        prefecture_code = code[:4] + "00"
        if prefecture_code in self.no_county_prefectures:
            prefecture = self.by_code[prefecture_code]
            sub_area = Region(
                code=code,
                name=f"unlisted sub-area {code[4:]}",
                province=prefecture.province,
                prefecture=prefecture.name,
                status="unlisted",
                first_revision=None,
                last_revision=None,
            )
            warning = Problem.of(
                Rule.REGION_UNLISTED,
                Segment.REGION,
                f"region code {code} is not in GB/T 2260; accepted as a sub-area of "
                f"{prefecture_code} {prefecture.name}, a prefecture-level city without "
                "county-level divisions",
            )
            return RegionCheck(code, sub_area, warning)
        error = Problem.of(
            Rule.REGION_UNKNOWN,
            Segment.REGION,
            f"region code `{code}` is not a GB/T 2260 code in any revision",
        )
        return RegionCheck(code, None, error)


def _status(text: str) -> RegionStatus:
    # A function rather than a cast so mypy checks the literal values.
    return "current" if text == "current" else "abolished"


def _no_county_prefectures(by_code: Mapping[str, Region]) -> frozenset[str]:
    """Prefecture codes with no county-level code under them in any revision.

    Derived from the data rather than hard-coded so a future revision that
    gives 中山 districts codes automatically ends the "unlisted" allowance.
    "市辖区" rows (e.g. 620201) are not in the table, so they do not count as
    children; grouping rows (PLACEHOLDER_NAMES) are never such a city.
    """
    with_children = {code[:4] for code in by_code if not code.endswith("00")}
    return frozenset(
        code
        for code, region in by_code.items()
        if code.endswith("00")
        and not code.endswith("0000")
        and region.name not in PLACEHOLDER_NAMES
        and code[:4] not in with_children
    )


@functools.cache
def region_table() -> RegionTable:
    """The bundled table, loaded on first use and then shared."""
    data = resources.files("pileid").joinpath("data").joinpath("regions.csv")
    text = data.read_text(encoding="utf-8")
    return RegionTable.from_csv(text)


def lookup_region(code: str) -> Region | None:
    """The listed region with this code, or None."""
    return region_table().get(code)


def check_region(code: str) -> RegionCheck:
    """Apply the region decision rules to a 6-digit code."""
    return region_table().check(code)
