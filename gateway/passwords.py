"""Per-pile passwords for OCPP security profile 1 (HTTP Basic auth).

Stored as salted PBKDF2-SHA256. Charger passwords are machine-generated
(16-40 characters, OCPP 1.6 security whitepaper §3.1), so a moderate
iteration count suffices; successful verifications are cached by a digest
of the presented credentials so a reconnect storm does not cost one key
derivation per handshake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 20_000
MIN_LENGTH = 16
MAX_LENGTH = 40


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    salt_b64 = base64.b64encode(salt).decode()
    return f"pbkdf2_sha256${iterations}${salt_b64}${base64.b64encode(dk).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algo, iters, salt_b64, dk_b64 = encoded.split("$")
        if algo != "pbkdf2_sha256":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(dk_b64)
        dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(iters))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, expected)


class VerifiedCache:
    """Remembers (pile, credentials digest, stored hash) triples that verified."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._ok: dict[str, str] = {}
        self._max = max_entries

    @staticmethod
    def _key(pile_id: str, password: str) -> str:
        return hashlib.sha256(f"{pile_id}\0{password}".encode()).hexdigest()

    def verify(self, pile_id: str, password: str, encoded: str) -> bool:
        key = self._key(pile_id, password)
        if self._ok.get(key) == encoded:
            return True
        if not verify_password(password, encoded):
            return False
        if len(self._ok) >= self._max:
            self._ok.clear()
        self._ok[key] = encoded
        return True
