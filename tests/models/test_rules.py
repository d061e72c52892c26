"""The Chainlit rules of :mod:`chainlit_orm.models.rules`, as values (both backends call them;
``tests/contract`` checks the answers they give with them)."""

from __future__ import annotations

from chainlit_orm.models.rules import STEP_ORDER, element_order, step_order


def test_steps_are_ordered_by_creation_then_id() -> None:
    rows = [
        {"id": "b", "createdAt": "2026-01-02T00:00:00.000000Z"},
        {"id": "c", "createdAt": "2026-01-01T00:00:00.000000Z"},
        {"id": "a", "createdAt": "2026-01-02T00:00:00.000000Z"},
        {"id": "d", "createdAt": None},
    ]
    assert STEP_ORDER == ("createdAt", "id")
    assert [r["id"] for r in sorted(rows, key=step_order)] == ["d", "c", "a", "b"]
    assert [r["id"] for r in sorted(rows, key=step_order, reverse=True)] == ["b", "a", "c", "d"]
    assert step_order({"id": 7, "createdAt": "t"}) == ("t", "7")


def test_elements_are_ordered_by_id() -> None:
    rows = [{"id": "b"}, {"id": "a"}, {"id": "c"}]
    assert [r["id"] for r in sorted(rows, key=element_order)] == ["a", "b", "c"]
