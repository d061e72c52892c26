"""Property-based fuzzing of every write and lookup Chainlit makes, on every backend.

Hypothesis draws Chainlit's shapes (``StepDict``, ``update_thread`` arguments, ``Element``s,
``Feedback``, users, cursors, search strings), mixing values within Chainlit's declared types with
values outside them or outside the documented limit set (:mod:`chainlit_orm.models.limits`). For
each call a *reference model* written here, from the documented rules and not from the code, says
what must happen:

* the value is storable: the call succeeds and the layer reads back exactly what the model
  predicts (``get_step``/``get_thread``/``get_element``/``get_user``, compared strictly: a bool
  never equals 1, a string never equals a list);
* it is not: the call raises the typed error the model names (``InvalidInputError`` and its
  subclasses, or ``NotFoundError`` for an unknown user) and nothing is written: the raw rows (SQL
  tables, DynamoDB items) of the thread are counted, and the storage directory is listed.

It runs on SQLite, PostgreSQL, MariaDB and DynamoDB (moto), each with a ``file://`` storage in a
temp directory, under the ``ci`` Hypothesis profile (derandomized, bounded; see conftest.py).
Each finding the fuzzing made is kept as an ``@example`` (or a plain test below) naming it.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import chainlit as cl
import pytest
import sqlalchemy as sa
from chainlit.context import init_http_context
from chainlit.step import StepDict
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User
from hypothesis import event, example, given
from hypothesis import strategies as st

from chainlit_orm import FsspecStorage
from chainlit_orm.errors import (
    ChainlitORMError,
    InvalidCursorError,
    InvalidIdentifierError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import CONTRACT_BACKENDS

BACKENDS = ("sqlite", "postgres", "mariadb", "dynamodb")

# --------------------------------------------------------------------------- the environment


@dataclass
class Env:
    """One backend with its layer, storage directory and two persisted users."""

    name: str
    layer: ChainlitLayer
    handle: Any
    files: Path
    user: PersistedUser
    other: PersistedUser
    cursor_threads: bool = False

    async def rows_of_thread(self, thread_id: str) -> int:
        """The raw rows (items) stored for ``thread_id``: the thread, its steps, elements and
        feedback, counted in the database itself."""
        if self.name == "dynamodb":
            import boto3

            from tests.aws import MOTO_ENDPOINT, REGION

            def count() -> int:
                client = boto3.client("dynamodb", endpoint_url=MOTO_ENDPOINT, region_name=REGION)
                result = client.query(
                    TableName=self.handle, KeyConditionExpression="PK = :p",
                    ExpressionAttributeValues={":p": {"S": f"THREAD#{thread_id}"}},
                    ConsistentRead=True, Select="COUNT")
                return int(result["Count"])

            return await asyncio.to_thread(count)
        models = self.layer.models
        total = 0
        async with self.layer.backend.engine.connect() as conn:  # type: ignore[attr-defined]
            for entity, column in (("thread", "id"), ("step", "threadId"),
                                   ("element", "threadId"), ("feedback", "threadId")):
                table = models.table(entity)
                total += (await conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(
                        table.c[column] == thread_id))).scalar_one()
        return total

    def stored_files(self, thread_id: str) -> list[str]:
        """The objects stored under the thread's prefix, and their sidecar records."""
        roots = (self.files / "threads" / thread_id,
                 self.files / ".chainlit-orm-meta" / "threads" / thread_id)
        return sorted(str(p.relative_to(self.files)) for root in roots
                      for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module", params=BACKENDS)
async def fuzz(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Env]:
    entry = CONTRACT_BACKENDS[request.param]
    files = tmp_path_factory.mktemp(f"fuzz-files-{request.param}")
    async with entry.open(tmp_path_factory.mktemp(f"fuzz-{request.param}")) as handle:
        storage = FsspecStorage(f"file://{files}", mount=False, secret="fuzz-secret-0123456789")
        layer = await entry.new_layer(handle, storage)
        try:
            user = await layer.create_user(User(identifier=f"fuzz-{uuid.uuid4().hex}"))
            other = await layer.create_user(User(identifier=f"fuzz-{uuid.uuid4().hex}"))
            assert user is not None and other is not None
            yield Env(request.param, layer, handle, files, user, other)
        finally:
            await layer.close()


# ------------------------------------------------------------------------- the reference


class Refused(Exception):
    """The reference model's verdict that a call must raise ``error`` and write nothing."""

    def __init__(self, error: type[ChainlitORMError], why: str) -> None:
        super().__init__(why)
        self.error = error


def _container_depth(value: Any) -> int:
    """Nested arrays/objects around the innermost value (0 for a scalar); iterative, so a
    document 1,000 levels deep is measured too."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, above = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, above + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, above + 1) for v in item)
        else:
            deepest = max(deepest, above)
            continue
        deepest = max(deepest, above + 1)
    return deepest


def ref_text(value: Any, what: str, max_chars: int | None = None) -> str:
    """Text is a str of valid Unicode without NUL, within ``max_chars`` characters."""
    if not isinstance(value, str):
        raise Refused(InvalidInputError, f"{what} is not a string")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Refused(InvalidInputError, f"{what} is not storable text")
    if max_chars is not None and len(value) > max_chars:
        raise Refused(InvalidInputError, f"{what} is too long")
    return str(value)


def ref_json_value(value: Any, what: str) -> Any:
    """A JSON value as it reads back (tuples are arrays), or Refused."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**38:
            raise Refused(InvalidInputError, f"{what}: integer too large")
        return int(value)
    if isinstance(value, float):
        if type(value) is not float or not math.isfinite(value) or (
                value != 0 and not 1e-130 <= abs(value) < 1e16):
            raise Refused(InvalidInputError, f"{what}: number out of range")
        return value
    if isinstance(value, str):
        return ref_text(value, what)
    if isinstance(value, list | tuple):
        return [ref_json_value(v, what) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key == "":
                raise Refused(InvalidInputError, f"{what}: bad key {key!r}")
            out[ref_text(key, what)] = ref_json_value(item, what)
        return out
    raise Refused(InvalidInputError, f"{what}: {type(value).__name__} is not JSON")


def ref_document(value: Any, what: str, *, levels: int = 32) -> dict[str, Any]:
    """A JSON document (a dict) nested at most ``levels`` levels counting the innermost value."""
    if not isinstance(value, dict):
        raise Refused(InvalidInputError, f"{what} is not a dict")
    if _container_depth(value) > levels - 1:
        raise Refused(InvalidInputError, f"{what} is nested too deep")
    normalized: dict[str, Any] = ref_json_value(value, what)
    return normalized


def ref_timestamp(value: Any, what: str) -> str:
    """ISO-8601 text or a datetime between years 1 and 9999 in UTC, read back in the
    fixed-width form ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; naive means UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        ref_text(value, what)
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        head, dot, rest = text.partition(".")
        if dot:  # fractional seconds: any number of digits, kept to microseconds
            digits = ""
            while rest and rest[0] in "0123456789":
                digits, rest = digits + rest[0], rest[1:]
            text = f"{head}.{(digits + '000000')[:6]}{rest}"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise Refused(InvalidInputError, f"{what} is not a timestamp") from None
    else:
        raise Refused(InvalidInputError, f"{what} is not a timestamp")
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise Refused(InvalidInputError, f"{what} is outside the years 1-9999") from None
    return moment.isoformat(timespec="microseconds") + "Z"


def ref_uuid(value: Any, what: str) -> str:
    try:
        if not isinstance(value, str) or len(value.replace("-", "")) != 32:
            raise ValueError(value)
        return str(uuid.UUID(value))
    except ValueError:
        raise Refused(InvalidIdentifierError, f"{what} is not a UUID") from None


#: What Chainlit's ``get_step``/``get_thread`` step dicts hold: StepDict's keys but feedback.
STEP_KEYS = tuple(k for k in StepDict.__annotations__ if k != "feedback")
STEP_BOOLS = ("isError", "waitForAnswer", "defaultOpen", "autoCollapse")
STEP_DOCS = ("metadata", "generation", "modes")
STEP_TEXTS = ("input", "output", "language", "command", "icon")
STEP_TIMES = ("createdAt", "start", "end")


def ref_step(data: Any, *, create: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(columns, unknown keys) of a step write as they read back, or Refused."""
    if not isinstance(data, Mapping):
        raise Refused(InvalidInputError, "not a dict")
    out: dict[str, Any] = {}
    out["id"] = ref_uuid(data.get("id"), "id")
    if not data.get("threadId"):
        raise Refused(InvalidInputError, "no threadId")
    out["threadId"] = ref_uuid(data["threadId"], "threadId")
    if data.get("parentId") is not None:
        out["parentId"] = ref_uuid(data["parentId"], "parentId")
    out["name"] = ref_text(data.get("name"), "name")
    out["type"] = ref_text(data.get("type"), "type", 191)
    if type(data.get("streaming")) is not bool:
        raise Refused(InvalidInputError, "streaming")
    out["streaming"] = data["streaming"]
    unknown: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("id", "threadId", "parentId", "name", "type", "streaming", "feedback"):
            continue
        if key not in STEP_KEYS:
            unknown[key] = value
            continue
        if key == "createdAt" and create and not value:
            out[key] = "<now>"
            continue
        if value is None:
            continue
        if key in STEP_BOOLS:
            if type(value) is not bool:
                raise Refused(InvalidInputError, key)
            out[key] = value
        elif key in STEP_DOCS:
            out[key] = ref_document(value, key)
        elif key in STEP_TEXTS:
            out[key] = ref_text(value, key)
        elif key in STEP_TIMES:
            out[key] = ref_timestamp(value, key)
        elif key == "tags":
            if not isinstance(value, list | tuple):
                raise Refused(InvalidInputError, "tags")
            out[key] = [ref_text(t, "tag") for t in value]
        elif key == "showInput":
            if type(value) is not bool:
                ref_text(value, key, 191)
                if value.lower() in ("true", "false"):
                    raise Refused(InvalidInputError, "showInput reads back as a bool")
            out[key] = value
        else:  # pragma: no cover - every StepDict key is listed above
            raise AssertionError(key)
    if create and "createdAt" not in out:
        out["createdAt"] = "<now>"
    if unknown:  # kept in one overflow document: one level deeper than sent
        unknown = ref_document(unknown, "unknown keys")
    return out, unknown


def step_read(columns: Mapping[str, Any], unknown: Mapping[str, Any]) -> dict[str, Any]:
    """The dict ``get_step`` gives for stored columns: every StepDict key, None when unset,
    metadata ``{}`` and texts ``""`` when unset, plus the unknown keys."""
    read = dict.fromkeys(STEP_KEYS)
    read.update(columns)
    if read["metadata"] is None:
        read["metadata"] = {}
    for key in ("input", "output"):
        if read[key] is None:
            read[key] = ""
    for key, value in unknown.items():
        read.setdefault(key, value)
    return read


def same(got: Any, want: Any, path: str = "") -> None:
    """Strict equality: bools are not numbers, a str is not a list, dicts have the same keys;
    numbers compare by value (DynamoDB gives 1.0 back as 1)."""
    if want == "<now>":
        assert isinstance(got, str) and len(got) == 27 and got.endswith("Z"), (path, got)
        return
    if isinstance(want, bool) or isinstance(got, bool):
        assert type(got) is bool and got == want, (path, got, want)
    elif isinstance(want, int | float):
        assert isinstance(got, int | float) and got == want, (path, got, want)
    elif isinstance(want, str):
        assert type(got) is str and got == want, (path, got, want)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, sorted(got), sorted(want))
        for key in want:
            same(got[key], want[key], f"{path}.{key}")
    else:
        assert got is None and want is None, (path, got, want)


async def expect(call: Callable[[], Any], verdict: Refused | None) -> bool:
    """Run ``call``; True if it succeeded. A refusal must be the model's typed error."""
    event("stored" if verdict is None else f"refused: {verdict.error.__name__}")
    if verdict is None:
        await call()
        return True
    with pytest.raises(verdict.error):
        await call()
    return False


# ------------------------------------------------------------------------------ strategies

GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                    max_size=24)
BAD_TEXT = st.one_of(
    st.builds(lambda a, b: f"{a}\ud800{b}", GOOD_TEXT, GOOD_TEXT),
    st.builds(lambda a, b: f"{a}\udfff{b}", GOOD_TEXT, GOOD_TEXT),
    st.builds(lambda a: f"{a}\x00", GOOD_TEXT),
)
KEYS = st.one_of(GOOD_TEXT.filter(bool), st.sampled_from(
    ['"', "\\", "a.b", "$", "[0]", "$.x", "é", "İ", "🙂", " ", "*", "'", "favorite", "-",
     "-x", "\x1f", "\n"]))
