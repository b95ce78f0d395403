"""``pilegate sim ...`` subcommands (filled in by the simulator work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``sim`` command group to the ``pilegate`` parser."""
    sim = sub.add_parser("sim", help="simulated chargers, QA scenarios and load")
    simsub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    del simsub  # actions are added by the simulator implementation


def _unused(_: argparse.Namespace) -> int:
    return 0
