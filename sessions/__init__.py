"""sessions: pure state machines (presence, transactions, whitelist sync).

Events in, actions out, time passed in as an argument; see each module.
"""

from .presence import (
    DEFAULT_POLICY,
    Action,
    DeclareOffline,
    DuplicateConnection,
    IllegalTransition,
    LinkEvent,
    LinkState,
    OfflineReason,
    PresenceError,
    PresencePolicy,
    PresenceState,
    PresenceTracker,
    SendPing,
    TrackerStats,
    UnknownConnection,
)

__all__ = [
    "DEFAULT_POLICY",
    "Action",
    "DeclareOffline",
    "DuplicateConnection",
    "IllegalTransition",
    "LinkEvent",
    "LinkState",
    "OfflineReason",
    "PresenceError",
    "PresencePolicy",
    "PresenceState",
    "PresenceTracker",
    "SendPing",
    "TrackerStats",
    "UnknownConnection",
]