GOOD_FLOAT = st.one_of(  # zero, or a magnitude in [1e-130, 1e16), of either sign
    st.just(0.0), st.just(-0.0),
    st.builds(lambda m, sign: sign * m, st.floats(1e-130, 1e16, exclude_max=True),
              st.sampled_from([1.0, -1.0])))
GOOD_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(10**38) + 1, 10**38 - 1),
                      GOOD_FLOAT, GOOD_TEXT)
BAD_LEAF = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e16, 1e-200, 10**40, -(10**38)]),
    st.just(Decimal("1.5")), st.just(datetime(2026, 1, 1, tzinfo=UTC)), st.just(b"bytes"),
    st.just({1, 2}), BAD_TEXT,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A good value or a bad one, even odds (a plain ``one_of`` leans to the bad side here)."""
    return st.booleans().flatmap(lambda is_bad: bad if is_bad else good)


@st.composite
def one_bad(draw: st.DrawFn, fields: Mapping[str, tuple[st.SearchStrategy[Any],
                                                      st.SearchStrategy[Any]]]) -> dict[str, Any]:
    """Keyword arguments within the limits; half of the time one of them outside."""
    args = {key: draw(good) for key, (good, _) in fields.items()}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(fields)))
        args[key] = draw(fields[key][1])
    return args


def _nest(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def json_values(*, bad: bool) -> st.SearchStrategy[Any]:
    leaf = st.one_of(GOOD_LEAF, BAD_LEAF) if bad else GOOD_LEAF
    keys = st.one_of(KEYS, st.sampled_from(["", 1])) if bad else KEYS
    tree = st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.tuples(kids, kids),
        st.dictionaries(keys, kids, max_size=3)), max_leaves=8)
    if not bad:
        return tree
    return st.one_of(tree, st.integers(27, 34).map(_nest))


def documents(*, bad: bool = True) -> st.SearchStrategy[Any]:
    doc = st.dictionaries(KEYS, json_values(bad=bad), max_size=4)
    if not bad:
        return doc
    return st.one_of(doc, doc, doc, st.sampled_from([[1], "text", 5]),
                     st.integers(28, 34).map(lambda n: {"deep": _nest(n)}),
                     st.dictionaries(st.sampled_from(["", 1]), GOOD_LEAF, min_size=1,
                                     max_size=1))


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """ISO-8601 in the forms Chainlit and its layers write (and some datetimes), from year 1
    to 9999 with offsets that may push the instant outside that range."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.datetimes(timezones=st.just(UTC)))
    day = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23)))
    sep = draw(st.sampled_from(["T", "T", " "]))
    text = (f"{day.year:04d}-{day.month:02d}-{day.day:02d}{sep}{day.hour:02d}:"
            f"{day.minute:02d}:{day.second:02d}")
    digits = draw(st.integers(0, 9))
    if digits:
        text += "." + str(day.microsecond).rjust(6, "0")[:digits].ljust(digits, "7")
    offset = draw(st.sampled_from(["", "Z", "Z", "+00:00", "+05:30", "-01:00", "+14:00",
                                   "-23:59"]))
    return text + offset


