"""Firmware tasks end to end: real WebSockets, the ops API and the database.

Chargers are :class:`tests.support.ocpp_client.ChargePoint` instances that
answer UpdateFirmware like a pile does: FirmwareStatusNotification
Downloading, Downloaded, Installing, Installed, then a reboot (close,
reconnect, BootNotification with the new firmwareVersion). Stage timeouts
and backoffs are fractions of a second so the file stays fast on both
databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.cli import main as cli_main
from gateway.storage.models import OutboxEvent
from tests.support.gateway import TOKEN, api_client, flushed, latest_presence, running_gateway
from tests.support.ocpp_client import ChargePoint, now_iso

OLD = "DLH_XD32E_201110002"
NEW = "DLH_XD32E_210521003"
IMAGE = bytes(range(256)) * 40  # 10 KiB


def pile(n: int) -> str:
    """AC pile n of operator 0001 in region 442000."""
    return f"442000000100001{n:05d}"


class InFlight:
    """How many chargers are between UpdateFirmware and their verdict."""

    def __init__(self) -> None:
        self.now = 0
        self.max = 0

    def up(self) -> None:
        self.now += 1
        self.max = max(self.max, self.now)

    def down(self) -> None:
        self.now -= 1


class Charger:
    """A pile that upgrades when told. ``plan`` says what each attempt does:

    * ``ok``: download, install, reboot with the new version;
    * ``download_failed``: Downloading then DownloadFailed;
    * ``silent``: accept and then say nothing (the download times out);
    * ``unchanged``: install, then reboot with the old version;
    * ``stall``: Downloading, then wait for :attr:`go` before going on.
    """

    def __init__(
        self,
        pile_id: str,
        port: int,
        plan: tuple[str, ...] = ("ok",),
        tracker: InFlight | None = None,
    ) -> None:
        self.pile_id = pile_id
        self.port = port
        self.plan = plan
        self.version = OLD
        self.updates: list[dict[str, Any]] = []
        self.tracker = tracker or InFlight()
        self.go = asyncio.Event()
        self.cp: ChargePoint | None = None
        self._work: set[asyncio.Task[None]] = set()

    async def connect(self, *, boot: bool = True) -> None:
        self.cp = await ChargePoint.connect(self.port, self.pile_id)
        self.cp.handlers["UpdateFirmware"] = self._on_update
        if boot:
            assert (await self.cp.boot(firmwareVersion=self.version))["status"] == "Accepted"

    async def close(self) -> None:
        if self.cp is not None:
            await self.cp.close()

    async def status(self, status: str) -> None:
        assert self.cp is not None
        await self.cp.call("FirmwareStatusNotification", {"status": status})

    async def charging(self, charging: bool) -> None:
        assert self.cp is not None
        await self.cp.call(
            "StatusNotification",
            {
                "connectorId": 1,
                "errorCode": "NoError",
                "status": "Charging" if charging else "Available",
                "timestamp": now_iso(),
            },
        )

    def _on_update(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.updates.append(payload)
        behaviour = self.plan[min(len(self.updates), len(self.plan)) - 1]
        self.tracker.up()
        task = asyncio.create_task(self._upgrade(behaviour))
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return {}

    async def _upgrade(self, behaviour: str) -> None:
        await asyncio.sleep(0.01)  # the CALLRESULT goes out first
        if behaviour == "silent":
            self.tracker.down()
            return
        await self.status("Downloading")
        if behaviour == "download_failed":
            self.tracker.down()
            await self.status("DownloadFailed")
            return
        if behaviour == "stall":
            await self.go.wait()
        await self.status("Downloaded")
        await self.status("Installing")
        await self.status("Installed")
        if behaviour != "unchanged":
            self.version = NEW
        self.tracker.down()
        await self.close()  # reboot
        await self.connect()


@pytest.fixture(autouse=True)
def image_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "images"
    monkeypatch.setenv("PILEGATE_FIRMWARE_DIR", str(directory))
    monkeypatch.delenv("PILEGATE_FIRMWARE_BASE_URL", raising=False)
    return directory


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, command_timeout=2) as g:
        yield g


async def upload(api: httpx.AsyncClient, data: bytes = IMAGE, version: str = NEW) -> dict[str, Any]:
    r = await api.post(
        "/api/firmware/images",
        files={"file": ("xd32e-210521003.bin", data, "application/octet-stream")},
        data={"version": version, "model": "XD32E"},
    )
    assert r.status_code == 201, r.text
    image: dict[str, Any] = r.json()
    return image


FAST = {
    "retries": {"max_attempts": 1},
    "timeouts": {"download_seconds": 5, "install_seconds": 5, "reboot_seconds": 5},
}


async def create_task(api: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    r = await api.post("/api/firmware/tasks", json=spec)
    assert r.status_code == 201, r.text
    task: dict[str, Any] = r.json()
    return task


async def wait_task(
    gw: Gateway,
    api: httpx.AsyncClient,
    task_id: int,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 15,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        await flushed(gw)
        task: dict[str, Any] = (await api.get(f"/api/firmware/tasks/{task_id}")).json()
        if done(task):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} did not get there: {task['summary']}")
        await asyncio.sleep(0.05)


def finished(task: dict[str, Any]) -> bool:
    return task["state"] in ("completed", "stopped", "cancelled") and task["in_flight"] == 0


def row_of(task: dict[str, Any], pile_id: str) -> dict[str, Any]:
    return next(r for r in task["piles"] if r["pile_id"] == pile_id)


# --------------------------------------------------------------------------
async def test_one_pile_upgrades_and_is_verified_by_its_boot(gw: Gateway) -> None:
    assert gw.services is not None and gw.store is not None
    gw.services.events.enabled = True  # as with MQTT configured: events go to the outbox
    charger = Charger(pile(1), gw.ocpp_port)
    await charger.connect()
    async with api_client(gw) as api:
        image = await upload(api)
        task = await create_task(api, image_id=image["id"], targets=[pile(1)], **FAST)
        task = await wait_task(gw, api, task["id"], finished)
        assert task["state"] == "completed", task
        assert task["summary"] == "1 verified (of 1)"
        row = row_of(task, pile(1))
        assert row["state"] == "verified" and row["reported_version"] == NEW
        assert row["from_version"] == OLD and row["attempts"] == 1 and row["sends"] == 1
        events = (await api.get(f"/api/firmware/tasks/{task['id']}/events")).json()
    path = [e["to_state"] for e in events if e["pile_id"] == pile(1)]
    assert path == ["sent", "downloading", "downloaded", "installing", "installed", "verified"]
    assert [e["to_state"] for e in events if e["pile_id"] is None] == ["running", "completed"]
    async with gw.store.sessions() as s:
        published = [
            json.loads(p)["data"]
            for p in await s.scalars(
                select(OutboxEvent.payload)
                .where(OutboxEvent.topic.endswith("/events/firmware.transition"))
                .order_by(OutboxEvent.id)
            )
        ]
    assert [p["to_state"] for p in published] == path
    assert published[-1] == {
        "task_id": task["id"],
        "from_state": "installed",
        "to_state": "verified",
        "reason": f"booted with the target version {NEW}",
    }
    assert len(charger.updates) == 1
    assert charger.updates[0]["location"] == image["url"]
    assert set(charger.updates[0]) == {"location", "retrieveDate"}
    await charger.close()


async def test_fifty_piles_roll_out_in_waves_and_a_failing_wave_stops_the_task(
    gw: Gateway,
) -> None:
    """Canary 1, then waves of 10, at most 5 in flight. Wave 1 has one failure
    (10 %, under the 20 % threshold); wave 2 has three (30 %): the task stops
    and the 29 piles after it never get UpdateFirmware."""
    tracker = InFlight()
    failing = {4, 13, 16, 19}
    chargers = [
        Charger(
            pile(n),
            gw.ocpp_port,
            ("download_failed",) if n in failing else ("ok",),
            tracker,
        )
        for n in range(1, 51)
    ]
    await asyncio.gather(*(c.connect() for c in chargers))
    async with api_client(gw) as api:
        image = await upload(api)
        task = await create_task(
            api,
            image_id=image["id"],
            targets=[c.pile_id for c in chargers],
            rollout={"canary": 1, "waves": [10], "max_concurrent": 5, "failure_threshold": 0.2},
            **FAST,
        )
        assert task["total"] == 50
        task = await wait_task(gw, api, task["id"], finished, timeout=30)
        assert task["state"] == "stopped"
        assert task["reason"] == "failure rate 30% > threshold 20% in wave 2"
        assert task["counts"]["verified"] == 17
        assert task["counts"]["failed"] == 4
        assert task["counts"]["pending"] == 29
        waves = [(w["index"], w["members"], w["failed"], w["passed"]) for w in task["waves"]]
        assert waves == [(0, 1, 0, True), (1, 10, 1, True), (2, 10, 3, False)]
        failed = row_of(task, pile(13))
        assert failed["state"] == "failed" and failed["last_error"].startswith("download failed")
        events = (await api.get(f"/api/firmware/tasks/{task['id']}/events")).json()
        stop = [e for e in events if e["pile_id"] is None and e["to_state"] == "stopped"]
        assert stop and stop[0]["reason"] == task["reason"]
        r = await api.post(f"/api/firmware/tasks/{task['id']}/resume")
        assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_task_transition"
        # The pile rows page (rollout order), the counts stay the task's.
        page = (
            await api.get(f"/api/firmware/tasks/{task['id']}", params={"limit": 20, "offset": 40})
        ).json()
        assert page["piles_total"] == 50 and page["counts"] == task["counts"]
        assert [r["pile_id"] for r in page["piles"]] == [r["pile_id"] for r in task["piles"][40:]]
        pending = (
            await api.get(
                f"/api/firmware/tasks/{task['id']}",
                params={"state": "pending", "limit": 5},
            )
        ).json()
        assert pending["piles_total"] == 29 and len(pending["piles"]) == 5
        bad = await api.get(f"/api/firmware/tasks/{task['id']}", params={"limit": 0})
        assert bad.status_code == 422
    assert tracker.max <= 5
    assert [len(c.updates) for c in chargers] == [1] * 21 + [0] * 29
    await asyncio.gather(*(c.close() for c in chargers))


async def test_a_failed_download_is_retried_after_backoff(gw: Gateway) -> None:
    """Attempt 1: DownloadFailed; attempt 2: no status at all (download
    timeout); attempt 3 succeeds."""
    charger = Charger(pile(2), gw.ocpp_port, ("download_failed", "silent", "ok"))
    await charger.connect()
    async with api_client(gw) as api:
        image = await upload(api)
        task = await create_task(
            api,
            image_id=image["id"],
            targets=[pile(2)],
            retries={"max_attempts": 3, "backoff_seconds": 0.2, "backoff_factor": 1},
            timeouts={"download_seconds": 2, "install_seconds": 5, "reboot_seconds": 5},
        )
        task = await wait_task(gw, api, task["id"], finished)
        row = row_of(task, pile(2))
        assert (row["state"], row["attempts"], row["sends"]) == ("verified", 3, 3)
        assert row["last_error"] == "download timed out after 2 s (attempt 2 of 3)"
        events = (await api.get(f"/api/firmware/tasks/{task['id']}/events?pile={pile(2)}")).json()
        path = [e["to_state"] for e in events]
        assert path.count("retry_wait") == 2 and path[-1] == "verified"
        assert events[path.index("retry_wait")]["reason"] == "download failed (attempt 1 of 3)"
    assert len(charger.updates) == 3
    await charger.close()


async def test_a_pile_offline_at_start_is_upgraded_when_it_returns(gw: Gateway) -> None:
    charger = Charger(pile(3), gw.ocpp_port)
    await charger.connect()
    await charger.close()
    await latest_presence(gw, pile(3), "closed_clean")
    async with api_client(gw) as api:
        image = await upload(api)
        task = await create_task(api, image_id=image["id"], targets=[pile(3)], **FAST)
        task = await wait_task(
            gw, api, task["id"], lambda t: row_of(t, pile(3))["state"] == "waiting"
        )
        assert row_of(task, pile(3))["reason"] == "offline"
        assert task["state"] == "running"
        await charger.connect()
        task = await wait_task(gw, api, task["id"], finished)
        assert task["state"] == "completed"
        assert row_of(task, pile(3))["state"] == "verified"
    assert len(charger.updates) == 1
    await charger.close()


async def test_a_charging_pile_is_deferred_until_idle(gw: Gateway) -> None:
    charger = Charger(pile(4), gw.ocpp_port)
    await charger.connect()
    await charger.charging(True)
    async with api_client(gw) as api:
        image = await upload(api)
        # A selector this time: every AC pile of operator 0001 still running OLD.
        selector = {"operator": "0001", "kind": "AC", "current_versions": [OLD]}
        task = await create_task(api, image_id=image["id"], targets=selector, **FAST)
        assert task["total"] == 1 and task["spec"]["targets"] == selector
        task = await wait_task(
            gw, api, task["id"], lambda t: row_of(t, pile(4))["state"] == "waiting"
        )
        assert row_of(task, pile(4))["reason"] == "charging: deferred until idle"
        await asyncio.sleep(0.2)
        assert charger.updates == []
        await charger.charging(False)
        task = await wait_task(gw, api, task["id"], finished)
        assert row_of(task, pile(4))["state"] == "verified"
    assert len(charger.updates) == 1
    await charger.close()


async def test_version_unchanged_after_install_is_a_failure(gw: Gateway) -> None:
    charger = Charger(pile(5), gw.ocpp_port, ("unchanged",))
    await charger.connect()
    async with api_client(gw) as api:
        image = await upload(api)
        task = await create_task(
            api, image_id=image["id"], targets=[pile(5)], **{**FAST, "retries": {"max_attempts": 3}}
        )
        task = await wait_task(gw, api, task["id"], finished)
        row = row_of(task, pile(5))
        assert row["state"] == "failed"
        assert row["reason"] == f"version unchanged: booted with {OLD} again"
        # Alone in the task, the pile is its canary: the task stops.
        assert task["status_text"] == "stopped: canary failed: 1 of 1 canary piles failed"
    assert len(charger.updates) == 1  # not retried: the image does not take
    await charger.close()


async def test_a_gateway_restart_mid_task_sends_no_second_update(database_url: str) -> None:
    """Two piles are downloading and one waits for a slot when the gateway
    stops; the new gateway resumes from the database: the two finish without
    a second UpdateFirmware and the third is dispatched once."""
    async with running_gateway(database_url, command_timeout=2) as gw1:
        chargers = [Charger(pile(10 + n), gw1.ocpp_port, ("stall",)) for n in range(3)]
        await asyncio.gather(*(c.connect() for c in chargers))
        async with api_client(gw1) as api:
            image = await upload(api)
            task = await create_task(
                api,
                image_id=image["id"],
                targets=[c.pile_id for c in chargers],
                rollout={"canary": 0, "max_concurrent": 2},
                **FAST,
            )
            task_id = task["id"]
            await wait_task(gw1, api, task_id, lambda t: t["counts"]["downloading"] == 2)
    assert [len(c.updates) for c in chargers] == [1, 1, 0]
    async with running_gateway(database_url, command_timeout=2) as gw2:
        for c in chargers:
            c.port = gw2.ocpp_port
        async with api_client(gw2) as api:
            await flushed(gw2)
            task = (await api.get(f"/api/firmware/tasks/{task_id}")).json()
            assert task["state"] == "running"
            assert (task["counts"]["downloading"], task["counts"]["pending"]) == (2, 1)
            # Back without a reboot (only the link was lost), still downloading.
            await asyncio.gather(*(c.connect(boot=False) for c in chargers[:2]))
            await chargers[2].connect()
            for c in chargers:
                c.go.set()
            task = await wait_task(gw2, api, task_id, finished)
            assert task["state"] == "completed"
            assert task["counts"]["verified"] == 3
    assert [len(c.updates) for c in chargers] == [1, 1, 1]
    await asyncio.gather(*(c.close() for c in chargers))


async def test_image_upload_range_download_and_clear_errors(gw: Gateway) -> None:
    async with api_client(gw) as api:
        image = await upload(api)
        assert image["sha256"] == hashlib.sha256(IMAGE).hexdigest()
        assert image["size"] == len(IMAGE) and image["external"] is False
        listed = (await api.get("/api/firmware/images")).json()
        assert [i["id"] for i in listed] == [image["id"]]
        # Raw bytes with the fields in the query string.
        r = await api.post(
            "/api/firmware/images?version=DLH_XD32E_210601001&model=XD32E&filename=b.bin",
            content=b"x" * 100,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201 and r.json()["size"] == 100, r.text
        external = await api.post(
            "/api/firmware/images",
            json={
                "version": "DLH_XD32E_210701001",
                "model": "XD32E",
                "url": "https://cdn.example.com/fw/xd32e.bin",
                "sha256": "AB" * 32,
                "size": 123,
            },
        )
        assert external.status_code == 201 and external.json()["url"].startswith("https://cdn")
        r = await api.post(
            "/api/firmware/images",
            files={"file": ("a.bin", b"abc", "application/octet-stream")},
            data={"model": "XD32E"},
        )
        assert r.status_code == 400 and r.json()["error"]["message"] == "version is required"

    # Chargers download without a token; HEAD and ranges for resuming.
    async with httpx.AsyncClient() as anon:
        url = image["url"]
        head = await anon.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(IMAGE))
        assert head.headers["accept-ranges"] == "bytes"
        part = await anon.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 10-19/{len(IMAGE)}"
        assert part.content == IMAGE[10:20]
        rest = await anon.get(url, headers={"Range": f"bytes={len(IMAGE) - 5}-"})
        assert rest.status_code == 206 and rest.content == IMAGE[-5:]
        bad = await anon.get(url, headers={"Range": f"bytes={len(IMAGE)}-"})
        assert bad.status_code == 416
        assert bad.headers["content-range"] == f"bytes */{len(IMAGE)}"
        whole = await anon.get(url)
        assert whole.status_code == 200 and whole.content == IMAGE
        assert (await anon.get(url.replace("xd32e", "other"))).status_code == 404
        assert (
            await anon.get(f"http://127.0.0.1:{gw.api_port}/api/firmware/images")
        ).status_code == 401

    async with api_client(gw) as api:
        r = await api.post("/api/piles", json={"pile_id": pile(8), "model": "XD60"})
        assert r.status_code == 201, r.text
        cases: list[tuple[dict[str, Any], int, str, str | None]] = [
            ({"image_id": 999, "targets": [pile(1)]}, 404, "unknown_image", None),
            ({"image_id": image["id"], "targets": [pile(77)]}, 400, "unknown_pile", None),
            (
                {"image_id": image["id"], "targets": {"operator": "12"}},
                400,
                "invalid_task",
                "targets.operator",
            ),
            ({"image_id": image["id"], "targets": {}}, 400, "invalid_task", "targets"),
            (
                {"image_id": image["id"], "targets": [pile(1)], "rollout": {"max_concurrent": 0}},
                400,
                "invalid_task",
                "rollout.max_concurrent",
            ),
            (
                {"image_id": image["id"], "targets": {"operator": "0009"}},
                400,
                "no_piles",
                "targets",
            ),
            ({"image_id": image["id"], "targets": [pile(8)]}, 400, "model_mismatch", None),
        ]
        for body, status, code, field in cases:
            r = await api.post("/api/firmware/tasks", json=body)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert error["code"] == code, (body, error)
            assert error.get("field") == field, (body, error)
        r = await api.post(
            "/api/firmware/tasks", json={"image_id": image["id"], "targets": [pile(77)]}
        )
        assert pile(77) in r.json()["error"]["message"] and r.json()["error"]["piles"] == [pile(77)]
        r = await api.post(
            "/api/firmware/tasks", json={"targets": [pile(1)], "rollout": {"max_concurent": 3}}
        )
        assert r.status_code == 422 and "max_concurent" in r.json()["error"]["message"]
        assert (await api.get("/api/firmware/tasks/999")).status_code == 404
        assert (await api.post("/api/firmware/tasks/999/pause")).status_code == 404


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def _without_logs(text: str) -> str:
    """The CLI's output without the gateway's log lines (same process here)."""
    return "".join(line for line in text.splitlines(True) if not _LOG_LINE.match(line))


def _cli(*args: str) -> int:
    return cli_main(["firmware", *args])


async def test_cli_upload_create_status_pause_resume_cancel(
    gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILEGATE_API_TOKEN", TOKEN)
    api_url = f"http://127.0.0.1:{gw.api_port}"
    charger = Charger(pile(6), gw.ocpp_port)
    await charger.connect()
    await charger.charging(True)  # keeps the task open while we look at it
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(IMAGE)

    async def run(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(_cli, *args, "--api-url", api_url)
        out, err = capsys.readouterr()
        return code, _without_logs(out), _without_logs(err)

    code, out, _ = await run("upload", str(firmware), "--version", NEW, "--model", "XD32E")
    assert code == 0, out
    assert "image 1:" in out and hashlib.sha256(IMAGE).hexdigest() in out
    code, out, err = await run(
        "create-task",
        "--image",
        "1",
        "--piles",
        pile(6),
        "--canary",
        "0",
        "--download-timeout",
        "5",
    )
    assert code == 0, err
    assert out.startswith("task 1 created: 1 pile")
    await flushed(gw)
    code, out, _ = await run("status", "1")
    assert code == 0
    assert "task 1: running" in out and "1 waiting (of 1)" in out
    assert pile(6) in out and "charging: deferred until idle" in out
    code, out, _ = await run("status", "1", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["pile_id"], r["state"]) for r in rows] == [(pile(6), "waiting")]
    code, out, err = await run("create-task", "--image", "1", "--piles", pile(6))
    assert code == 1
    assert f"pile {pile(6)} is still in firmware task 1" in err and "pile_busy" in err
    code, out, _ = await run("pause", "1")
    assert code == 0 and "task 1: paused" in out
    code, out, err = await run("pause", "1")
    assert code == 1 and "task 1 is paused: it cannot be paused" in err
    code, out, _ = await run("resume", "1")
    assert code == 0 and "task 1: running" in out
    code, out, _ = await run("cancel", "1")
    assert code == 0 and "task 1: cancelled" in out
    code, out, err = await run("status", "42")
    assert code == 1 and "no firmware task 42" in err
    code, out, err = await run("status", "1", "--api-token", "wrong")
    assert code == 1 and "bearer token is not valid" in err
    assert charger.updates == []
    await charger.close()


async def test_unreachable_api_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = await asyncio.to_thread(_cli, "status", "1", "--api-url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert "cannot reach the ops API" in capsys.readouterr().err


async def test_a_cloud_board_pile_upgrades_through_the_same_task(database_url: str) -> None:
    """CBP/1: 0x94 out, 0x93 accepted, 0x95 statuses, then a login with the new version."""
    from gateway.cloudboard import CbpServer
    from protocol.cloudboard import messages as m
    from tests.support.cbp_client import AC as CBP_PILE
    from tests.support.cbp_client import CbpCharger

    updates: list[m.FirmwareUpdate] = []
    work: set[asyncio.Task[None]] = set()
    rebooted: list[CbpCharger] = []

    async with running_gateway(
        database_url, cbp_host="127.0.0.1", cbp_port=0, command_timeout=2
    ) as gw:
        port = next(e for e in gw.extensions if isinstance(e, CbpServer)).port
        charger = await CbpCharger.connect(port, CBP_PILE)

        async def upgrade(task_id: int) -> None:
            await asyncio.sleep(0.01)
            for code in (
                m.FirmwareStatusCode.DOWNLOADING,
                m.FirmwareStatusCode.DOWNLOADED,
                m.FirmwareStatusCode.INSTALLING,
                m.FirmwareStatusCode.INSTALLED,
            ):
                status = m.FirmwareStatus(CBP_PILE, task_id, code, 100)
                await charger.request(status, m.MessageType.FIRMWARE_STATUS_ACK)
            await charger.close()  # reboot
            rebooted.append(await CbpCharger.connect(port, CBP_PILE))
            await rebooted[0].login(firmware_version=NEW)

        def on_update(message: m.Message) -> m.Message:
            assert isinstance(message, m.FirmwareUpdate)
            updates.append(message)
            task = asyncio.create_task(upgrade(message.task_id))
            work.add(task)
            task.add_done_callback(work.discard)
            return m.FirmwareUpdateReply(CBP_PILE, message.task_id, m.FirmwareUpdateResult.ACCEPTED)

        charger.answers[m.MessageType.FIRMWARE_UPDATE] = on_update
        await charger.login()  # reports OLD
        async with api_client(gw) as api:
            image = await upload(api)
            task = await create_task(api, image_id=image["id"], targets=[CBP_PILE], **FAST)
            task = await wait_task(gw, api, task["id"], finished)
        assert task["state"] == "completed"
        row = row_of(task, CBP_PILE)
        assert (row["state"], row["from_version"], row["reported_version"]) == (
            "verified",
            OLD,
            NEW,
        )
        await rebooted[0].close()
    assert len(updates) == 1
    sent = updates[0]
    assert (sent.task_id, sent.target_version, sent.image_size) == (task["id"], NEW, len(IMAGE))
    assert (sent.url, sent.sha256) == (image["url"], hashlib.sha256(IMAGE).digest())
