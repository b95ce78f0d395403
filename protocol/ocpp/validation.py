"""Payload validation against the OCA JSON schemas shipped in the ``ocpp`` package.

One :class:`Validator` per OCPP version checks the payload of a CALL
(``validate_request``) or a CALLRESULT (``validate_response``) for an action
and raises :class:`ValidationError` carrying the CALLERROR code the spec asks
for and details that name the offending field as a JSON path
(``{"field": "meterValue[0].sampledValue[1].measurand", "rule": "enum", ...}``).
``check_request`` / ``check_response`` return every problem instead of raising.

Schemas come from ``ocpp/v16/schemas/<Action>.json`` and
``<Action>Response.json`` (draft-04; the 1.6 security extension's are
draft-06) and ``ocpp/v201/schemas/<Action>Request.json`` and
``<Action>Response.json`` (draft-06). Each is compiled with fastjsonschema the
first time its action is seen (or all at once with :meth:`Validator.preload`)
and cached for the life of the process, shared by all validators. The
strict validators first ask jsonschema-rs (compiled Rust, the original
schema) whether the payload is valid and only run fastjsonschema when it is
not: fastjsonschema's verdict and error are the ones that count, jsonschema-rs
only saves the time of valid payloads (``_prefiltered``).
Compilation never fetches anything: remote ``$ref`` handlers are refused and
``default`` values are never written into the payload (``use_default=False``),
so validating is pure.

Which error code a schema violation gets
========================================

OCPP-J 1.6 §4.2.3 and OCPP 2.0.1 Part 4 §4.3 name the codes; the mapping from
JSON-schema keywords to them is this module's, version by version:

==============================  ============================  =============================
schema keyword that failed      1.6                           2.0.1
==============================  ============================  =============================
required, minItems, maxItems    OccurenceConstraintViolation  OccurrenceConstraintViolation
type (of a field)               TypeConstraintViolation       TypeConstraintViolation
enum, maxLength, format,        PropertyConstraintViolation   PropertyConstraintViolation
minimum, maximum, pattern,
multipleOf, ...
additionalProperties: false     FormationViolation            ProtocolError
payload itself not an object    FormationViolation            FormatViolation
action has no schema            NotImplemented                NotImplemented
==============================  ============================  =============================

* A missing required field (cardinality 1..1 in the PDU tables) and a list
  with too few or too many members (1..*, 0..4) violate *occurrence*
  constraints. 1.6 spells the code with one "r" and the errata sheet keeps
  that spelling (OCPP-J 1.6 errata §5.1); 2.0.1 spells it correctly
  (OCPP 2.0.1 Part 4 §4.3). Sources disagree on that last point: the
  ``ocpp`` package's exception docstrings say 2.0.1 still uses the one-"r"
  form and only 2.1 fixed it, while ocpp-go and other 2.0.1 implementations
  send the two-"r" form. The spelling lives in one place, ``_RULE_CODES``.
  (The ``ocpp`` package answers a missing field with ProtocolError, which 1.6
  defines as "Payload for Action is incomplete"; the occurrence code is the
  more precise one and is what ocpp-go and most CSMSs send.)
* A string too long for its CiString type is a *property* constraint ("at
  least one field contains an invalid value"), not a type constraint: the
  type (string) is right. (The ``ocpp`` package sends TypeConstraintViolation
  here.)
* All 1.6 schemas set ``additionalProperties: false``, so an unknown field
  fails validation. In 1.6 that is FormationViolation, "not conform the PDU
  structure for Action". 2.0.1 split that definition: FormatViolation became
  "Payload for Action is syntactically incorrect" and ProtocolError became
  "Payload for Action is not conform the PDU structure"; an unknown field is
  well-formed JSON that does not fit the PDU, so 2.0.1 gets ProtocolError.
  (The ``ocpp`` package sends FormatViolation for both versions.)
* NotImplemented is "Requested Action is not known by receiver"
  (OCPP-J 1.6 §4.2.3); NotSupported, "recognized but not supported", is for
  the gateway to send for actions it knows but does not handle.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, Literal

import fastjsonschema
import jsonschema_rs
import orjson
from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException

from protocol.ocpp.framing import ErrorCode, OcppError, OcppVersion, _json_type

__all__ = [
    "CENTRAL_INITIATED_16",
    "CENTRAL_INITIATED_16_SECURITY",
    "CENTRAL_INITIATED_201",
    "CHARGER_INITIATED_16",
    "CHARGER_INITIATED_16_SECURITY",
    "CHARGER_INITIATED_201",
    "Direction",
    "Initiator",
    "Problem",
    "ValidationError",
    "Validator",
]

Direction = Literal["request", "response"]
"""Which payload of an action: the CALL's (request) or the CALLRESULT's (response)."""

Initiator = Literal["charger", "central"]
"""Which side sends the CALL of an action."""

# --------------------------------------------------------------------------
# Who initiates what

CHARGER_INITIATED_16: Final = frozenset(
    {
        # OCPP 1.6 §4 "Operations Initiated by Charge Point"
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
    }
)
CENTRAL_INITIATED_16: Final = frozenset(
    {
        # OCPP 1.6 §5 "Operations Initiated by Central System"
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "DataTransfer",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
    }
)
CHARGER_INITIATED_16_SECURITY: Final = frozenset(
    {
        # OCPP 1.6 Security Whitepaper (the ``ocpp`` package ships these schemas
        # next to the core ones)
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    }
)
CENTRAL_INITIATED_16_SECURITY: Final = frozenset(
    {
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    }
)
CHARGER_INITIATED_201: Final = frozenset(
    {
        # OCPP 2.0.1 Part 2, messages sent by the Charging Station
        "Authorize",
        "BootNotification",
        "ClearedChargingLimit",
        "DataTransfer",
        "FirmwareStatusNotification",
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "Heartbeat",
        "LogStatusNotification",
        "MeterValues",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "SecurityEventNotification",
        "SignCertificate",
        "StatusNotification",
        "TransactionEvent",
    }
)
CENTRAL_INITIATED_201: Final = frozenset(
    {
        # OCPP 2.0.1 Part 2, messages sent by the CSMS
        "CancelReservation",
        "CertificateSigned",
        "ChangeAvailability",
        "ClearCache",
        "ClearChargingProfile",
        "ClearDisplayMessage",
        "ClearVariableMonitoring",
        "CostUpdated",
        "CustomerInformation",
        "DataTransfer",
        "DeleteCertificate",
        "GetBaseReport",
        "GetChargingProfiles",
        "GetCompositeSchedule",
        "GetDisplayMessages",
        "GetInstalledCertificateIds",
        "GetLocalListVersion",
        "GetLog",
        "GetMonitoringReport",
        "GetReport",
        "GetTransactionStatus",
        "GetVariables",
        "InstallCertificate",
        "PublishFirmware",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "SetDisplayMessage",
        "SetMonitoringBase",
        "SetMonitoringLevel",
        "SetNetworkProfile",
        "SetVariableMonitoring",
        "SetVariables",
        "TriggerMessage",
        "UnlockConnector",
        "UnpublishFirmware",
        "UpdateFirmware",
    }
)

_INITIATED: Final[dict[str, dict[str, frozenset[str]]]] = {
    "1.6": {
        "charger": CHARGER_INITIATED_16 | CHARGER_INITIATED_16_SECURITY,
        "central": CENTRAL_INITIATED_16 | CENTRAL_INITIATED_16_SECURITY,
    },
    "2.0.1": {"charger": CHARGER_INITIATED_201, "central": CENTRAL_INITIATED_201},
}

# --------------------------------------------------------------------------
# Problems and errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One schema violation.

    ``field`` is a JSON path into the payload (``""`` for the payload
    itself), ``rule`` the JSON-schema keyword that failed, and ``details``
    the JSON-serialisable ``errorDetails`` for a CALLERROR; it always holds
    ``field`` and ``rule``.
    """

    error_code: ErrorCode
    field: str
    rule: str
    description: str
    details: dict[str, Any]