BAD_TIMESTAMPS = st.sampled_from([
    "not a date", "2026-13-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:30:00+01:00", 20260101, "2026-01-01T00:00:00Z\ud800", "",
])
UUIDS = st.uuids().map(str)
ID_FORMS = st.sampled_from(["canonical", "canonical", "canonical", "upper", "undashed"])
BAD_IDS = st.sampled_from(["not-a-uuid", "", 5, "0" * 37])


def _id_form(value: str, form: str) -> str:
    if form == "upper":
        return value.upper()
    if form == "undashed":
        return value.replace("-", "")
    return value


STEP_TYPES = st.sampled_from(["run", "tool", "llm", "embedding", "retrieval", "rerank",
                              "undefined", "assistant_message", "user_message"])
BOOLS = st.none() | st.booleans()
TEXTS = st.none() | GOOD_TEXT
#: Each StepDict key: (values within the limits, values outside them).
STEP_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "name": (GOOD_TEXT, st.one_of(st.just(7), st.none(), BAD_TEXT)),
    "type": (STEP_TYPES | GOOD_TEXT, st.one_of(st.just(5), st.text(min_size=192, max_size=200))),
    "streaming": (st.booleans(), st.sampled_from(["yes", "no", 0, 1, None])),
    "id": (ID_FORMS, BAD_IDS),
    "threadId": (ID_FORMS, BAD_IDS),
    "parentId": (st.none() | UUIDS, BAD_IDS),
    "command": (TEXTS, st.one_of(BAD_TEXT, st.just(5))),
    "modes": (st.none() | st.dictionaries(KEYS, GOOD_TEXT, max_size=3), documents()),
    "waitForAnswer": (BOOLS, st.sampled_from([0, 1, 5, "true"])),
    "isError": (BOOLS, st.sampled_from([0, 5, "no"])),
    "metadata": (st.none() | documents(bad=False), documents()),
    "tags": (st.none() | st.lists(GOOD_TEXT, max_size=3) | st.tuples(GOOD_TEXT),
             st.one_of(st.just({"a": 1}), st.just("abc"), st.just(1.5),
                       st.lists(st.integers(), min_size=1, max_size=2),
                       st.lists(BAD_TEXT, min_size=1, max_size=1))),
    "input": (TEXTS, st.one_of(BAD_TEXT, st.just(5), st.just(["a"]))),
    "output": (GOOD_TEXT, st.one_of(BAD_TEXT, st.just({"a": 1}))),
    "createdAt": (st.none() | timestamps(), BAD_TIMESTAMPS.filter(bool)),
    "start": (st.none() | timestamps(), BAD_TIMESTAMPS),
    "end": (st.none() | timestamps(), BAD_TIMESTAMPS),
    "generation": (st.none() | documents(bad=False), documents()),
    "showInput": (st.none() | st.booleans() | st.sampled_from(["json", "python", ""])
                  | GOOD_TEXT.filter(lambda s: s.lower() not in ("true", "false")),
                  st.sampled_from(["true", "False", "TRUE", 5, "x" * 192])),
    "defaultOpen": (BOOLS, st.sampled_from([1, "yes"])),
    "autoCollapse": (BOOLS, st.sampled_from([0, "no"])),
    "language": (TEXTS, st.one_of(st.just(5), st.just({"a": 1}), BAD_TEXT)),
    "icon": (TEXTS, st.just(5)),
    "feedback": (st.none(), st.none()),
    # keys a newer Chainlit may send (and names of our internal columns)
    "newKey": (json_values(bad=False), json_values(bad=True)),
    "favorite": (json_values(bad=False), st.just(math.nan)),
    "extra": (json_values(bad=False), st.just({"": 1})),
}
REQUIRED_STEP = ("name", "type", "streaming", "id", "threadId")


