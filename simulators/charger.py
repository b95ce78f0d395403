"""A simulated OCPP 1.6J charger, sans-I/O.

The model owns what firmware owns: registration, heartbeats, connector
status, authorization (online, local list, cache), transactions and their
meter, the offline queue of transaction messages, configuration keys,
firmware updates and resets. It never touches a socket, a clock or the event
loop: every method takes ``now`` (epoch seconds, wall clock) and the model
answers with *actions* (:class:`SendFrame`, :class:`CloseLink`,
:class:`StartDownload`) collected in :attr:`Charger.outbox`, plus a timer,
:meth:`Charger.next_deadline`, at which :meth:`Charger.tick` must be called.
``simulators.driver`` is the thin asyncio adapter that moves the frames.

OCPP-J rules the model keeps (OCPP-J 1.6 §4.1.1, OCPP 1.6 §4.x):

* one CALL in flight at a time; answers to the server's CALLs go out at once;
* nothing but BootNotification before the server accepted the boot; a
  Rejected or Pending reply is retried after its ``interval`` (or after an
  exponential backoff when it gives none);
* StartTransaction, transaction MeterValues, StopTransaction and
  FirmwareStatusNotification are *persistent*: they wait in the queue while
  the link is down (also across reboots) and are replayed in order; a
  message of a transaction started offline carries a local reference that is
  replaced by the server's transactionId once StartTransaction is answered;
* everything else (Heartbeat, StatusNotification, Authorize) is dropped
  with the link; connector statuses are sent again after reconnecting.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

from protocol.ocpp import (
    Call,
    CallError,
    CallResult,
    ErrorCode,
    FrameError,
    OcppError,
    Validator,
    decode,
    encode_call,
    encode_error,
    encode_result,
)

from . import meter
from .config import MEASURANDS, ChargerConfig, Vehicle
from .localauth import AuthCache, IdTagInfo, LocalAuthList
from .stats import Stats

AuthMethod = Literal["card", "vin", "password", "remote", "free"]
INF = math.inf
FIRMWARE_HEADER = b"PILEGATE-FW "

_validator = Validator("1.6")
_CENTRAL_ACTIONS = _validator.actions("central")
PERSISTENT_ACTIONS = frozenset(
    {"StartTransaction", "StopTransaction", "MeterValues", "FirmwareStatusNotification"}
)


class SimulatorError(Exception):
    """A user action the simulated charger cannot do (wrong gun, no screen...)."""


# --- actions -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendFrame:
    """One frame to write: OCPP-J text, or CBP/1 bytes (``simulators.cbp_charger``)."""

    text: str | bytes


@dataclass(frozen=True, slots=True)
class CloseLink:
    """End the WebSocket link: ``abort`` drops it without a closing
    handshake (the charger decided the link is dead)."""

    abort: bool
    reason: str


@dataclass(frozen=True, slots=True)
class StartDownload:
    url: str


Action = SendFrame | CloseLink | StartDownload


def iso(now: float) -> str:
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _bool(value: str) -> bool | None:
    low = value.strip().lower()
    return True if low == "true" else False if low == "false" else None


# --- state -----------------------------------------------------------------------------
@dataclass(slots=True)
class Outgoing:
    action: str
    payload: dict[str, Any]
    tx_ref: int | None = None
    gun: int | None = None
    attempts: int = 0
    keep: bool = False  # kept across link losses whatever its action (CBP/1 records)

    @property
    def persistent(self) -> bool:
        return self.keep or (
            self.action in PERSISTENT_ACTIONS
            and (self.action != "MeterValues" or self.tx_ref is not None)
        )


@dataclass(slots=True)
class Transaction:
    ref: int  # local reference, replaced by the server's id on the wire
    id_tag: str
    method: AuthMethod
    start_at: float
    meter_start: int
    offline: bool
    last_update: float
    next_sample_at: float
    limit_wh: float | None  # absolute register value at which to stop
    stop_after: float | None  # charger seconds of charging
    charged: float = 0.0  # charger seconds charged
    power_w: float = 0.0
    end_at: float = INF
    end_reason: str = ""


@dataclass(slots=True)
class PendingAuth:
    id_tag: str
    method: AuthMethod
    limit_wh: float | None


@dataclass(slots=True)
class Gun:
    number: int
    meter_wh: float
    status: str = "Available"
    reported: str | None = None  # last status sent to the server
    plugged: bool = False
    vehicle: Vehicle | None = None
    soc: float = 0.0
    operative: bool = True
    pending_inoperative: bool = False
    tx: Transaction | None = None
    authorizing: PendingAuth | None = None
    authorized: PendingAuth | None = None  # accepted, waiting for the plug
    authorized_until: float = INF


@dataclass(slots=True)
class FirmwareJob:
    url: str
    retrieve_at: float
    attempts_left: int
    retry_interval: float
    stage: str = "waiting"  # waiting | downloading | downloaded | installing | rebooting
    stage_at: float = 0.0
    body: bytes | None = None
    new_version: str | None = None


@dataclass(slots=True)
class ConfigKey:
    value: str
    readonly: bool
    kind: Literal["bool", "int", "csl", "measurands", "text"]


# --- the model -----------------------------------------------------------------------------
class Charger:
    """One simulated charger (see the module docstring)."""

    protocol: ClassVar[str] = "ocpp1.6"
    #: The stop reason of a charge that reached the energy limit set at the
    #: charger: OCPP 1.6 has no better one than Local.
    LIMIT_REASON: ClassVar[str] = "Local"

    def __init__(
        self,
        config: ChargerConfig,
        *,
        now: float,
        stats: Stats | None = None,
        trace: bool = True,
    ) -> None:
        self.config = config
        self.kind = config.effective_kind
        self.scale = config.time_scale
        self.firmware_version = config.firmware_version
        self.stats = stats if stats is not None else Stats()
        self.trace: deque[tuple[float, str]] | None = deque(maxlen=500) if trace else None
        self.outbox: list[Action] = []
        self.powered = True
        self.power_on_at = INF
        self.shutdown_at = INF
        self._shutdown_reason = ""
        self.link = False
        self.registration: str | None = None
        self.boot_attempts = 0
        self.next_boot_at = now
        self.heartbeat_interval = config.heartbeat_interval
        self.last_sent = now
        self.queue: deque[Outgoing] = deque()
        self.queue_hold_until = 0.0
        self.inflight: Outgoing | None = None
        self.inflight_uid = ""
        self.inflight_at = 0.0
        self.tx_ids: dict[int, int] = {}
        self.guns = [
            Gun(number=n, meter_wh=config.meter_start_wh) for n in range(1, config.guns + 1)
        ]
        self.connector0_status = "Available"
        self.local_list = LocalAuthList(
            max_length=config.local_auth_list_max, send_max=config.send_local_list_max
        )
        self.cache = AuthCache()
        self.firmware: FirmwareJob | None = None
        self.firmware_status = "Idle"
        self.firmware_report: str | None = None  # sent after the next accepted boot
        self.links = 0  # links opened in this process (for reports)
        # Refusals inside the protocol (CBP/1 login rejections); an OCPP
        # refusal is an HTTP answer the driver sees.
        self.login_refusals = 0
        self.login_reason: str | None = None
        self._uids = itertools.count(1)
        self._tx_refs = itertools.count(1)
        self.keys = self._initial_keys()
        self.autopilot_at = INF
        self.autopilot_phase = "off"
        if config.autopilot is not None:
            self.autopilot_phase = "waiting_boot"

    # --- configuration keys (OCPP 1.6 §9.1) ---------------------------------------
    def _initial_keys(self) -> dict[str, ConfigKey]:
        c = self.config

        def b(v: bool) -> str:
            return "true" if v else "false"

        rw = False
        ro = True
        return {
            "AllowOfflineTxForUnknownId": ConfigKey(
                b(c.allow_offline_tx_for_unknown_id), rw, "bool"
            ),
            "AuthorizationCacheEnabled": ConfigKey("true", rw, "bool"),
            "AuthorizeRemoteTxRequests": ConfigKey(b(c.authorize_remote_tx_requests), rw, "bool"),
            "ClockAlignedDataInterval": ConfigKey("0", rw, "int"),
            "ConnectionTimeOut": ConfigKey(str(c.connection_timeout), rw, "int"),
            "GetConfigurationMaxKeys": ConfigKey("50", ro, "int"),
            "HeartbeatInterval": ConfigKey(f"{c.heartbeat_interval:g}", rw, "int"),
            "LocalAuthorizeOffline": ConfigKey(b(c.local_authorize_offline), rw, "bool"),
            "LocalPreAuthorize": ConfigKey(b(c.local_pre_authorize), rw, "bool"),
            "MeterValuesAlignedData": ConfigKey("", rw, "measurands"),
            "MeterValuesSampledData": ConfigKey(",".join(c.measurands), rw, "measurands"),
            # Fractional seconds are allowed here (a simulator nicety).
            "MeterValueSampleInterval": ConfigKey(f"{c.meter_interval:g}", rw, "int"),
            "NumberOfConnectors": ConfigKey(str(c.guns), ro, "int"),
            "ResetRetries": ConfigKey("1", rw, "int"),
            "ConnectorPhaseRotation": ConfigKey("0.RST", rw, "csl"),
            "StopTransactionOnEVSideDisconnect": ConfigKey("true", rw, "bool"),
            "StopTransactionOnInvalidId": ConfigKey(
                b(c.stop_transaction_on_invalid_id), rw, "bool"
            ),
            "StopTxnAlignedData": ConfigKey("", rw, "measurands"),
            "StopTxnSampledData": ConfigKey("", rw, "measurands"),
            "SupportedFeatureProfiles": ConfigKey(
                "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger", ro, "csl"
            ),
            "TransactionMessageAttempts": ConfigKey("3", rw, "int"),
            "TransactionMessageRetryInterval": ConfigKey("10", rw, "int"),
            "UnlockConnectorOnEVSideDisconnect": ConfigKey("true", rw, "bool"),
            "WebSocketPingInterval": ConfigKey("0", rw, "int"),
            "LocalAuthListEnabled": ConfigKey("true", rw, "bool"),
            "LocalAuthListMaxLength": ConfigKey(str(c.local_auth_list_max), ro, "int"),
            "SendLocalListMaxLength": ConfigKey(str(c.send_local_list_max), ro, "int"),
        }

    def _flag(self, key: str) -> bool:
        return self.keys[key].value == "true"

    def _int(self, key: str) -> int:
        return int(self.keys[key].value)

    @property
    def meter_interval(self) -> float:
        """MeterValueSampleInterval in real seconds (0 = no periodic samples)."""
        return float(self.keys["MeterValueSampleInterval"].value) / self.scale

    @property
    def measurands(self) -> list[str]:
        return [m for m in self.keys["MeterValuesSampledData"].value.split(",") if m]

    # --- bookkeeping ---------------------------------------------------------------
    def note(self, now: float, text: str) -> None:
        if self.trace is not None:
            self.trace.append((now, text))

    def drain(self) -> list[Action]:
        out, self.outbox = self.outbox, []
        return out

    @property
    def online(self) -> bool:
        """Linked and accepted by the server: what firmware calls "online"."""
        return self.link and self.registration == "Accepted"

    @property
    def wants_link(self) -> bool:
        return self.powered

    def gun(self, number: int) -> Gun:
        if not 1 <= number <= len(self.guns):
            raise SimulatorError(
                f"{self.config.pile_id} has {len(self.guns)} gun(s), there is no gun {number}"
            )
        return self.guns[number - 1]

    def queued_transaction_messages(self) -> int:
        return sum(1 for m in self.queue if m.persistent)

    def server_transaction_id(self, gun: int) -> int | None:
        tx = self.gun(gun).tx
        return None if tx is None else self.tx_ids.get(tx.ref)

    def next_deadline(self) -> float:
        """When :meth:`tick` must run next (epoch seconds; inf = never)."""
        if not self.powered:
            return min(self.power_on_at, self.shutdown_at)
        t = min(self.power_on_at, self.shutdown_at, self.autopilot_at)
        if self.link:
            if self.registration != "Accepted":
                if self.inflight is None:
                    t = min(t, self.next_boot_at)
            elif self.inflight is None and not self.queue:
                t = min(t, self.last_sent + self.heartbeat_interval)
            if self.inflight is not None:
                t = min(t, self.inflight_at + self.config.call_timeout)
            elif self.queue and self.registration == "Accepted":
                t = min(t, self.queue_hold_until)
        for g in self.guns:
            if g.tx is not None:
                t = min(t, g.tx.next_sample_at, g.tx.end_at)
            if g.authorized is not None:
                t = min(t, g.authorized_until)
        job = self.firmware
        if job is not None:
            if job.stage == "waiting":
                t = min(t, max(job.retrieve_at, job.stage_at))
            elif job.stage in ("downloaded", "installing") or (
                job.stage == "downloading" and job.body is not None
            ):
                t = min(t, job.stage_at)
        return t

    # --- link events ---------------------------------------------------------------------
    def connected(self, now: float) -> None:
        if not self.powered:
            raise SimulatorError("a charger that is off cannot connect")
        self.link = True
        self.links += 1
        self.stats.connects += 1
        self.inflight = None
        self.last_sent = now
        self.note(now, f"link up (#{self.links})")
        if self.registration != "Accepted" or self.config.boot_on_reconnect:
            if self.registration == "Accepted":
                self.registration = None
                self.next_boot_at = now
            self.next_boot_at = max(self.next_boot_at, now) if self.boot_attempts else now
        else:
            self._queue_all_statuses(now, front=True)
        self._pump(now)

    def disconnected(self, now: float) -> None:
        """The link was lost (seen by the driver): frames not yet written are
        gone with it; what must survive is still in the queue."""
        self.outbox = [a for a in self.outbox if not isinstance(a, SendFrame)]
        self._link_down(now)

    def _link_down(self, now: float) -> None:
        if not self.link:
            return
        self.link = False
        self.stats.disconnects += 1
        self.inflight = None
        self.note(now, "link down")
        self.queue = deque(m for m in self.queue if m.persistent)
        for g in self.guns:
            g.reported = None
        # Authorizations whose request was lost decide locally now.
        for g in self.guns:
            if g.authorizing is not None:
                pending, g.authorizing = g.authorizing, None
                self._decide_offline(g, pending, now)

    # --- time ---------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if now >= self.shutdown_at:
            self._power_off(now, self._shutdown_reason)
        if now >= self.power_on_at:
            self._power_on(now)
        if not self.powered:
            return
        if self.inflight is not None and now >= self.inflight_at + self.config.call_timeout:
            self._call_timed_out(now)
        for g in self.guns:
            self._tick_gun(g, now)
            if g.authorized is not None and now >= g.authorized_until:
                self.note(now, f"gun {g.number}: no plug within ConnectionTimeOut")
                g.authorized = None
                self._set_status(g, "Available" if not g.plugged else "Preparing", now)
        self._tick_firmware(now)
        if now >= self.autopilot_at:
            self._tick_autopilot(now)
        if (
            self.online
            and self.inflight is None
            and not self.queue
            and now >= self.last_sent + self.heartbeat_interval
        ):
            self._enqueue(Outgoing("Heartbeat", {}), now)
        self._pump(now)

    # --- sending ---------------------------------------------------------------------------
    def _enqueue(self, msg: Outgoing, now: float, *, front: bool = False) -> None:
        if not msg.persistent and not self.online:
            return  # volatile messages are not kept while offline
        if msg.persistent and len(self.queue) >= self.config.offline_queue_limit:
            # Full: drop the oldest sampled meter value, never a start or stop.
            for i, old in enumerate(self.queue):
                if old.action == "MeterValues" and old is not self.inflight:
                    del self.queue[i]
                    self.stats.error("offline_queue_overflow")
                    break
        if front:
            self.queue.appendleft(msg)
        else:
            self.queue.append(msg)

    def _pump(self, now: float) -> None:
        """Send the head of the queue if nothing is in flight."""
        if not self.link or self.inflight is not None or not self.powered:
            return
        if self.registration != "Accepted":
            if now >= self.next_boot_at:
                self._send_call(self._boot_message(), now)
            return
        if now < self.queue_hold_until:
            return
        while self.queue:
            msg = self.queue[0]
            payload = msg.payload
            if msg.tx_ref is not None and msg.action != "StartTransaction":
                server_id = self.tx_ids.get(msg.tx_ref)
                if server_id is None:
                    # Its StartTransaction was given up: nothing to attach it to.
                    self.queue.popleft()
                    self.stats.error("dropped_without_transaction_id")
                    self.note(now, f"dropped {msg.action}: its transaction has no id")
                    continue
                payload = {**payload, "transactionId": server_id}
            self._send_call(msg, now, payload)
            return

    def _boot_message(self) -> Outgoing:
        c = self.config
        payload: dict[str, Any] = {
            "chargePointVendor": c.vendor,
            "chargePointModel": c.model,
            "firmwareVersion": self.firmware_version,
        }
        if c.serial:
            payload["chargePointSerialNumber"] = c.serial
        if c.iccid:
            payload["iccid"] = c.iccid
        return Outgoing("BootNotification", payload)

    def _send_call(self, msg: Outgoing, now: float, payload: dict[str, Any] | None = None) -> None:
        body = msg.payload if payload is None else payload
        if self.config.validate_outgoing:
            _validator.validate_request(msg.action, body)
        uid = str(next(self._uids))
        self.inflight = msg
        self.inflight_uid = uid
        self.inflight_at = now
        self.last_sent = now
        msg.attempts += 1
        self.stats.calls_sent += 1
        self.stats.frames_out += 1
        self.outbox.append(SendFrame(encode_call(uid, msg.action, body)))

    def _reply(self, text: str) -> None:
        self.stats.frames_out += 1
        self.outbox.append(SendFrame(text))

    def _call_timed_out(self, now: float) -> None:
        msg = self.inflight
        assert msg is not None
        self.stats.call_timeouts += 1
        self.stats.error(f"timeout:{msg.action}")
        self.note(
            now,
            f"{msg.action} not answered within {self.config.call_timeout:g} s: "
            "link considered dead",
        )
        if msg.action == "BootNotification":
            self._boot_retry_later(now, 0)
        self.close_link(now, abort=True, reason="call timeout")

    def close_link(self, now: float, *, abort: bool, reason: str) -> None:
        """The charger drops its link (and will reconnect)."""
        if not self.link:
            return
        self.outbox.append(CloseLink(abort=abort, reason=reason))
        self._link_down(now)

    # --- receiving ------------------------------------------------------------------------
    def receive(self, text: str | bytes, now: float) -> None:
        self.stats.frames_in += 1
        try:
            msg = decode(text)
        except FrameError as exc:
            self.stats.error(f"bad_frame:{exc.error_code.value}")
            self.note(now, f"bad frame from server: {exc.description}")
            if exc.message_type_id in (None, 2):
                self._reply(
                    encode_error(
                        exc.unique_id or "-1", exc.error_code, exc.description, exc.details
                    )
                )
            return
        if isinstance(msg, Call):
            self._on_call(msg, now)
        elif isinstance(msg, CallResult):
            self._on_answer(msg.unique_id, msg.payload, None, now)
        elif isinstance(msg, CallError):
            self._on_answer(msg.unique_id, None, msg, now)
        self._pump(now)

    def _on_answer(
        self, uid: str, payload: dict[str, Any] | None, error: CallError | None, now: float
    ) -> None:
        msg = self.inflight
        if msg is None or uid != self.inflight_uid:
            self.stats.error("unexpected_answer")
            self.note(now, f"answer to no outstanding call ({uid})")
            return
        self.inflight = None
        self.stats.observe(msg.action, now - self.inflight_at)
        in_queue = bool(self.queue) and self.queue[0] is msg
        if msg.action == "BootNotification":
            if in_queue:
                self.queue.popleft()
            self._on_boot_answer(payload, error, now)
            return
        if error is not None:
            self.stats.error(f"callerror:{error.error_code}")
            self.note(now, f"{msg.action} refused: {error.error_code} {error.error_description}")
            if (
                in_queue
                and msg.persistent
                and msg.attempts < self._int("TransactionMessageAttempts")
            ):
                self.queue_hold_until = (
                    now + self._int("TransactionMessageRetryInterval") * msg.attempts
                )
                return
            if in_queue:
                self.queue.popleft()
            if msg.action == "Authorize" and msg.gun is not None:
                g = self.gun(msg.gun)
                if g.authorizing is not None:
                    g.authorizing = None
                    self.note(now, f"gun {g.number}: authorization failed ({error.error_code})")
                    self._set_status(g, "Preparing" if g.plugged else "Available", now)
            return
        if in_queue:
            self.queue.popleft()
        assert payload is not None
        handler = self._result_handlers.get(msg.action)
        if handler is not None:
            handler(self, msg, payload, now)

    # --- boot -------------------------------------------------------------------------------
    def _on_boot_answer(
        self, payload: dict[str, Any] | None, error: CallError | None, now: float
    ) -> None:
        if error is not None or payload is None:
            self.stats.error("boot_error")
            self._boot_retry_later(now, 0)
            return
        status = str(payload.get("status"))
        interval = int(payload.get("interval") or 0)
        self.registration = status
        self.note(now, f"boot {status} (interval {interval})")
        if status == "Accepted":
            self.boot_attempts = 0
            forced = self.config.force_heartbeat_interval
            if forced is not None:
                self.heartbeat_interval = forced
            elif interval > 0:
                self.heartbeat_interval = float(interval)
                self.keys["HeartbeatInterval"].value = str(interval)
            self.last_sent = now
            self._queue_all_statuses(now, front=True)
            if self.firmware_report is not None:
                self._send_firmware_status(self.firmware_report, now)
                self.firmware_report = None
            if self.autopilot_phase == "waiting_boot" and self.config.autopilot is not None:
                self.autopilot_phase = "idle"
                self.autopilot_at = now + self.config.autopilot.first_delay
        else:
            self._boot_retry_later(now, interval)

    def _boot_retry_later(self, now: float, interval: int) -> None:
        self.boot_attempts += 1
        if interval > 0:
            delay = float(interval)
        else:
            c = self.config
            delay = min(c.boot_retry_max, c.boot_retry_base * 2 ** (self.boot_attempts - 1))
        self.next_boot_at = now + delay
        self.note(now, f"next boot attempt in {delay:g} s")

    # --- statuses ---------------------------------------------------------------------------
    def _status_message(self, connector: int, status: str, now: float) -> Outgoing:
        return Outgoing(
            "StatusNotification",
            {
                "connectorId": connector,
                "errorCode": "NoError",
                "status": status,
                "timestamp": iso(now),
            },
        )

    def _queue_all_statuses(self, now: float, *, front: bool) -> None:
        msgs = [self._status_message(0, self.connector0_status, now)]
        for g in self.guns:
            msgs.append(self._status_message(g.number, g.status, now))
            g.reported = g.status
        if front:
            for m in reversed(msgs):
                self._enqueue(m, now, front=True)
        else:
            for m in msgs:
                self._enqueue(m, now)

    def _set_status(self, g: Gun, status: str, now: float) -> None:
        if not g.operative and status == "Available":
            status = "Unavailable"
        g.status = status
        if g.reported != status and self.online:
            g.reported = status
            self._enqueue(self._status_message(g.number, status, now), now)

    # --- user actions -----------------------------------------------------------------------
    def plug(self, gun: int, now: float, vehicle: Vehicle | None = None) -> None:
        g = self.gun(gun)
        if g.plugged:
            raise SimulatorError(f"gun {gun} is already plugged in")
        g.plugged = True
        g.vehicle = vehicle or Vehicle()
        g.soc = g.vehicle.soc
        self.note(now, f"gun {gun}: plugged (SoC {g.soc:g} %)")
        free_tag = self.config.free_vend_id_tag
        if g.authorized is not None:
            pending, g.authorized = g.authorized, None
            g.authorized_until = INF
            self._start(g, pending, now)
        elif free_tag is not None and g.operative:
            self._start(g, PendingAuth(free_tag, "free", None), now)
        elif g.operative:
            self._set_status(g, "Preparing", now)
        self._pump(now)

    def unplug(self, gun: int, now: float) -> None:
        g = self.gun(gun)
        if not g.plugged:
            raise SimulatorError(f"gun {gun} is not plugged in")
        if g.tx is not None:
            self._stop(g, now, "EVDisconnected")
        g.plugged = False
        g.vehicle = None
        self.note(now, f"gun {gun}: unplugged")
        self._set_status(g, "Available", now)
        self._after_transaction(g, now)
        self._pump(now)

    def present(
        self,
        gun: int,
        id_tag: str,
        method: AuthMethod,
        now: float,
        *,
        energy_limit_wh: float | None = None,
    ) -> None:
        """A driver presents a card, the car its VIN, or a driver types a
        password on the screen. Presenting the tag of the running charge
        stops it (reason Local)."""
        if method == "password" and not self.config.touch_screen:
            raise SimulatorError(
                f"{self.config.pile_id} has no touch screen: nobody can type a password"
            )
        if method == "vin" and self.kind != "DC":
            raise SimulatorError(
                "VIN authorization needs the DC charging dialogue with the car's BMS; "
                f"{self.config.pile_id} is an AC charger"
            )
        if not 1 <= len(id_tag) <= 20:
            raise SimulatorError(f"idTag {id_tag!r} must have 1 to 20 characters")
        g = self.gun(gun)
        if g.tx is not None:
            if g.tx.id_tag == id_tag:
                self.note(now, f"gun {gun}: {id_tag} presented again: stop")
                self._stop(g, now, "Local", id_tag=id_tag)
                self._pump(now)
                return
            raise SimulatorError(f"gun {gun} is charging for another driver")
        if not g.operative:
            raise SimulatorError(f"gun {gun} is unavailable")
        limit = None if energy_limit_wh is None else g.meter_wh + energy_limit_wh
        pending = PendingAuth(id_tag, method, limit)
        self.note(now, f"gun {gun}: {method} {id_tag} presented")
        if self.online:
            if self._flag("LocalPreAuthorize") and self._local_verdict(id_tag, now) == "Accepted":
                self._authorized(g, pending, now)
            else:
                g.authorizing = pending
                self._enqueue(Outgoing("Authorize", {"idTag": id_tag}, gun=gun), now)
        else:
            self._decide_offline(g, pending, now)
        self._pump(now)

    def press_stop(self, gun: int, now: float) -> None:
        """The driver ends the charge on the screen / with the stop button."""
        g = self.gun(gun)
        if g.tx is None:
            raise SimulatorError(f"gun {gun} has no charge to stop")
        self._stop(g, now, "Local", id_tag=g.tx.id_tag)
        self._pump(now)

    def power_cycle(self, now: float, off_seconds: float | None = None) -> None:
        """Power loss: running charges end (reason PowerLoss, sent after reboot)."""
        for g in self.guns:
            if g.tx is not None:
                self._stop(g, now, "PowerLoss")
        self._power_off(now, "power loss", off_seconds, clean=False)

    def set_local_list(self, version: int, update_type: str, entries: dict[str, str | None]) -> str:
        """Install a local list directly (commissioning / a technician's tool)."""
        items: list[dict[str, Any]] = [
            {"idTag": tag, "idTagInfo": {"status": status}} if status else {"idTag": tag}
            for tag, status in entries.items()
        ]
        return self.local_list.apply(version, update_type, items)

    # --- authorization --------------------------------------------------------------------
    def _local_verdict(self, id_tag: str, now: float) -> str | None:
        verdict = None
        if self._flag("LocalAuthListEnabled"):
            verdict = self.local_list.lookup(id_tag, now)
        if verdict is None and self._flag("AuthorizationCacheEnabled"):
            verdict = self.cache.lookup(id_tag, now)
        return verdict

    def _decide_offline(self, g: Gun, pending: PendingAuth, now: float) -> None:
        verdict = (
            self._local_verdict(pending.id_tag, now)
            if self._flag("LocalAuthorizeOffline")
            else None
        )
        if verdict == "Accepted" or (verdict is None and self._flag("AllowOfflineTxForUnknownId")):
            self.note(
                now,
                f"gun {g.number}: {pending.id_tag} authorized offline "
                f"({'local list' if verdict else 'unknown id allowed'})",
            )
            self._authorized(g, pending, now, offline=True)
        else:
            self.note(now, f"gun {g.number}: {pending.id_tag} refused offline ({verdict})")
            self._set_status(g, "Preparing" if g.plugged else "Available", now)

    def _authorized(
        self, g: Gun, pending: PendingAuth, now: float, *, offline: bool = False
    ) -> None:
        if g.plugged:
            self._start(g, pending, now, offline=offline)
        else:
            g.authorized = pending
            g.authorized_until = now + self._int("ConnectionTimeOut") / self.scale
            self._set_status(g, "Preparing", now)

    def _on_authorize(self, msg: Outgoing, payload: dict[str, Any], now: float) -> None:
        info = IdTagInfo.from_wire(payload["idTagInfo"])
        tag = str(msg.payload["idTag"])
        self.cache.remember(tag, info)
        g = self.gun(msg.gun or 1)
        pending = g.authorizing
        if pending is None or pending.id_tag != tag:
            return
        g.authorizing = None
        if info.verdict(now) == "Accepted":
            self._authorized(g, pending, now)
        else:
            self.note(now, f"gun {g.number}: {tag} refused ({info.status})")
            self._set_status(g, "Preparing" if g.plugged else "Available", now)

    # --- transactions ----------------------------------------------------------------------
    def _start(self, g: Gun, pending: PendingAuth, now: float, *, offline: bool = False) -> None:
        c = self.config
        stop_after = c.stop_after
        if g.vehicle is not None and g.vehicle.full_after is not None:
            stop_after = min(stop_after or INF, g.vehicle.full_after)
        interval = self.meter_interval
        tx = Transaction(
            ref=next(self._tx_refs),
            id_tag=pending.id_tag,
            method=pending.method,
            start_at=now,
            meter_start=round(g.meter_wh),
            offline=offline or not self.online,
            last_update=now,
            next_sample_at=now + interval if interval > 0 else INF,
            limit_wh=pending.limit_wh,
            stop_after=stop_after,
        )
        g.tx = tx
        g.authorized = None
        g.authorized_until = INF
        self.note(
            now,
            f"gun {g.number}: transaction {tx.ref} started ({pending.method} "
            f"{pending.id_tag}{', offline' if tx.offline else ''})",
        )
        self._enqueue(
            Outgoing(
                "StartTransaction",
                {
                    "connectorId": g.number,
                    "idTag": pending.id_tag,
                    "meterStart": tx.meter_start,
                    "timestamp": iso(now),
                },
                tx_ref=tx.ref,
            ),
            now,
        )
        self._set_status(g, "Charging", now)
        self._estimate_end(g)

    def _on_start_transaction(self, msg: Outgoing, payload: dict[str, Any], now: float) -> None:
        assert msg.tx_ref is not None
        self.tx_ids[msg.tx_ref] = int(payload["transactionId"])
        info = IdTagInfo.from_wire(payload["idTagInfo"])
        self.cache.remember(str(msg.payload["idTag"]), info)
        self.note(
            now,
            f"transaction {msg.tx_ref} is {payload['transactionId']} on the server ({info.status})",
        )
        if info.status != "Accepted" and self._flag("StopTransactionOnInvalidId"):
            for g in self.guns:
                if g.tx is not None and g.tx.ref == msg.tx_ref:
                    self._stop(g, now, "DeAuthorized")
                    self._after_transaction(g, now)

    def _stop(self, g: Gun, now: float, reason: str, *, id_tag: str | None = None) -> None:
        tx = g.tx
        assert tx is not None
        if now > tx.last_update:
            self._advance(g, now)
        payload: dict[str, Any] = {
            "meterStop": round(g.meter_wh),
            "timestamp": iso(now),
            "reason": reason,
        }
        if id_tag is not None:
            payload["idTag"] = id_tag
        g.tx = None
        self.note(
            now,
            f"gun {g.number}: transaction {tx.ref} stopped ({reason}), "
            f"{g.meter_wh - tx.meter_start:.0f} Wh",
        )
        self._enqueue(Outgoing("StopTransaction", payload, tx_ref=tx.ref), now)
        self._set_status(g, "Finishing" if g.plugged else "Available", now)

    def _after_transaction(self, g: Gun, now: float) -> None:
        if g.pending_inoperative and g.tx is None:
            g.pending_inoperative = False
            g.operative = False
            self._set_status(g, "Unavailable", now)

    def _advance(self, g: Gun, until: float) -> meter.Advance:
        tx = g.tx
        assert tx is not None
        seconds = max(0.0, (until - tx.last_update) * self.scale)
        if tx.stop_after is not None:
            seconds = min(seconds, max(0.0, tx.stop_after - tx.charged))
        vehicle = g.vehicle or Vehicle()
        res = meter.advance(
            self.kind,
            self.config.power_w,
            vehicle.capacity_kwh * 1000.0,
            g.meter_wh,
            g.soc,
            seconds,
            tx.limit_wh,
        )
        g.meter_wh = res.energy_wh
        g.soc = res.soc
        tx.charged += res.seconds
        tx.power_w = res.power_w if res.ended is None else 0.0
        tx.last_update = until
        return res

    def _estimate_end(self, g: Gun) -> None:
        """When the running charge will end by itself (limit, full, stop_after),
        looked ahead up to the next sample."""
        tx = g.tx
        assert tx is not None
        vehicle = g.vehicle or Vehicle()
        end_at, reason = INF, ""
        if tx.stop_after is not None:
            end_at = tx.last_update + max(0.0, tx.stop_after - tx.charged) / self.scale
            reason = self.config.stop_after_reason
        horizon_end = min(tx.next_sample_at, end_at)
        recheck = horizon_end == INF
        if recheck:
            horizon_end = tx.last_update + 3600.0 / self.scale
        look = meter.advance(
            self.kind,
            self.config.power_w,
            vehicle.capacity_kwh * 1000.0,
            g.meter_wh,
            g.soc,
            max(0.0, (horizon_end - tx.last_update) * self.scale),
            tx.limit_wh,
        )
        tx.power_w = meter.power_at(self.kind, self.config.power_w, g.soc)
        if look.ended is not None:
            at = tx.last_update + look.seconds / self.scale
            if at <= end_at:
                end_at = at
                reason = (
                    self.LIMIT_REASON if look.ended == "limit" else self.config.stop_after_reason
                )
        elif recheck:
            end_at, reason = horizon_end, ""  # no samples: look again then
        tx.end_at = end_at
        tx.end_reason = reason

    def _tick_gun(self, g: Gun, now: float) -> None:
        while g.tx is not None:
            tx = g.tx
            due = min(tx.next_sample_at, tx.end_at)
            if due > now:
                return
            if tx.end_at <= tx.next_sample_at + 1e-6:  # a tie ends the charge
                self._advance(g, tx.end_at)
                if not tx.end_reason:
                    self._estimate_end(g)
                    continue
                self._stop(g, tx.end_at, tx.end_reason)
                self._after_transaction(g, now)
                return
            at = tx.next_sample_at
            self._advance(g, at)
            self._enqueue(self._meter_values(g, at), at)
            interval = self.meter_interval
            tx.next_sample_at = at + interval if interval > 0 else INF
            if tx.next_sample_at <= now - 10 * interval:
                tx.next_sample_at = now + interval  # far behind (a stalled loop): skip ahead
            self._estimate_end(g)

    def _sampled_values(self, g: Gun) -> list[dict[str, Any]]:
        tx = g.tx
        power = tx.power_w if tx is not None else 0.0
        voltage, current = meter.electrical(self.kind, power, g.soc, self.config.power_w)
        values: list[dict[str, Any]] = []
        for m in self.measurands:
            if m == "Energy.Active.Import.Register":
                values.append({"value": f"{g.meter_wh:.1f}", "measurand": m, "unit": "Wh"})
            elif m == "Power.Active.Import":
                values.append({"value": f"{power:.0f}", "measurand": m, "unit": "W"})
            elif m == "Current.Import":
                values.append({"value": f"{current:.1f}", "measurand": m, "unit": "A"})
            elif m == "Voltage":
                values.append({"value": f"{voltage:.1f}", "measurand": m, "unit": "V"})
            elif m == "SoC":
                values.append(
                    {"value": f"{g.soc:.0f}", "measurand": m, "unit": "Percent", "location": "EV"}
                )
        for v in values:
            v["context"] = "Sample.Periodic"
        return values

    def _meter_values(self, g: Gun, at: float, context: str | None = None) -> Outgoing:
        values = self._sampled_values(g)
        if context is not None:
            for v in values:
                v["context"] = context
        return Outgoing(
            "MeterValues",
            {
                "connectorId": g.number,
                "meterValue": [{"timestamp": iso(at), "sampledValue": values}],
            },
            tx_ref=g.tx.ref if g.tx is not None else None,
        )

    # --- power ------------------------------------------------------------------------------
    def _power_off(
        self, now: float, reason: str, off_seconds: float | None = None, *, clean: bool = True
    ) -> None:
        self.shutdown_at = INF
        self.note(now, f"power off ({reason})")
        if self.link:
            # A reboot closes the WebSocket; a power loss just vanishes.
            self.outbox.append(CloseLink(abort=not clean, reason=reason))
            self._link_down(now)
        self.powered = False
        self.registration = None
        self.inflight = None
        seconds = self.config.reboot_seconds if off_seconds is None else off_seconds
        self.power_on_at = now + seconds / self.scale
        for g in self.guns:
            g.authorizing = None
            g.authorized = None
            g.authorized_until = INF

    def _power_on(self, now: float) -> None:
        self.power_on_at = INF
        self.powered = True
        self.registration = None
        self.boot_attempts = 0
        self.next_boot_at = now
        job = self.firmware
        if job is not None and job.stage == "rebooting":
            if "reboot" in self.config.firmware_faults or job.new_version is None:
                self.firmware_report = "InstallationFailed"
                self.note(now, f"new firmware did not start: back on {self.firmware_version}")
            else:
                self.firmware_version = job.new_version
                self.firmware_report = "Installed"
            self.firmware = None
        for g in self.guns:
            if g.operative:
                g.status = "Preparing" if g.plugged else "Available"
            else:
                g.status = "Unavailable"
        self.note(now, f"power on, firmware {self.firmware_version}")

    # --- firmware ---------------------------------------------------------------------------
    def _send_firmware_status(self, status: str, now: float) -> None:
        self.firmware_status = status
        self.note(now, f"firmware: {status}")
        self._enqueue(Outgoing("FirmwareStatusNotification", {"status": status}), now)

    def _tick_firmware(self, now: float) -> None:
        job = self.firmware
        if job is None:
            return
        faults = self.config.firmware_faults
        if job.stage == "waiting" and now >= max(job.retrieve_at, job.stage_at):
            job.stage = "downloading"
            job.stage_at = now + self.config.firmware_download_seconds / self.scale
            job.body = None
            self._send_firmware_status("Downloading", now)
            if "download" in faults:
                job.body = b""  # fails when the download time is over
            else:
                self.outbox.append(StartDownload(job.url))
        elif job.stage == "downloading" and job.body is not None and now >= job.stage_at:
            if "download" in faults or not job.body:
                self._download_failed(job, now)
            else:
                job.stage = "downloaded"
                job.stage_at = now
                self._send_firmware_status("Downloaded", now)
        elif job.stage == "downloaded" and now >= job.stage_at:
            if any(g.tx is not None for g in self.guns):
                job.stage_at = now + 1.0  # install after the running charges
                return
            problem = self._check_image(job)
            if problem is not None:
                self.note(now, f"firmware image rejected: {problem}")
                self._send_firmware_status("InstallationFailed", now)
                self.firmware = None
                return
            job.stage = "installing"
            job.stage_at = now + self.config.firmware_install_seconds / self.scale
            self._send_firmware_status("Installing", now)
        elif job.stage == "installing" and now >= job.stage_at:
            if "install" in faults:
                self._send_firmware_status("InstallationFailed", now)
                self.firmware = None
                return
            job.stage = "rebooting"
            self.shutdown_at = now + 0.2  # let the queue reach the server first
            self._shutdown_reason = "firmware update"

    def _download_failed(self, job: FirmwareJob, now: float) -> None:
        self._send_firmware_status("DownloadFailed", now)
        if job.attempts_left > 1:
            job.attempts_left -= 1
            job.stage = "waiting"
            job.stage_at = now + job.retry_interval
        else:
            self.firmware = None

    def download_finished(self, now: float, body: bytes | None, error: str | None = None) -> None:
        """The driver's answer to :class:`StartDownload`."""
        job = self.firmware
        if job is None or job.stage != "downloading":
            return
        if body is None:
            self.note(now, f"firmware download failed: {error}")
            self._download_failed(job, now)
        else:
            job.body = body
            job.stage_at = max(job.stage_at, now)
        self._pump(now)

    def _check_image(self, job: FirmwareJob) -> str | None:
        if "check" in self.config.firmware_faults:
            return "signature check failed (injected)"
        body = job.body or b""
        if not body:
            return "empty image"
        query = parse_qs(urlsplit(job.url).query)
        expected = query["sha256"][0] if query.get("sha256") else None
        if expected is not None and hashlib.sha256(body).hexdigest() != expected.lower():
            return "sha256 mismatch"
        if body.startswith(FIRMWARE_HEADER):
            first = body.split(b"\n", 1)[0][len(FIRMWARE_HEADER) :].strip()
            job.new_version = first.decode("ascii", "replace") or None
        else:
            job.new_version = PurePosixPath(urlsplit(job.url).path).stem or None
        if job.new_version is None:
            return "no version in the image"
        return None

    # --- autopilot (load mode) ---------------------------------------------------------------
    def _tick_autopilot(self, now: float) -> None:
        ap = self.config.autopilot
        assert ap is not None
        self.autopilot_at = INF
        g = self.guns[0]
        if self.autopilot_phase == "idle":
            if not g.plugged:
                self.plug(1, now, Vehicle(soc=20, capacity_kwh=400))
            if g.tx is None and g.operative:
                self.present(1, ap.id_tag, "card", now)  # unless free vend started it
            self.autopilot_phase = "charging"
            self.autopilot_at = now + ap.charge_seconds / self.scale
        elif self.autopilot_phase == "charging":
            if g.tx is not None:
                self.press_stop(1, now)
            if g.plugged:
                self.unplug(1, now)
            self.autopilot_phase = "idle"
            self.autopilot_at = now + ap.idle_seconds / self.scale

    # --- the server's CALLs -----------------------------------------------------------------
    def _on_call(self, call: Call, now: float) -> None:
        self.stats.calls_received += 1
        action = call.action
        after: list[Callable[[], None]] = []
        try:
            if action not in _CENTRAL_ACTIONS:
                if action in _validator.actions():
                    raise OcppError(
                        ErrorCode.NotSupported,
                        f"{action} is sent by a charge point, not to it",
                        {"action": action},
                    )
                raise OcppError(
                    ErrorCode.NotImplemented, f"unknown action {action!r}", {"action": action}
                )
            _validator.validate_request(action, call.payload)
            handler = self._call_handlers.get(action)
            if handler is None:
                raise OcppError(
                    ErrorCode.NotSupported,
                    f"{action} is not supported by this charger",
                    {"action": action},
                )
            reply = handler(self, call.payload, now, after)
        except OcppError as exc:
            self.note(now, f"refused {action}: {exc.error_code.value}")
            self._reply(encode_error(call.unique_id, exc.error_code, exc.description, exc.details))
            return
        self.note(now, f"{action} {call.payload} -> {reply}")
        self._reply(encode_result(call.unique_id, reply))
        for fn in after:
            fn()

    def _h_remote_start(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        connector = p.get("connectorId")
        if connector is not None:
            if not 1 <= connector <= len(self.guns):
                return {"status": "Rejected"}
            g = self.guns[connector - 1]
        else:
            free = [g for g in self.guns if g.tx is None and g.operative and g.authorized is None]
            plugged = [g for g in free if g.plugged]
            if not free:
                return {"status": "Rejected"}
            g = (plugged or free)[0]
        if g.tx is not None or not g.operative or g.authorized is not None:
            return {"status": "Rejected"}
        pending = PendingAuth(str(p["idTag"]), "remote", None)

        def go() -> None:
            if self._flag("AuthorizeRemoteTxRequests"):
                g.authorizing = pending
                self._enqueue(Outgoing("Authorize", {"idTag": pending.id_tag}, gun=g.number), now)
            else:
                self._authorized(g, pending, now)

        after.append(go)
        return {"status": "Accepted"}

    def _h_remote_stop(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        wanted = int(p["transactionId"])
        for g in self.guns:
            if g.tx is not None and self.tx_ids.get(g.tx.ref) == wanted:

                def stop(gun: Gun = g) -> None:
                    if gun.tx is not None:
                        self._stop(gun, now, "Remote")
                        self._after_transaction(gun, now)

                after.append(stop)
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _h_reset(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        hard = p["type"] == "Hard"

        def reset() -> None:
            for g in self.guns:
                if g.tx is not None:
                    self._stop(g, now, "HardReset" if hard else "SoftReset")
            if hard:
                # Down at once: the stops are sent after the reboot.
                self._power_off(now, "Hard reset")
            else:
                # Soft: a moment for the stops to reach the server first.
                self.shutdown_at = now + 0.5
                self._shutdown_reason = "Soft reset"

        after.append(reset)
        return {"status": "Accepted"}

    def _h_change_configuration(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        key = self.keys.get(p["key"])
        value = str(p["value"])
        if key is None:
            return {"status": "NotSupported"}
        if key.readonly:
            return {"status": "Rejected"}
        if key.kind == "bool":
            parsed = _bool(value)
            if parsed is None:
                return {"status": "Rejected"}
            value = "true" if parsed else "false"
        elif key.kind == "int":
            if not value.strip().isdigit():
                return {"status": "Rejected"}
            value = str(int(value))
        elif key.kind == "measurands":
            items = [m.strip() for m in value.split(",") if m.strip()]
            if any(m not in MEASURANDS for m in items):
                return {"status": "Rejected"}
            value = ",".join(items)
        key.value = value
        if p["key"] == "HeartbeatInterval" and int(value) > 0:
            self.heartbeat_interval = float(value)
        if p["key"] == "LocalAuthListEnabled":
            self.local_list.enabled = value == "true"
        if p["key"] == "AuthorizationCacheEnabled":
            self.cache.enabled = value == "true"
        return {"status": "Accepted"}

    def _h_get_configuration(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        wanted = p.get("key")
        names = list(self.keys) if not wanted else list(wanted)
        known = [n for n in names if n in self.keys]
        unknown = [n for n in names if n not in self.keys]
        reply: dict[str, Any] = {
            "configurationKey": [
                {"key": n, "readonly": self.keys[n].readonly, "value": self.keys[n].value}
                for n in known
            ]
        }
        if unknown:
            reply["unknownKey"] = unknown
        return reply

    def _h_trigger_message(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        what = p["requestedMessage"]
        connector = p.get("connectorId")
        if connector is not None and connector > len(self.guns):
            return {"status": "Rejected"}
        guns = self.guns if not connector else [self.guns[connector - 1]]

        def send() -> None:
            if what == "BootNotification":
                self._enqueue(self._boot_message(), now)
            elif what == "Heartbeat":
                self._enqueue(Outgoing("Heartbeat", {}), now)
            elif what == "StatusNotification":
                if connector in (None, 0):
                    self._enqueue(self._status_message(0, self.connector0_status, now), now)
                for g in guns if connector != 0 else []:
                    self._enqueue(self._status_message(g.number, g.status, now), now)
            elif what == "MeterValues":
                for g in guns:
                    msg = self._meter_values(g, now, "Trigger")
                    msg.tx_ref = None  # a triggered sample is not replayed
                    if g.tx is not None and g.tx.ref in self.tx_ids:
                        msg.payload["transactionId"] = self.tx_ids[g.tx.ref]
                    self._enqueue(msg, now)
            elif what == "FirmwareStatusNotification":
                self._enqueue(
                    Outgoing("FirmwareStatusNotification", {"status": self.firmware_status}), now
                )
            elif what == "DiagnosticsStatusNotification":
                self._enqueue(Outgoing("DiagnosticsStatusNotification", {"status": "Idle"}), now)

        after.append(send)
        return {"status": "Accepted"}

    def _h_unlock(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        connector = int(p["connectorId"])
        if not 1 <= connector <= len(self.guns):
            return {"status": "NotSupported"}
        if self.config.unlock_fails:
            return {"status": "UnlockFailed"}
        g = self.guns[connector - 1]

        def unlock() -> None:
            if g.tx is not None:
                self._stop(g, now, "UnlockCommand")
                self._after_transaction(g, now)

        after.append(unlock)
        return {"status": "Unlocked"}

    def _h_change_availability(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        connector = int(p["connectorId"])
        if connector > len(self.guns):
            return {"status": "Rejected"}
        guns = self.guns if connector == 0 else [self.guns[connector - 1]]
        operative = p["type"] == "Operative"
        scheduled = False
        for g in guns:
            if operative:
                g.operative = True
                g.pending_inoperative = False
                if g.tx is None:
                    self._set_status(g, "Preparing" if g.plugged else "Available", now)
            elif g.tx is not None:
                g.pending_inoperative = True
                scheduled = True
            else:
                g.operative = False
                self._set_status(g, "Unavailable", now)
        if connector == 0:
            self.connector0_status = "Available" if operative else "Unavailable"
            self._enqueue(self._status_message(0, self.connector0_status, now), now)
        return {"status": "Scheduled" if scheduled else "Accepted"}

    def _h_clear_cache(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        self.cache.clear()
        return {"status": "Accepted"}

    def _h_send_local_list(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        status = self.local_list.apply(
            int(p["listVersion"]), p["updateType"], list(p.get("localAuthorizationList") or [])
        )
        return {"status": status}

    def _h_get_local_list_version(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"listVersion": self.local_list.reported_version()}

    def _h_update_firmware(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        from .localauth import parse_time

        retrieve = parse_time(p["retrieveDate"]).timestamp()
        self.firmware = FirmwareJob(
            url=str(p["location"]),
            retrieve_at=retrieve,
            attempts_left=1 + int(p.get("retries") or 0),
            retry_interval=float(p.get("retryInterval") or 30),
            stage_at=now,
        )
        return {}

    def _h_get_diagnostics(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {}

    def _h_data_transfer(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"status": "UnknownVendorId"}

    def _h_reserve_now(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"status": "Rejected"}

    def _h_charging_profile(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"status": "NotSupported"}

    def _h_clear_charging_profile(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"status": "Unknown"}

    def _h_composite_schedule(
        self, p: dict[str, Any], now: float, after: list[Callable[[], None]]
    ) -> dict[str, Any]:
        return {"status": "Rejected"}

    _call_handlers: ClassVar[
        dict[
            str,
            Callable[[Charger, dict[str, Any], float, list[Callable[[], None]]], dict[str, Any]],
        ]
    ] = {
        "RemoteStartTransaction": _h_remote_start,
        "RemoteStopTransaction": _h_remote_stop,
        "Reset": _h_reset,
        "ChangeConfiguration": _h_change_configuration,
        "GetConfiguration": _h_get_configuration,
        "TriggerMessage": _h_trigger_message,
        "UnlockConnector": _h_unlock,
        "ChangeAvailability": _h_change_availability,
        "ClearCache": _h_clear_cache,
        "SendLocalList": _h_send_local_list,
        "GetLocalListVersion": _h_get_local_list_version,
        "UpdateFirmware": _h_update_firmware,
        "GetDiagnostics": _h_get_diagnostics,
        "DataTransfer": _h_data_transfer,
        "ReserveNow": _h_reserve_now,
        "CancelReservation": _h_reserve_now,
        "SetChargingProfile": _h_charging_profile,
        "ClearChargingProfile": _h_clear_charging_profile,
        "GetCompositeSchedule": _h_composite_schedule,
    }

    _result_handlers: ClassVar[
        dict[str, Callable[[Charger, Outgoing, dict[str, Any], float], None]]
    ] = {
        "Authorize": _on_authorize,
        "StartTransaction": _on_start_transaction,
    }

    # --- introspection -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What a scenario may check on the charger side."""
        return {
            "pile_id": self.config.pile_id,
            "powered": self.powered,
            "connected": self.link,
            "online": self.online,
            "registration": self.registration,
            "firmware_version": self.firmware_version,
            "firmware_status": self.firmware_status,
            "heartbeat_interval": self.heartbeat_interval,
            "queue_length": len(self.queue),
            "queued_transaction_messages": self.queued_transaction_messages(),
            "local_list_version": self.local_list.reported_version(),
            "links": self.links,
            "guns": [
                {
                    "gun": g.number,
                    "status": g.status,
                    "plugged": g.plugged,
                    "charging": g.tx is not None,
                    "transaction_id": self.tx_ids.get(g.tx.ref) if g.tx is not None else None,
                    "meter_wh": round(g.meter_wh, 1),
                    "soc": round(g.soc, 1),
                }
                for g in self.guns
            ],
        }
