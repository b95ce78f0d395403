"""Property tests for the OCPP-J codec: no input crashes it, encoding round-trips,
and the speed-rewritten schemas accept exactly what the OCA schemas accept."""

from __future__ import annotations

import copy
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol.ocpp import (
    CHARGER_INITIATED_16,
    Call,
    CallError,
    CallResult,
    FrameError,
    OcppVersion,
    ValidationError,
    Validator,
    decode,
    encode,
    error_codes,
)
from protocol.ocpp.validation import _load_schema, _schema_files
from tests.test_ocpp_codec import BOOT_201, VALID_16_CHARGER_REQUESTS

VERSIONS: tuple[OcppVersion, ...] = ("1.6", "2.0.1")
VALIDATORS = {version: Validator(version) for version in VERSIONS}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
unique_ids = st.text(max_size=36)


def _decode_ok_or_frame_error(data: Any, version: OcppVersion) -> None:
    try:
        message = decode(data, version=version)
    except FrameError as err:
        assert err.error_code in error_codes(version)
        assert err.unique_id is None or isinstance(err.unique_id, str)
        orjson.dumps(err.details)  # always serialisable as errorDetails
    else:
        assert isinstance(message, Call | CallResult | CallError)


@settings(max_examples=400)
@given(data=st.text(), version=st.sampled_from(VERSIONS))
def test_decode_arbitrary_text(data: str, version: OcppVersion) -> None:
    _decode_ok_or_frame_error(data, version)


@settings(max_examples=400)
@given(data=st.binary(), version=st.sampled_from(VERSIONS))
def test_decode_arbitrary_bytes(data: bytes, version: OcppVersion) -> None:
    _decode_ok_or_frame_error(data, version)


@settings(max_examples=400)
@given(value=json_values, version=st.sampled_from(VERSIONS))
def test_decode_arbitrary_json(value: Any, version: OcppVersion) -> None:
    _decode_ok_or_frame_error(orjson.dumps(value), version)


frame_like = st.tuples(
    st.integers(min_value=0, max_value=7) | json_scalars,
    unique_ids | json_scalars,
    st.lists(json_values | st.text(max_size=20) | json_objects, max_size=4),
).map(lambda t: [t[0], t[1], *t[2]])


@settings(max_examples=600)
@given(frame=frame_like, version=st.sampled_from(VERSIONS))
def test_decode_frame_like_arrays(frame: list[Any], version: OcppVersion) -> None:
    data = orjson.dumps(frame)
    _decode_ok_or_frame_error(data, version)
    try:
        decode(data, version=version)
    except FrameError as err:
        # The unique id is recovered whenever the second element is a string.
        assert err.unique_id == (frame[1] if isinstance(frame[1], str) else None)


messages = st.one_of(
    st.builds(Call, unique_ids, st.text(min_size=1, max_size=40), json_objects),
    st.builds(CallResult, unique_ids, json_objects),
    st.builds(CallError, unique_ids, st.text(max_size=30), st.text(max_size=60), json_objects),
)


@given(message=messages, version=st.sampled_from(VERSIONS))
def test_encode_decode_round_trip(
    message: Call | CallResult | CallError, version: OcppVersion
) -> None:
    assert decode(encode(message), version=version) == message
    assert decode(encode(message).encode(), version=version) == message


# ---------------------------------------------------------------------------
# Validation never raises anything but ValidationError, and the lenient and
# strict paths agree.


def _validate_consistently(validator: Validator, action: str, payload: Any) -> None:
    before = copy.deepcopy(payload)
    problems = validator.check_request(action, payload)
    try:
        validator.validate_request(action, payload)
    except ValidationError as err:
        assert err.error_code in error_codes(validator.version)
        assert problems, "strict failed where lenient passed"
        first = problems[0]
        assert (err.error_code, err.details["field"], err.details["rule"]) == (
            first.error_code,
            first.field,
            first.rule,
        )
        orjson.dumps(err.details)
    else:
        assert problems == [], "lenient failed where strict passed"
    for problem in problems:
        assert problem.error_code in error_codes(validator.version)
        assert problem.details["field"] == problem.field
        orjson.dumps(problem.details)
    assert payload == before  # validation is pure


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(sorted(CHARGER_INITIATED_16)),
    payload=json_values,
)
def test_arbitrary_payloads_16(action: str, payload: Any) -> None:
    _validate_consistently(VALIDATORS["1.6"], action, payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(sorted(VALIDATORS["2.0.1"].actions("charger"))),
    payload=json_values,
)
def test_arbitrary_payloads_201(action: str, payload: Any) -> None:
    _validate_consistently(VALIDATORS["2.0.1"], action, payload)


# Mutating valid payloads reaches the deep checks that arbitrary JSON rarely does.

EXAMPLES: list[tuple[OcppVersion, str, dict[str, Any]]] = [
    *(("1.6", action, payload) for action, payload in sorted(VALID_16_CHARGER_REQUESTS.items())),
    ("2.0.1", "BootNotification", BOOT_201),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, sub in value.items():
            out += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            out += _paths(sub, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[OcppVersion, str, Any]:
    version, action, example = draw(st.sampled_from(EXAMPLES))
    payload = copy.deepcopy(example)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(payload)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        how = draw(st.sampled_from(["replace", "delete", "add"]))
        if how == "replace":
            parent[path[-1]] = draw(json_values | st.text(max_size=60))
        elif how == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_scalars)
    return version, action, payload


def _reference(version: OcppVersion, action: str) -> Any:
    """The OCA schema compiled as shipped, without this package's rewriting."""
    key = (version, action)
    if key not in _REFERENCE:
        schema = _load_schema(version, _schema_files(version)[(action, "request")])
        _REFERENCE[key] = fastjsonschema.compile(schema, use_default=False)
    return _REFERENCE[key]


_REFERENCE: dict[tuple[str, str], Any] = {}


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_rewritten_schemas_accept_exactly_what_the_oca_schemas_accept(
    case: tuple[OcppVersion, str, Any],
) -> None:
    version, action, payload = case
    assume(payload is not None)
    validator = VALIDATORS[version]
    _validate_consistently(validator, action, payload)
    try:
        _reference(version, action)(copy.deepcopy(payload))
        reference_ok = True
    except fastjsonschema.JsonSchemaValueException:
        reference_ok = False
    assert (validator.check_request(action, payload) == []) == reference_ok


@pytest.mark.parametrize(("version", "action", "payload"), EXAMPLES)
def test_examples_are_valid_for_the_reference_too(
    version: OcppVersion, action: str, payload: dict[str, Any]
) -> None:
    _reference(version, action)(copy.deepcopy(payload))
