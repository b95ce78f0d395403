"""OCPP-J framing and payload validation: every error path, with its exact code
and details, and realistic payloads for each charger-initiated 1.6 action."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from protocol.ocpp import (
    CENTRAL_INITIATED_16,
    CENTRAL_INITIATED_16_SECURITY,
    CENTRAL_INITIATED_201,
    CHARGER_INITIATED_16,
    CHARGER_INITIATED_16_SECURITY,
    CHARGER_INITIATED_201,
    Call,
    CallError,
    CallResult,
    ErrorCode,
    FrameError,
    MessageTypeId,
    OcppVersion,
    ValidationError,
    Validator,
    decode,
    encode,
    encode_call,
    encode_error,
    encode_result,
    error_codes,
)

V16 = Validator("1.6")
V201 = Validator("2.0.1")


def frame_error(data: str | bytes, version: OcppVersion = "1.6") -> FrameError:
    with pytest.raises(FrameError) as info:
        decode(data, version=version)
    return info.value


def validation_error(
    validator: Validator, action: str, payload: Any, direction: str = "request"
) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        if direction == "request":
            validator.validate_request(action, payload)
        else:
            validator.validate_response(action, payload)
    return info.value


# ---------------------------------------------------------------------------
# Error codes


def test_error_code_spellings_per_version() -> None:
    v16, v201 = error_codes("1.6"), error_codes("2.0.1")
    assert ErrorCode.OccurenceConstraintViolation in v16
    assert ErrorCode.OccurrenceConstraintViolation not in v16
    assert ErrorCode.FormationViolation in v16
    assert ErrorCode.FormatViolation not in v16
    assert ErrorCode.OccurrenceConstraintViolation in v201
    assert ErrorCode.OccurenceConstraintViolation not in v201
    assert {ErrorCode.MessageTypeNotSupported, ErrorCode.RpcFrameworkError} <= v201
    assert len(v16) == 10
    assert len(v201) == 12
    assert ErrorCode.NotImplemented == "NotImplemented"
    assert str(ErrorCode.OccurenceConstraintViolation) == "OccurenceConstraintViolation"


def test_message_type_ids() -> None:
    assert (MessageTypeId.CALL, MessageTypeId.CALLRESULT, MessageTypeId.CALLERROR) == (2, 3, 4)
    assert Call.message_type_id == 2
    assert CallResult.message_type_id == 3
    assert CallError.message_type_id == 4


# ---------------------------------------------------------------------------
# Decoding: happy paths and round trips


def test_decode_call() -> None:
    msg = decode('[2,"19223201","BootNotification",{"chargePointVendor":"VendorX"}]')
    assert msg == Call("19223201", "BootNotification", {"chargePointVendor": "VendorX"})


def test_decode_accepts_bytes_and_whitespace() -> None:
    msg = decode(b' [ 3 , "19223201" , { "status" : "Accepted" } ] ')
    assert msg == CallResult("19223201", {"status": "Accepted"})


def test_decode_call_error_with_and_without_details() -> None:
    assert decode('[4,"a","NotSupported","no",{"x":1}]') == CallError(
        "a", "NotSupported", "no", {"x": 1}
    )
    # errorDetails omitted: tolerated, read as {}.
    assert decode('[4,"a","GenericError",""]') == CallError("a", "GenericError", "", {})


def test_call_error_details_default_to_empty_object() -> None:
    err = CallError("a", "GenericError")
    assert err.error_details == {}
    assert err.error_description == ""
    assert encode(err) == '[4,"a","GenericError","",{}]'


def test_decode_keeps_unknown_error_code_strings() -> None:
    assert decode('[4,"a","Whatever","",{}]') == CallError("a", "Whatever", "", {})


def test_unique_id_of_36_characters_is_accepted() -> None:
    uid = "0" * 36
    assert decode(f'[2,"{uid}","Heartbeat",{{}}]') == Call(uid, "Heartbeat", {})


@pytest.mark.parametrize(
    "message",
    [
        Call("19223201", "BootNotification", {"chargePointVendor": "DLH", "n": [1, 2.5, None]}),
        Call("\u7535\u6869-1", "DataTransfer", {"vendorId": "pilegate", "data": "\u00e9\u20ac"}),
        CallResult("19223201", {"status": "Accepted", "interval": 300}),
        CallResult("x", {}),
        CallError("19223201", "FormationViolation", "bad frame", {"element": 2}),
        CallError("19223201", "GenericError"),
    ],
)
def test_round_trip(message: Call | CallResult | CallError) -> None:
    text = encode(message)
    assert decode(text) == message
    assert decode(text.encode()) == message
    assert " " not in text.replace("bad frame", "")  # compact


def test_encode_functions_are_compact_and_exact() -> None:
    assert encode_call("1", "Heartbeat", {}) == '[2,"1","Heartbeat",{}]'
    assert encode_result("1", {"currentTime": "2021-05-27T14:20:00Z"}) == (
        '[3,"1",{"currentTime":"2021-05-27T14:20:00Z"}]'
    )
    assert encode_error("1", ErrorCode.NotImplemented, "unknown action") == (
        '[4,"1","NotImplemented","unknown action",{}]'
    )
    assert encode_error("1", "ProtocolError", "", {"element": 3}) == (
        '[4,"1","ProtocolError","",{"element":3}]'
    )


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode("not a message")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Decoding: every framing fault, 1.6 codes


@pytest.mark.parametrize(
    "data",
    ["", "[2,", "{'a': 1}", "[NaN]", b"\xff\xfe", '"\\ud800"', b'[2,"\xc3\x28"]'],
)
def test_invalid_json_or_utf8_is_formation_violation(data: str | bytes) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.unique_id is None
    assert "cause" in err.details


@pytest.mark.parametrize(
    ("data", "actual"),
    [('{"a":1}', "object"), ('"text"', "string"), ("2", "integer"), ("null", "null")],
)
def test_not_an_array_is_formation_violation(data: str, actual: str) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"expected": "array", "actual": actual}
    assert err.unique_id is None


def test_empty_array_is_formation_violation() -> None:
    err = frame_error("[]")
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": 0, "expected": "integer"}


@pytest.mark.parametrize(
    ("first", "actual"), [('"2"', "string"), ("2.0", "number"), ("true", "boolean")]
)
def test_message_type_id_not_an_integer(first: str, actual: str) -> None:
    err = frame_error(f'[{first},"abc","Heartbeat",{{}}]')
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": 0, "expected": "integer", "actual": actual}
    assert err.unique_id == "abc"  # recovered all the same


def test_unknown_message_type_is_protocol_error_in_16() -> None:
    err = frame_error('[5,"abc","Heartbeat",{}]')
    assert err.error_code is ErrorCode.ProtocolError
    assert err.details == {"element": 0, "value": 5}
    assert err.unique_id == "abc"
    assert err.message_type_id == 5


@pytest.mark.parametrize(
    ("data", "elements", "expected"),
    [
        ('[2,"abc","Heartbeat"]', 3, 4),
        ('[2,"abc"]', 2, 4),
        ("[2]", 1, 4),
        ('[3,"abc"]', 2, 3),
        ('[4,"abc","GenericError"]', 3, 4),
    ],
)
def test_too_few_elements_is_protocol_error_in_16(data: str, elements: int, expected: int) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.ProtocolError
    assert err.details == {"elements": elements, "expected": expected}
    assert err.unique_id == ("abc" if elements > 1 else None)


@pytest.mark.parametrize(
    ("data", "elements", "expected"),
    [
        ('[2,"abc","Heartbeat",{},{}]', 5, 4),
        ('[3,"abc",{},1]', 4, 3),
        ('[4,"abc","GenericError","",{},1]', 6, 5),
    ],
)
def test_too_many_elements_is_formation_violation(data: str, elements: int, expected: int) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"elements": elements, "expected": expected}
    assert err.unique_id == "abc"


@pytest.mark.parametrize(
    ("data", "actual"),
    [
        ('[2,19223201,"Heartbeat",{}]', "integer"),
        ("[3,null,{}]", "null"),
        ('[4,[],"a","",{}]', "array"),
    ],
)
def test_unique_id_not_a_string(data: str, actual: str) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": 1, "expected": "string", "actual": actual}
    assert err.unique_id is None


def test_unique_id_longer_than_36_characters() -> None:
    uid = "x" * 37
    err = frame_error(f'[2,"{uid}","Heartbeat",{{}}]')
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": 1, "expected": "string", "maxLength": 36}
    assert err.unique_id == uid  # recovered so the CALLERROR can still be matched


@pytest.mark.parametrize(
    ("data", "element", "expected", "actual"),
    [
        ('[2,"abc",7,{}]', 2, "string", "integer"),
        ('[2,"abc",null,{}]', 2, "string", "null"),
        ('[2,"abc","Heartbeat",[]]', 3, "object", "array"),
        ('[2,"abc","Heartbeat","{}"]', 3, "object", "string"),
        ('[3,"abc",[]]', 2, "object", "array"),
        ('[3,"abc",null]', 2, "object", "null"),
        ('[4,"abc",1,"",{}]', 2, "string", "integer"),
        ('[4,"abc","GenericError",null,{}]', 3, "string", "null"),
        ('[4,"abc","GenericError","",[]]', 4, "object", "array"),
    ],
)
def test_wrong_element_types_are_formation_violation(
    data: str, element: int, expected: str, actual: str
) -> None:
    err = frame_error(data)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": element, "expected": expected, "actual": actual}
    assert err.unique_id == "abc"
    assert err.message_type_id == int(data[1])


def test_empty_action_is_formation_violation() -> None:
    err = frame_error('[2,"abc","",{}]')
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"element": 2, "expected": "string", "minLength": 1}
    assert err.unique_id == "abc"


def test_frame_error_becomes_a_call_error() -> None:
    err = frame_error('[2,"abc",7,{}]')
    assert err.unique_id is not None
    reply = err.to_call_error(err.unique_id)
    assert reply.unique_id == "abc"
    assert reply.error_code == "FormationViolation"
    assert orjson.loads(encode(reply)) == [
        4,
        "abc",
        "FormationViolation",
        err.description,
        {"element": 2, "expected": "string", "actual": "integer"},
    ]


def test_decode_never_raises_anything_but_frame_error_for_odd_input_types() -> None:
    for data in (None, 12, ["[2]"], bytearray(b"[2,"), memoryview(b"\xff")):
        with pytest.raises(FrameError):
            decode(data)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Decoding: 2.0.1 codes


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not json", ErrorCode.RpcFrameworkError),
        ('{"a":1}', ErrorCode.RpcFrameworkError),
        ("[]", ErrorCode.RpcFrameworkError),
        ('["2","abc","Heartbeat",{}]', ErrorCode.RpcFrameworkError),
        ('[2,"abc","Heartbeat"]', ErrorCode.RpcFrameworkError),
        ('[2,"abc","Heartbeat",{},1]', ErrorCode.RpcFrameworkError),
        ('[2,1,"Heartbeat",{}]', ErrorCode.RpcFrameworkError),
        ('[2,"' + "x" * 37 + '","Heartbeat",{}]', ErrorCode.RpcFrameworkError),
        ('[2,"abc",1,{}]', ErrorCode.RpcFrameworkError),
        ('[2,"abc","Heartbeat",[]]', ErrorCode.FormatViolation),
        ('[3,"abc",1]', ErrorCode.FormatViolation),
        ('[6,"abc","Heartbeat",{}]', ErrorCode.MessageTypeNotSupported),
    ],
)
def test_framing_codes_in_201(data: str, code: ErrorCode) -> None:
    err = frame_error(data, "2.0.1")
    assert err.error_code is code
    assert err.error_code in error_codes("2.0.1")


def test_unknown_message_type_in_201() -> None:
    err = frame_error('[5,"abc","Heartbeat",{}]', "2.0.1")
    assert err.error_code is ErrorCode.MessageTypeNotSupported
    assert err.details == {"element": 0, "value": 5}
    assert err.unique_id == "abc"


def test_every_16_framing_code_is_a_16_code() -> None:
    for data in ("x", "{}", "[]", '[true,"a"]', '[9,"a"]', "[2]", '[2,1,"A",{}]', '[3,"a",1]'):
        assert frame_error(data).error_code in error_codes("1.6")


# ---------------------------------------------------------------------------
# Validation: realistic 1.6 charger-initiated payloads

TS = "2021-05-27T14:20:00Z"
TS_OFFSET = "2021-05-27T14:20:00.123+08:00"


def sampled(measurand: str, value: str, unit: str, phase: str | None = None) -> dict[str, Any]:
    out = {
        "value": value,
        "context": "Sample.Periodic",
        "format": "Raw",
        "measurand": measurand,
        "location": "Outlet",
        "unit": unit,
    }
    if phase is not None:
        out["phase"] = phase
    return out


METER_VALUES: dict[str, Any] = {
    "connectorId": 1,
    "transactionId": 300,
    "meterValue": [
        {
            "timestamp": TS_OFFSET,
            "sampledValue": [
                sampled("Energy.Active.Import.Register", "12345.6", "Wh"),
                sampled("Current.Import", "31.8", "A", "L1"),
                sampled("Voltage", "229.7", "V", "L1-N"),
                sampled("Power.Active.Import", "7.30", "kW"),
            ],
        }
    ],
}

VALID_16_CHARGER_REQUESTS: dict[str, dict[str, Any]] = {
    "BootNotification": {
        "chargePointVendor": "DLH",
        "chargePointModel": "XD32E",
        "chargePointSerialNumber": "81000000560000100003",
        "chargeBoxSerialNumber": "XD32E-2105-0003",
        "firmwareVersion": "DLH_XD32E_210521003",
        "iccid": "89860321245920361234",
        "imsi": "460011234567890",
        "meterType": "DDSU666 single phase",
        "meterSerialNumber": "210300012345",
    },
    "Heartbeat": {},
    "StatusNotification": {
        "connectorId": 1,
        "errorCode": "NoError",
        "status": "Charging",
        "timestamp": TS,
        "info": "charging at 32 A",
        "vendorId": "com.dlh",
        "vendorErrorCode": "0",
    },
    "Authorize": {"idTag": "04A2B3C4D5E6F7"},
    "StartTransaction": {
        "connectorId": 1,
        "idTag": "04A2B3C4D5E6F7",
        "meterStart": 12000,
        "reservationId": 17,
        "timestamp": TS,
    },
    "StopTransaction": {
        "transactionId": 300,
        "idTag": "04A2B3C4D5E6F7",
        "meterStop": 19400,
        "timestamp": "2021-05-27T15:02:11Z",
        "reason": "Local",
        "transactionData": [
            {
                "timestamp": TS,
                "sampledValue": [
                    {
                        "value": "12000",
                        "context": "Transaction.Begin",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    }
                ],
            },
            {
                "timestamp": "2021-05-27T15:02:11Z",
                "sampledValue": [
                    {
                        "value": "19400",
                        "context": "Transaction.End",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    },
                    {
                        "value": "81",
                        "context": "Transaction.End",
                        "measurand": "SoC",
                        "unit": "Percent",
                        "location": "EV",
                    },
                ],
            },
        ],
    },
    "MeterValues": METER_VALUES,
    "DataTransfer": {"vendorId": "com.dlh", "messageId": "offlinePassword", "data": '{"pwd":1}'},
    "FirmwareStatusNotification": {"status": "Installed"},
    "DiagnosticsStatusNotification": {"status": "Uploaded"},
}


def test_the_examples_cover_every_charger_initiated_16_action() -> None:
    assert set(VALID_16_CHARGER_REQUESTS) == CHARGER_INITIATED_16


@pytest.mark.parametrize("action", sorted(VALID_16_CHARGER_REQUESTS))
def test_valid_16_charger_requests_pass(action: str) -> None:
    payload = VALID_16_CHARGER_REQUESTS[action]
    V16.validate_request(action, payload)
    assert V16.check_request(action, payload) == []


@pytest.mark.parametrize(
    "timestamp", [TS, TS_OFFSET, "2021-05-27T14:20:00.5-03:00", "2020-02-29T23:59:59z"]
)
def test_date_time_format_accepts_rfc3339(timestamp: str) -> None:
    V16.validate_request("Heartbeat", {})
    V16.validate_request(
        "StartTransaction",
        {**VALID_16_CHARGER_REQUESTS["StartTransaction"], "timestamp": timestamp},
    )


@pytest.mark.parametrize(
    "timestamp",
    ["2021-05-27 14:20:00Z", "2021-05-27T14:20:00", "2021-13-27T14:20:00Z", "27/05/2021", ""],
)
def test_date_time_format_is_checked(timestamp: str) -> None:
    payload = {**VALID_16_CHARGER_REQUESTS["StartTransaction"], "timestamp": timestamp}
    err = validation_error(V16, "StartTransaction", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details == {
        "field": "timestamp",
        "rule": "format",
        "expected": "date-time",
        "value": timestamp,
    }


def test_valid_16_responses_pass() -> None:
    V16.validate_response(
        "BootNotification", {"status": "Accepted", "currentTime": TS, "interval": 300}
    )
    V16.validate_response(
        "StartTransaction", {"transactionId": 300, "idTagInfo": {"status": "Accepted"}}
    )
    V16.validate_response("Heartbeat", {"currentTime": TS})
    V16.validate_response("RemoteStartTransaction", {"status": "Accepted"})


def test_valid_16_central_requests_pass_including_multiple_of() -> None:
    # limit has "multipleOf": 0.1; 21.4 / 0.1 is not an integer in binary
    # floating point, and must pass all the same.
    profile: dict[str, Any] = {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 21.4},
                    {"startPeriod": 3600, "limit": 16},
                ],
            },
        },
    }
    V16.validate_request("SetChargingProfile", profile)
    bad = copy.deepcopy(profile)
    bad["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][1]["limit"] = 21.45
    err = validation_error(V16, "SetChargingProfile", bad)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert (
        err.details["field"]
        == "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[1].limit"
    )
    assert err.details["rule"] == "multipleOf"


# ---------------------------------------------------------------------------
# Validation: one failing payload per error code, with its field path


def test_missing_required_field_is_occurence_violation_in_16() -> None:
    payload = copy.deepcopy(METER_VALUES)
    del payload["meterValue"][0]["timestamp"]
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.OccurenceConstraintViolation
    assert err.error_code.value == "OccurenceConstraintViolation"
    assert err.details == {"field": "meterValue[0].timestamp", "rule": "required"}


def test_missing_top_level_field() -> None:
    err = validation_error(V16, "BootNotification", {"chargePointVendor": "DLH"})
    assert err.error_code is ErrorCode.OccurenceConstraintViolation
    assert err.details == {"field": "chargePointModel", "rule": "required"}


def test_empty_list_is_occurence_violation() -> None:
    payload = {**METER_VALUES, "meterValue": []}
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.OccurenceConstraintViolation
    assert err.details == {"field": "meterValue", "rule": "minItems", "limit": 1, "count": 0}


@pytest.mark.parametrize(
    ("action", "field", "value", "expected", "actual"),
    [
        ("StartTransaction", "meterStart", "12000", "integer", "string"),
        ("StartTransaction", "connectorId", True, "integer", "boolean"),
        ("StartTransaction", "connectorId", 1.5, "integer", "number"),
        ("StartTransaction", "idTag", 4711, "string", "integer"),
        ("StatusNotification", "connectorId", None, "integer", "null"),
    ],
)
def test_wrong_type_is_type_constraint_violation(
    action: str, field: str, value: Any, expected: str, actual: str
) -> None:
    payload = {**VALID_16_CHARGER_REQUESTS[action], field: value}
    err = validation_error(V16, action, payload)
    assert err.error_code is ErrorCode.TypeConstraintViolation
    assert err.details == {"field": field, "rule": "type", "expected": expected, "actual": actual}


def test_nested_wrong_type_has_the_full_path() -> None:
    payload = copy.deepcopy(METER_VALUES)
    payload["meterValue"][0]["sampledValue"][2]["value"] = 229.7
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.TypeConstraintViolation
    assert err.details["field"] == "meterValue[0].sampledValue[2].value"


def test_enum_violation_is_property_constraint_violation() -> None:
    payload = copy.deepcopy(METER_VALUES)
    payload["meterValue"][0]["sampledValue"][1]["measurand"] = "Current.Importt"
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details["field"] == "meterValue[0].sampledValue[1].measurand"
    assert err.details["rule"] == "enum"
    assert err.details["value"] == "Current.Importt"
    assert "Current.Import" in err.details["allowed"]
    assert "meterValue[0].sampledValue[1].measurand" in err.description


def test_short_enum_violation() -> None:
    payload = {**METER_VALUES}
    payload["meterValue"] = [{"timestamp": TS, "sampledValue": [{"value": "1", "format": "Hex"}]}]
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details == {
        "field": "meterValue[0].sampledValue[0].format",
        "rule": "enum",
        "value": "Hex",
        "allowed": ["Raw", "SignedData"],
    }


def test_max_length_is_property_constraint_violation() -> None:
    payload = {"idTag": "X" * 21}
    err = validation_error(V16, "Authorize", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details == {"field": "idTag", "rule": "maxLength", "limit": 20, "length": 21}


def test_additional_property_is_formation_violation_in_16() -> None:
    payload = copy.deepcopy(METER_VALUES)
    payload["meterValue"][0]["sampledValue"][3]["quality"] = "good"
    err = validation_error(V16, "MeterValues", payload)
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {
        "field": "meterValue[0].sampledValue[3].quality",
        "rule": "additionalProperties",
    }


def test_additional_property_with_an_odd_name_is_quoted() -> None:
    err = validation_error(V16, "Heartbeat", {"a b.c": 1})
    assert err.details == {"field": '["a b.c"]', "rule": "additionalProperties"}


def test_payload_not_an_object() -> None:
    err = validation_error(V16, "Heartbeat", [])
    assert err.error_code is ErrorCode.FormationViolation
    assert err.details == {"field": "", "rule": "type", "expected": "object", "actual": "array"}
    err = validation_error(V201, "Heartbeat", "x")
    assert err.error_code is ErrorCode.FormatViolation


@pytest.mark.parametrize("direction", ["request", "response"])
@pytest.mark.parametrize("validator", [V16, V201], ids=["1.6", "2.0.1"])
def test_unknown_action_is_not_implemented(validator: Validator, direction: str) -> None:
    err = validation_error(validator, "FlyToTheMoon", {}, direction)
    assert err.error_code is ErrorCode.NotImplemented
    assert err.details["action"] == "FlyToTheMoon"
    assert err.details["field"] == ""
    problems = validator.check("FlyToTheMoon", {}, direction)  # type: ignore[arg-type]
    assert [p.error_code for p in problems] == [ErrorCode.NotImplemented]


def test_response_names_are_not_actions() -> None:
    err = validation_error(V16, "BootNotificationResponse", {})
    assert err.error_code is ErrorCode.NotImplemented
    err = validation_error(V201, "BootNotificationRequest", {})
    assert err.error_code is ErrorCode.NotImplemented


def test_validation_error_becomes_a_call_error() -> None:
    err = validation_error(V16, "Authorize", {})
    reply = err.to_call_error("abc")
    assert encode(reply) == (
        '[4,"abc","OccurenceConstraintViolation","idTag: required field is missing",'
        '{"field":"idTag","rule":"required"}]'
    )


# ---------------------------------------------------------------------------
# Validation: 2.0.1

BOOT_201: dict[str, Any] = {
    "chargingStation": {
        "model": "XD32E",
        "vendorName": "DLH",
        "serialNumber": "81000000560000100003",
        "firmwareVersion": "DLH_XD32E_210521003",
        "modem": {"iccid": "89860321245920361234", "imsi": "460011234567890"},
    },
    "reason": "PowerUp",
}


def test_201_boot_notification_validates() -> None:
    V201.validate_request("BootNotification", BOOT_201)
    V201.validate_response(
        "BootNotification", {"currentTime": TS_OFFSET, "interval": 300, "status": "Accepted"}
    )
    assert V201.check_request("BootNotification", BOOT_201) == []


def test_201_missing_field_is_occurrence_violation_with_two_rs() -> None:
    payload = copy.deepcopy(BOOT_201)
    del payload["chargingStation"]["vendorName"]
    err = validation_error(V201, "BootNotification", payload)
    assert err.error_code is ErrorCode.OccurrenceConstraintViolation
    assert err.details == {"field": "chargingStation.vendorName", "rule": "required"}


def test_201_enum_through_ref() -> None:
    err = validation_error(V201, "BootNotification", {**BOOT_201, "reason": "Bored"})
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details["field"] == "reason"
    assert err.details["rule"] == "enum"


def test_201_additional_property_is_protocol_error() -> None:
    payload = copy.deepcopy(BOOT_201)
    payload["chargingStation"]["colour"] = "red"
    err = validation_error(V201, "BootNotification", payload)
    assert err.error_code is ErrorCode.ProtocolError
    assert err.details == {"field": "chargingStation.colour", "rule": "additionalProperties"}


def test_201_custom_data_allows_extra_members() -> None:
    payload = {**BOOT_201, "customData": {"vendorId": "com.dlh", "pileKind": "AC"}}
    V201.validate_request("BootNotification", payload)


@pytest.mark.parametrize(("soc", "rule"), [(101, "maximum"), (-1, "minimum")])
def test_201_minimum_and_maximum(soc: int, rule: str) -> None:
    payload = {
        "evseId": 1,
        "chargingNeeds": {
            "requestedEnergyTransfer": "DC",
            "dcChargingParameters": {
                "evMaxCurrent": 200,
                "evMaxVoltage": 800,
                "stateOfCharge": soc,
            },
        },
    }
    err = validation_error(V201, "NotifyEVChargingNeeds", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details["field"] == "chargingNeeds.dcChargingParameters.stateOfCharge"
    assert err.details["rule"] == rule
    assert err.details["value"] == soc
    payload["chargingNeeds"]["dcChargingParameters"]["stateOfCharge"] = 50  # type: ignore[index]
    V201.validate_request("NotifyEVChargingNeeds", payload)


def test_201_max_length() -> None:
    payload = copy.deepcopy(BOOT_201)
    payload["chargingStation"]["model"] = "M" * 21
    err = validation_error(V201, "BootNotification", payload)
    assert err.error_code is ErrorCode.PropertyConstraintViolation
    assert err.details == {
        "field": "chargingStation.model",
        "rule": "maxLength",
        "limit": 20,
        "length": 21,
    }


def test_validation_never_writes_schema_defaults_into_the_payload() -> None:
    payload = {
        "getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
        ]
    }
    before = copy.deepcopy(payload)
    V201.validate_request("GetVariables", payload)
    assert payload == before  # attributeType has "default": "Actual" in the schema


# ---------------------------------------------------------------------------
# Lenient mode


def test_check_request_reports_every_problem() -> None:
    payload = copy.deepcopy(METER_VALUES)
    payload["connectorId"] = "1"
    payload["meterValue"][0]["sampledValue"][0]["unit"] = "Joule"
    payload["meterValue"][0]["sampledValue"][1]["colour"] = "red"
    del payload["meterValue"][0]["sampledValue"][2]["value"]
    problems = V16.check_request("MeterValues", payload)
    assert [(p.error_code, p.field, p.rule) for p in problems] == [
        (ErrorCode.TypeConstraintViolation, "connectorId", "type"),
        (ErrorCode.PropertyConstraintViolation, "meterValue[0].sampledValue[0].unit", "enum"),
        (
            ErrorCode.FormationViolation,
            "meterValue[0].sampledValue[1].colour",
            "additionalProperties",
        ),
        (ErrorCode.OccurenceConstraintViolation, "meterValue[0].sampledValue[2].value", "required"),
    ]
    # The strict path reports the first of them.
    err = validation_error(V16, "MeterValues", payload)
    assert (err.error_code, err.details["field"]) == (problems[0].error_code, problems[0].field)


def test_check_response_and_every_missing_field() -> None:
    problems = V16.check_response("BootNotification", {})
    assert [p.field for p in problems] == ["status", "currentTime", "interval"]
    assert {p.error_code for p in problems} == {ErrorCode.OccurenceConstraintViolation}


# ---------------------------------------------------------------------------
# Actions and directions


def test_16_action_sets_match_the_shipped_schemas() -> None:
    assert V16.actions() == (
        CHARGER_INITIATED_16
        | CENTRAL_INITIATED_16
        | CHARGER_INITIATED_16_SECURITY
        | CENTRAL_INITIATED_16_SECURITY
    )
    assert len(V16.actions()) == 39
    assert {"DataTransfer"} == CHARGER_INITIATED_16 & CENTRAL_INITIATED_16
    assert V16.actions("charger") == CHARGER_INITIATED_16 | CHARGER_INITIATED_16_SECURITY
    assert "RemoteStartTransaction" in V16.actions("central")
    assert "RemoteStartTransaction" not in V16.actions("charger")


def test_201_action_sets_match_the_shipped_schemas() -> None:
    assert V201.actions() == CHARGER_INITIATED_201 | CENTRAL_INITIATED_201
    assert len(V201.actions()) == 64
    assert {"DataTransfer"} == CHARGER_INITIATED_201 & CENTRAL_INITIATED_201
    assert "TransactionEvent" in V201.actions("charger")


def test_every_schema_compiles() -> None:
    for validator in (Validator("1.6"), Validator("2.0.1")):
        validator.preload()


def test_unsupported_version() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Validator("2.1")  # type: ignore[arg-type]
    assert V16.version == "1.6"