class ValidationError(OcppError):
    """A payload that does not match its schema (or an action without one)."""

    @classmethod
    def from_problem(cls, problem: Problem) -> ValidationError:
        return cls(problem.error_code, problem.description, problem.details)


@dataclass(frozen=True, slots=True)
class _RuleCodes:
    occurrence: ErrorCode
    structure: ErrorCode  # additionalProperties / additionalItems
    not_object: ErrorCode  # the payload itself is not an object


_RULE_CODES: Final[dict[str, _RuleCodes]] = {
    "1.6": _RuleCodes(
        occurrence=ErrorCode.OccurenceConstraintViolation,
        structure=ErrorCode.FormationViolation,
        not_object=ErrorCode.FormationViolation,
    ),
    "2.0.1": _RuleCodes(
        occurrence=ErrorCode.OccurrenceConstraintViolation,
        structure=ErrorCode.ProtocolError,
        not_object=ErrorCode.FormatViolation,
    ),
}
_OCCURRENCE_RULES: Final = frozenset({"required", "minItems", "maxItems"})
_STRUCTURE_RULES: Final = frozenset({"additionalProperties", "additionalItems"})

# --------------------------------------------------------------------------
# Schemas


_SCHEMA_DIRS: Final = {"1.6": "v16", "2.0.1": "v201"}
_REQUEST_SUFFIX: Final = {"1.6": "", "2.0.1": "Request"}


