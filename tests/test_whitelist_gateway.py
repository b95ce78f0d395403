"""Tokens, named whitelists and local-list sync, end to end (SQLite and
PostgreSQL), with a test charger that keeps a real OCPP 1.6 local list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from tests.support.gateway import api_client, running_gateway
from tests.support.local_list import LocalList
from tests.support.ocpp_client import ChargePoint, now_iso

AC = "44200000010000100001"
DC = "44030800010000200005"


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, command_timeout=5) as g:
        yield g


@pytest.fixture
async def api(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(gw) as c:
        yield c


async def make_list(api: httpx.AsyncClient, name: str, n: int, assign: dict[str, Any]) -> None:
    rows = ["id_tag,type,status,lists"]
    assert (await api.post("/api/whitelists", json={"name": name})).status_code == 201
    rows += [f"{name.upper()}{i:06d},card,accepted,{name}" for i in range(n)]
    r = await api.post("/api/tokens/import", content="\n".join(rows) + "\n")
    assert r.status_code == 200, r.text
    r = await api.put(f"/api/whitelists/{name}/assignments", json=[assign])
    assert r.status_code == 200, r.text


async def until_status(
    api: httpx.AsyncClient, pile: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = (await api.get(f"/api/piles/{pile}/whitelist")).json()
        if view["status"] == status and view["engine"] and view["engine"]["in_flight"] is None:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"whitelist of {pile} not {status}: {view}")
        await asyncio.sleep(0.05)


async def connect(gw: Gateway, pile: str, local: LocalList) -> ChargePoint:
    cp = await ChargePoint.connect(gw.ocpp_port, pile)
    local.attach(cp)
    return cp


# --- tokens --------------------------------------------------------------------------
async def test_token_validation_and_duplicates(api: httpx.AsyncClient) -> None:
    bad_vin = await api.post("/api/tokens", json={"id_tag": "LSVAA4182E212345", "type": "vin"})
    assert bad_vin.status_code == 400 and "17" in bad_vin.json()["error"]["message"]
    test_vin = await api.post("/api/tokens", json={"id_tag": "1234567890QWERTYU", "type": "vin"})
    assert test_vin.status_code == 201
    rules = {w["rule"] for w in test_vin.json()["warnings"]}
    assert rules and all(r.startswith("vin") for r in rules)
    lower = await api.post("/api/tokens", json={"id_tag": "1m8gdm9axkp042788", "type": "vin"})
    assert lower.status_code == 201 and lower.json()["id_tag"] == "1M8GDM9AXKP042788"
    dup = await api.post("/api/tokens", json={"id_tag": "1234567890qwertyu", "type": "vin"})
    assert dup.status_code == 409 and "1234567890QWERTYU" in dup.json()["error"]["message"]
    pw = await api.post("/api/tokens", json={"id_tag": "12", "type": "password"})
    assert pw.status_code == 400
    unknown_pile = await api.post(
        "/api/tokens", json={"id_tag": "CARD9", "type": "card", "pile_ids": [DC]}
    )
    assert unknown_pile.status_code == 404 and DC in unknown_pile.json()["error"]["message"]
    bad_op = await api.post(
        "/api/tokens", json={"id_tag": "CARD9", "type": "card", "operators": ["12"]}
    )
    assert bad_op.status_code == 400
    blocked = await api.post("/api/tokens/1234567890QWERTYU/block")
    assert blocked.json()["status"] == "blocked"


async def test_csv_import_is_atomic_and_export_round_trips(api: httpx.AsyncClient) -> None:
    await api.post("/api/whitelists", json={"name": "fleet"})
    bad = (
        "id_tag,type,status,lists\n"
        "A1,card,accepted,fleet\n"
        "A1,card,accepted,\n"  # duplicate
        "B2,vin,accepted,\n"  # not a VIN
        "C3,card,accepted,nolist\n"  # unknown list
    )
    r = await api.post("/api/tokens/import", content=bad)
    assert r.status_code == 400
    lines = {row["line"] for row in r.json()["error"]["rows"]}
    assert lines == {3, 4, 5}
    assert (await api.get("/api/tokens")).json() == []  # nothing imported
    good = (
        "id_tag,type,status,expiry,operators,lists\n"
        "A1,card,accepted,,0001,fleet\n"
        "PW1234,password,blocked,2030-01-01T00:00:00Z,,\n"
    )
    r = await api.post("/api/tokens/import", content=good)
    assert r.json() == {"created": 2, "updated": 0}
    exported = (await api.get("/api/tokens.csv")).text
    assert (
        exported.splitlines()[0]
        == "id_tag,type,status,expiry,parent_id_tag,pile_ids,operators,lists"
    )
    assert "A1,card,accepted,,,,0001,fleet" in exported
    assert "PW1234,password,blocked,2030-01-01T00:00:00+00:00,,,," in exported
    again = await api.post("/api/tokens/import", content=exported)
    assert again.json() == {"created": 0, "updated": 2}


async def test_lists_and_assignments(api: httpx.AsyncClient) -> None:
    await api.post("/api/piles", json={"pile_id": AC})
    await api.post("/api/piles", json={"pile_id": DC})
    assert (await api.post("/api/whitelists", json={"name": "dc-fleet"})).status_code == 201
    assert (await api.post("/api/whitelists", json={"name": "dc-fleet"})).status_code == 409
    await api.post("/api/tokens", json={"id_tag": "CARD1", "type": "card"})
    await api.post("/api/tokens", json={"id_tag": "CARD2", "type": "card", "pile_ids": [AC]})
    missing = await api.put("/api/whitelists/dc-fleet/tokens", json={"add": ["CARD1", "NOPE"]})
    assert missing.status_code == 404 and "NOPE" in missing.json()["error"]["message"]
    ok = await api.put("/api/whitelists/dc-fleet/tokens", json={"add": ["CARD1", "CARD2"]})
    assert ok.json()["token_count"] == 2
    bad = await api.put("/api/whitelists/dc-fleet/assignments", json=[{"kinds": ["XX"]}])
    assert bad.status_code == 400
    unknown = await api.put(
        "/api/whitelists/dc-fleet/assignments", json=[{"pile_ids": ["81000000560000100003"]}]
    )
    assert unknown.status_code == 404
    await api.put("/api/whitelists/dc-fleet/assignments", json=[{"kinds": ["DC"]}])
    dc = (await api.get(f"/api/piles/{DC}/whitelist")).json()
    ac = (await api.get(f"/api/piles/{AC}/whitelist")).json()
    # CARD2 is bound to the AC pile, so it stays off the DC pile's list
    assert dc["desired_count"] == 1 and dc["difference"]["add"] == ["CARD1"]
    assert ac["desired_count"] == 0 and dc["lists"] == ["dc-fleet"]
    assert ac["status"] == "unmanaged" and dc["managed"] is True
    assert (await api.get("/api/piles/99/whitelist")).status_code == 400


async def test_the_pile_view_reads_without_writing(gw: Gateway, api: httpx.AsyncClient) -> None:
    # A GET used to persist the desired version and re-write the status it
    # had read, racing with the sync engine (an in_sync overwritten by a
    # stale pending). Reading twice changes nothing stored.
    assert gw.services is not None
    await api.post("/api/piles", json={"pile_id": DC})
    await make_list(api, "view-only", 2, {"pile_ids": [DC]})
    store = next(e for e in gw.extensions if type(e).__name__ == "WhitelistService").store
    before = await store.pile_state(DC)
    for _ in range(2):
        view = (await api.get(f"/api/piles/{DC}/whitelist")).json()
        assert view["status"] == "pending" and view["desired_count"] == 2
        assert view["difference"]["add"] == ["VIEW-ONLY000000", "VIEW-ONLY000001"]
    assert await store.pile_state(DC) == before


async def test_recomputing_waits_for_the_piles_lock(gw: Gateway, api: httpx.AsyncClient) -> None:
    # The engine stores a sync's status under the pile's lock. Recomputing
    # the desired list read the status outside it and wrote it back: a
    # connect and the poller both recomputing a new pile once wrote
    # "pending" over the engine's "in_sync" (seen in CI). The read and the
    # write now wait for the lock.
    await api.post("/api/piles", json={"pile_id": DC})
    await make_list(api, "locked", 1, {"pile_ids": [DC]})
    service = next(e for e in gw.extensions if type(e).__name__ == "WhitelistService")
    async with service._lock(DC):
        task = asyncio.create_task(service.desired_for(DC))
        await asyncio.sleep(0.3)
        assert not task.done()
        assert await service.store.pile_state(DC) is None  # nothing written yet
    version, entries, _ = await asyncio.wait_for(task, 10)
    assert version == 1 and list(entries) == ["LOCKED000000"]
    state = await service.store.pile_state(DC)
    assert state is not None and state.desired_version == 1


# --- sync ------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "chunk", "messages"), [(0, 250, 1), (1, 250, 1), (1000, 250, 4)])
async def test_lists_of_several_sizes_reach_the_pile(
    gw: Gateway, api: httpx.AsyncClient, n: int, chunk: int, messages: int
) -> None:
    await make_list(api, "all", n, {"kinds": ["AC", "DC"]})
    local = LocalList(max_chunk=chunk)
    cp = await connect(gw, AC, local)
    view = await until_status(api, AC, "in_sync")
    assert len(local.entries) == n and len(local.messages) == messages
    assert view["held_count"] == n and view["difference"] == {"add": [], "remove": [], "change": []}
    assert local.version == view["held_version"]
    assert local.messages[0]["updateType"] == "Full"
    await cp.close()


async def test_ten_thousand_entries(gw: Gateway, api: httpx.AsyncClient) -> None:
    await make_list(api, "big", 10_000, {"operators": ["0001"]})
    local = LocalList(max_chunk=2000, capacity=20000)
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync", timeout=60)
    assert len(local.entries) == 10_000 and len(local.messages) == 5
    await cp.close()


async def test_capacity_is_an_error_never_a_truncation(gw: Gateway, api: httpx.AsyncClient) -> None:
    await make_list(api, "toolong", 10, {"pile_ids": [AC]} if False else {"kinds": ["AC"]})
    local = LocalList(capacity=5)
    cp = await connect(gw, AC, local)
    view = await until_status(api, AC, "failed")
    assert "10" in view["reason"] and "5" in view["reason"]
    assert local.messages == [] and local.entries == {}
    failed = (await api.get("/api/whitelist/status", params={"status": "failed"})).json()
    assert [f["pile_id"] for f in failed] == [AC]
    await cp.close()


async def test_differential_updates_and_version_mismatch_recovery(
    gw: Gateway, api: httpx.AsyncClient
) -> None:
    await make_list(api, "fleet", 3, {"kinds": ["AC"]})
    local = LocalList()
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    # a change is sent as a differential update
    await api.post("/api/tokens", json={"id_tag": "NEWCARD", "type": "card"})
    await api.put(
        "/api/whitelists/fleet/tokens", json={"add": ["NEWCARD"], "remove": ["FLEET000000"]}
    )
    deadline = time.monotonic() + 20
    while "NEWCARD" not in local.entries:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert local.messages[-1]["updateType"] == "Differential"
    assert "FLEET000000" not in local.entries and len(local.entries) == 3
    # someone changed the pile's list behind the gateway's back
    local.version += 10
    local.entries["ROGUE"] = {"status": "Accepted"}
    await api.post("/api/tokens/NEWCARD/block")
    await until_status(api, AC, "in_sync")
    deadline = time.monotonic() + 20
    while local.entries.get("NEWCARD", {}).get("status") != "Blocked" or "ROGUE" in local.entries:
        assert time.monotonic() < deadline, (local.entries, local.messages[-3:])
        await asyncio.sleep(0.05)
    assert any(m["updateType"] == "Full" for m in local.messages[1:])
    await cp.close()


async def test_pile_drops_in_the_middle_of_a_sync_and_resumes(
    gw: Gateway, api: httpx.AsyncClient
) -> None:
    await make_list(api, "chunks", 30, {"kinds": ["AC"]})
    local = LocalList(max_chunk=10)
    local.fail_next = None
    cp = await connect(gw, AC, local)
    original = local.send_local_list
    calls = 0

    async def drop_on_second(cp_: ChargePoint, p: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            cp.abort()
            await asyncio.sleep(5)
        return await original(cp_, p)

    cp.handlers["SendLocalList"] = lambda p: drop_on_second(cp, p)
    await cp.wait_closed(timeout=20)
    assert len(local.entries) == 10  # the first chunk landed
    cp2 = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    assert len(local.entries) == 30
    # the resumed sync did not start again from scratch
    assert sum(1 for m in local.messages if m["updateType"] == "Full") == 1
    await cp2.close()


async def test_a_reconnect_waits_for_the_record_of_the_last_reply(
    gw: Gateway, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pile confirms a SendLocalList and drops the link at once; the
    # gateway is still storing what it now holds when the pile is back. The
    # new connection reads that record only once it is stored, so the list
    # is not sent again (it was, when the read came first).
    await make_list(api, "slow-record", 5, {"kinds": ["AC"]})
    service = next(e for e in gw.extensions if type(e).__name__ == "WhitelistService")
    store = service.store
    original = store.save_pile_state
    slow = asyncio.Event()

    async def save_pile_state(pile_id: str, now: datetime, **values: Any) -> None:
        if values.get("held_entries") is not None:
            slow.set()
            await asyncio.sleep(1.0)
        await original(pile_id, now, **values)

    monkeypatch.setattr(store, "save_pile_state", save_pile_state)
    local = LocalList()
    cp = await connect(gw, AC, local)
    await asyncio.wait_for(slow.wait(), 10)  # the reply is in, its record on its way
    await cp.close()
    sent = len(local.messages)
    assert sent == 1 and len(local.entries) == 5
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    await asyncio.sleep(0.2)
    versions = [(m["listVersion"], m["updateType"]) for m in local.messages]
    assert len(local.messages) == sent, versions
    await cp.close()


async def test_resync_after_reconnect_when_the_version_differs(
    gw: Gateway, api: httpx.AsyncClient
) -> None:
    await make_list(api, "fleet", 5, {"kinds": ["AC"]})
    local = LocalList()
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    sent = len(local.messages)
    await cp.close()
    local.version, local.entries = 0, {}  # the charger lost its list (factory reset)
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    assert len(local.entries) == 5 and len(local.messages) > sent
    # reconnecting with the right version sends nothing
    sent = len(local.messages)
    await cp.close()
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    await asyncio.sleep(0.2)
    assert len(local.messages) == sent
    assert (await api.post(f"/api/piles/{AC}/whitelist/resync")).status_code == 202
    deadline = time.monotonic() + 20
    while len(local.messages) == sent:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert local.messages[-1]["updateType"] == "Full"
    await cp.close()
    r = await api.post(f"/api/piles/{AC}/whitelist/resync")
    assert r.status_code == 409 and "offline" in r.json()["error"]["message"]


async def test_offline_charge_from_the_local_list_is_reconciled(
    gw: Gateway, api: httpx.AsyncClient
) -> None:
    await make_list(api, "fleet", 2, {"kinds": ["AC"]})
    local = LocalList()
    cp = await connect(gw, AC, local)
    await until_status(api, AC, "in_sync")
    await cp.close()
    # offline: the charger authorizes FLEET000001 from its local list
    assert "FLEET000001" in local.entries
    started = datetime.now(UTC) - timedelta(minutes=20)
    cp = await connect(gw, AC, local)
    tx = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "FLEET000001", "meterStart": 0, "timestamp": now_iso(started)},
    )
    await cp.call(
        "StopTransaction",
        {
            "transactionId": tx["transactionId"],
            "meterStop": 3000,
            "timestamp": now_iso(started + timedelta(minutes=15)),
        },
    )
    rec = (await api.get(f"/api/transactions/{tx['transactionId']}")).json()
    assert (rec["auth_method"], rec["offline"], rec["energy_wh"]) == ("card", True, 3000)
    assert tx["idTagInfo"]["status"] == "Accepted"
    await cp.close()


async def test_cli_drives_tokens_and_lists(
    gw: Gateway, api: httpx.AsyncClient, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys

    from tests.support.gateway import TOKEN

    env = {
        **os.environ,
        "PILEGATE_API_TOKEN": TOKEN,
        "PILEGATE_API_URL": f"http://127.0.0.1:{gw.api_port}",
    }

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # The gateway serves the API in this event loop: run the CLI without
        # blocking it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())

    await api.post("/api/piles", json={"pile_id": AC})
    assert (await cli("tokens", "add", "CARD77", "--type", "card")).returncode == 0
    bad = await cli("tokens", "add", "SHORTVIN", "--type", "vin")
    assert bad.returncode == 1 and "17" in bad.stderr
    assert (await cli("whitelist", "create", "site7")).returncode == 0
    assert (await cli("whitelist", "add", "site7", "CARD77")).returncode == 0
    assert (await cli("whitelist", "assign", "site7", "--pile", AC)).returncode == 0
    status = await cli("whitelist", "status", AC)
    assert status.returncode == 0 and '"add": [\n      "CARD77"' in status.stdout
    out = tmp_path / "tokens.csv"
    assert (await cli("tokens", "export", "-o", str(out))).returncode == 0
    assert "CARD77,card,accepted" in out.read_text()
    offline = await cli("whitelist", "resync", AC)
    assert offline.returncode == 1 and "offline" in offline.stderr