@st.composite
def step_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A StepDict within the limits; half of them with one value outside (a draw with many
    bad values tests the first only)."""
    data = draw(st.fixed_dictionaries(
        {key: STEP_FIELDS[key][0] for key in REQUIRED_STEP},
        optional={key: good for key, (good, _) in STEP_FIELDS.items()
                  if key not in REQUIRED_STEP}))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(STEP_FIELDS)))
        data[key] = draw(STEP_FIELDS[key][1])
    return data


STEPS = step_dicts()


def with_ids(data: dict[str, Any], step_id: str, thread_id: str) -> dict[str, Any]:
    """Put real ids where the strategy drew an id *form*; keep the bad ids it drew."""
    out = dict(data)
    for key, value in (("id", step_id), ("threadId", thread_id)):
        form = out.get(key)
        if form in ("canonical", "upper", "undashed"):
            out[key] = _id_form(value, str(form))
    return out


# ------------------------------------------------------------------------------------ steps


def S(**fields: Any) -> dict[str, Any]:
    """A step dict for an ``@example``: a valid base with ``fields`` changed."""
    base: dict[str, Any] = {"name": "n", "type": "run", "streaming": False, "id": "canonical",
                            "threadId": "canonical"}
    base.update(fields)
    return base


@given(first=STEPS, second=st.none() | STEPS)
# issue #14, item 8: each was an untyped exception (TypeError, ValueError, RecursionError,
# OverflowError, UnicodeEncodeError) from create_step
@example(first=S(streaming="yes"), second=None)
@example(first=S(isError=5), second=None)
@example(first=S(metadata={"deep": _nest(40)}), second=None)  # 1,000 deep: a plain test
@example(first=S(createdAt="9999-12-31T23:59:59-01:00"), second=None)
@example(first=S(metadata={"when": datetime(2026, 1, 1, tzinfo=UTC)}), second=None)
@example(first=S(tags=1.5), second=None)
@example(first=S(name="x\ud800"), second=None)
@example(first=S(output=["a", "list"]), second=None)
@example(first=S(language=5), second=None)
# a year before 1000 is a valid ISO-8601 timestamp: stored, zero-padded
@example(first=S(createdAt="0999-01-01T00:00:00Z", start="0001-01-01T00:00:00"), second=None)
# item 9: silent coercions (name 7 read back "7", a dict language read back as its repr, tags
# {"a": 1} read back ["a"], streaming "no" read back True)
@example(first=S(name=7), second=None)
@example(first=S(language={"a": 1}), second=None)
@example(first=S(tags={"a": 1}), second=None)
@example(first=S(streaming="no"), second=None)
# item 10: JSON nested at the limit (stored) and one level more (refused), inf, an empty key
@example(first=S(metadata={"d": _nest(30)}), second=None)
@example(first=S(metadata={"d": _nest(31)}), second=None)
@example(first=S(metadata={"x": math.inf}), second=None)
@example(first=S(metadata={"": 1}), second=None)
# fuzzing found: a string showInput "true" read back as the bool True on SQL only
@example(first=S(showInput="true"), second=None)
# fuzzing found: a partial update_step (no name) refused by SQL's NOT NULL, stored by DynamoDB
@example(first=S(), second={"id": "canonical", "threadId": "canonical", "output": "o"})
# an update keeps what it does not set, replaces what it sets
@example(first=S(metadata={"a": 1}, tags=["t"], newKey=1),
         second=S(output="o", metadata={"b": [1.5, None]}, tags=[], extra={"z": True}))
async def test_step_writes_read_back_exactly_or_are_refused(
    fuzz: Env, first: dict[str, Any], second: dict[str, Any] | None
) -> None:
    layer = fuzz.layer
    step_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
    sent = with_ids(first, step_id, thread_id)
    try:
        columns, unknown = ref_step(sent, create=True)
        verdict = None
    except Refused as refused:
        verdict = refused
    written = await expect(lambda: layer.create_step(sent), verdict)  # type: ignore[arg-type]
    if not written:
        assert await fuzz.rows_of_thread(thread_id) == 0
        return
    got = await layer.get_step(step_id)
    assert got is not None
    same(got, step_read(columns, unknown))
    if columns["createdAt"] == "<now>":
        columns["createdAt"] = got["createdAt"]
    if second is None:
        return
    update = with_ids(second, step_id, thread_id)
    try:
        new_columns, new_unknown = ref_step(update, create=False)
        verdict = None
    except Refused as refused:
        verdict = refused
    if await expect(lambda: layer.update_step(update), verdict):  # type: ignore[arg-type]
        # an update replaces the columns it sets (None leaves a column as it is) and, when it
        # has unknown keys, the overflow document
        columns = {**columns, **new_columns}
        unknown = new_unknown or unknown
    got = await layer.get_step(step_id)
    assert got is not None
    same(got, step_read(columns, unknown))


# ---------------------------------------------------------------------------------- threads

META_KEYS = st.one_of(st.sampled_from(["a", "b", "favorite", '"', "é", "is_shared"]), KEYS)
USER_IDS_GOOD = st.sampled_from(["user", "user-upper", "other"])
USER_IDS_BAD = st.sampled_from(["unknown", "alice@example.com", 5, "", "x\x00y", "x\ud800",
                                "a" * 513])
THREAD_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "name": (GOOD_TEXT, st.one_of(st.just(5), BAD_TEXT)),
    "user_id": (USER_IDS_GOOD, USER_IDS_BAD),
    "metadata": (st.dictionaries(META_KEYS, st.none() | json_values(bad=False), max_size=4),
                 documents()),
    "tags": (st.lists(GOOD_TEXT, max_size=3) | st.tuples(GOOD_TEXT),
             st.one_of(st.just("tag"), st.just({"a": 1}), st.just([1]),
                       st.lists(BAD_TEXT, min_size=1, max_size=1))),
    "thread_id": (ID_FORMS, BAD_IDS),
}


@st.composite
def thread_updates(draw: st.DrawFn) -> dict[str, Any]:
    """``update_thread`` keyword arguments; half of them with one value outside the limits
    (or an unknown user id)."""
    call = draw(st.fixed_dictionaries({"thread_id": ID_FORMS}, optional={
        key: good for key, (good, _) in THREAD_FIELDS.items() if key != "thread_id"}))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(THREAD_FIELDS)))
        call[key] = draw(THREAD_FIELDS[key][1])
    return call


def ref_user_id(value: Any, env: Env) -> str:
    """User ids: 1-512 storable characters, naming a persisted user (else NotFoundError)."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise Refused(InvalidIdentifierError, "malformed user id")
    try:
        ref_text(value, "user id")
    except Refused:
        raise Refused(InvalidIdentifierError, "malformed user id") from None
    for user in (env.user, env.other):
        if value.lower() == user.id:
            return user.id
    raise Refused(NotFoundError, "no such user")


def T(**fields: Any) -> dict[str, Any]:
    """An ``update_thread`` call for an ``@example``."""
    return {"thread_id": "canonical", **fields}


@given(calls=st.lists(thread_updates(), min_size=1, max_size=4))
# item 10: metadata with an empty key was accepted, then broke get_thread on DynamoDB
@example(calls=[T(name="t", metadata={"": 1})])
# item 9: a user id that is not a UUID was accepted by DynamoDB, refused by SQL: now the same
# rule everywhere (an unknown user is NotFoundError, a malformed id InvalidIdentifierError)
@example(calls=[T(name="t", user_id="alice@example.com")])
# fuzzing found: MariaDB refused (error 4042) a metadata key with a control character or a
# leading "-" in its JSON path, so such a key could be created but never merged or deleted
@example(calls=[T(name="t", metadata={"\x1f": 1, "-x": 2}),
                T(metadata={"\x1f": None, "-x": None, "-": 3, "\n": 4})])
@example(calls=[T(name="t", user_id="unknown")])
@example(calls=[T(name="t", user_id="x\ud800")])
# merge semantics: a None value deletes a key, a metadata-only update creates an ownerless stub
# (Chainlit's session metadata may arrive before the thread's first write)
@example(calls=[T(metadata={"a": 1}), T(name="n", metadata={"a": 1, "b": [1, {"c": None}]}),
                T(metadata={"a": None, "$": "d", '"': "q"})])
