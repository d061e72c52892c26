"""Search answers exactly like the reference on every backend, for a corpus of tricky strings.

The reference (issue 14 item 12): a thread matches a term when the term's full Unicode case
folding is a substring of the case folding of the thread's name or, on the SQL backends, of the
text of one of its user or assistant messages; nothing else is folded (accents, dotless i) and
every character is literal. It is written here independently of the package (``str.casefold``
and ``in``), and a few answers are also spelled out by hand, so the test does not merely compare
the package with itself.

Each term is asked twice on the SQL backends: through a layer that takes the search index when it
can, and through one whose candidate bound is 1, so every term with a candidate is answered by
the scan instead; both must give the reference.
"""

from __future__ import annotations

from typing import Any

import pytest
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import InvalidInputError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.layers.sql import SQLDataLayer
from chainlit_orm.models.search import MAX_SEARCH_CHARS
from tests.contract.conftest import ContractBackend, message, new_id

#: label -> (thread name, [(step type, text), ...])
CORPUS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "istanbul": ("İstanbul", []),
    "strasse": ("Strasse", []),
    "STRASSE": ("STRASSE", []),
    "strasse_sz": ("Straße", []),
    "resume_accent": ("résumé", []),
    "resume_plain": ("resume", []),
    "dotless": ("ılık su", []),
    "dotted": ("ilik su", []),
    "percent": ("100% sure", []),
    "underscore": ("snake_case", []),
    "backslash": ("C:\\path", []),
    "glob": ("a*b?c[d]", []),
    "emoji": ("party 🎉 time", []),
    "cjk": ("東京タワー", []),
    "greek": ("ΣΊΣΥΦΟΣ", []),
    "kelvin": ("200 \u212a", []),  # KELVIN SIGN, which folds to "k"
    "msg_user": ("plain", [("user_message", "Ünïcödé NOTE body")]),
    "msg_bot": ("plain", [("assistant_message", "The Answer is 42")]),
    "msg_tool": ("plain", [("tool", "secret tool output Answer")]),
}

TERMS = [
    "İstanbul", "istanbul", "i̇stanbul", "ß", "ss", "SS", "Strasse", "STRASSE", "straße",
    "résumé", "RÉSUMÉ", "resume", "sum", "ı", "i", "ılık", "ilik", "%", "100%", "0% s", "_",
    "e_c", "\\", ":\\p", "*", "?", "[", "a*b", "c[d]", "[d]", "🎉", "🎉 t", "東京", "京", "タワー",
    "σίσυφος", "ΣΊΣΥΦΟΣ", "σ", "k", "200 k", "answer", "ANSWER IS", "note", "ünïcödé",
    "tool", "secret", "x", "zz", "pla", "nowhere at all", "   ",
]

#: Answers spelled out by hand (names only, so they hold on DynamoDB too); each is also checked
#: against the reference, so a mistake here cannot hide one there.
BY_HAND: dict[str, set[str]] = {
    "İstanbul": {"istanbul"},
    "istanbul": set(),  # "İ" folds to "i" + U+0307, so the plain word is not a substring
    "ß": {"strasse", "STRASSE", "strasse_sz"},
    "STRASSE": {"strasse", "STRASSE", "strasse_sz"},
    "résumé": {"resume_accent"},
    "resume": {"resume_plain"},
    "ı": {"dotless"},
    "ilik": {"dotted"},
    "%": {"percent"},
    "_": {"underscore"},
    "\\": {"backslash"},
    "c[d]": {"glob"},
    "?": {"glob"},
    "🎉 t": {"emoji"},
    "京": {"cjk"},
    "σίσυφος": {"greek"},
    "200 k": {"kelvin"},
}


def reference(term: str, corpus: dict[str, list[str]]) -> set[str]:
    """The reference answer: labels whose searchable texts contain the folded term."""
    term = term.strip()
    if not term:  # Chainlit's empty search lists everything
        return set(corpus)
    needle = term.casefold()
    return {label for label, texts in corpus.items() if any(needle in t.casefold() for t in texts)}


async def _seed(layer: ChainlitLayer) -> tuple[PersistedUser, dict[str, str], dict[str, str]]:
    user = await layer.create_user(User(identifier=f"searcher-{new_id()}", metadata={}))
    assert user is not None
    ids: dict[str, str] = {}
    bot_step = ""
    for label, (name, steps) in CORPUS.items():
        tid = ids[label] = new_id()
        await layer.update_thread(tid, name=name, user_id=user.id)
        for kind, text in steps:
            step = message(tid, text, type_=kind)
            await layer.create_step(step)
            if label == "msg_bot":
                bot_step = step["id"]
    return user, ids, {"bot_step": bot_step}


