"""The longest write stall while ``chainlit-orm migrate`` upgrades a large Chainlit database.

A PostgreSQL database is made from Chainlit's documented DDL (``bench/fixtures`` or
``tests/fixtures/legacy``) and loaded with N steps (one thread per 10 steps, 100 users) through
``COPY``. Then 8 writers, each on its own connection, write as an app still running the
previous version would (Chainlit's columns only): a step inserted into one of the existing
threads, then that thread renamed, each its own autocommitted statement, back to back. While
they write, ``chainlit-orm migrate URL`` runs in a process of its own, from the code under test
or from another checkout (``--code DIR``, e.g. a worktree of the commit before online
migrations), so the migration's Python work does not share the writers' event loop.

What is measured, per write: the time from sending it to its commit. The figure is the longest
such wait among writes that overlapped the migration (the "stall": a writer blocked behind a
lock), with the count of writes committed during the migration per writer, and the migration's
duration.

::

    .venv/bin/python -m bench.migration_stall                    # 1,000,000 steps, this checkout
    .venv/bin/python -m bench.migration_stall --steps 200000 --before-rev 83b3053
    # -> bench/results/migration_stall.md (with the command line)

``--before-rev REV`` also measures the code at ``REV`` (checked out into a temporary git
worktree, run with this checkout's virtualenv) on a database loaded the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
DDL = ROOT / "tests" / "fixtures" / "legacy" / "chainlit_docs_postgresql.sql"
ADMIN_DSN = os.environ.get("CHAINLIT_ORM_BENCH_PG_ADMIN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS = ROOT / "bench" / "results" / "migration_stall.md"

#: Steps per thread in the loaded database.
STEPS_PER_THREAD = 10
#: Users owning the threads.
USERS = 100


@dataclass
class WriterStats:
    """One writer's writes: (sent, committed) monotonic times, and errors."""

    writes: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def during(self, start: float, end: float) -> int:
        """Writes committed between ``start`` and ``end``."""
        return sum(1 for _, done in self.writes if start <= done <= end)

    def longest_wait(self, start: float, end: float) -> float:
        """The longest send-to-commit time among writes that overlapped [start, end]."""
        return max((done - sent for sent, done in self.writes if done >= start and sent <= end),
                   default=0.0)


@dataclass
class StallResult:
    """One migration under load."""

    label: str
    steps: int
    database: str
    migrate_seconds: float
    exit_code: int
    output: str
    writers: list[WriterStats]
    start: float
    end: float

    @property
    def longest_stall(self) -> float:
        return max(w.longest_wait(self.start, self.end) for w in self.writers)

    @property
    def per_writer(self) -> list[int]:
        return [w.during(self.start, self.end) for w in self.writers]

    @property
    def errors(self) -> list[str]:
        return [e for w in self.writers for e in w.errors]

    def p99(self) -> float:
        waits = sorted(done - sent for w in self.writers for sent, done in w.writes
                       if done >= self.start and sent <= self.end)
        return waits[int(0.99 * (len(waits) - 1))] if waits else 0.0


