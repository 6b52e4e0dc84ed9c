"""Opening ``encr`` payloads of a Vercel deployment, with the deployment's key.

world-vercel encrypts every payload of a run (inputs, outputs, step results, hook payloads,
stream chunks) with a per-run AES-256 key derived from the deployment's 32-byte secret
(``VERCEL_DEPLOYMENT_KEY``, base64): ``HKDF-SHA256(key, salt=32 zero bytes,
info="<projectId>|<runId>")`` (``deriveRunKey`` in ``@workflow/world-vercel``). The payload is
``b"encr" || nonce(12) || ciphertext || tag(16)``, and the plaintext is again a
format-prefixed payload (``b"devl"…``), as ``@workflow/core``'s ``maybeDecrypt`` reads it.

Keys are secrets: nothing here logs them or puts them in an error message or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import WorkflowWorldError

__all__ = ["DeploymentKey", "KeyConfigError", "RunKey", "derive_run_key"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ENCRYPTED_PREFIX = b"encr"


class KeyConfigError(WorkflowWorldError):
    """The key the user supplied is unusable (not base64, wrong length, no project id)."""


def derive_run_key(deployment_key: bytes, project_id: str, run_id: str) -> bytes:
    """world-vercel's ``deriveRunKey``: the run's AES-256 key from the deployment's."""
    if len(deployment_key) != KEY_BYTES:
        raise KeyConfigError(f"the deployment key must be {KEY_BYTES} bytes, got {len(deployment_key)}")
    if not project_id:
        raise KeyConfigError("deriving a run key needs the project id (WORKFLOW_VERCEL_PROJECT or VERCEL_PROJECT_ID)")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=bytes(32), info=f"{project_id}|{run_id}".encode())
    return hkdf.derive(deployment_key)


class RunKey:
    """One run's AES-256-GCM key: opens (and, for stream writes, seals) its ``encr`` payloads."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"a run key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "RunKey(<secret>)"

    def decrypt(self, payload: bytes) -> bytes:
        """``b"encr"…`` → the format-prefixed plaintext. Raises ``ValueError`` when it does not open."""
        if payload[:4] != ENCRYPTED_PREFIX:
            raise ValueError("not an encr payload")
        body = payload[4:]
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise ValueError(f"encrypted payload too short ({len(body)} bytes)")
        try:
            return self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], None)
        except InvalidTag:
            raise ValueError("the key does not open this payload (authentication failed)") from None

    def encrypt(self, plaintext: bytes) -> bytes:
        """The ``b"encr"…`` payload ``maybeEncrypt`` would write for ``plaintext``."""
        nonce = os.urandom(NONCE_BYTES)
        return ENCRYPTED_PREFIX + nonce + self._aead.encrypt(nonce, plaintext, None)


class DeploymentKey:
    """The deployment's key and project id: hands out each run's key (a bounded cache of them)."""

    __slots__ = ("_key", "_project_id", "_runs", "_limit")

    def __init__(self, key: bytes, project_id: str, *, cache: int = 4096) -> None:
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"the deployment key must be {KEY_BYTES} bytes, got {len(key)}")
        if not project_id:
            raise KeyConfigError("decrypting needs the project id (WORKFLOW_VERCEL_PROJECT or VERCEL_PROJECT_ID)")
        self._key = key
        self._project_id = project_id
        self._runs: OrderedDict[str, RunKey] = OrderedDict()
        self._limit = cache

    @classmethod
    def from_base64(cls, text: str, project_id: str) -> DeploymentKey:
        """``VERCEL_DEPLOYMENT_KEY`` as the platform sets it (standard base64)."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError("the deployment key is not valid base64") from None
        return cls(raw, project_id)

    def __repr__(self) -> str:
        return f"DeploymentKey(<secret>, project_id={self._project_id!r})"

    def for_run(self, run_id: str) -> RunKey:
        found = self._runs.get(run_id)
        if found is None:
            found = RunKey(derive_run_key(self._key, self._project_id, run_id))
            self._runs[run_id] = found
            if len(self._runs) > self._limit:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return found