def _searchable(backend: ContractBackend) -> dict[str, list[str]]:
    return {
        label: [name, *(text for kind, text in steps
                        if backend.search_in_messages and kind != "tool")]
        for label, (name, steps) in CORPUS.items()
    }


async def _search(layer: ChainlitLayer, user_id: str, term: str, first: int = 100,
                  **filters: Any) -> list[str]:
    """Every page of a search, through the cursors; thread ids in list order."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await layer.list_threads(Pagination(first=first, cursor=cursor),
                                        ThreadFilter(userId=user_id, search=term, **filters))
        ids += [t["id"] for t in page.data]
        if not page.pageInfo.hasNextPage:
            return ids
        cursor = page.pageInfo.endCursor
        assert len(ids) < 1000


@pytest.fixture
async def scan_layer(store: tuple[ContractBackend, Any], storage: Any) -> Any:
    """A second layer on the same store whose searches always take the scan (SQL only)."""
    entry, handle = store
    instance = await entry.new_layer(handle, storage)
    if isinstance(instance, SQLDataLayer):
        instance.sql.search_candidates = 1
    yield instance
    await instance.close()


async def test_search_equals_the_reference_on_a_tricky_corpus(
    layer: ChainlitLayer, scan_layer: ChainlitLayer, backend: ContractBackend, chainlit_ctx: Any
) -> None:
    user, ids, _ = await _seed(layer)
    label_of = {tid: label for label, tid in ids.items()}
    corpus = _searchable(backend)
    for term, want in BY_HAND.items():
        assert reference(term, corpus) == want, term
    layers = [layer, scan_layer] if backend.sql else [layer]
    for term in TERMS:
        want = reference(term, corpus)
        for instance in layers:
            got = await _search(instance, user.id, term)
            assert len(got) == len(set(got)), term
            assert {label_of[tid] for tid in got} == want, (term, instance is scan_layer)
    if backend.search_in_messages:  # the message texts count, the tool's does not
        assert reference("answer", corpus) == {"msg_bot"}
        assert reference("ünïcödé", corpus) == {"msg_user"}
        assert reference("secret", corpus) == set()


async def test_search_pages_through_cursors_and_keeps_the_feedback_filter(
    layer: ChainlitLayer, scan_layer: ChainlitLayer, backend: ContractBackend, chainlit_ctx: Any
) -> None:
    user, ids, steps = await _seed(layer)
    label_of = {tid: label for label, tid in ids.items()}
    corpus = _searchable(backend)
    await layer.upsert_feedback(Feedback(forId=steps["bot_step"], threadId=ids["msg_bot"],
                                         value=1))
    for instance in [layer, scan_layer] if backend.sql else [layer]:
        for term in ("s", "ss", "stra", "plain", "a"):
            paged = await _search(instance, user.id, term, first=2)
            assert len(paged) == len(set(paged))
            assert {label_of[t] for t in paged} == reference(term, corpus), term
            assert paged == await _search(instance, user.id, term)  # same order as one page
        assert await _search(instance, user.id, "plain", feedback=1) == [ids["msg_bot"]]
        assert await _search(instance, user.id, "plain", feedback=0) == []
        answer = await _search(instance, user.id, "ANSWER", feedback=1)
        assert answer == ([ids["msg_bot"]] if backend.search_in_messages else [])


async def test_a_term_that_is_not_storable_text_is_refused(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    user, _, _ = await _seed(layer)
    with pytest.raises(InvalidInputError):
        await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id,
                                                                   search="x\ud800"))
    for term in ("\x00", "a\x00b"):  # no stored text holds a NUL: refused like any bad input
        with pytest.raises(InvalidInputError):
            await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id,
                                                                       search=term))


async def test_one_length_limit_for_search_terms_on_every_backend(
    layer: ChainlitLayer, scan_layer: ChainlitLayer, backend: ContractBackend, chainlit_ctx: Any
) -> None:
    """1,000 characters are searched (the worst case for SQLite's GLOB: every character a
    wildcard, escaped as three, and each folding to three characters); 1,001 are refused with
    ``InvalidInputError`` on every backend. Outside attack of stop 23, F4: a long term made
    SQLite fail with "LIKE or GLOB pattern too complex", reported as the database being down."""
    user, _, _ = await _seed(layer)
    for term in ("*?[" * 334)[:MAX_SEARCH_CHARS], "ﬃ" * MAX_SEARCH_CHARS, "é" * MAX_SEARCH_CHARS:
        for instance in [layer, scan_layer] if backend.sql else [layer]:
            assert await _search(instance, user.id, term) == [], term[:3]
    for term in "a" * (MAX_SEARCH_CHARS + 1), "*" * 20_000:
        with pytest.raises(InvalidInputError) as info:
            await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id,
                                                                       search=term))
        assert str(info.value) == (
            f"search term has {len(term)} characters; at most 1000 are accepted")
