"""Pile and gun IDs: parse, validate, explain.

Pure: no asyncio, no I/O apart from reading the bundled region table
(``pileid/data/regions.csv``) through importlib.resources on first use.

>>> pile = parse_pile_id("44030800010000200005")
>>> pile.region.full_name, pile.kind.label
('广东省 深圳市 盐田区', 'DC')
>>> parse_gun_id("44030800010000200005002").number
2
"""

from __future__ import annotations

from .explain import Explanation, explain
from .model import (
    WARNING_RULES,
    ExplainedSegment,
    GunId,
    Kind,
    PileId,
    PileIdError,
    Problem,
    Product,
    Region,
    RegionStatus,
    Rule,
    Segment,
    Severity,
)
from .parse import (
    GUN_ID_LENGTH,
    PILE_ID_LENGTH,
    build_pile_id,
    normalize,
    parse_any,
    parse_gun_id,
    parse_pile_id,
)
from .regions import RegionCheck, RegionTable, check_region, lookup_region, region_table

__all__ = [
    "GUN_ID_LENGTH",
    "PILE_ID_LENGTH",
    "WARNING_RULES",
    "ExplainedSegment",
    "Explanation",
    "GunId",
    "Kind",
    "PileId",
    "PileIdError",
    "Problem",
    "Product",
    "Region",
    "RegionCheck",
    "RegionStatus",
    "RegionTable",
    "Rule",
    "Segment",
    "Severity",
    "build_pile_id",
    "check_region",
    "explain",
    "lookup_region",
    "normalize",
    "parse_any",
    "parse_gun_id",
    "parse_pile_id",
    "region_table",
]