def _dsn(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


async def create_database() -> str:
    """A new, empty database; returns its name."""
    name = f"clorm_stall_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def load_legacy(name: str, steps: int, seed: int = 7) -> list[str]:
    """Chainlit's documented DDL, then ``steps`` steps in ``steps // 10`` threads; returns the
    thread ids."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(_dsn(name))
    try:
        await conn.execute(DDL.read_text(encoding="utf-8"))
        users = [(uuid.UUID(int=rng.getrandbits(128)), f"user{i}", "{}",
                  "2025-01-01T00:00:00.000000Z") for i in range(USERS)]
        await conn.copy_records_to_table("users", records=users,
                                         columns=["id", "identifier", "metadata", "createdAt"])
        thread_count = max(1, steps // STEPS_PER_THREAD)
        threads = []
        for i in range(thread_count):
            user = users[i % USERS]
            threads.append((uuid.UUID(int=rng.getrandbits(128)), _time(i), f"Thread {i}",
                            user[0], user[1], "{}"))
        await conn.copy_records_to_table(
            "threads", records=threads,
            columns=["id", "createdAt", "name", "userId", "userIdentifier", "metadata"])
        batch: list[tuple[Any, ...]] = []
        for i in range(steps):
            thread = threads[i // STEPS_PER_THREAD % thread_count]
            kind = ("user_message", "assistant_message", "tool")[i % 3]
            batch.append((uuid.UUID(int=rng.getrandbits(128)), kind, kind, thread[0], False,
                          "{}", f"Message {i} about Paris and the Éiffel tower", _time(i)))
            if len(batch) == 50_000:
                await _copy_steps(conn, batch)
                batch = []
        if batch:
            await _copy_steps(conn, batch)
        await conn.execute("ANALYZE")
        return [str(t[0]) for t in threads]
    finally:
        await conn.close()


async def _copy_steps(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table(
        "steps", records=rows,
        columns=["id", "name", "type", "threadId", "streaming", "metadata", "output",
                 "createdAt"])


def _time(i: int) -> str:
    return f"2025-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.000000Z"


async def writer(name: str, threads: Sequence[str], stop: asyncio.Event, stats: WriterStats,
                 seed: int) -> None:
    """Write as the previous app version does until ``stop``: a step into an existing thread,
    then the thread's rename, each one autocommitted statement."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(_dsn(name))
    try:
        while not stop.is_set():
            thread = uuid.UUID(rng.choice(threads))
            for statement, args in (
                ('INSERT INTO steps ("id", "name", "type", "threadId", "streaming", "metadata", '
                 '"output", "createdAt") VALUES ($1, $2, $3, $4, false, $5, $6, $7)',
                 (uuid.uuid4(), "assistant", "assistant_message", thread, "{}",
                  "an answer written during the migration", _time(rng.randrange(10_000)))),
                ('UPDATE threads SET "name" = $1 WHERE "id" = $2',
                 (f"renamed {rng.randrange(1_000_000)}", thread)),
            ):
                sent = time.monotonic()
                try:
                    await conn.execute(statement, *args)
                except (asyncpg.PostgresError, OSError) as exc:
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                stats.writes.append((sent, time.monotonic()))
    finally:
        await conn.close()


async def run_migrate(url: str, code: Path, timeout: float) -> tuple[int, str, float, float]:
    """``chainlit-orm migrate URL`` from the checkout ``code``, in a process of its own; returns
    (exit code, output, start, end) in ``time.monotonic()`` terms."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chainlit_orm.cli", "migrate", url, "--timeout", str(timeout),
        cwd=str(code), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    end = time.monotonic()
    return process.returncode or 0, output.decode(), start, end


async def measure(label: str, steps: int, code: Path, *, writers: int = 8,
                  settle: float = 2.0, timeout: float = 7200.0,
                  keep: bool = False) -> StallResult:
    """Load a database of ``steps`` steps, start the writers, migrate with ``code``, stop the
    writers ``settle`` seconds after the migration ended."""
    name = await create_database()
    try:
        threads = await load_legacy(name, steps)
        stop = asyncio.Event()
        stats = [WriterStats() for _ in range(writers)]
        tasks = [asyncio.create_task(writer(name, threads, stop, s, i))
                 for i, s in enumerate(stats)]
        await asyncio.sleep(settle)
        url = f"postgresql://{_dsn(name).split('://', 1)[1]}"
        code_rc, output, start, end = await run_migrate(url, code, timeout)
        await asyncio.sleep(settle)
        stop.set()
        await asyncio.gather(*tasks)
        return StallResult(label, steps, name, end - start, code_rc, output, stats, start, end)
    finally:
        if not keep:
            await drop_database(name)


def _worktree(rev: str) -> Path:
    """A temporary git worktree of ``rev`` (removed by the caller)."""
    path = Path(tempfile.mkdtemp(prefix="clorm_before_"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def _table(results: Sequence[StallResult]) -> list[str]:
    lines = ["| code | steps | migrate (s) | longest write stall (s) | p99 write (s) | "
             "writes committed during migrate, per writer | writer errors | exit |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r.label} | {r.steps:,} | {r.migrate_seconds:.1f} | "
                     f"{r.longest_stall:.3f} | {r.p99():.3f} | {', '.join(map(str, r.per_writer))} "
                     f"| {len(r.errors)} | {r.exit_code} |")
    return lines


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration_stall",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--before-rev", metavar="REV",
                        help="also measure the code at this git revision (e.g. 83b3053)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: list[StallResult] = []
    if args.before_rev:
        tree = _worktree(args.before_rev)
        try:
            results.append(await measure(f"before ({args.before_rev})", args.steps, tree,
                                         writers=args.writers))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    results.append(await measure(f"after ({head or 'this checkout'})", args.steps, ROOT,
                                 writers=args.writers))
    command = "python -m bench.migration_stall " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# Write stall during `chainlit-orm migrate` of a Chainlit (documented DDL) database",
        "",
        f"Command: `.venv/bin/{command.strip()}`",
        "",
        f"PostgreSQL, {args.writers} writers (a step insert, then a thread rename, autocommitted, "
        "back to back, each on its own connection), migrate in a process of its own. "
        "\"Longest write stall\": the longest send-to-commit time of a write that overlapped "
        "the migration.",
        "",
        *_table(results),
        "",
        "Writer errors, by kind: " + ("; ".join(
            f"{r.label}: " + (", ".join(sorted({e.split(':')[0] for e in r.errors})) or "none")
            for r in results)),
        "",
        "Migrate's output (last lines):",
        "",
        *(f"- {r.label}: `{r.output.strip().splitlines()[-1] if r.output.strip() else ''}`"
          for r in results),
        "",
    ])
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(json.dumps([{"label": r.label, "longest_stall": r.longest_stall,
                       "migrate_seconds": r.migrate_seconds} for r in results]))
    return 0 if all(r.exit_code == 0 and not r.errors for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
