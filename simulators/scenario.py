"""Scenario files: YAML that declares chargers, steps and expectations.

Parsing and validation only (pydantic at the edge); running is
``simulators.runner``. The file format is documented for QA engineers in
docs/simulator.md; every error names the step (``steps[3].plug.gun``) so a
typo is found without reading code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import PROTOCOLS, ChargerConfig, Protocol

TokenType = Literal["card", "vin", "password"]
TokenStatus = Literal["accepted", "blocked", "expired"]


class ScenarioError(Exception):
    """A scenario file that cannot be run; the message names the place."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenSpec(_Model):
    type: TokenType = "card"
    status: TokenStatus = "accepted"
    expiry: str | None = None
    parent_id_tag: str | None = None


class GatewaySpec(_Model):
    """What the gateway must be configured with for this scenario. The test
    suite starts its gateway with these settings; ``pilegate sim run``
    prints them, it cannot change a running gateway."""

    settings: dict[str, Any] = Field(default_factory=dict)


# --- steps -------------------------------------------------------------------------------
class ChargerStep(_Model):
    charger: str


class Connect(ChargerStep):
    until: Literal["booted", "connected", "refused", "none"] = "booted"
    timeout: Annotated[float, Field(gt=0)] = 10.0


class Disconnect(ChargerStep):
    mode: Literal["clean", "abrupt", "half_open"] = "clean"


class Restore(ChargerStep):
    until: Literal["booted", "connected", "none"] = "booted"
    timeout: Annotated[float, Field(gt=0)] = 10.0


class Flap(ChargerStep):
    times: Annotated[int, Field(ge=1, le=1000)] = 3
    down: Annotated[float, Field(ge=0)] = 1.0
    up: Annotated[float, Field(ge=0)] = 1.0
    mode: Literal["clean", "abrupt", "half_open"] = "abrupt"


class Latency(ChargerStep):
    seconds: Annotated[float, Field(ge=0, le=600)]


class PowerCycle(ChargerStep):
    off_seconds: Annotated[float | None, Field(ge=0)] = None
    until: Literal["booted", "none"] = "booted"
    timeout: Annotated[float, Field(gt=0)] = 30.0


class StopCharger(ChargerStep):
    pass


class Plug(ChargerStep):
    gun: Annotated[int, Field(ge=1, le=2)] = 1
    soc: Annotated[float, Field(ge=0, le=100)] = 20.0
    capacity_kwh: Annotated[float, Field(gt=0)] = 60.0
    vin: Annotated[str | None, Field(min_length=17, max_length=17)] = None
    full_after: Annotated[float | None, Field(gt=0)] = None


class Unplug(ChargerStep):
    gun: Annotated[int, Field(ge=1, le=2)] = 1


class _Present(ChargerStep):
    gun: Annotated[int, Field(ge=1, le=2)] = 1
    energy_limit_kwh: Annotated[float | None, Field(gt=0)] = None


class PresentCard(_Present):
    id_tag: Annotated[str, Field(min_length=1, max_length=20)]


class PresentVin(_Present):
    vin: Annotated[str | None, Field(min_length=17, max_length=17)] = None


class PresentPassword(_Present):
    password: Annotated[str, Field(min_length=1, max_length=20)]


class StopCharge(ChargerStep):
    gun: Annotated[int, Field(ge=1, le=2)] = 1


class PutToken(_Model):
    id_tag: Annotated[str, Field(min_length=1, max_length=20)]
    type: TokenType = "card"
    status: TokenStatus = "accepted"


class SetPassword(ChargerStep):
    password: str | None = None  # default: the charger's configured password


class RegisterPile(ChargerStep):
    vendor: str | None = None
    model: str | None = None


class RemoteStart(ChargerStep):
    id_tag: Annotated[str, Field(min_length=1, max_length=20)]
    gun: Annotated[int | None, Field(ge=1, le=2)] = None
    expect_status: str | None = "Accepted"
    name: str | None = None


class RemoteStop(ChargerStep):
    gun: Annotated[int, Field(ge=1, le=2)] = 1
    expect_status: str | None = "Accepted"
    name: str | None = None


class Command(ChargerStep):
    action: str
    payload: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    expect_http: int | None = 200
    timeout: Annotated[float | None, Field(gt=0)] = None


