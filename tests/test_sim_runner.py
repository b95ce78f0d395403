"""Scenario files and the runner's pieces that need no gateway: parsing and
its error messages, matchers, curve checks, reports."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml

from gateway.cli import main
from simulators.runner import (
    CheckResult,
    ScenarioResult,
    _metric_value,
    check_fields,
    curve_stats,
    format_report,
    junit_xml,
    match,
    resolve,
)
from simulators.scenario import (
    Expect,
    ScenarioError,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)

BASE = """\
name: t
chargers:
  ac1: {pile_id: "44200000010000100001"}
steps:
"""


def parse(steps: str, head: str = BASE) -> Any:
    return parse_scenario(yaml.safe_load(head + textwrap.indent(textwrap.dedent(steps), "  ")))


def test_every_shipped_scenario_parses_and_has_expectations() -> None:
    for path in shipped_scenarios():
        sc = load_scenario(path)
        assert sc.expectations, path
        assert sc.description, path


def test_shorthands_and_defaults() -> None:
    sc = parse("""\
        - connect: ac1
        - wait: 1.5
        - plug: ac1
        - expect: {pile: ac1, online: false, within: 30}
    """)
    connect, wait, plug, expect = (s.spec for s in sc.steps)
    assert connect.charger == "ac1" and connect.until == "booted"
    assert wait.seconds == 1.5 and plug.gun == 1
    assert isinstance(expect, Expect)
    assert (expect.kind, expect.target, expect.checks, expect.within) == (
        "pile",
        "ac1",
        {"online": False},
        30,
    )
    assert sc.steps[3].describe() == "pile ac1: online = False within 30 s"
    assert sc.chargers["ac1"].effective_kind == "AC"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("- teleport: ac1\n", "steps[0]: unknown step 'teleport'"),
        ("- plug: {charger: ac2}\n", "steps[0].plug: no charger named 'ac2'"),
        ("- plug: {charger: ac1, gun: 3}\n", "steps[0].plug.gun: Input should be less than"),
        ("- plug: {charger: ac1, colour: red}\n", "steps[0].plug.colour: Extra inputs"),
        ("- present_card: {charger: ac1}\n", "steps[0].present_card.id_tag: Field required"),
        ("- expect: {pile: ac1, event: ac1}\n", "steps[0].expect: name exactly one subject"),
        ("- expect: {online: true}\n", "steps[0].expect: name exactly one subject"),
        ("- expect: {pile: ac1, energy: {'>=': 1, about: 2}}\n", "unknown operator(s) ['about']"),
        ("- {plug: ac1, wait: 1}\n", "steps[0]: a step is a mapping with one key"),
        (
            "- set_local_list: {charger: ac1, version: 1, tokens: {A: Maybe}}\n",
            "status must be one of",
        ),
        ("- whitelist: {name: w, chargers: [ac1, dc9]}\n", "no charger named 'dc9'"),
        ("- api: {path: '/api/piles/{pile:nope}'}\n", "no charger named 'nope'"),
        (
            "- expect: {api: '/api/piles/{pile:nope}/whitelist', status: in_sync}\n",
            "no charger named 'nope'",
        ),
        ("- api: {path: 'api/piles'}\n", "steps[0].api.path: String should match"),
    ],
)
def test_errors_name_the_step_and_the_field(steps: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(steps)
    assert message in str(info.value)


def test_charger_errors_name_the_charger_and_field() -> None:
    with pytest.raises(ScenarioError, match=r"chargers\.ac1.*7 or 22 kW"):
        parse_scenario(
            yaml.safe_load(
                "name: t\nchargers:\n  ac1: {pile_id: '44200000010000100001', power_kw: 50}\n"
                "steps:\n  - connect: ac1\n"
            )
        )
    with pytest.raises(ScenarioError, match="missing 'steps'"):
        parse_scenario({"name": "t", "chargers": {"a": {"pile_id": "1"}}})
    with pytest.raises(ScenarioError, match="unknown top-level"):
        parse_scenario({"name": "t", "chargers": {}, "steps": [], "extra": 1})


def test_time_scale_is_inherited_by_chargers() -> None:
    sc = parse_scenario(
        yaml.safe_load(
            "name: t\ntime_scale: 60\nchargers:\n  a: {pile_id: '44200000010000100001'}\n"
            "  b: {pile_id: '44200000010000100002', time_scale: 2}\nsteps:\n  - connect: a\n"
        )
    )
    assert sc.chargers["a"].time_scale == 60 and sc.chargers["b"].time_scale == 2


@pytest.mark.parametrize(
    ("actual", "matcher", "ok"),
    [
        (True, True, True),
        (1, True, False),
        (False, 0, False),
        (400, 400, True),
        (400.0, 400, True),
        ("400", 400, True),
        ("card", "card", True),
        ("Card", "card", False),
        (1250, {">=": 1200}, True),
        (1199, {">=": 1200}, False),
        (5, {">": 1, "<": 10}, True),
        (700, {"approx": 690, "tolerance": 0.02}, True),
        (700, {"approx": 650}, False),
        ("ping_timeout", {"in": ["replaced", "ping_timeout"]}, True),
        (["SoC", "Voltage"], {"contains": "SoC"}, True),
        ("16 digits", {"contains": "17"}, False),
        ("DLH_XD32E_210521003", {"matches": r"_21\d+$"}, True),
        (None, {"exists": False}, True),
        (3, {"exists": True}, True),
        (None, {">=": 1}, False),
        ("x", {"!=": "y"}, True),
    ],
)
def test_matchers(actual: Any, matcher: Any, ok: bool) -> None:
    assert match(actual, matcher) is ok


def test_paths_and_field_checks() -> None:
    data = {"a": {"b": [{"c": 1}, {"c": 2}]}, "presence": {"connected_here": True}}
    assert resolve(data, "a.b.1.c") == [2]
    assert resolve(data, "a.b.-1.c") == [2]
    assert resolve(data, "a.b.*.c") == [1, 2]
    assert resolve(data, "a.x.y") == [None]
    assert check_fields(data, {"a.b.*.c": 2, "presence.connected_here": True})[0]
    ok, detail = check_fields(data, {"a.b.0.c": 2})
    assert not ok and detail == "a.b.0.c = 1"


def test_curve_checks_tell_a_line_from_a_bend() -> None:
    line = [(1000.0 + t, 7000 / 3600 * t) for t in range(0, 600, 60)]
    stats = curve_stats(line)
    assert stats["samples"] == 10 and stats["monotonic"]
    assert stats["max_deviation"] == pytest.approx(0, abs=1e-9)
    assert stats["slope_kw"] == pytest.approx(7.0)
    bent = [
        (float(t), v if t < 300 else v * 0.5 + 300)
        for t, v in ((t, 10.0 * t) for t in range(0, 600, 60))
    ]
    assert curve_stats(bent)["max_deviation"] > 0.05
    backwards = [(0.0, 5.0), (1.0, 4.0), (2.0, 6.0)]
    assert not curve_stats(backwards)["monotonic"]
    assert curve_stats([(0.0, 1.0)])["linear"] is False
    assert curve_stats([])["samples"] == 0


def test_metric_text_is_summed_by_labels() -> None:
    text = textwrap.dedent("""\
        # HELP pilegate_handshake_refusals_total Refused OCPP handshakes by reason
        # TYPE pilegate_handshake_refusals_total counter
        pilegate_handshake_refusals_total{reason="invalid_pile_id:length"} 2.0
        pilegate_handshake_refusals_total{reason="auth_failed"} 1.0
        pilegate_handshake_refusals_created{reason="auth_failed"} 1.7e9
    """)
    assert _metric_value(text, "pilegate_handshake_refusals_total", {}) == 3.0
    assert (
        _metric_value(
            text, "pilegate_handshake_refusals_total", {"reason": "invalid_pile_id:length"}
        )
        == 2.0
    )
    assert _metric_value(text, "pilegate_nothing_total", {}) == 0.0


def test_reports() -> None:
    ok = ScenarioResult("good", "good.yaml", [CheckResult("pile a: online", True, "expect", 1.0)])
    bad = ScenarioResult(
        "bad",
        "bad.yaml",
        [
            CheckResult("step 2: plug a", False, "step", 0.1, "gun 1 is already plugged in"),
            CheckResult("pile a: online", False, "expect", 0.0, "not run", skipped=True),
        ],
    )
    assert ok.passed and not bad.passed
    assert not ScenarioResult("empty", "e.yaml").passed  # no expectation: nothing proven
    text = format_report([ok, bad])
    assert text.splitlines()[0].startswith("PASS  good")
    assert "FAIL  step 2: plug a" in text and "gun 1 is already plugged in" in text
    assert "SKIP  pile a: online" in text and text.endswith("1/2 scenario(s) passed")
    root = ET.fromstring(junit_xml([ok, bad]))
    suites = root.findall("testsuite")
    assert [s.get("failures") for s in suites] == ["0", "1"]
    assert [s.get("skipped") for s in suites] == ["0", "1"]
    failure = suites[1].find("testcase/failure")
    assert failure is not None and failure.get("message") == "gun 1 is already plugged in"


def test_cli_check_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE + "  - connect: ac1\n  - expect: {pile: ac1, online: true}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "  - connect: ac2\n")
    assert main(["sim", "check", str(good)]) == 0
    assert "1 expectations" in capsys.readouterr().out
    assert main(["sim", "check", str(good), str(bad)]) == 2
    assert "steps[0].connect: no charger named 'ac2'" in capsys.readouterr().err
    assert main(["sim", "run", str(bad)]) == 2
    assert main(["sim", "list"]) == 0
    assert "half_open.yaml" in capsys.readouterr().out


def test_the_worked_example_in_the_docs_is_a_valid_scenario() -> None:
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "simulator.md").read_text(
        encoding="utf-8"
    )
    blocks = re.findall(r"```yaml\n(name: (?!\.\.\.).*?)```", doc, re.S)
    assert blocks, "docs/simulator.md lost its worked example"
    for block in blocks:
        sc = parse_scenario(yaml.safe_load(block), "docs/simulator.md")
        assert sc.expectations


def test_the_reference_covers_every_step_and_charger_field() -> None:
    from simulators.config import ChargerConfig
    from simulators.scenario import EXPECT_KINDS, STEP_TYPES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "simulator.md").read_text(
        encoding="utf-8"
    )
    missing = [f"step {s}" for s in STEP_TYPES if f"| `{s}` |" not in doc]
    missing += [f"expectation {k}" for k in EXPECT_KINDS if f"| `{k}` |" not in doc]
    missing += [f"charger field {f}" for f in ChargerConfig.model_fields if f"`{f}`" not in doc]
    assert not missing, missing


def test_pile_placeholders_are_substituted() -> None:
    from simulators.scenario import substitute

    ids = {"ts1": "44200000010000100031"}
    assert substitute("/api/piles/{pile:ts1}/whitelist", ids) == (
        "/api/piles/44200000010000100031/whitelist"
    )
    assert substitute([{"pile_ids": ["{pile:ts1}"]}, 3], ids) == (
        [{"pile_ids": ["44200000010000100031"]}, 3]
    )
    sc = parse("""\
        - api: {method: PUT, path: "/api/piles/{pile:ac1}/password", body: {password: x},
                expect_http: 204}
        - expect: {api: "/api/piles/{pile:ac1}/whitelist", status: in_sync}
    """)
    assert sc.steps[1].spec.kind == "api" and sc.steps[1].spec.checks == {"status": "in_sync"}
