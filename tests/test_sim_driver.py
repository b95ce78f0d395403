"""The asyncio driver of the simulated charger over real sockets: network
faults against the gateway, commands through the ops API, and a firmware
update from a central system written in the test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.app import Gateway
from protocol.ocpp import Call, decode, encode_call, encode_result
from simulators.config import ChargerConfig
from simulators.driver import SimulatedCharger
from tests.support.gateway import api_client, flushed, running_gateway

PILE = "44200000010000100081"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    # These exercise the driver, not the storage: SQLite is enough.
    async with running_gateway(
        f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", ping_interval=1, pong_timeout=1
    ) as g:
        yield g


def charger(gw: Gateway, **kw: Any) -> SimulatedCharger:
    cfg = ChargerConfig(
        **({"pile_id": PILE, "validate_outgoing": True, "reconnect_delay": 0.05} | kw)
    )
    return SimulatedCharger(cfg, f"ws://127.0.0.1:{gw.ocpp_port}/ocpp")


async def events(gw: Gateway, pile: str = PILE) -> list[tuple[bool, str]]:
    await flushed(gw)
    async with api_client(gw) as api:
        rows = (await api.get(f"/api/piles/{pile}/events")).json()
    return [(e["online"], e["reason"]) for e in reversed(rows)]


async def wait_for_events(gw: Gateway, expected: list[tuple[bool, str]]) -> None:
    for _ in range(200):
        if await events(gw) == expected:
            return
        await asyncio.sleep(0.05)
    assert await events(gw) == expected


async def test_abrupt_and_clean_closes_are_told_apart_by_the_gateway(gw: Gateway) -> None:
    sc = charger(gw)
    sc.start()
    try:
        await sc.wait_until(lambda: sc.model.online, 5, "boot")
        await sc.disconnect("abrupt")
        await wait_for_events(gw, [(True, "connected"), (False, "closed_abnormal")])
        # The network stays down until restored: no reconnect meanwhile.
        assert not sc.connected and not sc.network_up and sc.model.links == 1
        sc.restore()
        await sc.wait_until(lambda: sc.model.links == 2 and sc.model.online, 5, "reconnect")
        await sc.disconnect("clean")
        await wait_for_events(
            gw,
            [
                (True, "connected"),
                (False, "closed_abnormal"),
                (True, "connected"),
                (False, "closed_clean"),
            ],
        )
    finally:
        await sc.close()


async def test_flapping_link_reconnects_each_time(gw: Gateway) -> None:
    sc = charger(gw)
    sc.start()
    try:
        await sc.wait_until(lambda: sc.model.online, 5, "boot")
        await sc.flap(times=3, down=0.1, up=0.3, mode="abrupt")
        await sc.wait_until(lambda: sc.model.links == 4 and sc.model.online, 5, "last reconnect")
        reasons = [r for online, r in await events(gw) if not online]
        assert reasons == ["closed_abnormal"] * 3
    finally:
        await sc.close()


async def test_added_latency_delays_every_frame(gw: Gateway) -> None:
    sc = charger(gw)
    sc.start()
    try:
        await sc.wait_until(lambda: sc.model.online, 5, "boot")
        sc.set_latency(0.3)
        before = sc.model.stats.latency_by_action.get("Heartbeat")
        assert before is None
        async with api_client(gw) as api:
            r = await api.post(
                f"/api/piles/{PILE}/commands/TriggerMessage",
                json={"payload": {"requestedMessage": "Heartbeat"}},
            )
        assert r.status_code == 200 and r.json()["response"] == {"status": "Accepted"}
        await sc.wait_until(
            lambda: "Heartbeat" in sc.model.stats.latency_by_action, 5, "heartbeat answer"
        )
        # The charger's own clock: the heartbeat sat 0.3 s in the "network".
        assert sc.model.stats.latency_by_action["Heartbeat"].max >= 0.3
    finally:
        await sc.close()


async def test_commands_from_the_ops_api_reach_the_charger(gw: Gateway) -> None:
    sc = charger(gw, reboot_seconds=0.1)
    sc.start()
    try:
        await sc.wait_until(lambda: sc.model.online, 5, "boot")
        async with api_client(gw) as api:

            async def command(action: str, payload: dict[str, Any]) -> Any:
                r = await api.post(
                    f"/api/piles/{PILE}/commands/{action}", json={"payload": payload}
                )
                assert r.status_code == 200, r.text
                return r.json()["response"]

            conf = await command("GetConfiguration", {"key": ["NumberOfConnectors"]})
            assert conf["configurationKey"][0]["value"] == "1"
            assert await command(
                "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "15"}
            ) == {"status": "Accepted"}
            assert sc.model.meter_interval == 15
            assert await command("Reset", {"type": "Soft"}) == {"status": "Accepted"}
            await sc.wait_until(lambda: sc.model.links == 2 and sc.model.online, 5, "reboot")
            await flushed(gw)
            pile = (await api.get(f"/api/piles/{PILE}")).json()
        assert pile["boot_count"] == 2 and pile["online"] is True
        assert [r for online, r in await events(gw) if not online] == ["closed_clean"]
    finally:
        await sc.close()


async def test_security_profile_1_password(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    async with running_gateway(db, basic_auth_required=True) as g:
        async with api_client(g) as api:
            r = await api.post("/api/piles", json={"pile_id": PILE})
            assert r.status_code == 201
            r = await api.put(
                f"/api/piles/{PILE}/password", json={"password": "s3cret-pass-1234567"}
            )
            assert r.status_code == 204, r.text
        wrong = charger(g, password="not-the-password")
        right = charger(g, password="s3cret-pass-1234567")
        wrong.start()
        right.start()
        try:
            await wrong.wait_until(lambda: wrong.handshake_refusals > 0, 5, "refusal")
            assert wrong.handshake_status == 401 and not wrong.connected
            await right.wait_until(lambda: right.model.online, 5, "boot")
        finally:
            await wrong.close()
            await right.close()


# --- firmware update from a central system written here -------------------------------------------
class FirmwareCentral:
    """A minimal OCPP 1.6J central system that serves a firmware image over
    HTTP on its own port and asks the charger to install it."""

    def __init__(self) -> None:
        self.boots: list[str] = []
        self.statuses: list[str] = []
        self.port = 0
        self.image = b"PILEGATE-FW DLH_XD32E_210521003\n" + bytes(range(256)) * 64
        self._ids = itertools.count(1)
        self.sent_update = False

    def http(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/fw/"):
            headers = Headers(
                [
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Length", str(len(self.image))),
                ]
            )
            return Response(200, "OK", headers, self.image)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                msg = decode(raw)
                if not isinstance(msg, Call):
                    continue
                reply: dict[str, Any] = {}
                if msg.action == "BootNotification":
                    self.boots.append(msg.payload.get("firmwareVersion", ""))
                    reply = {
                        "status": "Accepted",
                        "interval": 60,
                        "currentTime": datetime.now(UTC).isoformat(),
                    }
                elif msg.action == "FirmwareStatusNotification":
                    self.statuses.append(msg.payload["status"])
                elif msg.action == "Heartbeat":
                    reply = {"currentTime": datetime.now(UTC).isoformat()}
                await ws.send(encode_result(msg.unique_id, reply))
                if msg.action == "StatusNotification" and not self.sent_update:
                    self.sent_update = True
                    await ws.send(
                        encode_call(
                            f"c{next(self._ids)}",
                            "UpdateFirmware",
                            {
                                "location": f"http://127.0.0.1:{self.port}/fw/DLH_XD32E_210521003.bin",
                                "retrieveDate": datetime.now(UTC).isoformat(),
                            },
                        )
                    )
        except ConnectionClosed:
            pass


async def test_firmware_update_over_real_sockets() -> None:
    central = FirmwareCentral()
    async with serve(
        central.handler, "127.0.0.1", 0, process_request=central.http, subprotocols=["ocpp1.6"]
    ) as server:  # type: ignore[list-item]
        central.port = next(iter(server.sockets)).getsockname()[1]
        cfg = ChargerConfig(
            pile_id=PILE,
            firmware_version="DLH_XD32E_201110002",
            time_scale=100,
            reconnect_delay=0.05,
            validate_outgoing=True,
        )
        sc = SimulatedCharger(cfg, f"ws://127.0.0.1:{central.port}/ocpp")
        sc.start()
        try:
            await sc.wait_until(lambda: "Installed" in central.statuses, 10, "firmware installed")
        finally:
            await sc.close()
    assert central.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert central.boots == ["DLH_XD32E_201110002", "DLH_XD32E_210521003"]
    assert sc.model.links == 2


async def test_a_poke_while_the_wait_is_timing_out_is_not_an_error() -> None:
    """A user action (a flap, a plug) can land between the wait's timeout
    firing and the charger's task resuming; the poke must not raise (CI saw
    'Cannot change state of expiring Timeout' fail a scenario's flap step)."""
    sim = SimulatedCharger(ChargerConfig(pile_id=PILE), "ws://127.0.0.1:9/ocpp")
    loop = asyncio.get_running_loop()
    outcome: list[BaseException | None] = []

    def poke_now() -> None:
        try:
            sim.poke()
            outcome.append(None)
        except BaseException as e:  # the test records what poke raised
            outcome.append(e)

    async def wait() -> None:
        # Entering a timeout already due schedules its expiry with call_soon;
        # the poke is scheduled right after it, so it runs with the timeout
        # EXPIRING and the task not yet resumed, as in the field.
        async with asyncio.timeout_at(loop.time()) as cm:
            sim._cm = cm
            loop.call_soon(poke_now)
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await wait()
    assert outcome == [None]
    assert sim._poked
