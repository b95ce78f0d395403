"""Write docs/events/<type>.json, the JSON schema of every MQTT event.

Run after changing gateway/events.py; tests/test_event_schemas.py fails when
the committed schemas differ from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.events import json_schemas

OUT = Path(__file__).resolve().parent.parent / "docs" / "events"


def render() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for filename, text in render().items():
        (OUT / filename).write_text(text, encoding="utf-8")
    print(f"wrote {len(render())} schemas to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
