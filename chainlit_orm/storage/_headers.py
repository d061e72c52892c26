"""HTTP header values stored with objects: Content-Type and Content-Disposition.

Chainlit passes a ready-made header (``attachment; filename="{name}"``) with the raw element name,
which may be non-ASCII. HTTP header values are Latin-1 on the wire (boto signs them as ASCII,
Starlette encodes them as Latin-1), so a non-ASCII name is re-encoded here once, at upload, as
RFC 6266 / RFC 5987 (``filename="ascii-fallback"; filename*=UTF-8''percent-encoded``), and every
backend stores and returns the same, valid header. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from chainlit_orm.errors import InvalidInputError

__all__ = ["build_content_disposition", "check_content_type", "normalize_content_disposition"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DISPOSITION = re.compile(
    r"^\s*(?P<type>[!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(?:;(?P<params>.*))?$", re.S
)
_QUOTED_FILENAME = re.compile(r'(?:^|;)\s*filename\s*=\s*"(?P<name>.*)"', re.S | re.I)
_BARE_FILENAME = re.compile(r"(?:^|;)\s*filename\s*=\s*(?P<name>[^;]*)", re.I)
# RFC 5987 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`"
# / "|" / "~"; everything else is percent-encoded.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"


def _has_control(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def check_content_type(mime: object) -> str:
    """Return ``mime`` if it is a usable Content-Type value.

    Raises:
        InvalidInputError: not a string, non-ASCII, or containing CR/LF (header injection).
    """
    if not isinstance(mime, str) or not mime.strip():
        raise InvalidInputError(f"invalid MIME type {mime!r}", detail=mime)
    if _has_control(mime) or not mime.isascii():
        raise InvalidInputError(
            f"invalid MIME type {mime!r}: control or non-ASCII characters", detail=mime
        )
    return mime.strip()


def _ascii_fallback(filename: str) -> str:
    decomposed = unicodedata.normalize("NFKD", filename)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in stripped)


def build_content_disposition(filename: str, disposition: str = "attachment") -> str:
    """Build an RFC 6266 Content-Disposition header for ``filename``.

    ASCII names give ``attachment; filename="name"``. Other names also get an RFC 5987
    ``filename*`` parameter, which browsers prefer, after an ASCII ``filename`` fallback for old
    clients.

    Raises:
        InvalidInputError: the disposition type is not a token or the name has control characters.
    """
    if not _TOKEN.match(disposition):
        raise InvalidInputError(f"invalid disposition type {disposition!r}", detail=disposition)
    if _has_control(filename):
        raise InvalidInputError(
            f"invalid file name {filename!r}: control characters (CR/LF) are not allowed",
            detail=filename,
        )
    fallback = _ascii_fallback(filename)
    if fallback == filename:
        return f'{disposition}; filename="{filename}"'
    encoded = quote(filename, safe=_ATTR_CHAR_SAFE, encoding="utf-8")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def normalize_content_disposition(value: str | None) -> str | None:
    """Validate the Content-Disposition given to ``upload_file`` and make it ASCII-safe.

    An ASCII value is kept verbatim: it is the caller's header. A non-ASCII value is parsed for its
    disposition type and ``filename`` and rebuilt by :func:`build_content_disposition`.

    Raises:
        InvalidInputError: the value contains CR, LF or another control character (it would let a
            file name inject response headers), or is non-ASCII without a parsable filename.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(
            f"content_disposition must be a str, got {type(value).__name__}", detail=value
        )
    if _has_control(value):
        raise InvalidInputError(
            f"invalid content_disposition {value!r}: CR, LF and other control characters are "
            "not allowed in a header",
            detail=value,
        )
    if value.isascii():
        return value
    match = _DISPOSITION.match(value)
    params = (match.group("params") or "") if match else ""
    name_match = _QUOTED_FILENAME.search(params) or _BARE_FILENAME.search(params)
    if match is None or name_match is None:
        raise InvalidInputError(
            f"non-ASCII content_disposition {value!r} has no filename parameter to re-encode; "
            "build it with chainlit_orm.storage.build_content_disposition()",
            detail=value,
        )
    filename = name_match.group("name").strip()
    return build_content_disposition(filename, match.group("type").lower())
