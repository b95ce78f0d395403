"""OCPP-J RPC framing: CALL / CALLRESULT / CALLERROR, text in, typed messages out.

Sans-I/O: :func:`decode` takes one WebSocket text (or binary) message and
returns a frozen dataclass or raises :class:`FrameError`; the ``encode_*``
functions return the text to send. Nothing here touches sockets, clocks,
loggers or the event loop, and nothing keeps state between calls.

Spec references are to the OCPP-J 1.6 specification ("OCPP-J 1.6 §4.x"), its
errata sheet v1.0 ("OCPP-J 1.6 errata §5.x") and OCPP 2.0.1 Part 4, the
JSON/WebSocket specification of 2.0.1 ("OCPP 2.0.1 Part 4 §4.x").

Which error code a framing fault gets
======================================

The two versions describe the same faults with different codes, so every
code is chosen through a per-version table (:data:`_CODES`):

=====================================  ========================  =======================
fault                                  1.6                       2.0.1
=====================================  ========================  =======================
not JSON, not UTF-8                    FormationViolation        RpcFrameworkError
not an array, empty array              FormationViolation        RpcFrameworkError
message type id not an integer         FormationViolation        RpcFrameworkError
message type id not 2, 3 or 4          ProtocolError             MessageTypeNotSupported
fewer elements than the type needs     ProtocolError             RpcFrameworkError
more elements than the type allows     FormationViolation        RpcFrameworkError
unique id not a string / > 36 chars    FormationViolation        RpcFrameworkError
action / errorCode / errorDescription  FormationViolation        RpcFrameworkError
  not a string, action empty
payload / errorDetails not an object   FormationViolation        FormatViolation
=====================================  ========================  =======================

Why, for 1.6 (OCPP-J 1.6 §4.2.3 error code table):

* *FormationViolation* is "Payload for Action is syntactically incorrect or
  not conform the PDU structure for Action"; a frame that is not valid UTF-8
  JSON (§4.1.2), not an array, or whose elements have the wrong JSON types
  does not conform to the structures of §4.2.1-§4.2.3.
* *ProtocolError* is "Payload for Action is incomplete". A frame that stops
  before the elements its message type requires (e.g. a CALL without its
  payload) is incomplete, so it gets ProtocolError; a frame with extra
  elements is not incomplete, it is malformed, so it gets FormationViolation.
* An unknown message type id gets ProtocolError. Note that §4.1.3 says a
  server receiving a type number not in the list "SHALL ignore the message
  payload"; the gateway may choose to drop such a frame instead of answering
  it. :attr:`FrameError.message_type_id` carries the number so it can.
* 1.6 spells the code ``FormationViolation``; the errata sheet (§5.2) keeps
  the wrong name on purpose, so the 1.6 table uses it.

Why, for 2.0.1 (OCPP 2.0.1 Part 4 §4.3 error code table): 2.0.1 adds
*RpcFrameworkError* "Content of the call is not a valid RPC Request, for
example: MessageId could not be read", which is exactly a broken envelope;
*FormatViolation* ("Payload for Action is syntactically incorrect") is kept
for a payload element that is not a JSON object; *MessageTypeNotSupported*
is "A message with a Message Type Number received that is not supported by
this implementation".

Leniency: a CALLERROR without its errorDetails element (4 elements instead of
5) is accepted with ``{}`` details. OCPP-J 1.6 §4.2.3 requires the element,
but chargers in the field omit it, a CALLERROR is never answered, and
rejecting it would only lose the charger's error code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import orjson

__all__ = [
    "MAX_UNIQUE_ID_LENGTH",
    "Call",
    "CallError",
    "CallResult",
    "ErrorCode",
    "FrameError",
    "Message",
    "MessageTypeId",
    "OcppError",
    "OcppVersion",
    "decode",
    "encode",
    "encode_call",
    "encode_error",
    "encode_result",
    "error_codes",
]

OcppVersion = Literal["1.6", "2.0.1"]
"""The OCPP-J versions this codec speaks (the WebSocket subprotocols ``ocpp1.6``
and ``ocpp2.0.1``)."""

MAX_UNIQUE_ID_LENGTH: Final = 36
"""OCPP-J 1.6 §4.1.4 / OCPP 2.0.1 Part 4 §4.1.4: "Maximum of 36 characters,
to allow for GUIDs"."""


