"""HMAC-SHA256 signatures for the expiring read URLs of the local and memory backends.

The URL carries ``expires`` (a Unix timestamp) and ``sig``; the signature covers the storage name,
the key and the expiry, so a URL cannot be replayed for another object, another storage or a later
time. The signing key is derived from the configured secret with a fixed label (domain
separation): the fallback secret is ``CHAINLIT_AUTH_SECRET``, which also signs Chainlit's JWTs, and
a signature over attacker-chosen keys must never be usable as anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading

__all__ = ["derive_signing_key", "process_secret", "sign", "verify"]

logger = logging.getLogger(__name__)

_LABEL = b"chainlit-orm/storage/read-url/v1"
_process_secret: bytes | None = None
_process_secret_lock = threading.Lock()


def process_secret() -> bytes:
    """Return the random secret generated once per process (the last-resort fallback).

    URLs signed with it stop working when the process restarts and are refused by the other
    workers of a multi-process deployment, hence the warning.
    """
    global _process_secret
    with _process_secret_lock:
        if _process_secret is None:
            _process_secret = secrets.token_bytes(32)
            logger.warning(
                "chainlit-orm storage: no CHAINLIT_ORM_STORAGE_SECRET or CHAINLIT_AUTH_SECRET; "
                "read URLs are signed with a random per-process secret and break on restart "
                "or across workers"
            )
        return _process_secret


def derive_signing_key(secret: bytes) -> bytes:
    """Derive the URL-signing key from the configured secret (see the module docstring)."""
    return hmac.new(secret, _LABEL, hashlib.sha256).digest()


def sign(signing_key: bytes, name: str, key: str, expires_at: int) -> str:
    """Return the URL-safe signature of ``(name, key, expires_at)``.

    Fields are joined with ``\\n``, which neither a storage name nor a valid key can contain, so
    the message is unambiguous.
    """
    message = f"{name}\n{key}\n{expires_at}".encode()
    digest = hmac.new(signing_key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(
    signing_key: bytes, name: str, key: str, expires: str, signature: str, now: float
) -> bool:
    """Check a URL's ``expires``/``sig`` pair in constant time; False if bad or expired.

    ``expires`` must be 1 to 12 ASCII digits: ``str.isdigit`` alone also accepts ``"²"`` and
    other Unicode digits that ``int()`` refuses.
    """
    if not (0 < len(expires) <= 12 and expires.isascii() and expires.isdigit()):
        return False
    expected = sign(signing_key, name, key, int(expires))
    valid = hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace"))
    return valid and int(expires) >= now
