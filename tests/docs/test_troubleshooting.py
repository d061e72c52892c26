"""docs/troubleshooting.md documents every typed error of ``chainlit_orm.errors``: a heading per
class, with a cause and a fix, and no heading for a class that no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

from chainlit_orm import errors

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()


def _error_classes() -> set[str]:
    return {name for name in errors.__all__
            if isinstance(getattr(errors, name), type)
            and issubclass(getattr(errors, name), errors.ChainlitORMError)}


def _sections() -> dict[str, str]:
    parts = re.split(r"^## `(\w+)`\n", PAGE, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_error_class_has_a_section_with_cause_and_fix() -> None:
    sections = _sections()
    assert set(sections) == _error_classes()
    for name, text in sections.items():
        assert "**Cause**" in text and "**Fix**" in text, name


def test_the_error_tree_is_what_the_package_defines() -> None:
    assert len(_error_classes()) == 19