class SetLocalList(ChargerStep):
    version: Annotated[int, Field(ge=1)]
    update: Literal["full", "differential"] = "full"
    tokens: dict[str, str | None] = Field(
        default_factory=dict,
        description="idTag: Accepted | Blocked | Expired | Invalid "
        "(null removes it in a differential update)",
    )
    via: Literal["charger", "gateway"] = "charger"

    @field_validator("tokens")
    @classmethod
    def _statuses(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        allowed = {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}
        for tag, status in value.items():
            if not 1 <= len(tag) <= 20:
                raise ValueError(f"idTag {tag!r} must have 1 to 20 characters")
            if status is not None and status not in allowed:
                raise ValueError(f"{tag}: status must be one of {sorted(allowed)} or null")
        return value


class Whitelist(_Model):
    """A named whitelist on the gateway (ops API), holding ``tokens`` and
    assigned to ``chargers``; the gateway then syncs their local lists."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    tokens: list[str] = Field(default_factory=list)
    chargers: list[str] = Field(default_factory=list)


class Api(_Model):
    """Any ops API request; ``{pile:NAME}`` in the path or body is replaced by
    that charger's pile ID."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: Annotated[str, Field(pattern=r"^/")]
    body: Any = None
    expect_http: int | None = 200
    name: str | None = None


class Wait(_Model):
    seconds: Annotated[float, Field(ge=0, le=3600)]


class Note(_Model):
    text: str


ExpectKind = Literal[
    "pile",
    "event",
    "transaction",
    "meter_values",
    "handshake",
    "charger",
    "metric",
    "command",
    "api",
]
EXPECT_KINDS: tuple[str, ...] = get_args(ExpectKind)


class Expect(_Model):
    """One expectation: a subject (``kind`` and ``target``), field checks,
    and how long to wait for it."""

    kind: ExpectKind
    target: str
    checks: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    within: Annotated[float, Field(ge=0, le=3600)] = 10.0
    hold: Annotated[float | None, Field(gt=0, le=3600)] = None
    title: str | None = None
    #: Per-protocol differences (``ocpp1.6: {...}``, ``cbp1: {...}``): checks
    #: and options that replace or add to the common ones, and ``within``.
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def for_protocol(self, protocol: str) -> Expect:
        """This expectation as it applies to a charger speaking ``protocol``."""
        v = self.variants.get(protocol)
        if not v:
            return self
        return self.model_copy(
            update={
                "checks": {**self.checks, **v.get("checks", {})},
                "options": {**self.options, **v.get("options", {})},
                "within": v.get("within", self.within),
                "hold": v.get("hold", self.hold),
                "variants": {},
            }
        )


_OPTIONS: dict[str, set[str]] = {
    "pile": set(),
    "event": {"count", "latest"},
    "transaction": {"index", "where", "count"},
    "meter_values": {
        "index",
        "where",
        "format",
        "linear",
        "measurand",
        "samples",
        "monotonic",
    },
    "handshake": {"status", "rule", "message_contains", "refused"},
    "charger": {"gun"},
    "metric": {"labels", "value"},
    "command": set(),
    "api": set(),
}

STEP_TYPES: dict[str, type[_Model]] = {
    "connect": Connect,
    "disconnect": Disconnect,
    "restore": Restore,
    "flap": Flap,
    "latency": Latency,
    "power_cycle": PowerCycle,
    "stop_charger": StopCharger,
    "plug": Plug,
    "unplug": Unplug,
    "present_card": PresentCard,
    "present_vin": PresentVin,
    "present_password": PresentPassword,
    "stop_charge": StopCharge,
    "put_token": PutToken,
    "set_password": SetPassword,
    "register_pile": RegisterPile,
    "remote_start": RemoteStart,
    "remote_stop": RemoteStop,
    "command": Command,
    "set_local_list": SetLocalList,
    "whitelist": Whitelist,
    "api": Api,
    "wait": Wait,
    "note": Note,
    "expect": Expect,
}
# The shorthand ``- STEP: VALUE`` fills this field.
_SHORTHAND = {"wait": "seconds", "note": "text", "latency": "seconds"}


class Step(_Model):
    type: str
    spec: Any
    index: int

    def describe(self) -> str:
        s = self.spec
        if isinstance(s, Expect):
            return s.title or describe_expect(s)
        if isinstance(s, Wait):
            return f"wait {s.seconds:g} s"
        if isinstance(s, Note):
            return s.text
        parts = [self.type]
        data = s.model_dump(exclude_defaults=True)
        charger = data.pop("charger", None)
        if charger:
            parts.append(str(charger))
        parts.extend(f"{k}={v}" for k, v in data.items())
        return " ".join(parts)


class Scenario(_Model):
    name: str
    description: str = ""
    time_scale: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    chargers: dict[str, ChargerConfig]
    steps: list[Step]
    source: str = ""

    @property
    def expectations(self) -> list[Step]:
        return [s for s in self.steps if s.type == "expect"]


def describe_expect(e: Expect) -> str:
    checks = ", ".join(f"{k} {_describe_matcher(v)}" for k, v in e.checks.items())
    opts = ", ".join(
        _describe_option(k, v) for k, v in e.options.items() if k not in ("where", "index")
    )
    where = e.options.get("where")
    sel = ""
    if where:
        sel = " where " + ", ".join(f"{k}={v}" for k, v in where.items())
    if "index" in e.options:
        sel += f" #{e.options['index']}"
    body = ", ".join(x for x in (checks, opts) if x)
    timing = f" for {e.hold:g} s" if e.hold else f" within {e.within:g} s" if e.within else ""
    return f"{e.kind} {e.target}{sel}: {body or 'exists'}{timing}"


def _describe_option(key: str, value: Any) -> str:
    if key in ("linear", "monotonic", "refused", "latest") and value is True:
        return key
    if key == "linear" and isinstance(value, dict):
        return f"linear within {value.get('tolerance', 0.02):g}"
    if key == "labels" and isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    if key == "format":
        return f"({value})"
    return f"{key} {_describe_matcher(value)}"


def _describe_matcher(value: Any) -> str:
    if isinstance(value, dict) and value and all(k in _OPERATORS for k in value):
        parts = []
        for k, v in value.items():
            if k == "tolerance":
                continue
            if k == "exists":
                parts.append("exists" if v else "absent")
            elif k == "approx":
                parts.append(f"≈ {v!r} ±{value.get('tolerance', 0.02):g}")
            else:
                parts.append(f"{k} {v!r}")
        return " and ".join(parts)
    return f"= {value!r}"


_OPERATORS = {
    ">=",
    "<=",
    ">",
    "<",
    "==",
    "!=",
    "approx",
    "tolerance",
    "contains",
    "in",
    "matches",
    "exists",
}


# --- loading -----------------------------------------------------------------------------
def _format_error(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}{'.' + loc if loc else ''}: {err['msg']}")
    return "\n".join(lines)


def _parse_expect(raw: Any, where: str) -> Expect:
    if not isinstance(raw, dict):
        raise ScenarioError(
            f"{where}: an expectation is a mapping, e.g. {{pile: ac1, online: false, within: 30}}"
        )
    kinds = [k for k in raw if k in EXPECT_KINDS]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where}: name exactly one subject of {', '.join(EXPECT_KINDS)} "
            f"(found {kinds or 'none'})"
        )
    kind = kinds[0]
    data: dict[str, Any] = {"kind": kind, "target": str(raw[kind])}
    checks: dict[str, Any] = {}
    options: dict[str, Any] = {}
    variants: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key == kind:
            continue
        if key in PROTOCOLS:
            if not isinstance(value, dict) or not value:
                raise ScenarioError(
                    f"{where}.{key}: what differs for {key} chargers, as a mapping of checks "
                    "and options, e.g. {reason: heartbeat_timeout}"
                )
            if set(value) & set(PROTOCOLS) or kind in value:
                raise ScenarioError(
                    f"{where}.{key}: a protocol variant cannot nest another or name the subject"
                )
            sub = _parse_expect({kind: raw[kind], **value}, f"{where}.{key}")
            variant: dict[str, Any] = {"checks": sub.checks, "options": sub.options}
            for timing in ("within", "hold"):
                if timing in value:
                    variant[timing] = getattr(sub, timing)
            variants[str(key)] = variant
        elif key in ("within", "hold", "title"):
            data[key] = value
        elif key in _OPTIONS[kind]:
            options[key] = value
        else:
            checks[str(key)] = value
    for name, value in (checks | options).items():
        if isinstance(value, dict) and value and name not in ("where", "labels", "linear"):
            unknown = set(value) - _OPERATORS
            if unknown and set(value) & _OPERATORS:
                raise ScenarioError(
                    f"{where}.{name}: unknown operator(s) {sorted(unknown)}; "
                    f"use {sorted(_OPERATORS)}"
                )
    data["checks"] = checks
    data["options"] = options
    data["variants"] = variants
    try:
        return Expect.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(where, exc)) from None