# the owner is set once
@example(calls=[T(user_id="user"), T(user_id="other", name="x", tags=("a",))])
@example(calls=[T(user_id="user"), T(user_id="unknown", name="x")])
@example(calls=[T(name="t", metadata={"deep": _nest(30)}), T(metadata={"deeper": _nest(31)})])
async def test_update_thread_reads_back_exactly_or_is_refused(
    fuzz: Env, calls: list[dict[str, Any]]
) -> None:
    layer = fuzz.layer
    thread_id = str(uuid.uuid4())
    state: dict[str, Any] | None = None
    owners = {fuzz.user.id: fuzz.user.identifier, fuzz.other.id: fuzz.other.identifier}
    for raw in calls:
        call = dict(raw)
        form = call.pop("thread_id")
        tid = _id_form(thread_id, form) if form in ("canonical", "upper", "undashed") else form
        user_id = call.get("user_id")
        if user_id in ("user", "user-upper", "other", "unknown"):
            user_id = {"user": fuzz.user.id, "user-upper": fuzz.user.id.upper(),
                       "other": fuzz.other.id, "unknown": str(uuid.uuid4())}[user_id]
            call["user_id"] = user_id
        try:
            ref_uuid(tid, "thread_id")
            owner = None if user_id is None else ref_user_id(user_id, fuzz)
            name = None if call.get("name") is None else ref_text(call["name"], "name")
            tags = call.get("tags")
            if tags is not None:
                if not isinstance(tags, list | tuple):
                    raise Refused(InvalidInputError, "tags")
                tags = [ref_text(t, "tag") for t in tags]
            metadata = call.get("metadata")
            if metadata is not None:
                metadata = ref_document(metadata, "metadata")
            verdict = None
        except Refused as refused:
            verdict = refused
        if not await expect(lambda c=call, t=tid: layer.update_thread(t, **c), verdict):
            continue
        if state is None and name is None and owner is None and tags is None and (
                metadata is None):
            continue  # nothing to write: no thread is created
        if state is None:
            state = {"id": thread_id, "createdAt": "<now>", "name": None, "userId": None,
                     "userIdentifier": None, "tags": None, "metadata": {}, "steps": [],
                     "elements": []}
        if name is not None:
            state["name"] = name
        if tags is not None:
            state["tags"] = tags
        if owner is not None and state["userId"] is None:
            state["userId"], state["userIdentifier"] = owner, owners[owner]
        for key, value in (metadata or {}).items():
            if value is None:
                state["metadata"].pop(key, None)
            else:
                state["metadata"][key] = value
    got = await layer.get_thread(thread_id)
    if state is None:
        assert got is None
        assert await fuzz.rows_of_thread(thread_id) == 0
        return
    same(got, state)
    assert await layer.get_thread_author(thread_id) == (state["userIdentifier"] or "")


# --------------------------------------------------------------------------------- elements

ELEMENT_CLASSES = (cl.File, cl.Image, cl.Text, cl.Pdf, cl.Audio, cl.Video)
ELEMENT_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (ID_FORMS, BAD_IDS),
    "thread_id": (ID_FORMS, st.sampled_from([None, "not-a-uuid"])),
    "type": (st.sampled_from(["file", "image", "text", "pdf", "custom"]) | GOOD_TEXT,
             st.just(5)),
    "name": (GOOD_TEXT, st.one_of(st.none(), st.just(5), BAD_TEXT)),
    "url": (st.none() | st.just("https://example.com/a.png") | st.just(""),
            st.one_of(st.just(5), BAD_TEXT.filter(bool))),
    "chainlit_key": (TEXTS, st.just(5)),
    "display": (st.sampled_from(["inline", "side", "page"]) | st.none(),
                st.one_of(st.just(5), BAD_TEXT)),
    "size": (st.none() | st.sampled_from(["small", "medium", "large"]), st.just(5)),
    "props": (st.none() | documents(bad=False), documents()),
    "page": (st.none() | st.integers(-(2**31), 2**31 - 1),
             st.sampled_from([2**31, -(2**31) - 1, "3", True, 1.5])),
    "auto_play": (BOOLS, st.sampled_from(["yes", 1])),
    "player_config": (st.none() | documents(bad=False), st.sampled_from([[1], "x"])),
    "language": (TEXTS, st.one_of(st.just(5), BAD_TEXT)),
    "for_id": (st.none() | UUIDS, st.sampled_from(["not-a-uuid", 5])),
    "mime": (st.none() | st.sampled_from(["image/png", "text/plain; charset=utf-8", ""]),
             st.one_of(st.just(5), BAD_TEXT)),
    "content": (st.none() | st.binary(max_size=64) | GOOD_TEXT,
                st.one_of(st.just(5), st.just(["a"]), BAD_TEXT.filter(
                    lambda t: "\x00" not in t))),
}


@st.composite
def elements(draw: st.DrawFn) -> tuple[type[cl.Element], dict[str, Any]]:
    cls = draw(st.sampled_from(ELEMENT_CLASSES))
    fields = draw(st.fixed_dictionaries(
        {"id": ID_FORMS, "thread_id": ID_FORMS, "name": GOOD_TEXT},
        optional={k: good for k, (good, _) in ELEMENT_FIELDS.items()
                  if k not in ("id", "thread_id", "name")}))
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(ELEMENT_FIELDS)))
        fields[key] = draw(ELEMENT_FIELDS[key][1])
    return cls, fields


ELEMENT_KEYS = ("id", "threadId", "type", "chainlitKey", "path", "url", "objectKey", "name",
                "display", "size", "language", "page", "props", "autoPlay", "playerConfig",
                "forId", "mime")


def ref_element(data: Mapping[str, Any], content: Any) -> tuple[dict[str, Any], bytes | None]:
    """(the ElementDict ``get_element`` gives, the bytes stored), or Refused."""
    out = dict.fromkeys(ELEMENT_KEYS)
    out["id"] = ref_uuid(data["id"], "id")
    if not data.get("threadId"):
        raise Refused(InvalidInputError, "no threadId")
    out["threadId"] = ref_uuid(data["threadId"], "threadId")
    if data.get("forId"):
        out["forId"] = ref_uuid(data["forId"], "forId")
    out["name"] = ref_text(data.get("name"), "name")
    stored: bytes | None = None
    if content is not None:
        if isinstance(content, str):
            ref_text(content.replace("\x00", ""), "content")
            stored = content.encode()
        elif isinstance(content, bytes):
            stored = content
        else:
            raise Refused(InvalidInputError, "content")
    for key in ("type", "url", "chainlitKey", "display", "size", "language", "mime"):
        if data.get(key) is not None:
            out[key] = ref_text(data[key], key)
    for key in ("props", "playerConfig"):
        if data.get(key) is not None:
            out[key] = ref_document(data[key], key)
    if data.get("page") is not None:
        page = data["page"]
        if type(page) is not int or not -(2**31) <= page < 2**31:
            raise Refused(InvalidInputError, "page")
        out["page"] = page
    if data.get("autoPlay") is not None:
        if type(data["autoPlay"]) is not bool:
            raise Refused(InvalidInputError, "autoPlay")
        out["autoPlay"] = data["autoPlay"]
    if stored is None or out["url"]:
        return out, None  # nothing to upload: the record as sent
    import mimetypes

    out["objectKey"] = f"threads/{out['threadId']}/files/{out['id']}"
    out["mime"] = out["mime"] or mimetypes.guess_type(out["name"])[0] or "application/octet-stream"
    out["url"] = "<signed>"
    return out, stored


@given(drawn=elements())
# item 8: a str content with a lone surrogate raised UnicodeEncodeError (after nothing: before
# the upload), an int content was turned into that many zero bytes
@example(drawn=(cl.File, {"id": "canonical", "thread_id": "canonical", "name": "f",
                          "content": "x\ud800"}))
@example(drawn=(cl.File, {"id": "canonical", "thread_id": "canonical", "name": "f",
                          "content": 5}))