@functools.cache
def _schema_files(version: str) -> dict[tuple[str, Direction], str]:
    """``(action, direction) -> file name`` for every schema of ``version``."""
    out: dict[tuple[str, Direction], str] = {}
    request_suffix = _REQUEST_SUFFIX[version]
    for entry in (files("ocpp") / _SCHEMA_DIRS[version] / "schemas").iterdir():
        name = entry.name
        if not name.endswith(".json"):
            continue
        stem = name[:-5]
        if stem.endswith("Response"):
            out[(stem[: -len("Response")], "response")] = name
        elif stem.endswith(request_suffix):
            out[(stem[: len(stem) - len(request_suffix)], "request")] = name
    return out


@functools.cache
def _known_actions(version: str) -> frozenset[str]:
    return frozenset(action for action, _ in _schema_files(version))


def _load_schema(version: str, file_name: str) -> dict[str, Any]:
    raw = (files("ocpp") / _SCHEMA_DIRS[version] / "schemas" / file_name).read_bytes()
    # The 2.0.1 files start with a UTF-8 byte order mark.
    schema: dict[str, Any] = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    return schema


# Enumerations of strings are turned into custom formats backed by a frozenset
# before compiling: fastjsonschema tests an enum with a chain of comparisons
# (22 for a measurand), a frozenset lookup is one hash. A failure comes back
# as rule "format" with the format name, which _ENUM_VALUES maps back to an
# "enum" problem, so callers never see the difference.
_ENUM_MIN_SIZE: Final = 4
_ENUM_FORMATS: Final[dict[tuple[str, ...], str]] = {}
_ENUM_VALUES: Final[dict[str, list[str]]] = {}
_ENUM_CHECKS: Final[dict[str, Callable[[str], bool]]] = {}
# Keywords that do not affect validation; dropping them keeps the generated
# code (which embeds each definition in its error paths) small.
_ANNOTATIONS: Final = frozenset({"description", "javaType", "comment", "default", "title"})


