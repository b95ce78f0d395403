from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_event_schemas_match_the_models() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_event_schemas.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rendered = gen.render()
    on_disk = {
        p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "events").glob("*.json")
    }
    assert set(rendered) == set(on_disk), "run scripts/gen_event_schemas.py"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} is stale: run scripts/gen_event_schemas.py"


def test_grafana_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    import json
    import re

    from gateway.metrics import Metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exported = set()
    for family in Metrics().registry.collect():
        for suffix in suffixes.get(family.type, [""]):
            exported.add(family.name + suffix)
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"pilegate_[a-z_]+", target["expr"]))
    missing = {name for name in used if name not in exported}
    assert not missing, missing