def _parse_step(raw: Any, index: int, chargers: dict[str, ChargerConfig]) -> Step:
    where = f"steps[{index}]"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ScenarioError(
            f"{where}: a step is a mapping with one key, the step type "
            f"({', '.join(STEP_TYPES)}), e.g. '- plug: {{charger: ac1, gun: 1}}'"
        )
    ((kind, value),) = raw.items()
    model = STEP_TYPES.get(kind)
    if model is None:
        raise ScenarioError(f"{where}: unknown step {kind!r}; steps: {', '.join(STEP_TYPES)}")
    where = f"{where}.{kind}"
    if kind == "expect":
        spec: Any = _parse_expect(value, where)
    else:
        if not isinstance(value, dict):
            field = _SHORTHAND.get(kind, "charger")
            value = {field: value}
        try:
            spec = model.model_validate(value)
        except ValidationError as exc:
            raise ScenarioError(_format_error(where, exc)) from None
    targets: list[str] = []
    if getattr(spec, "charger", None):
        targets.append(spec.charger)
    if isinstance(spec, Whitelist):
        targets.extend(spec.chargers)
    if isinstance(spec, Expect) and spec.kind not in ("metric", "command", "api"):
        targets.append(spec.target)
    text = (
        spec.target
        if isinstance(spec, Expect) and spec.kind == "api"
        else (f"{spec.path} {spec.body!r}" if isinstance(spec, Api) else "")
    )
    targets.extend(PILE_PLACEHOLDER.findall(text))
    for target in targets:
        if target not in chargers:
            raise ScenarioError(
                f"{where}: no charger named {target!r} (chargers: {', '.join(chargers) or 'none'})"
            )
    return Step(type=kind, spec=spec, index=index)


