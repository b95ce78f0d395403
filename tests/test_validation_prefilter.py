"""The jsonschema-rs prefilter of the strict validators (protocol/ocpp/
validation.py, ``_prefiltered``) never accepts what fastjsonschema refuses.

For every schema of both OCPP versions, payloads are generated from the
schema itself: valid ones, and ones with the usual faults (wrong types,
1.0 for an integer, booleans for numbers, strings over their maxLength,
enum near-misses, tricky timestamps and URIs, missing required and unknown
fields, too few or too many items). Wherever jsonschema-rs says valid,
fastjsonschema (the lenient compile, same acceptance as the strict one) must
say valid too; otherwise the prefilter would let through a payload the
gateway used to refuse. Valid payloads must pass both (the fast path is taken
for what chargers normally send)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.ocpp import validation as V
from protocol.ocpp.validation import ValidationError, Validator

SCHEMAS = sorted(
    (version, action, direction)
    for version in ("1.6", "2.0.1")
    for (action, direction) in V._schema_files(version)
)

GOOD_TIMES = [
    "2026-12-04T08:00:00Z",
    "2026-12-04T08:00:00.123Z",
    "2026-12-04T08:00:00.123456+08:00",
    "2024-02-29T23:59:59-05:30",
    "2026-12-04t08:00:00z",
]
BAD_TIMES = [
    "2026-12-04T08:00:00+0800",  # fastjsonschema accepts, jsonschema-rs does not
    "２０２６-12-04T08:00:00Z",  # non-ASCII digits: the same
    "2026-02-29T00:00:00Z",
    "2026-12-04T24:00:00Z",
    "2026-12-04T23:59:60Z",
    "2026-12-04 08:00:00Z",
    "2026-12-04T08:00Z",
    "2026-12-04T08:00:00",
    "2026-12-04T08:00:00.Z",
    "2026-13-04T08:00:00Z",
    "",
]
URIS = ["http://a/b", "ftp://x", "urn:x", "http:/a", "//x", "http://a/%zz", "http://a/ü", "x", ""]
OTHER_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.just([]),
    st.just({}),
)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/definitions/"), ref
    return _resolve(root["definitions"][ref.rsplit("/", 1)[1]], root)


def payload(data: st.DataObject, node: Any, root: dict[str, Any], p: float, depth: int = 0) -> Any:
    """A payload for ``node``: valid, except that each node is replaced by a
    faulty value with probability ``p`` (so most faulty payloads have one
    fault, which is where the two validators could disagree)."""
    node = _resolve(node, root)
    kind = node.get("type")
    faulty = p > 0 and data.draw(st.floats(min_value=0, max_value=1)) < p
    if "enum" in node:
        values = node["enum"]
        if faulty:
            near = [v.lower() for v in values if isinstance(v, str)] + [f"{values[0]}x"]
            return data.draw(st.sampled_from(near) | OTHER_JSON)
        return data.draw(st.sampled_from(values))
    if kind == "object":
        props = node.get("properties", {})
        required = set(node.get("required", []))
        out = {}
        for key, sub in props.items():
            if key in required or (depth < 6 and data.draw(st.booleans())):
                out[key] = payload(data, sub, root, p, depth + 1)
        if faulty:
            choice = data.draw(st.sampled_from(["drop", "extra", "other"]))
            if choice == "drop" and out:
                out.pop(data.draw(st.sampled_from(sorted(out))))
            elif choice == "extra":
                out["unknownField"] = 1
            else:
                return data.draw(OTHER_JSON)
        return out
    if kind == "array":
        low = node.get("minItems", 0)
        high = min(node.get("maxItems", low + 2), low + 2)
        size = data.draw(st.integers(min_value=low, max_value=high))
        if faulty:
            size = data.draw(st.sampled_from([max(0, low - 1), node.get("maxItems", 3) + 1]))
        return [payload(data, node.get("items", {}), root, p, depth + 1) for _ in range(size)]
    if kind == "string":
        fmt = node.get("format")
        limit = node.get("maxLength")
        if fmt == "date-time":
            return data.draw(st.sampled_from(BAD_TIMES if faulty else GOOD_TIMES))
        if fmt == "uri":
            return data.draw(st.sampled_from(URIS[4:] if faulty else URIS[:4]))
        size = limit if limit is not None else 30
        if faulty:
            return data.draw(st.sampled_from(["x" * (size + 1)]) | OTHER_JSON)
        return data.draw(st.text(max_size=size))
    if kind in ("integer", "number"):
        low, high = node.get("minimum"), node.get("maximum")
        step = node.get("multipleOf")
        if faulty:
            return data.draw(
                st.sampled_from([1.0, 1.5, 0.3, 7.000000000000001, -1, 2**70, True, "1"])
            )
        if kind == "integer":
            return data.draw(st.integers(min_value=low, max_value=high))
        if step is not None:
            n = data.draw(st.integers(min_value=0, max_value=1000))
            return round(n * step, 6)
        return data.draw(
            st.integers(min_value=low, max_value=high)
            | st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
        )
    if kind == "boolean":
        if faulty:
            return data.draw(st.sampled_from([0, 1, "true"]))
        return data.draw(st.booleans())
    return data.draw(OTHER_JSON)


def _verdicts(version: str, action: str, direction: str, payload: Any) -> tuple[bool, bool]:
    file_name = V._schema_files(version)[(action, direction)]
    rs = jsonschema_rs.validator_for(V._load_schema(version, file_name), validate_formats=True)
    fast = Validator(version)  # type: ignore[arg-type]
    return rs.is_valid(payload), fast.check(action, payload, direction) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "action", "direction"), SCHEMAS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_nothing_jsonschema_rs_accepts_is_refused(
    version: str, action: str, direction: str, data: st.DataObject
) -> None:
    schema = V._load_schema(version, V._schema_files(version)[(action, direction)])
    p = data.draw(st.sampled_from([0.0, 0.02, 0.1, 0.3]))
    sample = payload(data, schema, schema, p)
    rs_ok, fast_ok = _verdicts(version, action, direction, sample)
    assert fast_ok or not rs_ok, (version, action, direction, sample)


@pytest.mark.parametrize(("version", "action", "direction"), SCHEMAS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_payloads_take_the_fast_path(
    version: str, action: str, direction: str, data: st.DataObject
) -> None:
    schema = V._load_schema(version, V._schema_files(version)[(action, direction)])
    sample = payload(data, schema, schema, 0.0)
    assert _verdicts(version, action, direction, sample) == (True, True), sample


def test_a_refused_payload_still_gets_fastjsonschema_s_error() -> None:
    v = Validator("1.6")
    bad = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": "2026-12-04T08:00:00+0100",
                "sampledValue": [{"value": "1", "unit": "Wh!"}],
            }
        ],
    }
    with pytest.raises(ValidationError) as exc:
        v.validate_request("MeterValues", bad)
    assert exc.value.details["field"] == "meterValue[0].sampledValue[0].unit"
    # A timestamp only fastjsonschema accepts is still accepted (the verdict
    # is fastjsonschema's), as before the prefilter.
    ok = {
        "connectorId": 1,
        "meterValue": [{"timestamp": "2026-12-04T08:00:00+0100", "sampledValue": [{"value": "1"}]}],
    }
    v.validate_request("MeterValues", ok)