# item 10: element props are bounded like every JSON document
@example(drawn=(cl.File, {"id": "canonical", "thread_id": "canonical", "name": "f",
                          "content": b"x", "props": {"": 1}}))
@example(drawn=(cl.Pdf, {"id": "canonical", "thread_id": "canonical", "name": "f.pdf",
                         "content": b"%PDF", "page": 2**40}))
async def test_create_element_reads_back_exactly_or_is_refused(
    fuzz: Env, drawn: tuple[type[cl.Element], dict[str, Any]]
) -> None:
    init_http_context(thread_id=str(uuid.uuid4()))
    cls, fields = drawn
    element_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
    element = cls(name="placeholder", content=b"placeholder")
    element.content = None
    for key, value in fields.items():
        if key in ("id", "thread_id") and value in ("canonical", "upper", "undashed"):
            value = _id_form(element_id if key == "id" else thread_id, value)
        setattr(element, key, value)
    content = fields.get("content")
    try:
        want, stored = ref_element(element.to_dict(), content)
        verdict = None
    except Refused as refused:
        verdict = refused
    if not await expect(lambda: fuzz.layer.create_element(element), verdict):
        assert await fuzz.rows_of_thread(thread_id) == 0
        assert fuzz.stored_files(thread_id) == []
        return
    got = await fuzz.layer.get_element(thread_id, element_id)
    assert got is not None
    if want["url"] == "<signed>":
        assert isinstance(got["url"], str) and quote(want["objectKey"], safe="/") in got["url"]
        want["url"] = got["url"]
        key = want["objectKey"]
        assert fuzz.stored_files(thread_id) == [f".chainlit-orm-meta/{key}.json", key]
        assert (fuzz.files / key).read_bytes() == stored
    else:
        assert fuzz.stored_files(thread_id) == []
    same(dict(got), want)


# --------------------------------------------------------------------------------- feedback


@given(args=one_bad({
    "value": (st.sampled_from([0, 1]), st.sampled_from([True, 2, "1", None, 0.5])),
    "comment": (TEXTS, BAD_TEXT | st.just(5)),
    "feedback_id": (st.none() | ID_FORMS, st.just("not-a-uuid")),
    "with_thread": (st.booleans(), st.booleans()),
    "again": (st.none() | st.tuples(st.sampled_from([0, 1]), TEXTS), st.none()),
}))
@example(args={"value": 1, "comment": "x\ud800", "feedback_id": None, "with_thread": True,
               "again": None})
@example(args={"value": True, "comment": None, "feedback_id": None, "with_thread": True,
               "again": None})
async def test_feedback_reads_back_exactly_or_is_refused(fuzz: Env, args: dict[str, Any]) -> None:
    value, comment, feedback_id = args["value"], args["comment"], args["feedback_id"]
    with_thread, again = args["with_thread"], args["again"]
    layer = fuzz.layer
    thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
    await layer.update_thread(thread_id, name="feedback", user_id=fuzz.user.id)
    await layer.create_step(with_ids(S(), step_id, thread_id))  # type: ignore[arg-type]
    fresh = str(uuid.uuid4())
    if feedback_id in ("canonical", "upper", "undashed"):
        feedback_id = _id_form(fresh, feedback_id)
    feedback = Feedback(forId=step_id, value=0, threadId=thread_id if with_thread else None,
                        id=feedback_id, comment=None)
    feedback.value, feedback.comment = value, comment  # past pydantic: what a caller may send
    try:
        if type(value) is not int or value not in (0, 1):
            raise Refused(InvalidInputError, "value")
        if comment is not None:
            ref_text(comment, "comment")
        expected_id = None if feedback_id is None else ref_uuid(feedback_id, "id")
        verdict = None
    except Refused as refused:
        verdict = refused
    returned: list[str] = []

    async def upsert(f: Feedback) -> None:
        returned.append(await layer.upsert_feedback(f))

    if not await expect(lambda: upsert(feedback), verdict):
        got = await layer.get_step(step_id)
        assert got is not None and "feedback" not in got
        return
    assert expected_id is None or returned[0] == expected_id
    want = {"id": returned[0], "forId": step_id, "value": value, "comment": comment}
    if again is not None:
        await upsert(Feedback(forId=step_id, value=again[0], threadId=thread_id,
                              id=returned[0], comment=again[1]))
        assert returned[1] == returned[0]
        want.update(value=again[0], comment=again[1])
    got = await layer.get_step(step_id)
    assert got is not None
    same(got["feedback"], want)


# ------------------------------------------------------------------------------------ users


@given(args=one_bad({
    "suffix": (GOOD_TEXT, BAD_TEXT | st.text(min_size=160, max_size=170)),
    "display_name": (TEXTS, st.just(5) | BAD_TEXT),
    "metadata": (st.none() | documents(bad=False), documents()),
    "update": (st.none() | st.tuples(TEXTS, documents(bad=False)), st.none()),
}))
@example(args={"suffix": "\ud800", "display_name": None, "metadata": {},
               "update": None})
# fuzzing found: MariaDB's case-insensitive collation made "alice" log in as "Alice" (and
# "alice " too: trailing spaces are ignored there, so they are refused everywhere)
@example(args={"suffix": "Straße", "display_name": None, "metadata": {"k": "v"},
               "update": None})
@example(args={"suffix": "x ", "display_name": None, "metadata": {},
               "update": None})
@example(args={"suffix": "", "display_name": "x\x00", "metadata": {},
               "update": None})
@example(args={"suffix": "", "display_name": None, "metadata": {"n": math.nan},
               "update": None})
@example(args={"suffix": "", "display_name": "A", "metadata": {"a": 1},
               "update": (None, {"b": [True]})})
async def test_users_read_back_exactly_or_are_refused(fuzz: Env, args: dict[str, Any]) -> None:
    suffix, display_name = args["suffix"], args["display_name"]
    metadata, update = args["metadata"], args["update"]
    layer = fuzz.layer
    identifier = f"fuzz-{uuid.uuid4().hex}-{suffix}"
    try:
        ref_text(identifier, "identifier", 191)
        if identifier.endswith(" "):  # MySQL/MariaDB compare ignoring trailing spaces
            raise Refused(InvalidInputError, "identifier ends with a space")
        if display_name is not None:
            ref_text(display_name, "display_name")
        want_metadata = ref_document({} if metadata is None else metadata, "metadata")
        verdict = None
    except Refused as refused:
        verdict = refused
    user = User(identifier="placeholder")
    # past pydantic's checks: what a caller (or a Chainlit that stops validating) may send
    user.identifier, user.display_name, user.metadata = identifier, display_name, metadata
    if not await expect(lambda: layer.create_user(user), verdict):
        assert await layer.get_user(identifier) is None
        return
    if update is not None:
        await layer.create_user(User(identifier=identifier, display_name=update[0],
                                     metadata=update[1]))
        display_name = update[0] if update[0] is not None else display_name
        want_metadata = ref_document(update[1], "metadata")
    got = await layer.get_user(identifier)
    assert got is not None
    same(got.identifier, identifier)
    same(got.display_name, display_name)
    same(got.metadata, want_metadata)
    # identifiers compare exactly on every backend: the same letters in another case are another
    # user, who neither finds nor changes this one
    twin = identifier.swapcase()
    if len(twin) <= 191 and not twin.endswith(" "):
        assert await layer.get_user(twin) is None
        other = await layer.create_user(User(identifier=twin, metadata={"twin": True}))
        assert other is not None and other.id != got.id and other.identifier == twin
        again = await layer.get_user(identifier)
        assert again is not None and again.id == got.id
        same(again.metadata, want_metadata)


