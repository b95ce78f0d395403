"""A charge point's local authorization list, as OCPP 1.6 §5.10/§5.15 and
§7.47 describe it, for the test charger (tests.support.ocpp_client)."""

from __future__ import annotations

from typing import Any

from tests.support.ocpp_client import ChargePoint


class LocalList:
    def __init__(self, *, max_chunk: int | None = 250, capacity: int | None = 20000) -> None:
        self.version = 0
        self.entries: dict[str, dict[str, Any]] = {}
        self.max_chunk = max_chunk
        self.capacity = capacity
        self.messages: list[dict[str, Any]] = []
        self.fail_next: str | None = None  # "Failed", "VersionMismatch" or "close"

    def attach(self, cp: ChargePoint) -> None:
        cp.handlers["GetConfiguration"] = self.get_configuration
        cp.handlers["GetLocalListVersion"] = lambda p: {"listVersion": self.version}
        cp.handlers["SendLocalList"] = lambda p: self.send_local_list(cp, p)

    def get_configuration(self, p: dict[str, Any]) -> dict[str, Any]:
        keys = []
        if self.max_chunk is not None:
            keys.append(
                {"key": "SendLocalListMaxLength", "readonly": True, "value": str(self.max_chunk)}
            )
        if self.capacity is not None:
            keys.append(
                {"key": "LocalAuthListMaxLength", "readonly": True, "value": str(self.capacity)}
            )
        return {"configurationKey": keys}

    async def send_local_list(self, cp: ChargePoint, p: dict[str, Any]) -> dict[str, Any]:
        self.messages.append(p)
        if self.fail_next == "close":
            self.fail_next = None
            cp.abort()
            return {"status": "Failed"}
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return {"status": status}
        items = p.get("localAuthorizationList") or []
        if self.max_chunk is not None and len(items) > self.max_chunk:
            return {"status": "Failed"}
        if p["updateType"] == "Full":
            new: dict[str, dict[str, Any]] = {}
        else:
            # §7.47: a differential update needs a higher version
            if p["listVersion"] <= self.version:
                return {"status": "VersionMismatch"}
            new = dict(self.entries)
        for item in items:
            if "idTagInfo" in item:
                new[item["idTag"]] = item["idTagInfo"]
            else:
                new.pop(item["idTag"], None)
        if self.capacity is not None and len(new) > self.capacity:
            return {"status": "Failed"}
        self.entries = new
        self.version = p["listVersion"]
        return {"status": "Accepted"}