class MessageTypeId(enum.IntEnum):
    """The first element of every frame (OCPP-J 1.6 §4.1.3)."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


class ErrorCode(enum.StrEnum):
    """Every errorCode of OCPP-J 1.6 §4.2.3 and OCPP 2.0.1 Part 4 §4.3.

    Member names are the wire values. Which ones belong to which version is
    given by :func:`error_codes`; the validation layer picks the right
    spelling per version.
    """

    # Both versions.
    NotImplemented = "NotImplemented"
    """Requested Action is not known by the receiver."""
    NotSupported = "NotSupported"
    """Requested Action is recognized but not supported by the receiver."""
    InternalError = "InternalError"
    ProtocolError = "ProtocolError"
    SecurityError = "SecurityError"
    PropertyConstraintViolation = "PropertyConstraintViolation"
    TypeConstraintViolation = "TypeConstraintViolation"
    GenericError = "GenericError"
    # 1.6 only. Both names are typos the OCA decided not to fix in 1.6
    # (OCPP-J 1.6 errata §5.1 and §5.2).
    FormationViolation = "FormationViolation"
    OccurenceConstraintViolation = "OccurenceConstraintViolation"
    # 2.0.1 only (OCPP 2.0.1 Part 4 §4.3).
    FormatViolation = "FormatViolation"
    OccurrenceConstraintViolation = "OccurrenceConstraintViolation"
    MessageTypeNotSupported = "MessageTypeNotSupported"
    RpcFrameworkError = "RpcFrameworkError"


_COMMON_CODES: Final = frozenset(
    {
        ErrorCode.NotImplemented,
        ErrorCode.NotSupported,
        ErrorCode.InternalError,
        ErrorCode.ProtocolError,
        ErrorCode.SecurityError,
        ErrorCode.PropertyConstraintViolation,
        ErrorCode.TypeConstraintViolation,
        ErrorCode.GenericError,
    }
)
_VERSION_CODES: Final[dict[str, frozenset[ErrorCode]]] = {
    # OCPP-J 1.6 §4.2.3
    "1.6": _COMMON_CODES | {ErrorCode.FormationViolation, ErrorCode.OccurenceConstraintViolation},
    # OCPP 2.0.1 Part 4 §4.3
    "2.0.1": _COMMON_CODES
    | {
        ErrorCode.FormatViolation,
        ErrorCode.OccurrenceConstraintViolation,
        ErrorCode.MessageTypeNotSupported,
        ErrorCode.RpcFrameworkError,
    },
}


def error_codes(version: OcppVersion) -> frozenset[ErrorCode]:
    """The error codes a CALLERROR may carry in ``version``."""
    return _VERSION_CODES[version]


@dataclass(frozen=True, slots=True)
class _FrameCodes:
    """Which code each framing fault gets in one version (see module docstring)."""

    envelope: ErrorCode  # not JSON / not an array / wrong element type
    incomplete: ErrorCode  # fewer elements than the message type needs
    unknown_type: ErrorCode  # message type id not 2, 3 or 4
    payload: ErrorCode  # payload / errorDetails element not a JSON object


_CODES: Final[dict[str, _FrameCodes]] = {
    "1.6": _FrameCodes(
        envelope=ErrorCode.FormationViolation,
        incomplete=ErrorCode.ProtocolError,
        unknown_type=ErrorCode.ProtocolError,
        payload=ErrorCode.FormationViolation,
    ),
    "2.0.1": _FrameCodes(
        envelope=ErrorCode.RpcFrameworkError,
        incomplete=ErrorCode.RpcFrameworkError,
        unknown_type=ErrorCode.MessageTypeNotSupported,
        payload=ErrorCode.FormatViolation,
    ),
}


# --------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Call:
    """``[2, "<UniqueId>", "<Action>", {<Payload>}]`` (OCPP-J 1.6 §4.2.1)."""

    message_type_id: ClassVar[MessageTypeId] = MessageTypeId.CALL
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """``[3, "<UniqueId>", {<Payload>}]`` (OCPP-J 1.6 §4.2.2).

    The action is not on the wire: the caller matches ``unique_id`` to the
    CALL it sent to know which response schema applies.
    """

    message_type_id: ClassVar[MessageTypeId] = MessageTypeId.CALLRESULT
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """``[4, "<UniqueId>", "<errorCode>", "<errorDescription>", {<errorDetails>}]``
    (OCPP-J 1.6 §4.2.3).

    ``error_code`` is kept as the received string: a peer may send a code
    outside :class:`ErrorCode` and that must still reach the gateway.
    "If there are no error details you MUST fill in an empty object {}"
    (§4.2.3), hence the default.
    """

    message_type_id: ClassVar[MessageTypeId] = MessageTypeId.CALLERROR
    unique_id: str
    error_code: str
    error_description: str = ""
    error_details: dict[str, Any] = field(default_factory=dict)


Message = Call | CallResult | CallError


# --------------------------------------------------------------------------
# Errors


class OcppError(Exception):
    """An error that is answered with a CALLERROR: a code, a description and
    JSON-serialisable details (OCPP-J 1.6 §4.2.3)."""

    error_code: ErrorCode
    description: str
    details: dict[str, Any]

    def __init__(self, error_code: ErrorCode, description: str, details: dict[str, Any]) -> None:
        super().__init__(error_code, description, details)
        self.error_code = error_code
        self.description = description
        self.details = details

    def __str__(self) -> str:
        return f"{self.error_code}: {self.description}"

    def to_call_error(self, unique_id: str) -> CallError:
        """The CALLERROR answering the CALL ``unique_id`` with this error."""
        return CallError(unique_id, self.error_code.value, self.description, dict(self.details))


class FrameError(OcppError):
    """A frame that is not a valid OCPP-J message.

    ``unique_id`` is the frame's second element whenever that is a string
    (even an over-long one), so the gateway can answer with a CALLERROR to
    it; ``None`` when it could not be read. ``message_type_id`` is the first
    element when it is an integer, so the gateway can tell a broken CALL
    (answer it) from a broken CALLRESULT / CALLERROR (never answered) or an
    unknown type (OCPP-J 1.6 §4.1.3: ignore).
    """

    unique_id: str | None
    message_type_id: int | None

    def __init__(
        self,
        error_code: ErrorCode,
        description: str,
        details: dict[str, Any],
        unique_id: str | None = None,
        *,
        message_type_id: int | None = None,
    ) -> None:
        super().__init__(error_code, description, details)
        self.unique_id = unique_id
        self.message_type_id = message_type_id


# --------------------------------------------------------------------------
# Decoding

_loads: Final = orjson.loads
_dumps: Final = orjson.dumps
_CALL: Final = 2
_CALLRESULT: Final = 3
_CALLERROR: Final = 4
_ELEMENT_COUNTS: Final[dict[int, tuple[int, int]]] = {
    _CALL: (4, 4),
    _CALLRESULT: (3, 3),
    _CALLERROR: (4, 5),  # 4 tolerated, see module docstring
}
_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def decode(data: str | bytes, *, version: OcppVersion = "1.6") -> Message:
    """Parse one OCPP-J frame.

    Returns a :class:`Call`, :class:`CallResult` or :class:`CallError`;
    raises :class:`FrameError` (and nothing else, whatever ``data`` is) with
    the code ``version`` prescribes for the fault, as tabled in the module
    docstring. Payloads are not checked against their schemas here; that is
    :class:`protocol.ocpp.validation.Validator`'s job, once the action (or,
    for a CALLRESULT, the pending CALL) is known.
    """
    try:
        frame = _loads(data)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        # OCPP-J 1.6 §4.1.2: the whole message MUST be valid UTF-8 JSON.
        raise FrameError(
            _CODES[version].envelope,
            "frame is not valid UTF-8 JSON",
            {"cause": str(exc)[:200]},
        ) from None
    # Fast path: a well-formed frame costs a handful of type checks.
    if type(frame) is list:
        n = len(frame)
        if n == 4 and type(frame[0]) is int and frame[0] == _CALL:
            _, unique_id, action, payload = frame
            if (
                type(unique_id) is str
                and len(unique_id) <= MAX_UNIQUE_ID_LENGTH
                and type(action) is str
                and action
                and type(payload) is dict
            ):
                return Call(unique_id, action, payload)
        elif n == 3 and type(frame[0]) is int and frame[0] == _CALLRESULT:
            _, unique_id, payload = frame
            if (
                type(unique_id) is str
                and len(unique_id) <= MAX_UNIQUE_ID_LENGTH
                and type(payload) is dict
            ):
                return CallResult(unique_id, payload)
    return _decode_slow(frame, _CODES[version])


def _decode_slow(frame: Any, codes: _FrameCodes) -> Message:
    """Check a frame element by element; raise the first fault found."""
    if type(frame) is not list:
        raise FrameError(
            codes.envelope,
            f"frame must be a JSON array, got {_json_type(frame)}",
            {"expected": "array", "actual": _json_type(frame)},
        )
    n = len(frame)
    unique_id = frame[1] if n > 1 and type(frame[1]) is str else None
    if n == 0:
        raise FrameError(
            codes.envelope,
            "frame is an empty array, the message type id is missing",
            {"element": 0, "expected": "integer"},
        )
    type_id = frame[0]
    if type(type_id) is not int:  # excludes bool and 2.0
        raise FrameError(
            codes.envelope,
            f"element 0 (message type id) must be an integer, got {_json_type(type_id)}",
            {"element": 0, "expected": "integer", "actual": _json_type(type_id)},
            unique_id,
        )
    counts = _ELEMENT_COUNTS.get(type_id)
    if counts is None:
        # OCPP-J 1.6 §4.1.3; OCPP 2.0.1 Part 4 §4.3 MessageTypeNotSupported.
        raise FrameError(
            codes.unknown_type,
            f"message type id {type_id} is not 2 (CALL), 3 (CALLRESULT) or 4 (CALLERROR)",
            {"element": 0, "value": type_id},
            unique_id,
            message_type_id=type_id,
        )
    low, high = counts
    name = MessageTypeId(type_id).name
    if n < low:
        raise FrameError(
            codes.incomplete,
            f"{name} frame has {n} elements, needs {low}",
            {"elements": n, "expected": low},
            unique_id,
            message_type_id=type_id,
        )
    if n > high:
        raise FrameError(
            codes.envelope,
            f"{name} frame has {n} elements, at most {high} allowed",
            {"elements": n, "expected": high},
            unique_id,
            message_type_id=type_id,
        )

    def fault(code: ErrorCode, element: int, what: str, expected: str) -> FrameError:
        actual = _json_type(frame[element])
        return FrameError(
            code,
            f"element {element} ({what}) must be {expected}, got {actual}",
            {"element": element, "expected": expected, "actual": actual},
            unique_id,
            message_type_id=type_id,
        )

    # OCPP-J 1.6 §4.1.4: the unique id is a string of at most 36 characters.
    if unique_id is None:
        raise fault(codes.envelope, 1, "unique id", "string")
    if len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise FrameError(
            codes.envelope,
            f"element 1 (unique id) is {len(unique_id)} characters long, "
            f"at most {MAX_UNIQUE_ID_LENGTH} allowed",
            {"element": 1, "expected": "string", "maxLength": MAX_UNIQUE_ID_LENGTH},
            unique_id,
            message_type_id=type_id,
        )
    if type_id == _CALL:
        # OCPP-J 1.6 §4.2.1: [2, uniqueId, action, payload]
        action = frame[2]
        if type(action) is not str:
            raise fault(codes.envelope, 2, "action", "string")
        if not action:
            raise FrameError(
                codes.envelope,
                "element 2 (action) is an empty string",
                {"element": 2, "expected": "string", "minLength": 1},
                unique_id,
                message_type_id=type_id,
            )
        if type(frame[3]) is not dict:
            raise fault(codes.payload, 3, "payload", "object")
        return Call(unique_id, action, frame[3])
    if type_id == _CALLRESULT:
        # OCPP-J 1.6 §4.2.2: [3, uniqueId, payload]
        if type(frame[2]) is not dict:
            raise fault(codes.payload, 2, "payload", "object")
        return CallResult(unique_id, frame[2])
    # OCPP-J 1.6 §4.2.3: [4, uniqueId, errorCode, errorDescription, errorDetails]
    if type(frame[2]) is not str:
        raise fault(codes.envelope, 2, "errorCode", "string")
    if type(frame[3]) is not str:
        raise fault(codes.envelope, 3, "errorDescription", "string")
    details: dict[str, Any] = {}
    if n == 5:
        if type(frame[4]) is not dict:
            raise fault(codes.payload, 4, "errorDetails", "object")
        details = frame[4]
    return CallError(unique_id, frame[2], frame[3], details)


# --------------------------------------------------------------------------
# Encoding
#
# orjson writes compact JSON (no whitespace) and UTF-8 (OCPP-J 1.6 §4.1.2).
# Payloads must hold JSON types only (plus enums and dataclasses, which orjson
# serialises natively); anything else raises orjson.JSONEncodeError, a
# TypeError, because it is a programming error of the caller.


def encode_call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    """``[2, unique_id, action, payload]`` as compact JSON text."""
    return _dumps([_CALL, unique_id, action, payload]).decode()


def encode_result(unique_id: str, payload: dict[str, Any]) -> str:
    """``[3, unique_id, payload]`` as compact JSON text."""
    return _dumps([_CALLRESULT, unique_id, payload]).decode()


def encode_error(
    unique_id: str,
    error_code: ErrorCode | str,
    error_description: str = "",
    error_details: dict[str, Any] | None = None,
) -> str:
    """``[4, unique_id, error_code, error_description, error_details]`` as
    compact JSON text; ``error_details`` defaults to ``{}`` (OCPP-J 1.6 §4.2.3)."""
    return _dumps(
        [
            _CALLERROR,
            unique_id,
            error_code,
            error_description,
            {} if error_details is None else error_details,
        ]
    ).decode()


def encode(message: Message) -> str:
    """Any decoded (or built) message back to compact JSON text."""
    if isinstance(message, Call):
        return encode_call(message.unique_id, message.action, message.payload)
    if isinstance(message, CallResult):
        return encode_result(message.unique_id, message.payload)
    if isinstance(message, CallError):
        return encode_error(
            message.unique_id,
            message.error_code,
            message.error_description,
            message.error_details,
        )
    raise TypeError(f"not an OCPP-J message: {type(message).__name__}")
