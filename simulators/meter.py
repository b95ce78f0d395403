"""The simulated energy meter and battery: pure functions of charger time.

AC chargers deliver constant power (the car's on-board charger draws what
the pilot signal allows), so the register grows linearly. DC chargers follow
the car's battery: constant power up to ``TAPER_START`` % SoC, then a linear
taper down to ``TAPER_FLOOR`` of the maximum at 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TAPER_START = 80.0
TAPER_FLOOR = 0.1
DC_STEP_SECONDS = 5.0
AC_VOLTAGE = 230.0

EndReason = Literal["limit", "full"]


@dataclass(frozen=True, slots=True)
class Advance:
    energy_wh: float
    soc: float
    power_w: float
    seconds: float  # charger seconds actually charged (less than asked when it ended)
    ended: EndReason | None


def dc_power(max_w: float, soc: float) -> float:
    """Power a DC charger delivers at ``soc`` %."""
    if soc < TAPER_START:
        return max_w
    share = (100.0 - soc) / (100.0 - TAPER_START)
    return max_w * max(TAPER_FLOOR, min(1.0, share))


def power_at(kind: str, max_w: float, soc: float) -> float:
    if soc >= 100.0:
        return 0.0
    return dc_power(max_w, soc) if kind == "DC" else max_w


def advance(
    kind: str,
    max_w: float,
    capacity_wh: float,
    energy_wh: float,
    soc: float,
    seconds: float,
    limit_wh: float | None = None,
) -> Advance:
    """Charge for ``seconds`` of charger time, stopping early when the
    register reaches ``limit_wh`` or the battery is full."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    if soc >= 100.0:
        return Advance(energy_wh, 100.0, 0.0, 0.0, "full")
    if limit_wh is not None and energy_wh >= limit_wh:
        return Advance(energy_wh, soc, power_at(kind, max_w, soc), 0.0, "limit")
    if kind != "DC":
        return _advance_linear(max_w, capacity_wh, energy_wh, soc, seconds, limit_wh)
    done = 0.0
    while done < seconds:
        step = min(DC_STEP_SECONDS, seconds - done)
        p = dc_power(max_w, soc)
        gained = p * step / 3600.0
        to_full = (100.0 - soc) / 100.0 * capacity_wh
        to_limit = None if limit_wh is None else limit_wh - energy_wh
        cut = min(gained, to_full, to_limit if to_limit is not None else gained)
        if cut < gained:
            used = cut * 3600.0 / p
            energy_wh += cut
            soc = min(100.0, soc + cut / capacity_wh * 100.0)
            ended: EndReason = "limit" if to_limit is not None and cut == to_limit else "full"
            return Advance(energy_wh, soc, p, done + used, ended)
        energy_wh += gained
        soc = min(100.0, soc + gained / capacity_wh * 100.0)
        done += step
    return Advance(energy_wh, soc, dc_power(max_w, soc), done, None)


def _advance_linear(
    max_w: float,
    capacity_wh: float,
    energy_wh: float,
    soc: float,
    seconds: float,
    limit_wh: float | None,
) -> Advance:
    gained = max_w * seconds / 3600.0
    to_full = (100.0 - soc) / 100.0 * capacity_wh
    to_limit = None if limit_wh is None else limit_wh - energy_wh
    cut = min(gained, to_full, to_limit if to_limit is not None else gained)
    soc_after = min(100.0, soc + cut / capacity_wh * 100.0)
    if cut < gained:
        ended: EndReason = "limit" if to_limit is not None and cut == to_limit else "full"
        return Advance(energy_wh + cut, soc_after, max_w, cut * 3600.0 / max_w, ended)
    return Advance(energy_wh + gained, soc_after, max_w, seconds, None)


def electrical(kind: str, power_w: float, soc: float, max_w: float) -> tuple[float, float]:
    """(voltage V, current A) that go with ``power_w``."""
    if kind == "DC":
        voltage = 350.0 + 1.5 * soc
        return voltage, power_w / voltage
    phases = 3 if max_w > 7400 else 1
    return AC_VOLTAGE, power_w / (AC_VOLTAGE * phases)