# ------------------------------------------------------------------------ cursors and search


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@st.composite
def cursors(draw: st.DrawFn) -> str:
    import json

    if not draw(st.booleans()):
        return "<real>"  # a cursor the layer gave (the test fills it in)
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=120))
    if kind == 1:
        return _b64(draw(st.binary(max_size=90)))
    if kind == 2:
        moment = draw(mostly(timestamps(), BAD_TIMESTAMPS))
        tid = draw(mostly(UUIDS, BAD_IDS))
        return _b64(json.dumps([moment if isinstance(moment, str | int) else str(moment),
                                tid]).encode())
    if kind == 3:
        return _b64(draw(st.sampled_from([b"[" * 10, b'["a"]', b"{}", b"null", b"[1, 2]"])))
    return "A" * draw(st.integers(500, 700))


def ref_cursor(cursor: str) -> None:
    """A cursor is base64url (padding optional) of JSON ``[timestamp, thread id]``; an empty
    one asks for the first page."""
    import base64
    import binascii
    import json

    if cursor == "":
        return
    if len(cursor) > 512:
        raise Refused(InvalidCursorError, "too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, tid = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise Refused(InvalidCursorError, "not ours") from None
    if not isinstance(moment, str) or not isinstance(tid, str):
        raise Refused(InvalidCursorError, "not ours")
    try:
        ref_timestamp(moment, "cursor")
        ref_uuid(tid, "cursor")
    except Refused:
        raise Refused(InvalidCursorError, "not ours") from None


@given(cursor=cursors())
# item 8: 100,000 nested brackets (RecursionError), a year-9999 instant an hour past the range
# (OverflowError)
@example(cursor=_b64(b"[" * 100_000))
@example(cursor=_b64(b'["9999-12-31T23:59:59-01:00", "00000000-0000-4000-8000-000000000000"]'))
@example(cursor="x\ud800")
async def test_cursors_give_a_page_of_the_users_threads_or_invalid_cursor(
    fuzz: Env, cursor: str
) -> None:
    if cursor == "<real>":
        if not fuzz.cursor_threads:  # the user's own threads to page through, made once
            for i in range(3):
                await fuzz.layer.update_thread(str(uuid.uuid4()), name=f"page {i}",
                                               user_id=fuzz.user.id)
            fuzz.cursor_threads = True
        first = await fuzz.layer.list_threads(Pagination(first=2),
                                              ThreadFilter(userId=fuzz.user.id))
        assert first.pageInfo.endCursor is not None
        cursor = first.pageInfo.endCursor
    try:
        ref_cursor(cursor)
        verdict = None
    except Refused as refused:
        verdict = refused
    pages: list[Any] = []

    async def page() -> None:
        pages.append(await fuzz.layer.list_threads(Pagination(first=5, cursor=cursor),
                                                   ThreadFilter(userId=fuzz.user.id)))

    if await expect(page, verdict):
        assert len(pages[0].data) <= 5
        assert all(t["userId"] == fuzz.user.id for t in pages[0].data)


@given(search=mostly(GOOD_TEXT, BAD_TEXT | st.text(max_size=20)))
# item 8: a lone surrogate in a search raised UnicodeEncodeError
@example(search="\ud800")
@example(search="\x00")
async def test_search_gives_the_users_threads_or_a_typed_refusal(fuzz: Env, search: str) -> None:
    try:
        ref_text(search, "search")
        verdict = None
    except Refused as refused:
        verdict = refused
    pages: list[Any] = []

    async def page() -> None:
        pages.append(await fuzz.layer.list_threads(Pagination(first=20),
                                                   ThreadFilter(userId=fuzz.user.id,
                                                                search=search)))

    if await expect(page, verdict):
        assert all(t["userId"] == fuzz.user.id for t in pages[0].data)


# ------------------------------------------------------------------------------ plain tests


async def test_json_1000_levels_deep_is_refused_typed_with_nothing_written(fuzz: Env) -> None:
    """Issue #14, item 8: metadata nested 1,000 deep raised RecursionError (the walk stops at
    the limit instead; Hypothesis cannot print such an example, so it is a plain test)."""
    layer = fuzz.layer
    deep = _nest(1000)
    thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(InvalidInputError, match="nested more than 32 levels"):
        await layer.update_thread(thread_id, name="deep", metadata={"d": deep})
    with pytest.raises(InvalidInputError, match="nested more than 32 levels"):
        await layer.create_step(
            with_ids(S(generation={"d": deep}), step_id, thread_id))  # type: ignore[arg-type]
    init_http_context(thread_id=thread_id)
    element = cl.File(name="f", content=b"x")
    element.thread_id, element.props = thread_id, {"d": deep}  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError, match="nested more than 32 levels"):
        await layer.create_element(element)
    identifier = f"deep-{uuid.uuid4().hex}"
    with pytest.raises(InvalidInputError, match="nested more than 32 levels"):
        await layer.create_user(User(identifier=identifier, metadata={"d": deep}))
    assert await fuzz.rows_of_thread(thread_id) == 0
    assert fuzz.stored_files(thread_id) == []
    assert await layer.get_user(identifier) is None


