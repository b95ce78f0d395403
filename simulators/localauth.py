"""The charger's local authorization list (OCPP 1.6 §3.5, SendLocalList,
GetLocalListVersion) and authorization cache. Pure: times are arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

UpdateStatus = Literal["Accepted", "Failed", "NotSupported", "VersionMismatch"]


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    status: str  # Accepted | Blocked | Expired | Invalid | ConcurrentTx
    expiry: datetime | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_wire(cls, info: dict[str, Any]) -> IdTagInfo:
        expiry = info.get("expiryDate")
        return cls(
            status=str(info["status"]),
            expiry=parse_time(expiry) if isinstance(expiry, str) else None,
            parent_id_tag=info.get("parentIdTag"),
        )

    def verdict(self, now: float) -> str:
        """The status as it holds at ``now`` (epoch seconds)."""
        if (
            self.status == "Accepted"
            and self.expiry is not None
            and (self.expiry.timestamp() <= now)
        ):
            return "Expired"
        return self.status


@dataclass(slots=True)
class LocalAuthList:
    """Version semantics (OCPP 1.6 §5.15, §6.31): version 0 means "empty",
    -1 (from :meth:`reported_version`) "local lists disabled". A full update
    replaces the list and takes its version; a differential update must bring
    a version higher than the current one (else ``VersionMismatch``), adds or
    replaces the entries that carry an ``idTagInfo`` and removes those that
    do not. An update that would exceed the size limits fails and changes
    nothing."""

    max_length: int = 1000
    send_max: int = 500
    enabled: bool = True
    version: int = 0
    entries: dict[str, IdTagInfo] = field(default_factory=dict)

    def reported_version(self) -> int:
        if not self.enabled:
            return -1
        return self.version if self.entries else 0

    def apply(
        self, list_version: int, update_type: str, items: list[dict[str, Any]]
    ) -> UpdateStatus:
        if not self.enabled:
            return "NotSupported"
        if len(items) > self.send_max:
            return "Failed"
        if update_type == "Full":
            new: dict[str, IdTagInfo] = {}
            for item in items:
                info = item.get("idTagInfo")
                if info is None:
                    return "Failed"
                new[str(item["idTag"])] = IdTagInfo.from_wire(info)
        elif update_type == "Differential":
            if list_version <= self.version:
                return "VersionMismatch"
            new = dict(self.entries)
            for item in items:
                info = item.get("idTagInfo")
                if info is None:
                    new.pop(str(item["idTag"]), None)
                else:
                    new[str(item["idTag"])] = IdTagInfo.from_wire(info)
        else:
            return "Failed"
        if len(new) > self.max_length:
            return "Failed"
        self.entries = new
        self.version = list_version
        return "Accepted"

    def lookup(self, id_tag: str, now: float) -> str | None:
        """The verdict for ``id_tag``, or None when it is not on the list."""
        if not self.enabled:
            return None
        info = self.entries.get(id_tag)
        return None if info is None else info.verdict(now)


@dataclass(slots=True)
class AuthCache:
    """Verdicts of past Authorize / StartTransaction replies (OCPP 1.6 §3.4)."""

    enabled: bool = True
    max_entries: int = 1000
    entries: dict[str, IdTagInfo] = field(default_factory=dict)

    def remember(self, id_tag: str, info: IdTagInfo) -> None:
        if not self.enabled:
            return
        self.entries.pop(id_tag, None)
        self.entries[id_tag] = info
        while len(self.entries) > self.max_entries:
            self.entries.pop(next(iter(self.entries)))

    def lookup(self, id_tag: str, now: float) -> str | None:
        if not self.enabled:
            return None
        info = self.entries.get(id_tag)
        return None if info is None else info.verdict(now)

    def clear(self) -> None:
        self.entries.clear()
