"""Pure helpers: key validation, Content-Disposition encoding, URL signatures."""

from __future__ import annotations

import pytest

from chainlit_orm.errors import InvalidIdentifierError, InvalidInputError
from chainlit_orm.storage import build_content_disposition, validate_key
from chainlit_orm.storage._headers import check_content_type, normalize_content_disposition
from chainlit_orm.storage._keys import meta_path, object_path
from chainlit_orm.storage._signing import derive_signing_key, sign, verify
from tests.storage.test_contract import TRAVERSAL_KEYS


@pytest.mark.parametrize("key", TRAVERSAL_KEYS)
def test_unsafe_keys_refused(key: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        validate_key(key)
    with pytest.raises(InvalidIdentifierError):
        object_path("bucket/root", key)


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "user/element/name.pdf",
        "unknown/1f0e/résumé 東京.pdf",
        "a..b",
        "...",
        "a/.hidden",
        "x" * 1024,
    ],
)
def test_safe_keys_accepted(key: str) -> None:
    assert validate_key(key) == key
    assert object_path("bucket/root", key) == f"bucket/root/{key}"
    assert object_path("/", key) == f"/{key}"
    assert meta_path("bucket/root", key) == f"bucket/root/.chainlit-orm-meta/{key}.json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ('attachment; filename="a.txt"', 'attachment; filename="a.txt"'),
        ("inline", "inline"),
        (
            'attachment; filename="résumé.pdf"',
            "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        ),
        (
            "Inline; filename=東京.txt",
            "inline; filename=\"__.txt\"; filename*=UTF-8''%E6%9D%B1%E4%BA%AC.txt",
        ),
        (
            'attachment; filename="naïve "quote".txt"',
            'attachment; filename="naive _quote_.txt"; '
            "filename*=UTF-8''na%C3%AFve%20%22quote%22.txt",
        ),
    ],
)
def test_content_disposition(value: str | None, expected: str | None) -> None:
    assert normalize_content_disposition(value) == expected


@pytest.mark.parametrize(
    "value", ['attachment; filename="a\r\n.txt"', "a\nb", "x\x00", "inline; é"]
)
def test_content_disposition_refused(value: str) -> None:
    with pytest.raises(InvalidInputError):
        normalize_content_disposition(value)


def test_build_content_disposition() -> None:
    assert build_content_disposition("report.pdf") == 'attachment; filename="report.pdf"'
    assert build_content_disposition("ü.txt", "inline") == (
        "inline; filename=\"u.txt\"; filename*=UTF-8''%C3%BC.txt"
    )
    with pytest.raises(InvalidInputError):
        build_content_disposition("a\r\nb")


def test_content_type() -> None:
    assert check_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    for bad in ("", "text/plain\r\nX: y", "tëxt/plain", None):
        with pytest.raises(InvalidInputError):
            check_content_type(bad)


def test_signatures() -> None:
    key = derive_signing_key(b"s" * 32)
    sig = sign(key, "store", "a/b.txt", 2_000_000_000)
    assert verify(key, "store", "a/b.txt", "2000000000", sig, now=1_999_999_999) is True
    assert verify(key, "store", "a/b.txt", "2000000000", sig, now=2_000_000_001) is False
    assert verify(key, "other", "a/b.txt", "2000000000", sig, now=0) is False
    assert verify(key, "store", "a/c.txt", "2000000000", sig, now=0) is False
    assert verify(key, "store", "a/b.txt", "2000000001", sig, now=0) is False
    assert verify(key, "store", "a/b.txt", "-1", sig, now=0) is False
    assert verify(key, "store", "a/b.txt", "2000000000", "é", now=0) is False
    assert verify(derive_signing_key(b"t" * 32), "store", "a/b.txt", "2000000000", sig, 0) is False
