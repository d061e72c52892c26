"""Object-key validation: the only gate between caller-built keys and the filesystem.

Security invariant: every key that reaches a filesystem call has passed :func:`validate_key` and
been joined by :func:`object_path`, so it can neither be absolute nor climb out of the configured
root, whatever the backend does with ``..``, backslashes or empty segments. Keep this module pure
(no I/O) so it can be tested exhaustively.
"""

from __future__ import annotations

import posixpath

from chainlit_orm.errors import InvalidIdentifierError

__all__ = ["MAX_KEY_LENGTH", "META_DIR", "meta_path", "object_path", "validate_key"]

#: S3's own limit on key length (in UTF-8 bytes); Azure allows more, local disks less per segment.
MAX_KEY_LENGTH = 1024

#: Reserved first segment under the root holding the local/memory sidecar metadata records. Keys
#: may not start with it, so a metadata record can never be read, overwritten or deleted as an
#: object, and never shadows one.
META_DIR = ".chainlit-orm-meta"


def _refuse(key: object, reason: str) -> InvalidIdentifierError:
    return InvalidIdentifierError(f"invalid object key {key!r}: {reason}", detail=key)


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a safe, relative object key, else raise.

    Keys are built by callers from ids and file names (Chainlit's SQLAlchemy layer uses
    ``{user_id}/{element_id}/{element_name}``), so the rules refuse anything a file name could use
    to escape: absolute paths, ``.``/``..`` and empty segments, backslashes (a separator on
    Windows and to some HTTP stacks), NUL and other control characters.

    Raises:
        InvalidIdentifierError: the key is not a non-empty string or breaks a rule above.
    """
    if not isinstance(key, str):
        raise _refuse(key, f"expected str, got {type(key).__name__}")
    if not key:
        raise _refuse(key, "empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        raise _refuse(key, f"longer than {MAX_KEY_LENGTH} bytes")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in key):
        raise _refuse(key, "contains NUL or a control character")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in key):
        raise _refuse(key, "contains a lone surrogate")
    if "\\" in key:
        raise _refuse(key, "contains a backslash")
    if key.startswith("/"):
        raise _refuse(key, "absolute keys are not allowed")
    segments = key.split("/")
    if any(seg == "" for seg in segments):
        raise _refuse(key, "contains an empty segment ('//' or a trailing '/')")
    if any(seg in (".", "..") for seg in segments):
        raise _refuse(key, "contains a '.' or '..' segment")
    if segments[0] == META_DIR:
        raise _refuse(key, f"the first segment {META_DIR!r} is reserved")
    return key


def object_path(root: str, key: str) -> str:
    """Join a validated ``key`` under ``root`` and prove the result stays inside it.

    The containment check is redundant with :func:`validate_key` by design: if a rule is ever
    relaxed, a key that would resolve outside the root still cannot reach the filesystem.

    Raises:
        InvalidIdentifierError: the key is invalid or would resolve outside ``root``.
    """
    validate_key(key)
    base = root.rstrip("/")
    joined = f"{base}/{key}"
    normal = posixpath.normpath(joined)
    if normal != joined or not normal.startswith(base + "/"):
        raise _refuse(key, "resolves outside the configured root")
    return joined


def meta_path(root: str, key: str) -> str:
    """Return the sidecar metadata path of ``key`` (local and memory backends)."""
    validate_key(key)
    return f"{root.rstrip('/')}/{META_DIR}/{key}.json"
