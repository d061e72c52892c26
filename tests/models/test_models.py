"""The models cover every key of Chainlit's dicts, and conversion is lossless (issue: foundation).

The keys are read from Chainlit's own TypedDict annotations at test time, so a key a later
Chainlit adds, and the models lack, fails this test.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import chainlit as cl
import matplotlib
import pandas as pd
import plotly.graph_objects as go
import pytest
from chainlit.context import init_http_context
from chainlit.element import ElementDict
from chainlit.step import StepDict
from chainlit.types import FeedbackDict, ThreadDict
from chainlit.user import PersistedUser

from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from chainlit_orm.models.convert import RELATION_KEYS, chainlit_keys, from_row, take_row, to_row

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _typed_dict_keys(typed_dict: Any) -> set[str]:
    """Keys from the TypedDict's annotations (forward references stay unresolved)."""
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


def _persisted_user_keys() -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(PersistedUser)}


CHAINLIT_SHAPES: dict[str, set[str]] = {
    "step": _typed_dict_keys(StepDict),
    "element": _typed_dict_keys(ElementDict),
    "thread": _typed_dict_keys(ThreadDict),
    "feedback": _typed_dict_keys(FeedbackDict) | {"threadId"},
    "user": _persisted_user_keys(),
}


@pytest.mark.parametrize("entity", list(CHAINLIT_SHAPES))
def test_every_chainlit_key_is_a_model_field(entity: str) -> None:
    table = DEFAULT_MODELS.table(entity)
    columns = set(chainlit_keys(table))
    relations = set(RELATION_KEYS[entity])
    missing = CHAINLIT_SHAPES[entity] - columns - relations
    assert missing == set(), f"{entity}: Chainlit keys without a model field: {missing}"
    for key, target in RELATION_KEYS[entity].items():
        assert key in CHAINLIT_SHAPES[entity]
        assert target in ("step", "element", "feedback")


def test_the_issue_named_keys_are_columns() -> None:
    step = set(chainlit_keys(DEFAULT_MODELS.table("step")))
    assert {"autoCollapse", "modes", "command", "defaultOpen", "waitForAnswer", "language",
            "generation", "showInput", "isError", "tags", "input", "output", "start", "end",
            "parentId", "metadata", "icon"} <= step
    element = set(chainlit_keys(DEFAULT_MODELS.table("element")))
    assert {"autoPlay", "playerConfig", "props", "objectKey", "url", "threadId", "forId", "mime",
            "chainlitKey"} <= element


@pytest.fixture
async def ctx() -> Any:
    return init_http_context(thread_id=str(uuid.uuid4()))


def _elements(for_id: str) -> list[Any]:
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    elements = [
        cl.Text(name="t.txt", content="ünïcode ✓", display="side", language="python"),
        cl.File(name="f.bin", content=b"\x00\x01", display="inline"),
        cl.Image(name="i.png", content=b"png", size="large"),
        cl.Pdf(name="d.pdf", content=b"%PDF", page=3),
        cl.Audio(name="a.mp3", content=b"id3", auto_play=True),
        cl.Video(name="v.mp4", content=b"mp4", player_config={"muted": True, "n": 2}),
        cl.Plotly(name="p", figure=go.Figure(data=[go.Bar(y=[1, 2])])),
        cl.Pyplot(name="py", figure=fig),
        cl.TaskList(),
        cl.Dataframe(name="df", data=pd.DataFrame({"a": [1, 2]})),
        cl.CustomElement(name="Custom", props={"count": 3, "nested": {"ok": True}, "l": [1.5]}),
    ]
    plt.close(fig)
    for element in elements:
        element.for_id = for_id
    return elements


def _same(original: dict[str, Any], back: dict[str, Any]) -> None:
    for key, value in original.items():
        assert key in back, key
        assert back[key] == value, (key, value, back[key])
        assert type(back[key]) is type(value), (key, type(value), type(back[key]))


async def test_conversion_is_lossless_for_real_chainlit_objects(ctx: Any) -> None:
    msg = cl.Message(content="héllo", author="alice", command="c", modes={"m": "x"},
                     metadata={"n": 1, "b": False, "d": {"x": [1, 2]}}, tags=["t"])
    step = cl.Step(name="tool", type="tool", default_open=True, auto_collapse=True,
                   show_input="json", icon="wrench", language="python", tags=["a"])
    step.input, step.output = "in", "out ✓"
    for source in (dict(msg.to_dict()), dict(step.to_dict())):
        source["generation"] = {"provider": "p", "tokenCount": 3}
        original = copy.deepcopy(source)
        back = from_row(DEFAULT_MODELS, "step", to_row(DEFAULT_MODELS, "step", source))
        _same(original, back)
    for element in _elements(msg.id):
        original = copy.deepcopy(dict(element.to_dict()))
        back = from_row(DEFAULT_MODELS, "element", to_row(DEFAULT_MODELS, "element", original))
        _same(original, back)


def test_unknown_keys_survive_in_the_overflow_field() -> None:
    source = {"id": str(uuid.uuid4()), "threadId": str(uuid.uuid4()), "type": "run",
              "name": "n", "brandNewKey": {"deep": [1, {"x": True}]}, "n": 5}
    row = to_row(DEFAULT_MODELS, "step", source)
    assert row["extra"] == {"brandNewKey": {"deep": [1, {"x": True}]}, "n": 5}
    back = from_row(DEFAULT_MODELS, "step", row)
    assert back["brandNewKey"] == {"deep": [1, {"x": True}]} and back["n"] == 5


def test_take_row_gives_what_from_row_gives_from_the_row_itself() -> None:
    """A full row (every column, as a backend reads it) plus a relation key: the in-place
    conversion equals the copying one, and the dict it returns is the row."""
    source = {"id": str(uuid.uuid4()), "threadId": str(uuid.uuid4()), "type": "run",
              "name": "n", "metadata": {"favorite": True}, "brandNewKey": [1], "n": 5}
    row = dict.fromkeys(c.name for c in DEFAULT_MODELS.table("step").columns)
    row.update(to_row(DEFAULT_MODELS, "step", source))
    assert row["favorite"] is True and row["extra"] == {"brandNewKey": [1], "n": 5}
    expected = from_row(DEFAULT_MODELS, "step", row)
    row["feedback"] = {"id": "f", "value": 1}
    taken = take_row(DEFAULT_MODELS, "step", row)
    assert taken is row
    assert taken == {**expected, "feedback": {"id": "f", "value": 1}}
    assert "favorite" not in taken and "extra" not in taken
    assert sorted(set(taken) - set(chainlit_keys(DEFAULT_MODELS.table("step")))) == [
        "brandNewKey", "feedback", "n"]


def test_model_sets_are_independent() -> None:
    one = ModelSet.build(prefix="a_")
    two = ModelSet.build(prefix="b_", schema="s")
    assert one.metadata is not two.metadata
    assert sorted(one.metadata.tables) == ["a_elements", "a_feedbacks", "a_steps", "a_threads",
                                           "a_users"]
    assert sorted(two.metadata.tables) == ["s.b_elements", "s.b_feedbacks", "s.b_steps",
                                           "s.b_threads", "s.b_users"]
    assert DEFAULT_MODELS.table("thread").name == "threads"
