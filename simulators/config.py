"""Configuration of a simulated charger (pydantic at the edge: scenario files
and command-line flags are validated here, with messages naming the field).

Durations come in two clocks, and the difference matters in a scenario:

* **charger time** is scaled by ``time_scale``: meter-value interval,
  ``stop_after``, reboot time, firmware download and install time,
  ``ConnectionTimeOut``, and the energy the meter register gains (a 7 kW
  charge at ``time_scale: 60`` gains 7 kWh/60 per real second, i.e. one
  simulated hour per real minute);
* **network time** is never scaled: heartbeat interval and boot retry
  interval (both come from the server, which runs in real time), call
  timeout and reconnect delay. Timestamps the charger sends are real UTC
  time, so the server's own clocks (presence, offline detection) stay right.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import pileid
from pileid import PileIdError

Kind = Literal["AC", "DC"]
StopReason = Literal[
    "EmergencyStop",
    "EVDisconnected",
    "HardReset",
    "Local",
    "Other",
    "PowerLoss",
    "Reboot",
    "Remote",
    "SoftReset",
    "UnlockCommand",
    "DeAuthorized",
]

#: Measurands the simulated meter can report (OCPP 1.6 §7.31 names).
MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "SoC",
)
Measurand = Literal[
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "SoC",
]
FirmwareStage = Literal["download", "check", "install", "reboot"]

AC_POWERS_KW = (7.0, 22.0)
DC_POWER_RANGE_KW = (60.0, 120.0)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Vehicle(_Frozen):
    """The car plugged into a gun."""

    soc: Annotated[float, Field(ge=0, le=100, description="state of charge at plug-in (%)")] = 20.0
    capacity_kwh: Annotated[float, Field(gt=0, le=500, description="battery capacity")] = 60.0
    vin: Annotated[str | None, Field(min_length=17, max_length=17)] = None
    full_after: Annotated[
        float | None,
        Field(gt=0, description="charger seconds after which the car reports full"),
    ] = None


class Autopilot(_Frozen):
    """What a charger does by itself in load mode: plug, authorize, charge,
    stop, unplug, idle, again."""

    id_tag: Annotated[str, Field(min_length=1, max_length=20)] = "LOADTEST"
    charge_seconds: Annotated[float, Field(gt=0)] = 60.0
    idle_seconds: Annotated[float, Field(ge=0)] = 30.0
    first_delay: Annotated[float, Field(ge=0)] = 0.0


Protocol = Literal["ocpp1.6", "cbp1"]
PROTOCOLS: tuple[Protocol, ...] = ("ocpp1.6", "cbp1")


class ChargerConfig(_Frozen):
    """One simulated charger, speaking OCPP 1.6J or cloud-board CBP/1."""

    pile_id: Annotated[str, Field(min_length=1, max_length=64)]
    protocol: Protocol = Field(
        "ocpp1.6", description="ocpp1.6 (OCPP-J over WebSocket) or cbp1 (cloud-board over TCP)"
    )
    kind: Kind | None = Field(None, description="AC or DC; derived from the pile ID when omitted")
    guns: Annotated[int, Field(ge=1, le=2)] = 1
    power_kw: Annotated[float | None, Field(gt=0)] = Field(
        None, description="per gun; AC 7 or 22, DC 60 to 120 (default 7 AC, 60 DC)"
    )
    vendor: Annotated[str, Field(min_length=1, max_length=20)] = "PILESIM"
    model: Annotated[str, Field(min_length=1, max_length=20)] = "SIM-AC7"
    firmware_version: Annotated[str, Field(min_length=1, max_length=50)] = "SIM_1.0.0"
    serial: Annotated[str | None, Field(max_length=25)] = None
    iccid: Annotated[str | None, Field(max_length=20)] = None
    touch_screen: bool = Field(False, description="has a screen: drivers may type a password")
    password: str | None = Field(None, description="HTTP Basic password (OCPP security profile 1)")
    meter_interval: Annotated[float, Field(gt=0)] = Field(
        60.0, description="MeterValueSampleInterval (charger seconds)"
    )
    measurands: tuple[Measurand, ...] = ("Energy.Active.Import.Register", "Power.Active.Import")
    meter_start_wh: Annotated[float, Field(ge=0)] = 0.0
    stop_after: Annotated[float | None, Field(gt=0)] = Field(
        None,
        description="the charger stops a charge by itself after this many charger "
        "seconds (the car is 'full' or a firmware limit)",
    )
    stop_after_reason: StopReason = "Local"
    time_scale: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    heartbeat_interval: Annotated[float, Field(gt=0)] = Field(
        60.0, description="used until a BootNotification reply gives one"
    )
    force_heartbeat_interval: Annotated[float | None, Field(gt=0)] = Field(
        None, description="ignore the interval of the boot reply and use this one (load tests)"
    )
    boot_retry_base: Annotated[float, Field(gt=0)] = Field(
        5.0, description="first boot retry delay when the reply gives no interval (s)"
    )
    boot_retry_max: Annotated[float, Field(gt=0)] = 300.0
    boot_on_reconnect: bool = Field(
        False, description="send BootNotification on every reconnect, not only after a reboot"
    )
    call_timeout: Annotated[float, Field(gt=0)] = Field(
        10.0,
        description="seconds to wait for the answer to a CALL; then the link is "
        "considered dead (network time)",
    )
    reconnect_delay: Annotated[float, Field(ge=0)] = 1.0
    reconnect_delay_max: Annotated[float, Field(ge=0)] = 30.0
    reboot_seconds: Annotated[float, Field(ge=0)] = Field(5.0, description="charger seconds")
    connection_timeout: Annotated[int, Field(ge=1)] = Field(
        90, description="ConnectionTimeOut: seconds to plug in after a remote start"
    )
    local_auth_list_max: Annotated[int, Field(ge=1)] = 1000
    send_local_list_max: Annotated[int, Field(ge=1)] = 500
    local_authorize_offline: bool = True
    local_pre_authorize: bool = False
    authorize_remote_tx_requests: bool = False
    stop_transaction_on_invalid_id: bool = True
    allow_offline_tx_for_unknown_id: bool = False
    offline_queue_limit: Annotated[int, Field(ge=10)] = 5000
    firmware_download_seconds: Annotated[float, Field(ge=0)] = 2.0
    firmware_install_seconds: Annotated[float, Field(ge=0)] = 2.0
    firmware_faults: tuple[FirmwareStage, ...] = Field(
        (), description="firmware update stages that fail: download, check, install, reboot"
    )
    unlock_fails: bool = False
    free_vend_id_tag: Annotated[str | None, Field(min_length=1, max_length=20)] = Field(
        None,
        description="free vend: plugging in starts a charge with this idTag, without authorization",
    )
    autopilot: Autopilot | None = None
    validate_outgoing: bool = Field(
        False, description="check every CALL the charger sends against the OCPP schema"
    )

    @model_validator(mode="after")
    def _kind_and_power(self) -> ChargerConfig:
        kind = self.effective_kind
        power = self.power_kw
        if power is not None:
            if kind == "AC" and power not in AC_POWERS_KW:
                raise ValueError(f"an AC charger has 7 or 22 kW per gun, not {power:g}")
            lo, hi = DC_POWER_RANGE_KW
            if kind == "DC" and not lo <= power <= hi:
                raise ValueError(f"a DC charger has 60 to 120 kW per gun, not {power:g}")
        if self.boot_retry_max < self.boot_retry_base:
            raise ValueError("boot_retry_max must be >= boot_retry_base")
        if self.protocol == "cbp1":
            self._check_cbp1()
        return self

    def _check_cbp1(self) -> None:
        """What a CBP/1 Login can carry (CBP/1 §2, §3 0x01): the codec would
        refuse it later, in the middle of a run."""
        if not self.pile_id.isdigit() or not self.pile_id.isascii() or len(self.pile_id) > 20:
            raise ValueError(
                f"a CBP/1 pile ID is up to 20 digits (sent as BCD, zero-padded), not "
                f"{self.pile_id!r}"
            )
        limits = (
            ("model", self.model, 16),
            ("firmware_version", self.firmware_version, 24),
            ("password", self.password or "", 16),
        )
        for name, value, size in limits:
            if len(value) > size or not value.isascii():
                raise ValueError(f"{name} {value!r}: CBP/1 carries at most {size} ASCII characters")
        if self.iccid is not None and not (self.iccid.isdigit() and len(self.iccid) == 20):
            raise ValueError("iccid: CBP/1 carries a 20-digit ICCID (BCD10)")

    @property
    def effective_kind(self) -> Kind:
        """The configured kind, else the pile ID's, else AC (an invalid ID,
        kept on purpose to test the gateway's refusal)."""
        if self.kind is not None:
            return self.kind
        try:
            label = pileid.parse_pile_id(self.pile_id).kind.label
        except PileIdError:
            return "AC"
        return "DC" if label == "DC" else "AC"

    @property
    def power_w(self) -> float:
        if self.power_kw is not None:
            return self.power_kw * 1000.0
        return 7000.0 if self.effective_kind == "AC" else 60000.0
