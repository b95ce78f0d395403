"""Protocol-neutral notifications from the charger adapters to the engines
that follow piles (firmware tasks, whitelist sync).

OCPP handlers and, later, the cloud-board adapter call these; engines
register themselves with :meth:`Observers.add`. Callbacks are synchronous
and must not block: an engine that needs I/O spawns an owned task
(``Services.spawn``). A failing observer is logged and never breaks the
charger's connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import structlog

from .registry import PileConnection

log = structlog.get_logger("pilegate.observers")


class PileObserver(Protocol):
    def pile_connected(self, conn: PileConnection) -> None: ...

    def pile_disconnected(self, pile_id: str, conn_id: str) -> None: ...

    def pile_booted(
        self, pile_id: str, firmware_version: str | None, model: str | None, accepted: bool
    ) -> None: ...

    def firmware_status(self, pile_id: str, status: str, protocol: str) -> None:
        """``status`` as the protocol sent it: an OCPP 1.6
        FirmwareStatusNotification status, or the CBP/1 0x95 code as text."""

    def charging_changed(self, pile_id: str, charging: bool) -> None:
        """True when any gun of the pile started charging, False when none is."""


@dataclass
class Observers:
    _observers: list[PileObserver] = field(default_factory=list)
    _charging: dict[str, set[int]] = field(default_factory=dict)

    def add(self, observer: PileObserver) -> None:
        self._observers.append(observer)

    def _each(self, what: str, *args: object) -> None:
        for obs in self._observers:
            try:
                getattr(obs, what)(*args)
            except Exception:
                log.exception("observer failed", observer=type(obs).__name__, event=what)

    def pile_connected(self, conn: PileConnection) -> None:
        self._each("pile_connected", conn)

    def pile_disconnected(self, pile_id: str, conn_id: str) -> None:
        self._each("pile_disconnected", pile_id, conn_id)

    def pile_booted(
        self, pile_id: str, firmware_version: str | None, model: str | None, accepted: bool
    ) -> None:
        self._each("pile_booted", pile_id, firmware_version, model, accepted)

    def firmware_status(self, pile_id: str, status: str, protocol: str) -> None:
        self._each("firmware_status", pile_id, status, protocol)

    def gun_status(self, pile_id: str, connector_id: int, status: str) -> None:
        """Derive "is the pile charging" from gun statuses (OCPP 1.6
        ChargePointStatus; CBP/1 gun status mapped to the same names)."""
        guns = self._charging.setdefault(pile_id, set())
        was = bool(guns)
        if status in ("Charging", "SuspendedEV", "SuspendedEVSE"):
            guns.add(connector_id)
        else:
            guns.discard(connector_id)
        now = bool(guns)
        if now != was:
            self._each("charging_changed", pile_id, now)

    def is_charging(self, pile_id: str) -> bool:
        return bool(self._charging.get(pile_id))
