"""Encryption at rest of agent credentials (Fernet), with key rotation (MultiFernet).

Credentials are sealed in a versioned JSON envelope, so even an empty credential set yields a token over
100 bytes and a token never reveals whether the agent has credentials. Decrypted values live only in the
delivery step's memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENVELOPE_VERSION = 1


class CredentialDecryptionError(Exception):
    """A stored credential token cannot be read with any configured key."""


class CredentialCipher:
    """Encrypts with the first key; decrypts with any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is required")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, credentials: dict[str, Any]) -> bytes:
        envelope = {"version": ENVELOPE_VERSION, "credentials": credentials}
        return self._fernet.encrypt(json.dumps(envelope, separators=(",", ":")).encode())

    def decrypt(self, token: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken as exc:
            raise CredentialDecryptionError(
                "stored credentials cannot be decrypted with the configured EXTERNAL_AGENT_ENCRYPTION_KEY"
            ) from exc
        return envelope["credentials"]

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token under the first key (MultiFernet.rotate keeps its timestamp)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise CredentialDecryptionError("a stored credential token matches none of the keys") from exc
