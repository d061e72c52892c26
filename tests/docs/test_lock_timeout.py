"""The docs state the table-lock wait of an online migration as the code sets it.

outside attack #18 F6: docs/deployment.md said each ``ALTER TABLE`` waits at most 1 s for its
lock, docs/troubleshooting.md said ``lock_timeout`` is 2 s; the code's
:data:`chainlit_orm.migrations.sql.LOCK_TIMEOUT` is the one value, and both pages are checked
against it (and against each other: every ``lock_timeout`` figure on the pages is that value).
"""

from __future__ import annotations

import re
from pathlib import Path

from chainlit_orm.migrations.sql import LOCK_ATTEMPTS, LOCK_TIMEOUT

DOCS = Path(__file__).resolve().parents[2] / "docs"
DEPLOYMENT = (DOCS / "deployment.md").read_text()
TROUBLESHOOTING = (DOCS / "troubleshooting.md").read_text()


def test_both_pages_state_the_lock_timeout_the_code_uses() -> None:
    seconds = f"{LOCK_TIMEOUT:g} s"
    assert seconds == "1 s"
    assert f"waits at most {seconds} for its table lock\n  (`lock_timeout`" in DEPLOYMENT
    assert f"step that did not get its lock is tried again with a growing pause, {LOCK_ATTEMPTS} " \
        "times" in DEPLOYMENT
    assert f"(`lock_timeout` of {seconds}, retried" in TROUBLESHOOTING


def test_no_page_gives_another_lock_timeout() -> None:
    """Every figure within a few words after ``lock_timeout`` (or before it) is the code's."""
    for page in (DEPLOYMENT, TROUBLESHOOTING):
        figures = re.findall(r"`lock_timeout` of (\d+(?:\.\d+)?) s", page) + re.findall(
            r"at most (\d+(?:\.\d+)?) s for its table lock", page)
        assert figures and {float(f) for f in figures} == {LOCK_TIMEOUT}
