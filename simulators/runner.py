"""Run scenarios against a gateway: drive simulated chargers, check
expectations against the gateway's ops API, report pass/fail per
expectation (text and JUnit XML)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.etree import ElementTree as ET

import httpx

from .cbp_charger import CbpCharger
from .charger import SimulatorError
from .config import Vehicle
from .driver import SimulatedCharger
from .scenario import (
    Api,
    Command,
    Connect,
    Disconnect,
    Expect,
    Flap,
    Latency,
    Note,
    Plug,
    PowerCycle,
    PresentCard,
    PresentPassword,
    PresentVin,
    PutToken,
    RegisterPile,
    RemoteStart,
    RemoteStop,
    Restore,
    Scenario,
    ScenarioError,
    SetLocalList,
    SetPassword,
    Step,
    StopCharge,
    StopCharger,
    Unplug,
    Wait,
    Whitelist,
    substitute,
)

POLL = 0.1
ENERGY = "Energy.Active.Import.Register"


class StepFailed(Exception):
    pass


@dataclass(slots=True)
class CheckResult:
    title: str
    passed: bool
    kind: str  # "expect" | "step"
    seconds: float = 0.0
    detail: str = ""
    skipped: bool = False


@dataclass(slots=True)
class ScenarioResult:
    name: str
    source: str
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and any(c.kind == "expect" for c in self.checks)

    @property
    def expectations(self) -> list[CheckResult]:
        return [c for c in self.checks if c.kind == "expect"]


# --- matching --------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    a, e = _num(actual), _num(expected)
    if a is not None and e is not None and not isinstance(expected, str):
        return a == e
    return bool(actual == expected)


def match(actual: Any, matcher: Any) -> bool:
    """Does ``actual`` satisfy ``matcher`` (a value, or a mapping of operators)?"""
    if not (isinstance(matcher, dict) and matcher):
        return _equal(actual, matcher)
    for op, ref in matcher.items():
        if op == "tolerance":
            continue
        if op == "exists":
            if (actual is not None) != bool(ref):
                return False
            continue
        if op in ("==", "!="):
            if _equal(actual, ref) != (op == "=="):
                return False
            continue
        if op == "in":
            if not any(_equal(actual, r) for r in ref):
                return False
            continue
        if op == "contains":
            if actual is None or str(ref) not in (
                actual if isinstance(actual, list) else str(actual)
            ):
                return False
            continue
        if op == "matches":
            if actual is None or re.search(str(ref), str(actual)) is None:
                return False
            continue
        a, r = _num(actual), _num(ref)
        if a is None or r is None:
            return False
        if op == "approx":
            tol = float(matcher.get("tolerance", 0.02))
            if abs(a - r) > tol * max(abs(r), 1e-9):
                return False
        elif not _COMPARE[op](a, r):
            return False
    return True


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, r: a >= r,
    "<=": lambda a, r: a <= r,
    ">": lambda a, r: a > r,
    "<": lambda a, r: a < r,
}
_MISSING = object()


def resolve(data: Any, path: str) -> list[Any]:
    """Values at a dotted path; ``*`` walks every element of a list."""
    current: list[Any] = [data]
    for part in path.split("."):
        nxt: list[Any] = []
        for item in current:
            if part == "*" and isinstance(item, list):
                nxt.extend(item)
            elif isinstance(item, dict):
                nxt.append(item.get(part, _MISSING))
            elif isinstance(item, list) and re.fullmatch(r"-?\d+", part):
                i = int(part)
                nxt.append(item[i] if -len(item) <= i < len(item) else _MISSING)
            else:
                nxt.append(_MISSING)
        current = nxt
    return [None if v is _MISSING else v for v in current]


def check_fields(data: Any, checks: dict[str, Any]) -> tuple[bool, str]:
    """All checks hold on ``data``; the detail lists what was observed."""
    ok = True
    seen: list[str] = []
    for path, matcher in checks.items():
        values = resolve(data, path)
        hit = any(match(v, matcher) for v in values)
        ok = ok and hit
        shown = values[0] if len(values) == 1 else values
        seen.append(f"{path} = {shown!r}")
    return ok, "; ".join(seen)


# --- linearity ---------------------------------------------------------------------------------
def curve_stats(points: list[tuple[float, float]]) -> dict[str, Any]:
    """Least-squares line through (seconds, Wh) points, and how far the
    samples stray from it (as a share of the energy range)."""
    n = len(points)
    out: dict[str, Any] = {"samples": n}
    if n == 0:
        return out
    values = [v for _, v in points]
    out.update(
        first_wh=values[0],
        last_wh=values[-1],
        energy_wh=values[-1] - values[0],
        monotonic=all(b >= a for a, b in itertools.pairwise(values)),
    )
    if n < 3:
        out.update(linear=False, max_deviation=None, slope_kw=None)
        return out
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    mx, my = sum(xs) / n, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        out.update(linear=False, max_deviation=None, slope_kw=None)
        return out
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / sxx
    icpt = my - slope * mx
    span = max(values) - min(values)
    dev = max(abs(y - (icpt + slope * x)) for x, y in zip(xs, values, strict=True))
    out.update(
        slope_kw=round(slope * 3.6, 3),  # Wh/s -> kW
        max_deviation=round(dev / span, 5) if span > 0 else math.inf,
    )
    return out


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the runner ----------------------------------------------------------------------------------
Progress = Callable[[str], None]


class ScenarioRunner:
    def __init__(
        self,
        scenario: Scenario,
        *,
        gateway_url: str,
        api_url: str,
        api_token: str | None = None,
        progress: Progress | None = None,
        cbp_url: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.gateway_url = gateway_url
        self.cbp_url = cbp_url
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.progress = progress or (lambda _: None)
        self.drivers: dict[str, SimulatedCharger] = {}
        for name, cfg in scenario.chargers.items():
            if cfg.protocol == "cbp1" and not cbp_url:
                raise ScenarioError(
                    f"{scenario.source}: charger {name} speaks cbp1: give the gateway's "
                    "CBP/1 listener (--cbp-url tcp://HOST:9010)"
                )
            url = cbp_url if cfg.protocol == "cbp1" else gateway_url
            assert url is not None  # checked above for cbp1
            self.drivers[name] = SimulatedCharger(cfg, url)
        first = next(iter(scenario.chargers.values()), None)
        #: the protocol of expectations without a charger (metric, api, command)
        self.main_protocol = first.protocol if first is not None else "ocpp1.6"
        self.commands: dict[str, dict[str, Any]] = {}
        self._event_base: dict[str, int] = {}
        self._tx_base: dict[str, int] = {}
        self._api: httpx.AsyncClient | None = None

    # --- API helpers ------------------------------------------------------------------------
    @property
    def api(self) -> httpx.AsyncClient:
        assert self._api is not None
        return self._api

    def pile(self, charger: str) -> str:
        return self.scenario.chargers[charger].pile_id

    async def _get_json(self, path: str, **params: Any) -> Any:
        r = await self.api.get(path, params=params or None)
        if r.status_code != 200:
            raise StepFailed(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()

    async def _baselines(self) -> None:
        for name, cfg in self.scenario.chargers.items():
            events = await self.api.get(f"/api/piles/{cfg.pile_id}/events", params={"limit": 1})
            self._event_base[name] = (
                max((e["id"] for e in events.json()), default=0) if events.status_code == 200 else 0
            )
            txs = await self.api.get(
                "/api/transactions", params={"pile": cfg.pile_id, "limit": 1000}
            )
            self._tx_base[name] = (
                max((t["id"] for t in txs.json()), default=0) if txs.status_code == 200 else 0
            )

    async def _events(self, charger: str) -> list[dict[str, Any]]:
        rows = await self._get_json(f"/api/piles/{self.pile(charger)}/events", limit=1000)
        base = self._event_base.get(charger, 0)
        return sorted((e for e in rows if e["id"] > base), key=lambda e: e["id"])

    async def _transactions(self, charger: str) -> list[dict[str, Any]]:
        rows = await self._get_json("/api/transactions", pile=self.pile(charger), limit=1000)
        base = self._tx_base.get(charger, 0)
        out = sorted((t for t in rows if t["id"] > base), key=lambda t: t["id"])
        for t in out:
            t["energy_kwh"] = None if t.get("energy_wh") is None else t["energy_wh"] / 1000.0
            if t.get("stop_at") and t.get("start_at"):
                t["duration_s"] = round(_parse_time(t["stop_at"]) - _parse_time(t["start_at"]), 3)
            else:
                t["duration_s"] = None
        return out

    async def _command(
        self, charger: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"payload": payload}
        if timeout is not None:
            body["timeout"] = timeout
        r = await self.api.post(f"/api/piles/{self.pile(charger)}/commands/{action}", json=body)
        try:
            data = r.json()
        except ValueError:
            data = {"text": r.text}
        return {"http_status": r.status_code, **(data if isinstance(data, dict) else {})}

    # --- run ------------------------------------------------------------------------------
    async def run(self) -> ScenarioResult:
        sc = self.scenario
        result = ScenarioResult(sc.name, sc.source)
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        total = len(sc.steps)
        async with httpx.AsyncClient(
            base_url=self.api_url, headers=headers, timeout=30, trust_env=False
        ) as api:
            self._api = api
            try:
                try:
                    await self._baselines()
                    for tag, tok in sc.tokens.items():
                        await self._put_token(
                            tag, tok.type, tok.status, tok.expiry, tok.parent_id_tag
                        )
                except (httpx.HTTPError, StepFailed) as exc:
                    result.checks.append(
                        CheckResult(
                            "prepare: baselines and tokens via the ops API",
                            False,
                            "step",
                            detail=str(exc) or type(exc).__name__,
                        )
                    )
                    self._skip_rest(result, sc.steps)
                    return result
                for step in sc.steps:
                    self.progress(f"{sc.name}  step {step.index + 1}/{total}  {step.describe()}")
                    t0 = time.monotonic()
                    if isinstance(step.spec, Expect):
                        result.checks.append(await self._expect(step.spec))
                        continue
                    try:
                        await self._step(step)
                    except (
                        SimulatorError,
                        StepFailed,
                        TimeoutError,
                        httpx.HTTPError,
                        RuntimeError,
                    ) as exc:
                        detail = str(exc) or type(exc).__name__
                        trace = self._trace(step)
                        result.checks.append(
                            CheckResult(
                                f"step {step.index + 1}: {step.describe()}",
                                False,
                                "step",
                                time.monotonic() - t0,
                                detail + (f"\n{trace}" if trace else ""),
                            )
                        )
                        self._skip_rest(result, sc.steps[step.index + 1 :])
                        break
            finally:
                await self._shutdown()
                self._api = None
        result.seconds = time.monotonic() - started
        return result

    def _skip_rest(self, result: ScenarioResult, steps: list[Step]) -> None:
        for s in steps:
            if isinstance(s.spec, Expect):
                result.checks.append(
                    CheckResult(
                        s.describe(),
                        False,
                        "expect",
                        detail="not run (a step failed)",
                        skipped=True,
                    )
                )

    def _trace(self, step: Step) -> str:
        name = getattr(step.spec, "charger", None)
        if name is None or name not in self.drivers:
            return ""
        trace = self.drivers[name].model.trace
        if not trace:
            return ""
        lines = list(trace)[-12:]
        t_end = lines[-1][0]
        return "charger trace:\n" + "\n".join(
            f"    {t - t_end:+7.2f} s  {text}" for t, text in lines
        )

    async def _shutdown(self) -> None:
        await asyncio.gather(*(d.close() for d in self.drivers.values()), return_exceptions=True)

    # --- steps ----------------------------------------------------------------------------
    async def _put_token(
        self,
        tag: str,
        type_: str,
        status: str,
        expiry: str | None = None,
        parent: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"type": type_, "status": status}
        if expiry:
            body["expiry"] = expiry
        if parent:
            body["parent_id_tag"] = parent
        r = await self.api.put(f"/api/tokens/{tag}", json=body)
        if r.status_code not in (200, 201):
            raise StepFailed(f"PUT /api/tokens/{tag}: HTTP {r.status_code} {r.text[:300]}")

    async def _step(self, step: Step) -> None:
        s = step.spec
        if isinstance(s, Wait):
            await asyncio.sleep(s.seconds)
            return
        if isinstance(s, Note):
            return
        if isinstance(s, PutToken):
            await self._put_token(s.id_tag, s.type, s.status)
            return
        if isinstance(s, Whitelist):
            await self._whitelist(s)
            return
        if isinstance(s, Api):
            res = await self._api_call(s.method, s.path, s.body)
            self._record(s.name, res)
            if s.expect_http is not None and res["http_status"] != s.expect_http:
                raise StepFailed(
                    f"{s.method} {s.path}: HTTP {res['http_status']} (expected {s.expect_http}): "
                    f"{_error_text(res)}"
                )
            return
        d = self.drivers[s.charger]
        m = d.model
        if isinstance(s, Connect):
            d.start()
            if s.until == "booted":
                await d.wait_until(lambda: m.online, s.timeout, "boot accepted")
            elif s.until == "connected":
                await d.wait_until(lambda: d.connected, s.timeout, "connection")
            elif s.until == "refused":
                await d.wait_until(
                    lambda: d.handshake_refusals > 0 or d.admitted,
                    s.timeout,
                    "handshake answer" if not d.cbp else "login answer",
                )
                if d.admitted:
                    raise StepFailed(
                        f"the {'login' if d.cbp else 'handshake'} was accepted, "
                        "a refusal was expected"
                    )
        elif isinstance(s, Disconnect):
            await d.disconnect(s.mode)
        elif isinstance(s, Restore):
            links = m.links
            d.restore()
            if s.until == "booted":
                await d.wait_until(lambda: m.links > links and m.online, s.timeout, "back online")
            elif s.until == "connected":
                await d.wait_until(lambda: m.links > links, s.timeout, "reconnection")
        elif isinstance(s, Flap):
            await d.flap(s.times, s.down, s.up, s.mode)
        elif isinstance(s, Latency):
            d.set_latency(s.seconds)
        elif isinstance(s, PowerCycle):
            links = m.links
            d.power_cycle(s.off_seconds)
            if s.until == "booted":
                await d.wait_until(
                    lambda: m.links > links and m.online,
                    s.timeout,
                    "back online after the power cycle",
                )
        elif isinstance(s, StopCharger):
            await d.close()
        elif isinstance(s, Plug):
            d.plug(
                s.gun,
                Vehicle(soc=s.soc, capacity_kwh=s.capacity_kwh, vin=s.vin, full_after=s.full_after),
            )
        elif isinstance(s, Unplug):
            d.unplug(s.gun)
        elif isinstance(s, PresentCard):
            d.present(s.gun, s.id_tag, "card", _wh(s.energy_limit_kwh))
        elif isinstance(s, PresentPassword):
            d.present(s.gun, s.password, "password", _wh(s.energy_limit_kwh))
        elif isinstance(s, PresentVin):
            vehicle = m.gun(s.gun).vehicle
            vin = s.vin or (vehicle.vin if vehicle is not None else None)
            if vin is None:
                raise StepFailed("no VIN: give vin here or plug a vehicle with a vin")
            d.present(s.gun, vin, "vin", _wh(s.energy_limit_kwh))
        elif isinstance(s, StopCharge):
            d.press_stop(s.gun)
        elif isinstance(s, SetPassword):
            password = s.password or d.config.password
            if not password:
                raise StepFailed("no password given and the charger has none configured")
            r = await self.api.put(
                f"/api/piles/{d.config.pile_id}/password", json={"password": password}
            )
            if r.status_code != 204:
                raise StepFailed(f"set password: HTTP {r.status_code} {r.text[:300]}")
        elif isinstance(s, RegisterPile):
            r = await self.api.post(
                "/api/piles",
                json={
                    "pile_id": d.config.pile_id,
                    "vendor": s.vendor,
                    "model": s.model,
                },
            )
            if r.status_code not in (201, 409):
                raise StepFailed(f"register pile: HTTP {r.status_code} {r.text[:300]}")
        elif isinstance(s, RemoteStart):
            payload: dict[str, Any] = {"idTag": s.id_tag}
            if s.gun is not None:
                payload["connectorId"] = s.gun
            res = await self._command(s.charger, "RemoteStartTransaction", payload)
            self._record(s.name, res)
            _check_command(res, "RemoteStartTransaction", s.expect_status)
        elif isinstance(s, RemoteStop):
            tx_id = await self._transaction_id(d, s.charger, s.gun)
            res = await self._command(s.charger, "RemoteStopTransaction", {"transactionId": tx_id})
            self._record(s.name, res)
            _check_command(res, "RemoteStopTransaction", s.expect_status)
        elif isinstance(s, Command):
            res = await self._command(s.charger, s.action, s.payload, s.timeout)
            self._record(s.name, res)
            if s.expect_http is not None and res["http_status"] != s.expect_http:
                raise StepFailed(
                    f"{s.action}: HTTP {res['http_status']} (expected {s.expect_http}): "
                    f"{_error_text(res)}"
                )
        elif isinstance(s, SetLocalList):
            update = "Full" if s.update == "full" else "Differential"
            if s.via == "charger":
                status = m.set_local_list(s.version, update, dict(s.tokens))
                if status != "Accepted":
                    raise StepFailed(f"the charger answered {status}")
            else:
                items: list[dict[str, Any]] = [
                    {"idTag": t, "idTagInfo": {"status": st}} if st else {"idTag": t}
                    for t, st in s.tokens.items()
                ]
                res = await self._command(
                    s.charger,
                    "SendLocalList",
                    {
                        "listVersion": s.version,
                        "updateType": update,
                        "localAuthorizationList": items,
                    },
                )
                _check_command(res, "SendLocalList", "Accepted")
        else:  # pragma: no cover - every step type is handled above
            raise StepFailed(f"step type {step.type} is not implemented")

    async def _transaction_id(self, d: SimulatedCharger, charger: str, gun: int) -> int:
        """The gateway's id of the charge running on ``gun``: the OCPP charger
        got it in its StartTransaction answer; a CBP/1 charger knows only its
        SERIAL, which the ops API lists as the transaction's ``external_id``."""
        m = d.model
        if not isinstance(m, CbpCharger):
            await d.wait_until(
                lambda: m.server_transaction_id(gun) is not None,
                10,
                f"a transaction id for gun {gun}",
            )
            tx_id = m.server_transaction_id(gun)
            assert tx_id is not None
            return tx_id
        await d.wait_until(
            lambda: m.transaction_serial(gun) is not None, 10, f"a charge on gun {gun}"
        )
        serial = m.transaction_serial(gun)
        deadline = time.monotonic() + 10
        while True:
            for t in await self._get_json("/api/transactions", pile=self.pile(charger), limit=1000):
                if t.get("external_id") == serial:
                    return int(t["id"])
            if time.monotonic() >= deadline:
                raise StepFailed(f"the gateway lists no transaction with SERIAL {serial}")
            await asyncio.sleep(POLL)

    @property
    def _pile_ids(self) -> dict[str, str]:
        return {name: cfg.pile_id for name, cfg in self.scenario.chargers.items()}

    async def _api_call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        path = substitute(path, self._pile_ids)
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = substitute(body, self._pile_ids)
        r = await self.api.request(method, path, **kwargs)
        try:
            data: Any = r.json()
        except ValueError:
            data = {"text": r.text}
        if not isinstance(data, dict):
            data = {"items": data}
        return {"http_status": r.status_code, **data}

    async def _whitelist(self, s: Whitelist) -> None:
        created = await self._api_call("POST", "/api/whitelists", {"name": s.name})
        if created["http_status"] not in (201, 409):
            raise StepFailed(
                f"create whitelist {s.name}: HTTP {created['http_status']}: {_error_text(created)}"
            )
        res = await self._api_call("PUT", f"/api/whitelists/{s.name}/tokens", {"add": s.tokens})
        if res["http_status"] != 200:
            raise StepFailed(
                f"whitelist {s.name} tokens: HTTP {res['http_status']}: {_error_text(res)}"
            )
        piles = [self.pile(c) for c in s.chargers]
        res = await self._api_call(
            "PUT", f"/api/whitelists/{s.name}/assignments", [{"pile_ids": piles}]
        )
        if res["http_status"] != 200:
            raise StepFailed(
                f"whitelist {s.name} assignments: HTTP {res['http_status']}: {_error_text(res)}"
                " (piles are known to the gateway once connected or registered)"
            )

    def _record(self, name: str | None, res: dict[str, Any]) -> None:
        if name:
            self.commands[name] = res

    # --- expectations ----------------------------------------------------------------------------
    def _protocol_of(self, e: Expect) -> str:
        if e.kind in ("metric", "api", "command") or e.target not in self.scenario.chargers:
            return self.main_protocol
        return self.scenario.chargers[e.target].protocol

    async def _expect(self, e: Expect) -> CheckResult:
        e = e.for_protocol(self._protocol_of(e))
        title = e.title or _short(e)
        t0 = time.monotonic()
        detail = ""
        if e.hold:
            deadline = t0 + e.hold
            while True:
                ok, detail = await self._evaluate(e)
                if not ok:
                    return CheckResult(
                        title,
                        False,
                        "expect",
                        time.monotonic() - t0,
                        f"stopped holding after {time.monotonic() - t0:.1f} s: {detail}",
                    )
                if time.monotonic() >= deadline:
                    return CheckResult(title, True, "expect", time.monotonic() - t0, detail)
                await asyncio.sleep(POLL)
        deadline = t0 + e.within
        while True:
            ok, detail = await self._evaluate(e)
            elapsed = time.monotonic() - t0
            if ok:
                return CheckResult(title, True, "expect", elapsed, detail)
            if time.monotonic() >= deadline:
                return CheckResult(title, False, "expect", elapsed, f"observed: {detail}")
            await asyncio.sleep(POLL)

    async def _evaluate(self, e: Expect) -> tuple[bool, str]:
        try:
            return await self._evaluate_once(e)
        except (httpx.HTTPError, StepFailed, ValueError, KeyError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    async def _evaluate_once(self, e: Expect) -> tuple[bool, str]:
        opts = e.options
        if e.kind == "pile":
            return check_fields(await self._get_json(f"/api/piles/{self.pile(e.target)}"), e.checks)
        if e.kind == "event":
            events = await self._events(e.target)
            if opts.get("latest"):
                events = events[-1:]
            hits = [ev for ev in events if check_fields(ev, e.checks)[0]]
            shown = (
                ", ".join(
                    f"{'online' if ev['online'] else 'offline'}:{ev['reason']}" for ev in events
                )
                or "none"
            )
            if "count" in opts:
                return match(len(hits), opts["count"]), (
                    f"{len(hits)} matching of {len(events)} events ({shown})"
                )
            return bool(hits), f"events since start: {shown}"
        if e.kind in ("transaction", "meter_values"):
            txs = await self._transactions(e.target)
            where = opts.get("where") or {}
            txs = [t for t in txs if check_fields(t, where)[0]]
            if e.kind == "transaction" and "count" in opts:
                ok_count = match(len(txs), opts["count"])
                if not e.checks or not ok_count:
                    return ok_count, f"{len(txs)} transaction(s)"
            index = int(opts.get("index", -1))
            if not txs or not -len(txs) <= index < len(txs):
                return False, f"no transaction #{index} (found {len(txs)})"
            tx = txs[index]
            if e.kind == "transaction":
                ok, detail = check_fields(tx, e.checks)
                return ok, f"transaction {tx['id']}: {detail}"
            return await self._meter_values(e, tx)
        if e.kind == "handshake":
            d = self.drivers[e.target]
            observed: dict[str, Any] = {
                "refused": d.handshake_refusals > 0,
                "status": d.handshake_status,
                "message": d.handshake_body.strip(),
                "reason": d.model.login_reason,  # CBP/1 Login rejection reason
            }
            ok = True
            if "refused" in opts:
                ok = ok and match(observed["refused"], opts["refused"])
            if "status" in opts:
                ok = ok and match(observed["status"], opts["status"])
            if "message_contains" in opts:
                ok = ok and str(opts["message_contains"]) in observed["message"]
            if "rule" in opts:
                info = await self._get_json(f"/api/pileid/{d.config.pile_id}")
                rules = [p.get("rule") for p in info.get("errors", [])]
                observed["rules"] = rules
                ok = ok and str(opts["rule"]) in rules
            fields_ok, detail = check_fields(observed, e.checks)
            return ok and fields_ok, ", ".join(f"{k}={v!r}" for k, v in observed.items()) + (
                f"; {detail}" if e.checks else ""
            )
        if e.kind == "charger":
            snap = self.drivers[e.target].model.snapshot()
            if "gun" in opts:
                snap = {**snap, **snap["guns"][int(opts["gun"]) - 1]}
            return check_fields(snap, e.checks)
        if e.kind == "metric":
            r = await self.api.get("/metrics")
            total = _metric_value(r.text, e.target, opts.get("labels") or {})
            return match(total, opts.get("value", {">=": 1})), f"{e.target} = {total}"
        if e.kind == "api":
            path = substitute(e.target, self._pile_ids)
            r = await self.api.get(path)
            if r.status_code != 200:
                return False, f"GET {path}: HTTP {r.status_code} {r.text[:200]}"
            return check_fields(r.json(), e.checks)
        if e.kind == "command":
            res = self.commands.get(e.target)
            if res is None:
                return False, f"no command step named {e.target!r} ran"
            return check_fields(res, e.checks)
        raise StepFailed(f"unknown expectation {e.kind}")  # pragma: no cover

    async def _meter_values(self, e: Expect, tx: dict[str, Any]) -> tuple[bool, str]:
        opts = e.options
        fmt = opts.get("format", "csv")
        measurand = opts.get("measurand", ENERGY)
        path = f"/api/transactions/{tx['id']}/meter-values"
        r = await self.api.get(path, params={"format": fmt})
        if r.status_code != 200:
            return False, f"GET {path}: HTTP {r.status_code}"
        points: list[tuple[float, float]] = []
        if fmt == "csv":
            if not r.headers.get("content-type", "").startswith("text/csv"):
                return False, f"CSV export has content type {r.headers.get('content-type')}"
            for row in csv.DictReader(io.StringIO(r.text)):
                value = _num(row.get("value"))
                if row.get("measurand") == measurand and value is not None:
                    points.append((_parse_time(row["at"]), value))
        else:
            for sample in r.json().get("samples", []):
                value = _num(sample.get("value"))
                if sample.get("measurand") == measurand and value is not None:
                    points.append((_parse_time(sample["at"]), value))
        points.sort()
        stats = curve_stats(points)
        scale = self.scenario.chargers[e.target].time_scale
        slope = stats.get("slope_kw")
        # The same slope in charger time: what the meter says the power was.
        stats["power_kw"] = None if slope is None else round(slope / scale, 3)
        ok = True
        problems: list[str] = []
        if "samples" in opts and not match(stats["samples"], opts["samples"]):
            ok = False
            problems.append("sample count")
        if opts.get("monotonic") and not stats.get("monotonic"):
            ok = False
            problems.append("not monotonic")
        linear = opts.get("linear")
        if linear:
            tol = float(linear.get("tolerance", 0.02)) if isinstance(linear, dict) else 0.02
            dev = stats.get("max_deviation")
            if dev is None or dev > tol:
                ok = False
                problems.append(f"not linear within {tol:g}")
        fields_ok, _ = check_fields(stats, e.checks)
        shown = ", ".join(f"{k}={v}" for k, v in stats.items())
        return ok and fields_ok, (
            f"transaction {tx['id']} {fmt}: {shown}"
            + (f" ({'; '.join(problems)})" if problems else "")
        )


def _wh(kwh: float | None) -> float | None:
    return None if kwh is None else kwh * 1000.0


def _error_text(res: dict[str, Any]) -> str:
    err = res.get("error")
    if isinstance(err, dict):
        return f"{err.get('code')}: {err.get('message')}"
    return str(res)[:300]


def _check_command(res: dict[str, Any], action: str, expect_status: str | None) -> None:
    if res["http_status"] != 200:
        raise StepFailed(f"{action}: HTTP {res['http_status']}: {_error_text(res)}")
    status = (res.get("response") or {}).get("status")
    if expect_status is not None and status != expect_status:
        raise StepFailed(f"{action}: the charger answered {status!r}, expected {expect_status!r}")


def _short(e: Expect) -> str:
    from .scenario import describe_expect

    return describe_expect(e)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _metric_value(text: str, name: str, labels: dict[str, Any]) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                total += float(m.group(3))
    return total


# --- reports ---------------------------------------------------------------------
def format_report(results: list[ScenarioResult]) -> str:
    lines: list[str] = []
    for r in results:
        exp = r.expectations
        passed = sum(1 for c in exp if c.passed)
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(
            f"{verdict}  {r.name}  ({r.source})  {passed}/{len(exp)} expectations, "
            f"{r.seconds:.1f} s"
        )
        for c in r.checks:
            mark = "ok  " if c.passed else "SKIP" if c.skipped else "FAIL"
            lines.append(f"  {mark}  {c.title}  [{c.seconds:.1f} s]")
            if not c.passed and c.detail:
                for dl in c.detail.splitlines():
                    lines.append(f"          {dl}")
    total = len(results)
    ok = sum(1 for r in results if r.passed)
    lines.append(f"{ok}/{total} scenario(s) passed")
    return "\n".join(lines)


def junit_xml(results: list[ScenarioResult]) -> str:
    suites = ET.Element("testsuites", name="pilegate-sim")
    for r in results:
        failures = sum(1 for c in r.checks if not c.passed and not c.skipped)
        skipped = sum(1 for c in r.checks if c.skipped)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=r.name,
            tests=str(len(r.checks)),
            failures=str(failures),
            skipped=str(skipped),
            errors="0",
            time=f"{r.seconds:.3f}",
        )
        for c in r.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=r.source or r.name,
                name=c.title,
                time=f"{c.seconds:.3f}",
            )
            if c.skipped:
                ET.SubElement(case, "skipped", message=c.detail)
            elif not c.passed:
                fail = ET.SubElement(
                    case, "failure", message=c.detail.splitlines()[0] if c.detail else "failed"
                )
                fail.text = c.detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")
