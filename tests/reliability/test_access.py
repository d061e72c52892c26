"""Access probes: a user's thread list never shows another user's thread, whatever the caller
puts in the cursor, the search term or the filters (issue 14, "access").

Runs on every contract backend (SQLite, PostgreSQL, MariaDB, the custom model sets, DynamoDB).
Two users own threads whose names and messages share words; every probe asserts the exact
answer: a tampered or forged cursor raises :class:`InvalidCursorError` or returns only the
caller's own threads, and search and the feedback filter return only the caller's matches.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import InvalidCursorError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.layers.sql import SQLDataLayer
from tests.contract import conftest as contract
from tests.contract.conftest import ContractBackend, message, new_id

# the contract suite's fixtures: the same backends, one database each for this module
store = contract.store
backend = contract.backend
layer = contract.layer
storage = contract.storage
chainlit_ctx = contract.chainlit_ctx


def _cursor(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Cursors that are not ours: each must raise InvalidCursorError, never list anything.
TAMPERED = {
    "not base64": "%%%not-base64%%%",
    "not JSON": _cursor(b"\xff\xfe garbage"),
    "an object": _cursor({"ts": "2025-01-01T00:00:00Z", "id": "x"}),
    "one element": _cursor(["2025-01-01T00:00:00Z"]),
    "three elements": _cursor(["2025-01-01T00:00:00Z", "3f1c2a8e-1111-4111-8111-111111111111",
                               "x"]),
    "numbers": _cursor([1.5, 2]),
    "not a timestamp": _cursor(["yesterday", "3f1c2a8e-1111-4111-8111-111111111111"]),
    "not an id": _cursor(["2025-01-01T00:00:00Z", "../../etc/passwd"]),
    "SQL in the id": _cursor(["2025-01-01T00:00:00Z", "' OR 1=1 --"]),
    "past the calendar": _cursor(["9999-12-31T23:00:00-01:00",
                                  "3f1c2a8e-1111-4111-8111-111111111111"]),
    "100,000 nested brackets": _cursor(b"[" * 100_000 + b"]" * 100_000),
    "a megabyte": "A" * 1_000_000,
    "a lone surrogate": "W1\ud800",
}


async def _user(layer: ChainlitLayer, name: str) -> PersistedUser:
    created = await layer.create_user(User(identifier=f"{name}-{new_id()}", metadata={}))
    assert created is not None
    return created


async def _owned(layer: ChainlitLayer, user: PersistedUser, word: str, n: int
                 ) -> tuple[list[str], list[str]]:
    """``n`` threads of ``user`` named "shared <word> i", each with a user message and an
    assistant message (its step id returned for feedback); ids newest first."""
    ids, answers = [], []
    for i in range(n):
        tid = new_id()
        await layer.update_thread(tid, name=f"shared {word} {i}", user_id=user.id)
        question = message(tid, f"common question about {word}")
        question["createdAt"] = f"2030-01-01T00:00:{i:02d}.000000Z"
        await layer.create_step(question)
        answer = message(tid, f"common answer mentioning {word}", type_="assistant_message")
        await layer.create_step(answer)
        ids.append(tid)
        answers.append(answer["id"])
    return ids[::-1], answers[::-1]


async def _all(layer: ChainlitLayer, user_id: str, first: int = 3, cursor: str | None = None,
               **filters: Any) -> list[str]:
    """Every thread id from ``cursor`` on, page by page."""
    ids: list[str] = []
    while True:
        page = await layer.list_threads(Pagination(first=first, cursor=cursor),
                                        ThreadFilter(userId=user_id, **filters))
        ids += [t["id"] for t in page.data]
        if not page.pageInfo.hasNextPage:
            return ids
        cursor = page.pageInfo.endCursor
        assert len(ids) < 200


@pytest.fixture
async def scan_layer(store: tuple[ContractBackend, Any], storage: Any) -> Any:
    """A second layer on the same store whose searches always scan (SQL), so both ways a
    search finds its threads are probed."""
    entry, handle = store
    instance = await entry.new_layer(handle, storage)
    if isinstance(instance, SQLDataLayer):
        instance.sql.search_candidates = 1
    yield instance
    await instance.close()


async def test_cursors_from_elsewhere_never_show_another_users_threads(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    alice, bob = await _user(layer, "alice"), await _user(layer, "bob")
    mine, _ = await _owned(layer, alice, "alpha", 5)
    theirs, _ = await _owned(layer, bob, "bravo", 5)

    # a cursor from bob's list, used by alice: her threads after that instant, or a typed error
    bob_page = await layer.list_threads(Pagination(first=2), ThreadFilter(userId=bob.id))
    bob_cursor = bob_page.pageInfo.endCursor
    assert bob_cursor is not None
    try:
        got = await _all(layer, alice.id, cursor=bob_cursor)
    except InvalidCursorError:
        got = []
    assert set(got) <= set(mine)

    # forged: bob's newest thread id with a far-future instant, and with a far-past one
    for moment, expected in (("2999-01-01T00:00:00.000000Z", mine),
                             ("1970-01-01T00:00:00.000000Z", [])):
        forged = _cursor([moment, theirs[0]])
        try:
            got = await _all(layer, alice.id, cursor=forged)
        except InvalidCursorError:
            got = expected
        assert got == expected, moment

    # the same cursor on a search and on the feedback filter
    for filters in ({"search": "shared"}, {"feedback": 1}, {"search": "bravo"}):
        try:
            got = await _all(layer, alice.id, cursor=bob_cursor, **filters)
        except InvalidCursorError:
            got = []
        assert set(got) <= set(mine), filters

    for label, cursor in TAMPERED.items():
        with pytest.raises(InvalidCursorError):
            await layer.list_threads(Pagination(first=3, cursor=cursor),
                                     ThreadFilter(userId=alice.id))
        assert label  # each one raised


async def test_search_and_filters_return_only_the_callers_threads(
    layer: ChainlitLayer, scan_layer: ChainlitLayer, backend: ContractBackend, chainlit_ctx: Any
) -> None:
    alice, bob = await _user(layer, "alice"), await _user(layer, "bob")
    mine, my_answers = await _owned(layer, alice, "alpha", 4)
    theirs, their_answers = await _owned(layer, bob, "bravo", 4)
    for answer, tid in zip(their_answers, theirs, strict=True):  # bob rates all of his
        await layer.upsert_feedback(Feedback(forId=answer, threadId=tid, value=1))
    await layer.upsert_feedback(Feedback(forId=my_answers[1], threadId=mine[1], value=0))

    for instance in [layer, scan_layer] if backend.sql else [layer]:
        assert await _all(instance, alice.id, search="shared") == mine
        assert await _all(instance, alice.id, search="SHARED ALPHA") == mine
        assert await _all(instance, alice.id, search="bravo") == []
        assert await _all(instance, alice.id, search="shared bravo 1") == []
        assert await _all(instance, alice.id, search="a") == mine  # a 1-character term: scan
        # message text (SQL): both users' messages say "common"; alice sees hers only
        assert await _all(instance, alice.id, search="common") == (
            mine if backend.search_in_messages else [])
        assert await _all(instance, alice.id, search="mentioning bravo") == []
        assert await _all(instance, alice.id, feedback=1) == []
        assert await _all(instance, alice.id, feedback=0) == [mine[1]]
        assert await _all(instance, alice.id, search="shared", feedback=1) == []
        assert await _all(instance, alice.id, search="shared", feedback=0) == [mine[1]]
        assert await _all(instance, bob.id, search="alpha") == []
        assert await _all(instance, bob.id, search="shared", feedback=1) == theirs
        # another user's id in the filter is that user's list: the layer scopes by the id it
        # is given (Chainlit's server always puts the authenticated user's id there)
        assert await _all(instance, bob.id) == theirs