PILE_PLACEHOLDER = re.compile(r"\{pile:([^}]+)\}")


def substitute(value: Any, pile_ids: dict[str, str]) -> Any:
    """``{pile:NAME}`` replaced by the pile ID of charger NAME, in strings
    and inside lists and mappings."""
    if isinstance(value, str):
        return PILE_PLACEHOLDER.sub(lambda m: pile_ids[m.group(1)], value)
    if isinstance(value, list):
        return [substitute(v, pile_ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, pile_ids) for k, v in value.items()}
    return value


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with name, chargers and steps")
    unknown = set(data) - {
        "name",
        "description",
        "time_scale",
        "gateway",
        "tokens",
        "chargers",
        "steps",
    }
    if unknown:
        raise ScenarioError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
    for key in ("name", "chargers", "steps"):
        if key not in data:
            raise ScenarioError(f"{source}: missing {key!r}")
    scale = data.get("time_scale", 1.0)
    chargers: dict[str, ChargerConfig] = {}
    raw_chargers = data["chargers"]
    if not isinstance(raw_chargers, dict) or not raw_chargers:
        raise ScenarioError(f"{source}: chargers is a mapping NAME: {{pile_id: ..., ...}}")
    for name, spec in raw_chargers.items():
        if not isinstance(spec, dict):
            raise ScenarioError(f"{source}: chargers.{name} must be a mapping")
        spec = {"time_scale": scale, **spec}
        try:
            chargers[str(name)] = ChargerConfig.model_validate(spec)
        except ValidationError as exc:
            raise ScenarioError(_format_error(f"{source}: chargers.{name}", exc)) from None
    tokens: dict[str, TokenSpec] = {}
    for tag, spec in (data.get("tokens") or {}).items():
        if isinstance(spec, str):
            spec = {"type": spec}
        try:
            tokens[str(tag)] = TokenSpec.model_validate(spec)
        except ValidationError as exc:
            raise ScenarioError(_format_error(f"{source}: tokens.{tag}", exc)) from None
    steps_raw = data["steps"]
    if not isinstance(steps_raw, list) or not steps_raw:
        raise ScenarioError(f"{source}: steps is a non-empty list")
    steps = [_parse_step(raw, i, chargers) for i, raw in enumerate(steps_raw)]
    try:
        return Scenario(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            time_scale=scale,
            gateway=GatewaySpec.model_validate(data.get("gateway") or {}),
            tokens=tokens,
            chargers=chargers,
            steps=steps,
            source=source,
        )
    except ValidationError as exc:
        raise ScenarioError(_format_error(source, exc)) from None


def with_protocol(scenario: Scenario, protocol: Protocol | None) -> Scenario:
    """The scenario with every charger speaking ``protocol`` (``pilegate sim
    run --protocol``): the shipped scenarios run with OCPP and with
    cloud-board chargers alike. ``None`` keeps each charger's own."""
    if protocol is None:
        return scenario
    chargers: dict[str, ChargerConfig] = {}
    for name, cfg in scenario.chargers.items():
        try:
            chargers[name] = ChargerConfig.model_validate(
                {
                    **cfg.model_dump(exclude_unset=True),
                    "time_scale": cfg.time_scale,
                    "protocol": protocol,
                }
            )
        except ValidationError as exc:
            raise ScenarioError(
                _format_error(f"{scenario.source}: chargers.{name} as {protocol}", exc)
            ) from None
    return scenario.model_copy(update={"chargers": chargers})


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{p}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(p))


def shipped_scenarios() -> list[Path]:
    """The scenarios that come with pilegate (``simulators/scenarios``)."""
    return sorted((Path(__file__).parent / "scenarios").glob("*.yaml"))