def _prepare(node: Any, used: set[str]) -> Any:
    """Copy a schema node, rewritten for speed without changing what it accepts;
    the names of the enum formats it uses are added to ``used``."""
    if isinstance(node, list):
        return [_prepare(item, used) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key in ("properties", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _prepare(sub, used) for name, sub in value.items()}
        elif key in ("enum", "required", "type", "$ref"):
            out[key] = value
        elif (
            key == "additionalProperties"
            and isinstance(node.get("type"), str)
            and node["type"] != "object"
        ):
            # The 1.6 schemas put "additionalProperties": false on strings; the
            # type check already rejects every value it could apply to.
            continue
        else:
            out[key] = _prepare(value, used)
    enum = out.get("enum")
    if (
        out.get("type") == "string"
        and "format" not in out
        and isinstance(enum, list)
        and len(enum) >= _ENUM_MIN_SIZE
        and all(type(item) is str for item in enum)
    ):
        values = tuple(enum)
        name = _ENUM_FORMATS.get(values)
        if name is None:
            name = f"ocpp_enum_{len(_ENUM_FORMATS)}"
            _ENUM_FORMATS[values] = name
            _ENUM_VALUES[name] = list(values)
            _ENUM_CHECKS[name] = frozenset(values).__contains__
        del out["enum"]
        out["format"] = name
        used.add(name)
    return out


def _refuse_remote(uri: str) -> Any:
    raise ValueError(f"remote $ref not allowed: {uri}")


_NO_REMOTE: Final = dict.fromkeys(("http", "https", "file", "ftp"), _refuse_remote)

_Check = Callable[[Any], Any]
_COMPILED: Final[dict[tuple[str, str, str, bool], _Check]] = {}


def _compiled(version: str, action: str, direction: Direction, lenient: bool) -> _Check | None:
    """The cached validator function, or ``None`` if there is no schema."""
    key = (version, action, direction, lenient)
    check = _COMPILED.get(key)
    if check is None:
        file_name = _schema_files(version).get((action, direction))
        if file_name is None:
            return None
        used: set[str] = set()
        original = _load_schema(version, file_name)
        schema = _prepare(original, used)
        check = fastjsonschema.compile(
            schema,
            handlers=_NO_REMOTE,
            # Passing formats wraps the function in a partial; skip it if unused.
            formats={name: _ENUM_CHECKS[name] for name in used},
            use_default=False,
            fast_fail=not lenient,
        )
        if not lenient:
            check = _prefiltered(check, original)
        _COMPILED[key] = check
    return check


def _prefiltered(check: _Check, schema: dict[str, Any]) -> _Check:
    """``check`` behind jsonschema-rs's ``is_valid`` on the original schema:
    a payload jsonschema-rs accepts is accepted at once (1.0 µs instead of
    fastjsonschema's 7.0 µs for a MeterValues with 4 samples,
    bench/validation_bench.py); anything else goes to ``check``, whose verdict
    and error (code, field, rule) are final. Sound because wherever the two
    differ jsonschema-rs is the stricter (a date-time offset without a colon,
    non-ASCII digits): tests/test_validation_prefilter.py checks on every
    schema of both versions that nothing jsonschema-rs accepts is refused by
    ``check``. Remote ``$ref``s are never fetched (``retriever`` refuses)."""
    accepts = jsonschema_rs.validator_for(
        schema, validate_formats=True, retriever=_refuse_remote
    ).is_valid

    def validate(payload: Any) -> Any:
        if accepts(payload):
            return None
        return check(payload)

    return validate


# --------------------------------------------------------------------------
# From fastjsonschema exceptions to problems

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _join(path: str, key: str) -> str:
    """Append an object member to a JSON path: ``a.b`` or ``a["odd key"]``."""
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{orjson.dumps(key).decode()}]"


def _field(name: str | None) -> str:
    """``data.meterValue[0].timestamp`` -> ``meterValue[0].timestamp``."""
    if not name or not name.startswith("data"):
        return name or ""
    rest = name[4:]
    return rest[1:] if rest.startswith(".") else rest


def _shown(value: Any) -> Any:
    """A scalar fit for errorDetails (long strings cut), else ``...`` (left out)."""
    if isinstance(value, str):
        return value if len(value) <= 100 else value[:100] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return ...


