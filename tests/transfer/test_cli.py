"""``chainlit-orm copy``, ``export`` and ``import`` as a user runs them: progress, summary, exit
codes, storage defaults, and a verification that names the first differing thread."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.cli import main
from chainlit_orm.transfer import TerminalProgress, copy
from tests.fixtures.legacy import temp_sqlite_url
from tests.transfer.conftest import memory_storage
from tests.transfer.seed import seed_many


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    """A SQLite store of 2 users and 5 threads whose files are in a local directory."""
    files = f"file://{tmp_path / 'src-files'}"
    async with temp_sqlite_url(tmp_path) as url:
        from chainlit_orm import FsspecStorage

        layer = SQLDataLayer(url, storage=FsspecStorage(files, mount=False), create_schema=True)
        users = [await layer.create_user(User(identifier=f"u{i}@example.com")) for i in (1, 2)]
        threads = await seed_many(layer, users, 5)
        await layer.close()
        yield url, files, threads


async def _run(*args: str) -> int:
    import asyncio

    # main() runs its own event loop (asyncio.run), so it runs in a thread here
    return await asyncio.to_thread(main, list(args))


async def test_copy_prints_progress_and_a_summary(
    store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, files, _ = store
    dst_files = f"file://{tmp_path / 'dst-files'}"
    async with temp_sqlite_url(tmp_path) as dst:
        code = await _run("copy", src, dst, "--src-storage", files, "--dst-storage", dst_files,
                          "--checkpoint", str(tmp_path / "ck.json"))
        captured = capsys.readouterr()
        assert code == 0, captured.err
        lines = captured.out.splitlines()
        assert lines[0] == f"copy: {src} -> {dst}"
        assert re.fullmatch(r"  rows: 2 users, 5 threads, 15 steps, 5 elements, 2 feedbacks "
                            r"\(29 in [\d.]+ s, [\d,]+ rows/s\)", lines[1]), lines[1]
        assert re.fullmatch(r"  files: 5 \(\d+ bytes\)", lines[2]), lines[2]
        assert re.fullmatch(r"  verified: 5 threads and every row count match \([\d.]+ s\)",
                            lines[3]), lines[3]
        assert len(lines) == 4
        err = captured.err.splitlines()
        assert err[0] == "copy: started" and re.fullmatch(r"copy: finished in [\d.]+ s", err[2])
        assert re.fullmatch(r"copy: users 2/2 \(100%\) \d+/s, threads 5/5 \(100%\) \d+/s, "
                            r"steps 15/15 \(100%\) \d+/s, elements 5/5 \(100%\) \d+/s, "
                            r"feedbacks 2/2 \(100%\) \d+/s, files 5 \d+/s", err[1]), err[1]
        assert err[3] == "verify: started"

        # the destination is changed behind the copy's back: --verify names the thread
        engine = create_async_engine(dst)
        async with engine.begin() as conn:
            row = (await conn.execute(sa.text(
                "SELECT id, \"threadId\" FROM steps WHERE type = 'tool' ORDER BY id LIMIT 1"
            ))).one()
            await conn.execute(sa.text("UPDATE steps SET output = 'changed' WHERE id = :i"),
                               {"i": row[0]})
        await engine.dispose()
        code = await _run("copy", src, dst, "--src-storage", files, "--dst-storage", dst_files,
                          "--verify", "--checkpoint", str(tmp_path / "ck.json"))
        captured = capsys.readouterr()
        assert code == 1
        assert captured.err.splitlines()[-1] == (
            f"chainlit-orm: verification failed: thread {row[1]} differs in {dst}: "
            f"step {row[0]} differs in output")


async def test_export_and_import_commands(store: Any, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src, files, _ = store
    bundle = tmp_path / "bundle"
    assert await _run("export", src, str(bundle), "--src-storage", files, "--user",
                      "u2@example.com", "--canonical") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"export: {src} -> {bundle}"
    assert out[1].startswith("  rows: 1 users, 2 threads, 6 steps, 2 elements, 2 feedbacks")
    async with temp_sqlite_url(tmp_path) as dst:
        assert await _run("import", str(bundle), dst, "--no-files",
                          "--checkpoint", str(tmp_path / "ck.json")) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"import: {bundle} -> {dst}"
        assert out[2] == "  files: not copied (--no-files)"


async def test_storage_defaults_and_refusals(store: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src, files, _ = store
    async with temp_sqlite_url(tmp_path) as dst:
        # files but nowhere to put them: refused before any row of the batch is written
        code = await _run("copy", src, dst, "--src-storage", files,
                          "--checkpoint", str(tmp_path / "a.json"))
        assert code == 1
        assert re.search(r"chainlit-orm: error: element \S+ has a stored file but no "
                         r"destination storage is configured: pass --dst-storage \(or "
                         r"--no-files to copy rows only\)", capsys.readouterr().err)
        # both sides default to CHAINLIT_ORM_STORAGE_URL: one storage, files already in place
        monkeypatch.setenv("CHAINLIT_ORM_STORAGE_URL", files)
        code = await _run("copy", src, dst, "--checkpoint", str(tmp_path / "b.json"))
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert re.search(r"  files: 5 \(\d+ bytes\) already in place: source and destination "
                         "use the same storage", captured.out)
        # the same database on both sides is refused
        assert await _run("copy", src, src) == 1
        assert "the source and the destination are the same store" in capsys.readouterr().err


async def test_terminal_progress_draws_bars(store: Any, tmp_path: Path) -> None:
    src, files, _ = store
    stream = io.StringIO()
    async with temp_sqlite_url(tmp_path) as dst, memory_storage("bars") as dst_storage:
        await copy(src, dst, src_storage=files, dst_storage=dst_storage,
                   progress=TerminalProgress(stream, force_terminal=True),
                   checkpoint=tmp_path / "ck.json")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())
    for bar, count in (("users", "2/2"), ("threads", "5/5"), ("steps", "15/15"),
                       ("feedbacks", "2/2")):
        assert re.search(rf"copy +{bar} .*{count} .*/s", text), bar
    assert re.search(r"verify +threads .*5/5", text)


@pytest.mark.parametrize(("text", "shown"), [
    ("cannot reach postgresql://h/db?password=s3cret: connection refused",
     "cannot reach postgresql://h/db?password=***: connection refused"),
    ("postgresql://h/db?password=a:b&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
    ("postgresql://u:pw@h/db?token=t: refused", "postgresql://u:***@h/db?token=***: refused"),
    ("s3://b?secret=x:", "s3://b?secret=***:"),
])
def test_a_masked_query_value_keeps_the_colon_after_the_url(text: str, shown: str) -> None:
    """A secret in a query string is masked up to the ':' that ends the URL in a message (a
    colon inside the value is masked with it)."""
    from chainlit_orm.errors import mask_url

    assert mask_url(text) == shown


def test_a_resumed_runs_rate_counts_its_own_rows() -> None:
    """A resumed run that found nothing left wrote 0 rows: it must not report the earlier runs'
    rows over its own fraction of a second (it showed "33,077 rows/s" for 0.0 s)."""
    from chainlit_orm.transfer.progress import Summary

    rows = {"users": 3, "threads": 40}
    done = Summary("copy", "a", "b", rows=rows, seconds=0.001, moved=0, resumed_after="t1")
    assert done.rows_per_second() == 0.0
    assert done.lines()[2] == "  rows: 3 users, 40 threads (43; 0 of them in this run, 0.0 s, " \
                              "0 rows/s)"
    half = Summary("copy", "a", "b", rows=rows, seconds=2.0, moved=20, resumed_after="t1")
    assert half.lines()[2] == "  rows: 3 users, 40 threads (43; 20 of them in this run, 2.0 s, " \
                              "10 rows/s)"
    whole = Summary("copy", "a", "b", rows=rows, seconds=2.0, moved=43)
    assert whole.lines()[1] == "  rows: 3 users, 40 threads (43 in 2.0 s, 22 rows/s)"
