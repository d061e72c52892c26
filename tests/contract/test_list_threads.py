"""list_threads: order, keyset cursors, filters, search (contract §1.2 and cursor semantics)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import InvalidCursorError, InvalidInputError
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import ContractBackend, message, new_id


async def _new_user(layer: ChainlitLayer) -> PersistedUser:
    created = await layer.create_user(User(identifier=f"lister-{new_id()}", metadata={}))
    assert created is not None
    return created


async def _all_pages(layer: ChainlitLayer, user_id: str, first: int, **filters: Any
                     ) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await layer.list_threads(Pagination(first=first, cursor=cursor),
                                        ThreadFilter(userId=user_id, **filters))
        pages.append([t["id"] for t in page.data])
        assert len(pages) < 500
        if not page.pageInfo.hasNextPage:
            return pages
        cursor = page.pageInfo.endCursor


async def test_threads_are_listed_by_latest_user_message_and_report_it_as_created_at(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    user = await _new_user(layer)
    ids = [new_id() for _ in range(3)]
    for i, tid in enumerate(ids):
        await layer.update_thread(tid, name=f"t{i}", user_id=user.id)
    # the oldest thread gets the newest user message; assistant messages do not count
    newest = message(ids[0], "bump")
    newest["createdAt"] = "2099-01-01T00:00:00Z"
    await layer.create_step(newest)
    reply = message(ids[1], "reply", type_="assistant_message")
    reply["createdAt"] = "2099-06-01T00:00:00Z"
    await layer.create_step(reply)
    page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
    assert [t["id"] for t in page.data] == [ids[0], ids[2], ids[1]]
    assert page.data[0]["createdAt"] == "2099-01-01T00:00:00.000000Z"
    full = await layer.get_thread(ids[0])
    assert full is not None and full["createdAt"] != "2099-01-01T00:00:00.000000Z"
    assert page.data[0]["name"] == "t0" and page.data[0]["userIdentifier"] == user.identifier
    assert page.data[0]["steps"] == []  # summary only
    json.dumps(page.to_dict())


async def test_cursor_pages_have_no_duplicates_and_no_skips_even_for_ties(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    user = await _new_user(layer)
    ids = [new_id() for _ in range(23)]
    for tid in ids:
        await layer.update_thread(tid, name="tie", user_id=user.id)
        tied = message(tid, "same instant")
        tied["createdAt"] = "2030-01-01T00:00:00.000000Z"  # every thread in the same microsecond
        await layer.create_step(tied)
    pages = await _all_pages(layer, user.id, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [tid for page in pages for tid in page]
    assert sorted(flat) == sorted(ids) and len(set(flat)) == 23
    assert flat == sorted(ids, reverse=True)  # the id breaks ties, descending


async def test_page_size_is_exactly_first_and_has_next_page_is_exact(
    layer: ChainlitLayer,
) -> None:
    user = await _new_user(layer)
    for i in range(10):
        await layer.update_thread(new_id(), name=f"n{i}", user_id=user.id)
    pages = await _all_pages(layer, user.id, 5)
    assert [len(p) for p in pages] == [5, 5]
    one = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
    assert len(one.data) == 10 and one.pageInfo.hasNextPage is False


async def test_user_filter_is_honoured_and_none_lists_every_user(layer: ChainlitLayer) -> None:
    alice, bob = await _new_user(layer), await _new_user(layer)
    a, b = new_id(), new_id()
    await layer.update_thread(a, name="alice's", user_id=alice.id)
    await layer.update_thread(b, name="bob's", user_id=bob.id)
    page = await layer.list_threads(Pagination(first=50), ThreadFilter(userId=alice.id))
    assert [t["id"] for t in page.data] == [a]
    everyone = await _all_pages(layer, None, 200)  # type: ignore[arg-type]
    flat = {tid for p in everyone for tid in p}
    assert {a, b} <= flat


async def test_search_is_case_insensitive_beyond_ascii_and_literal(
    layer: ChainlitLayer, backend: ContractBackend, chainlit_ctx: Any
) -> None:
    user = await _new_user(layer)
    by_name, by_user_msg, by_bot_msg, by_tool, other = (new_id() for _ in range(5))
    await layer.update_thread(by_name, name="Großer ÄRGER mit 100% Rabatt_x", user_id=user.id)
    for tid in (by_user_msg, by_bot_msg, by_tool, other):
        await layer.update_thread(tid, name="plain", user_id=user.id)
    await layer.create_step(message(by_user_msg, "ich habe ärger"))
    await layer.create_step(message(by_bot_msg, "KEIN ÄRGER", type_="assistant_message"))
    tool = message(by_tool, "ärger im tool", type_="tool")
    await layer.create_step(tool)

    async def search(q: str) -> set[str]:
        page = await layer.list_threads(Pagination(first=20),
                                        ThreadFilter(userId=user.id, search=q))
        return {t["id"] for t in page.data}

    in_messages = {by_user_msg, by_bot_msg} if backend.search_in_messages else set()
    assert await search("ärger") == {by_name} | in_messages
    assert await search("ÄRGER") == {by_name} | in_messages
    assert await search("100%") == {by_name}
    assert await search("0% R") == {by_name}
    assert await search("%") == {by_name}
    assert await search("tt_x") == {by_name}
    assert await search("großer_ärger") == set()  # "_" is literal, not "any character"
    assert await search("großer%rabatt") == set()  # "%" is literal, not "anything"
    assert await search("nowhere") == set()


async def test_feedback_filter_works_for_zero_and_one(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    user = await _new_user(layer)
    down, up, none = new_id(), new_id(), new_id()
    for tid in (down, up, none):
        await layer.update_thread(tid, name="fb", user_id=user.id)
        step = message(tid, "answer", type_="assistant_message")
        await layer.create_step(step)
        if tid != none:
            await layer.upsert_feedback(Feedback(forId=step["id"], threadId=tid,
                                                 value=0 if tid == down else 1))

    async def listed(value: int) -> list[str]:
        page = await layer.list_threads(Pagination(first=20),
                                        ThreadFilter(userId=user.id, feedback=value))
        return [t["id"] for t in page.data]

    assert await listed(0) == [down]
    assert await listed(1) == [up]


async def test_filters_still_fill_whole_pages(layer: ChainlitLayer, chainlit_ctx: Any) -> None:
    user = await _new_user(layer)
    matching = []
    for i in range(12):
        tid = new_id()
        await layer.update_thread(tid, name="needle" if i % 3 == 0 else "hay", user_id=user.id)
        if i % 3 == 0:
            matching.append(tid)
    pages = await _all_pages(layer, user.id, 2, search="needle")
    assert [len(p) for p in pages] == [2, 2]
    assert sorted(t for p in pages for t in p) == sorted(matching)


async def test_forged_or_stale_cursor_gives_a_typed_error(layer: ChainlitLayer) -> None:
    user = await _new_user(layer)
    for cursor in ("garbage", "eyJub3QiOiJhIGxpc3QifQ", new_id(), "W10", "WyJ4IiwieSJd"):
        with pytest.raises(InvalidCursorError):
            await layer.list_threads(Pagination(first=5, cursor=cursor),
                                     ThreadFilter(userId=user.id))
    with pytest.raises(InvalidInputError):
        await layer.list_threads(Pagination(first=0), ThreadFilter(userId=user.id))


async def test_cursor_of_a_deleted_thread_still_pages_on(layer: ChainlitLayer) -> None:
    user = await _new_user(layer)
    ids = [new_id() for _ in range(6)]
    for tid in ids:
        await layer.update_thread(tid, name="x", user_id=user.id)
    first = await layer.list_threads(Pagination(first=3), ThreadFilter(userId=user.id))
    await layer.delete_thread(first.data[-1]["id"])
    rest = await layer.list_threads(Pagination(first=3, cursor=first.pageInfo.endCursor),
                                    ThreadFilter(userId=user.id))
    assert len(rest.data) == 3
    assert {t["id"] for t in first.data} | {t["id"] for t in rest.data} == set(ids)