async def test_one_record_limit_on_every_backend(fuzz: Env) -> None:
    """Issue #14, item 10: DynamoDB did not check a thread's name/metadata/tags or an element's
    props against its 400 KB item before writing; SQL stored what DynamoDB cannot. Now one limit
    (``MAX_RECORD_BYTES`` as DynamoDB counts bytes) holds everywhere: at the limit a record is
    stored and read back, one byte over it is refused with nothing written."""
    from chainlit_orm.models.limits import MAX_RECORD_BYTES

    layer = fuzz.layer
    at_limit = "n" * (MAX_RECORD_BYTES - len("name"))
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name=at_limit)
    got = await layer.get_thread(thread_id)
    assert got is not None and got["name"] == at_limit

    for call in (
        {"name": at_limit + "n"},
        {"name": "é" * (MAX_RECORD_BYTES // 2)},  # 2 bytes each in UTF-8: over the limit
        {"metadata": {"big": "m" * MAX_RECORD_BYTES}},
        {"tags": ["t" * 1000] * 410},
        {"name": "n" * (MAX_RECORD_BYTES // 2), "metadata": {"m": "m" * (MAX_RECORD_BYTES // 2)}},
    ):
        fresh = str(uuid.uuid4())
        with pytest.raises(PayloadTooLargeError):
            await layer.update_thread(fresh, user_id=fuzz.user.id, **call)
        assert await fuzz.rows_of_thread(fresh) == 0
    with pytest.raises(PayloadTooLargeError):  # an existing thread is left as it was
        await layer.update_thread(thread_id, metadata={"big": "m" * MAX_RECORD_BYTES})
    got = await layer.get_thread(thread_id)
    assert got is not None and got["name"] == at_limit and got["metadata"] == {}

    init_http_context(thread_id=thread_id)
    element = cl.File(name="big.bin", content=b"x")
    element.thread_id = fresh = str(uuid.uuid4())
    element.props = {"p": "p" * MAX_RECORD_BYTES}  # type: ignore[attr-defined]
    with pytest.raises(PayloadTooLargeError):
        await layer.create_element(element)
    assert await fuzz.rows_of_thread(fresh) == 0
    assert fuzz.stored_files(fresh) == []

    step_id = str(uuid.uuid4())
    with pytest.raises(PayloadTooLargeError):
        await layer.create_step(with_ids(  # type: ignore[arg-type]
            S(metadata={"m": "m" * MAX_RECORD_BYTES}), step_id, fresh))
    assert await fuzz.rows_of_thread(fresh) == 0


async def test_user_ids_follow_one_rule_on_every_backend(fuzz: Env) -> None:
    """Issue #14, item 9: DynamoDB accepted user ids SQL refused. One rule now: a malformed id
    is InvalidIdentifierError, a well-formed id of no user is NotFoundError on a write and finds
    nothing on a read, whether or not it is a UUID; nothing is written."""
    layer = fuzz.layer
    for malformed in ("", "x\x00y", "x\ud800", "a" * 513, 5):
        thread_id = str(uuid.uuid4())
        with pytest.raises(InvalidIdentifierError):
            await layer.update_thread(thread_id, name="x",
                                      user_id=malformed)  # type: ignore[arg-type]
        with pytest.raises(InvalidIdentifierError):
            await layer.list_threads(Pagination(first=5), ThreadFilter.model_construct(
                userId=malformed, feedback=None, search=None))
        assert await fuzz.rows_of_thread(thread_id) == 0
    for unknown in ("alice@example.com", str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        thread_id = str(uuid.uuid4())
        with pytest.raises(NotFoundError):
            await layer.update_thread(thread_id, name="x", user_id=unknown)
        assert await fuzz.rows_of_thread(thread_id) == 0
        page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=unknown))
        assert page.data == [] and page.pageInfo.hasNextPage is False
        assert await layer.get_favorite_steps(unknown) == []
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="mine", user_id=fuzz.user.id.upper())
    # fuzzing found: on SQL the foreign key caught an unknown owner only while the thread had
    # none (the owner is set once), DynamoDB refused it always; now refused always, everywhere
    for unknown in (str(uuid.uuid4()), "alice@example.com"):
        with pytest.raises(NotFoundError):
            await layer.update_thread(thread_id, name="renamed", user_id=unknown)
    got = await layer.get_thread(thread_id)
    assert got is not None and got["userId"] == fuzz.user.id and got["name"] == "mine"
    assert got["userIdentifier"] == fuzz.user.identifier


async def test_a_favorite_survives_an_update_without_metadata(fuzz: Env) -> None:
    """Fuzzing found: ``update_step`` with ``metadata=None`` (leave it) reset the favorite flag
    on SQL, so ``get_favorite_steps`` lost a step whose metadata still said favorite."""
    layer = fuzz.layer
    owner = await layer.create_user(User(identifier=f"fav-{uuid.uuid4().hex}"))
    assert owner is not None
    thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
    await layer.update_thread(thread_id, name="fav", user_id=owner.id)
    step = with_ids(S(type="assistant_message", output="o"), step_id, thread_id)
    await layer.create_step({**step, "metadata": {"favorite": True}})  # type: ignore[typeddict-item]
    await layer.update_step({**step, "metadata": None, "output": "o2"})  # type: ignore[typeddict-item]
    assert [s["id"] for s in await layer.get_favorite_steps(owner.id)] == [step_id]
    await layer.update_step({**step, "metadata": {}, "output": "o3"})  # type: ignore[typeddict-item]
    assert await layer.get_favorite_steps(owner.id) == []


async def test_mariadb_reports_refused_json_as_invalid_input(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Issue #14, item 10: MariaDB's refusals of a value (4025: the JSON column's CHECK
    constraint, 4038: JSON syntax, 4040: JSON deeper than 32, 4042: a bad JSON path) were
    reported as BackendUnavailableError, an outage. They reach the backend only when the shared
    checks are bypassed, as here (the backend's own methods are called)."""
    from chainlit_orm.models.types import utc_now

    entry = CONTRACT_BACKENDS["mariadb"]
    async with entry.open(tmp_path_factory.mktemp("mariadb-errors")) as url:
        layer = await entry.new_layer(url, None)
        backend: Any = layer.backend
        try:
            thread_id = str(uuid.uuid4())
            await layer.update_thread(thread_id, name="t")
            cases = (  # (meta_set, create, the MariaDB error number)
                ({"d": _nest(40)}, True, "4025"),
                ({"x": math.inf}, True, "4025"),
                ({"d": _nest(40)}, False, "4040"),
                ({"x": math.inf}, False, "4038"),
            )
            for meta_set, create, code in cases:
                with pytest.raises(InvalidInputError, match=code) as caught:
                    await backend.update_thread(str(uuid.uuid4()) if create else thread_id,
                                                {"name": "x"}, meta_set, [], create=create,
                                                now=utc_now())
                assert not isinstance(caught.value, ConnectionError)
            got = await layer.get_thread(thread_id)
            assert got is not None and got["metadata"] == {} and got["name"] == "t"
        finally:
            await layer.close()


async def test_dynamodb_keeps_the_user_ids_of_chainlits_own_layer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Contract §3.3: in a table Chainlit's DynamoDB layer wrote, a user's id is its identifier
    (not a UUID). Such an id names a persisted user, so it is accepted there (and only an id of
    no user is NotFoundError), while it could never name a user of a SQL database."""
    import boto3

    from tests.aws import MOTO_ENDPOINT, REGION

    entry = CONTRACT_BACKENDS["dynamodb"]
    async with entry.open(tmp_path_factory.mktemp("dynamodb-legacy")) as table:
        identifier = f"legacy-{uuid.uuid4().hex[:8]}@example.com"
        client = boto3.client("dynamodb", endpoint_url=MOTO_ENDPOINT, region_name=REGION)
        client.put_item(TableName=table, Item={  # as Chainlit wrote it, after migrate's backfill
            "PK": {"S": f"USER#{identifier}"}, "SK": {"S": "USER"}, "id": {"S": identifier},
            "identifier": {"S": identifier}, "metadata": {"M": {}},
            "createdAt": {"S": "2026-01-01T00:00:00.000000Z"},
            "ByIdPK": {"S": f"USER#{identifier}"}, "ByIdSK": {"S": "USER"}})
        layer = await entry.new_layer(table, None)
        try:
            thread_id = str(uuid.uuid4())
            await layer.update_thread(thread_id, name="legacy", user_id=identifier)
            assert await layer.get_thread_author(thread_id) == identifier
            page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=identifier))
            assert [t["id"] for t in page.data] == [thread_id]
            with pytest.raises(NotFoundError):
                await layer.update_thread(str(uuid.uuid4()), name="x",
                                          user_id="nobody@example.com")
        finally:
            await layer.close()
