"""The ops API's commands (OCPP 1.6 action names and payloads) on a
cloud-board pile: translated to CBP/1 requests, and the answers back to
OCPP-shaped responses, so that the commands are the same for both protocols.

=========================  ==========================================  =======================
OCPP 1.6 command           CBP/1 request                               response
=========================  ==========================================  =======================
RemoteStartTransaction     0x34 remote start: gun = connectorId, a     0x33 started → Accepted,
                           SERIAL assigned by the gateway, TOKEN =     rejected → Rejected
                           idTag, no energy limit
RemoteStopTransaction      0x36 remote stop: the transaction's gun     0x35 stopping → Accepted,
                           and SERIAL (``transactions.external_id``)   rejected → Rejected
Reset                      0x92 reboot: Hard → now, Soft → when idle   0x91 accepted → Accepted,
                                                                       rejected → Rejected
TriggerMessage             0x12 read real-time data, per gun           0x13 → Accepted
(StatusNotification,       (connectorId, or every gun of the login
MeterValues)               when absent or 0); the 0x13 is stored
GetLocalListVersion        0x48 whitelist version query                0x47 → listVersion
anything else              400 ``not_supported_by_protocol`` (the whitelist
                           and firmware engines send 0x44 / 0x94 through
                           ``CbpConnection.request``)
=========================  ==========================================  =======================
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from protocol.cloudboard import (
    ReadRealtime,
    Reboot,
    RebootMode,
    RebootReply,
    RebootResult,
    RemoteStart,
    RemoteStartReply,
    RemoteStartResult,
    RemoteStop,
    RemoteStopReply,
    RemoteStopResult,
    WhitelistVersionQuery,
    WhitelistVersionReply,
)
from sessions.charging import AuthMethod as DomainAuthMethod

from ..ocpp.connection import check_command_payload
from ..registry import CommandError, CommandResult
from .common import PendingSession

if TYPE_CHECKING:
    from .connection import CbpConnection

log = structlog.get_logger("pilegate.cbp")

SUPPORTED = frozenset(
    {
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "TriggerMessage",
        "GetLocalListVersion",
    }
)
TRIGGERABLE = frozenset({"StatusNotification", "MeterValues"})


def _not_supported(action: str, what: str) -> CommandError:
    return CommandError(
        400,
        "not_supported_by_protocol",
        f"{what} has no CBP/1 equivalent on a cloud-board pile; "
        f"supported: {', '.join(sorted(SUPPORTED))} "
        f"(TriggerMessage: {', '.join(sorted(TRIGGERABLE))})",
        action=action,
        protocol="cbp1",
    )


def _unexpected(conn: CbpConnection, what: str, reply: object) -> CommandError:
    return CommandError(
        502,
        "charger_error",
        f"pile {conn.pile_id} answered {what} with {type(reply).__name__}",
    )


async def translate_call(
    conn: CbpConnection, action: str, payload: dict[str, Any], timeout: float
) -> CommandResult:
    if action not in SUPPORTED:
        raise _not_supported(action, action)
    check_command_payload(action, payload)
    if action == "RemoteStartTransaction":
        response = await _remote_start(conn, payload, timeout)
    elif action == "RemoteStopTransaction":
        response = await _remote_stop(conn, payload, timeout)
    elif action == "Reset":
        response = await _reset(conn, payload, timeout)
    elif action == "GetLocalListVersion":
        response = await _list_version(conn, timeout)
    else:
        response = await _trigger(conn, payload, timeout)
    return CommandResult(action=action, response=response)


def _gun(conn: CbpConnection, payload: dict[str, Any]) -> int:
    connector = payload.get("connectorId")
    if connector is None:
        if conn.gun_count <= 1:
            return 1
        raise CommandError(
            400,
            "invalid_payload",
            f"pile {conn.pile_id} has {conn.gun_count} guns: connectorId is required "
            "(CBP/1 0x34 names the gun)",
        )
    if not 1 <= int(connector) <= 999:
        raise CommandError(400, "invalid_payload", "connectorId must be a gun number 1..999")
    return int(connector)


async def _remote_start(
    conn: CbpConnection, payload: dict[str, Any], timeout: float
) -> dict[str, Any]:
    gun = _gun(conn, payload)
    id_tag = str(payload["idTag"])
    serials = conn.server.serials
    serial = serials.new_serial(conn.pile_id, gun, conn.local_now())
    # Remembered before sending: the charger may report the session before
    # its 0x33 arrives, or after a timeout. Nothing is stored until then.
    serials.remember(
        serial,
        PendingSession(
            pile_id=conn.pile_id,
            gun=gun,
            token=id_tag,
            method=DomainAuthMethod.REMOTE,
            remote=True,
            at=time.monotonic(),
        ),
    )
    reply = await conn.request(RemoteStart(conn.pile_id, gun, serial, id_tag, 0), timeout)
    if not isinstance(reply, RemoteStartReply):
        raise _unexpected(conn, "0x34 remote start", reply)
    if reply.result is RemoteStartResult.STARTED:
        log.info("remote start accepted", gun=gun, id_tag=id_tag, serial=serial)
        return {"status": "Accepted"}
    serials.pop(serial)
    log.info("remote start rejected", gun=gun, reason=reply.reason.name.lower(), serial=serial)
    return {"status": "Rejected"}


async def _remote_stop(
    conn: CbpConnection, payload: dict[str, Any], timeout: float
) -> dict[str, Any]:
    tx_id = int(payload["transactionId"])
    tx = await conn.services.store.get_transaction(tx_id)
    if tx is None or tx.pile_id != conn.pile_id or tx.external_id is None:
        why = (
            "is unknown"
            if tx is None
            else f"belongs to pile {tx.pile_id}"
            if tx.pile_id != conn.pile_id
            else "has no CBP/1 SERIAL"
        )
        raise CommandError(
            404,
            "unknown_transaction",
            f"transaction {tx_id} {why}: no SERIAL to send in 0x36 to pile {conn.pile_id}",
        )
    reply = await conn.request(RemoteStop(conn.pile_id, tx.connector_id, tx.external_id), timeout)
    if not isinstance(reply, RemoteStopReply):
        raise _unexpected(conn, "0x36 remote stop", reply)
    if reply.result is RemoteStopResult.STOPPING:
        return {"status": "Accepted"}
    log.info("remote stop rejected", transaction_id=tx_id, reason=reply.reason.name.lower())
    return {"status": "Rejected"}


async def _reset(conn: CbpConnection, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    mode = RebootMode.NOW if payload["type"] == "Hard" else RebootMode.WHEN_IDLE
    reply = await conn.request(Reboot(conn.pile_id, mode), timeout)
    if not isinstance(reply, RebootReply):
        raise _unexpected(conn, "0x92 reboot", reply)
    return {"status": "Accepted" if reply.result is RebootResult.ACCEPTED else "Rejected"}


async def _list_version(conn: CbpConnection, timeout: float) -> dict[str, Any]:
    reply = await conn.request(WhitelistVersionQuery(conn.pile_id), timeout)
    if not isinstance(reply, WhitelistVersionReply):
        raise _unexpected(conn, "0x48 whitelist version query", reply)
    return {"listVersion": reply.version}


async def _trigger(conn: CbpConnection, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    requested = payload["requestedMessage"]
    if requested not in TRIGGERABLE:
        raise _not_supported("TriggerMessage", f"TriggerMessage {requested}")
    connector = payload.get("connectorId")
    guns = [int(connector)] if connector else list(range(1, max(1, conn.gun_count) + 1))
    if any(not 1 <= g <= 999 for g in guns):
        raise CommandError(400, "invalid_payload", "connectorId must be a gun number 1..999")
    deadline = time.monotonic() + timeout
    for gun in guns:
        # The 0x13 answer is stored by the receive loop like any real-time data.
        await conn.request(ReadRealtime(conn.pile_id, gun), max(0.001, deadline - time.monotonic()))
    return {"status": "Accepted"}