def _text(value: Any) -> str:
    """A short repr of a value for a description."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _problem(code: ErrorCode, field: str, rule: str, description: str, **extra: Any) -> Problem:
    details: dict[str, Any] = {"field": field, "rule": rule}
    details.update((k, v) for k, v in extra.items() if v is not ...)
    return Problem(code, field, rule, f"{field or 'payload'}: {description}", details)


def _problems(exc: JsonSchemaValueException, codes: _RuleCodes) -> list[Problem]:
    """Turn one fastjsonschema failure into problems (one per missing or
    unexpected member)."""
    rule = exc.rule or "unknown"
    path = _field(exc.name)
    value = exc.value
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    limit = definition.get(rule)

    if rule == "required" and isinstance(value, dict):
        required = limit if isinstance(limit, list) else []
        missing = [key for key in required if key not in value]
        return [
            _problem(codes.occurrence, _join(path, key), rule, "required field is missing")
            for key in missing
        ] or [_problem(codes.occurrence, path, rule, exc.message)]
    if rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties", {})
        extra = [key for key in value if key not in known]
        return [
            _problem(codes.structure, _join(path, key), rule, "field is not allowed by the schema")
            for key in extra
        ] or [_problem(codes.structure, path, rule, exc.message)]
    if rule == "type":
        expected = definition.get("type")
        actual = _json_type(value)
        code = codes.not_object if not path else ErrorCode.TypeConstraintViolation
        return [
            _problem(
                code,
                path,
                rule,
                f"must be {expected}, got {actual}",
                expected=expected,
                actual=actual,
            )
        ]
    if rule == "format" and isinstance(limit, str) and limit in _ENUM_VALUES:
        allowed = list(_ENUM_VALUES[limit])  # a copy: details may be mutated
        return [
            _problem(
                ErrorCode.PropertyConstraintViolation,
                path,
                "enum",
                f"{_text(value)} is not one of the allowed values",
                value=_shown(value),
                allowed=allowed,
            )
        ]
    if rule == "enum":
        return [
            _problem(
                ErrorCode.PropertyConstraintViolation,
                path,
                rule,
                f"{_text(value)} is not one of the allowed values",
                value=_shown(value),
                allowed=limit,
            )
        ]
    if rule in _OCCURRENCE_RULES:
        count = len(value) if isinstance(value, list | tuple) else ...
        return [
            _problem(
                codes.occurrence,
                path,
                rule,
                f"has {count} items, {rule} is {limit}",
                limit=limit,
                count=count,
            )
        ]
    if rule in _STRUCTURE_RULES:
        return [_problem(codes.structure, path, rule, "not allowed by the schema")]
    # enum, maxLength, minLength, format, pattern, minimum, maximum,
    # exclusiveMinimum, exclusiveMaximum, multipleOf, const, ...
    if rule in ("maxLength", "minLength") and isinstance(value, str):
        return [
            _problem(
                ErrorCode.PropertyConstraintViolation,
                path,
                rule,
                f"is {len(value)} characters long, {rule} is {limit}",
                limit=limit,
                length=len(value),
            )
        ]
    if rule == "format":
        return [
            _problem(
                ErrorCode.PropertyConstraintViolation,
                path,
                rule,
                f"{_text(value)} is not a valid {limit}",
                expected=limit,
                value=_shown(value),
            )
        ]
    return [
        _problem(
            ErrorCode.PropertyConstraintViolation,
            path,
            rule,
            f"{_text(value)} violates {rule} {_text(limit)}",
            limit=_shown(limit),
            value=_shown(value),
        )
    ]


def _crash(exc: Exception) -> Problem:
    """A value the compiled code could not even inspect (e.g. ``inf`` against
    ``multipleOf``); only reachable with payloads that did not come from JSON."""
    return _problem(
        ErrorCode.GenericError,
        "",
        "unknown",
        "payload could not be validated",
        cause=type(exc).__name__,
    )


# --------------------------------------------------------------------------
# The validator


class Validator:
    """Validates OCPP payloads of one version.

    Cheap to create: compiled schemas are cached per process and shared, and
    each validator keeps a per-action dict of them so the hot path is one
    dict lookup and one call. Not thread-safe for first use of an action;
    call :meth:`preload` before sharing one across threads.
    """

    __slots__ = ("_codes", "_requests", "_responses", "_version")

    def __init__(self, version: OcppVersion) -> None:
        if version not in _RULE_CODES:
            raise ValueError(f"unsupported OCPP version {version!r}; use '1.6' or '2.0.1'")
        self._version: OcppVersion = version
        self._codes = _RULE_CODES[version]
        self._requests: dict[str, _Check] = {}
        self._responses: dict[str, _Check] = {}

    @property
    def version(self) -> OcppVersion:
        return self._version

    def actions(self, direction: Initiator | None = None) -> frozenset[str]:
        """Actions with schemas in this version: all of them, or those whose
        CALL is sent by ``direction`` (``"charger"`` or ``"central"``).
        DataTransfer is in both."""
        known = _known_actions(self._version)
        if direction is None:
            return known
        return _INITIATED[self._version][direction] & known

    def preload(self) -> None:
        """Compile every schema now, e.g. at startup, so no request pays for it."""
        for action, direction in _schema_files(self._version):
            self._check(action, direction)

    # -- strict -----------------------------------------------------------

    def validate_request(self, action: str, payload: Any) -> None:
        """Check a CALL payload; raise :class:`ValidationError` on the first problem."""
        check = self._requests.get(action) or self._check(action, "request")
        try:
            check(payload)
        except JsonSchemaValueException as exc:
            raise ValidationError.from_problem(_problems(exc, self._codes)[0]) from None
        except Exception as exc:  # any input must end as a ValidationError
            raise ValidationError.from_problem(_crash(exc)) from None

    def validate_response(self, action: str, payload: Any) -> None:
        """Check a CALLRESULT payload for the CALL ``action``."""
        check = self._responses.get(action) or self._check(action, "response")
        try:
            check(payload)
        except JsonSchemaValueException as exc:
            raise ValidationError.from_problem(_problems(exc, self._codes)[0]) from None
        except Exception as exc:
            raise ValidationError.from_problem(_crash(exc)) from None

    def validate(self, action: str, payload: Any, direction: Direction) -> None:
        if direction == "request":
            self.validate_request(action, payload)
        else:
            self.validate_response(action, payload)

    # -- lenient ----------------------------------------------------------

    def check_request(self, action: str, payload: Any) -> list[Problem]:
        """Every problem of a CALL payload; ``[]`` when it is valid."""
        return self.check(action, payload, "request")

    def check_response(self, action: str, payload: Any) -> list[Problem]:
        """Every problem of a CALLRESULT payload; ``[]`` when it is valid."""
        return self.check(action, payload, "response")

    def check(self, action: str, payload: Any, direction: Direction) -> list[Problem]:
        check = _compiled(self._version, action, direction, True)
        if check is None:
            return [self._unknown(action, direction)]
        try:
            check(payload)
        except JsonSchemaValuesException as exc:
            return [p for error in exc.errors for p in _problems(error, self._codes)]
        except JsonSchemaValueException as exc:
            return _problems(exc, self._codes)
        except Exception as exc:
            return [_crash(exc)]
        return []

    # -- internals --------------------------------------------------------

    def _check(self, action: str, direction: Direction) -> _Check:
        check = _compiled(self._version, action, direction, False)
        if check is None:
            raise ValidationError.from_problem(self._unknown(action, direction))
        (self._requests if direction == "request" else self._responses)[action] = check
        return check

    def _unknown(self, action: str, direction: Direction) -> Problem:
        # OCPP-J 1.6 §4.2.3: NotImplemented, "Requested Action is not known by receiver".
        shown = action[:100] if isinstance(action, str) else _text(action)
        return Problem(
            ErrorCode.NotImplemented,
            "",
            "action",
            f"action {shown!r} is not known in OCPP {self._version}",
            {"field": "", "rule": "action", "action": shown, "direction": direction},
        )
