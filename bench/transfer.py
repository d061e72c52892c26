"""Throughput of ``chainlit-orm copy`` at two sizes, to see that its cost grows linearly.

    python -m bench.transfer [--sizes 1000,10000] [--steps 10] [--out bench/results/transfer.md]

For each size N: N threads of ``--steps`` steps (Chainlit's own step dicts, cycling user message,
tool, assistant message), one element and one feedback per thread, N/100 users. Three copies,
each run in a child process (``python -m chainlit_orm.cli copy``-equivalent through the library)
so its peak RSS (``VmHWM``: ``ru_maxrss`` would include the parent's, inherited across fork and
exec) is its own:

* SQLite -> PostgreSQL (the SQLite store is written with the transfer's own bulk SQL writer);
* PostgreSQL -> DynamoDB on a private moto server;
* Chainlit's official schema (bulk-loaded with COPY in its own layout) -> SQLite.

Each line reports the rows moved, the copy's seconds and rows/s (verification excluded) and the
verification's seconds, and the child's peak RSS. Every database and table is created with a
unique name and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/{}"


def _records(n_threads: int, n_steps: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """Users and ThreadData built from Chainlit's own dicts, converted as the layer converts."""
    from chainlit.context import init_http_context

    from chainlit_orm.models import DEFAULT_MODELS as M
    from chainlit_orm.models.convert import to_row
    from chainlit_orm.transfer.records import ThreadData, finish_thread, record

    from .dataset import make_thread, make_user

    init_http_context(thread_id=str(uuid.uuid4()))
    users = [make_user(f"transfer-user-{k}@example.com") for k in range(max(1, n_threads // 100))]
    out = []
    for i in range(n_threads):
        owner = users[i % len(users)]
        t = make_thread(owner, i, n_steps, at=1000.0 + i, n_elements=1, n_feedback=1)
        thread = record(M, "thread", {
            "id": t.id, "createdAt": t.created_at, "activityAt": t.activity, "name": t.name,
            "userId": owner.id, "userIdentifier": owner.identifier, "tags": None,
            "metadata": t.metadata, "extra": None})
        data = ThreadData(
            thread,
            [record(M, "step", to_row(M, "step", s)) for s in t.steps],
            [record(M, "element", to_row(M, "element", e)) for e in t.elements],
            [record(M, "feedback", f) for f in t.feedbacks])
        out.append(finish_thread(M, data))
    user_rows = [record(M, "user", {"id": u.id, "identifier": u.identifier, "display_name": None,
                                    "metadata": u.metadata, "createdAt": u.created_at})
                 for u in users]
    return user_rows, out


async def _load_sqlite(url: str, users: list[dict[str, Any]], threads: list[Any]) -> None:
    from chainlit_orm.models import DEFAULT_MODELS
    from chainlit_orm.transfer.sinks import SQLSink

    sink = SQLSink(url, DEFAULT_MODELS, None)
    try:
        await sink.prepare()
        await sink.write_users(users)
        for start in range(0, len(threads), 500):
            await sink.write_threads(threads[start:start + 500])
    finally:
        await sink.close()


async def _load_official(name: str, users: list[dict[str, Any]], threads: list[Any]) -> None:
    """The official schema filled in its own layout (as ChainlitDataLayer writes it)."""
    import asyncpg

    def dt(value: str | None) -> datetime | None:
        return None if value is None else datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")

    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        await conn.execute((HERE / "fixtures" / "chainlit_official_prisma.sql").read_text())
        j = json.dumps
        await conn.copy_records_to_table("User", columns=[
            "id", "createdAt", "updatedAt", "metadata", "identifier"], records=[
            (u["id"], dt(u["createdAt"]), dt(u["createdAt"]), j(u["metadata"]), u["identifier"])
            for u in users])
        await conn.copy_records_to_table("Thread", columns=[
            "id", "createdAt", "updatedAt", "name", "metadata", "userId", "tags"], records=[
            (d.id, dt(d.thread["createdAt"]), dt(d.thread["activityAt"]), d.thread["name"],
             j(d.thread["metadata"] or {}), d.thread["userId"], []) for d in threads])
        await conn.copy_records_to_table("Step", columns=[
            "id", "createdAt", "updatedAt", "parentId", "threadId", "input", "metadata", "name",
            "output", "type", "showInput", "isError", "startTime", "endTime"], records=[
            (s["id"], dt(s["createdAt"]), dt(s["createdAt"]), s["parentId"], d.id, s["input"],
             j(s["metadata"] or {}), s["name"], s["output"], s["type"],
             str(s["showInput"] if s["showInput"] is not None else "json"),
             bool(s["isError"]), dt(s["createdAt"]), dt(s["end"] or s["createdAt"]))
            for d in threads for s in d.steps])
        await conn.copy_records_to_table("Element", columns=[
            "id", "threadId", "stepId", "metadata", "mime", "name", "objectKey", "url",
            "chainlitKey", "display", "size", "language", "page", "props"], records=[
            (e["id"], d.id, e["forId"], j({"type": e["type"]}), e["mime"], e["name"],
             e["objectKey"], e["url"], e["chainlitKey"], e["display"], e["size"], e["language"],
             e["page"], j(e["props"] or {})) for d in threads for e in d.elements])
        await conn.copy_records_to_table("Feedback", columns=[
            "id", "stepId", "name", "value", "comment"], records=[
            (f["id"], f["forId"], "user_feedback", float(f["value"]), f["comment"])
            for d in threads for f in d.feedbacks])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _pg(action: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        if action == "create":
            await admin.execute(f'CREATE DATABASE "{name}"')
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _child(src: str, dst: str, env: dict[str, str]) -> dict[str, Any]:
    """One copy in a child process: its summary figures and peak RSS."""
    code = (
        "import asyncio, json, resource, sys\n"
        "from chainlit_orm.transfer import copy\n"
        "s = asyncio.run(copy(sys.argv[1], sys.argv[2], files=False, batch=500,\n"
        "                     checkpoint=sys.argv[3]))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(json.dumps({'rows': s.rows, 'seconds': s.seconds, 'verify': s.verify_seconds,\n"
        "                  'rss_mb': int(hwm.split()[1]) / 1024, 'skipped': s.skipped}))\n")
    checkpoint = os.path.join(tempfile.gettempdir(), f"bench-transfer-{uuid.uuid4().hex}.json")
    done = subprocess.run([sys.executable, "-c", code, src, dst, checkpoint], env=env,
                          capture_output=True, text=True, cwd=HERE.parent, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


PAIRS = ("sqlite-postgres", "postgres-dynamodb", "official-sqlite")


async def run(sizes: list[int], steps: int, pairs: tuple[str, ...] = PAIRS
              ) -> list[dict[str, Any]]:
    from .__main__ import start_moto

    proc, endpoint = start_moto()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(HERE.parent)}
    env.pop("CHAINLIT_ORM_STORAGE_URL", None)
    results = []
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    try:
        for n in sizes:
            users, threads = _records(n, steps)
            tag = uuid.uuid4().hex[:10]
            sqlite_src = f"sqlite+aiosqlite:///{work}/src-{n}.db"
            sqlite_dst = f"sqlite+aiosqlite:///{work}/dst-{n}.db"
            pg, official = f"clorm_bench_tr_{tag}", f"clorm_bench_tr_official_{tag}"
            table = f"clorm_bench_tr_{tag}"
            dynamo = f"dynamodb://{table}?region=us-east-1&endpoint_url={endpoint}"
            await _pg("create", pg)
            await _pg("create", official)
            try:
                await _load_sqlite(sqlite_src, users, threads)
                await _load_official(official, users, threads)
                for key, label, src, dst in (
                    ("sqlite-postgres", "SQLite -> PostgreSQL", sqlite_src, PG.format(pg)),
                    ("postgres-dynamodb", "PostgreSQL -> DynamoDB (moto)", PG.format(pg), dynamo),
                    ("official-sqlite", "official schema -> SQLite", PG.format(official),
                     sqlite_dst),
                ):
                    if key not in pairs:
                        continue
                    if key == "postgres-dynamodb" and "sqlite-postgres" not in pairs:
                        figures = _child(sqlite_src, PG.format(pg), env)  # fills PostgreSQL
                    started = time.perf_counter()
                    figures = _child(src, dst, env)
                    figures.update(copy=label, threads=n, wall=time.perf_counter() - started)
                    results.append(figures)
                    total = sum(figures["rows"].values())
                    print(f"{label:32} N={n:>6} rows={total:>7} copy {figures['seconds']:7.1f} s "
                          f"= {total / figures['seconds']:8,.0f} rows/s; verify "
                          f"{figures['verify']:6.1f} s; peak RSS {figures['rss_mb']:.0f} MB",
                          flush=True)
            finally:
                await _pg("drop", pg)
                await _pg("drop", official)
                for path in work.glob("*.db*"):
                    path.unlink()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: list[dict[str, Any]], steps: int) -> str:
    lines = [
        "# chainlit-orm copy: throughput",
        "",
        f"Threads of {steps} steps, 1 element and 1 feedback each, N/100 users; files off; "
        "batch 500. rows/s counts every row moved (users, threads, steps, elements, feedback) "
        "over the copy phase; verification (both sides read again and compared) is separate.",
        "Produced by `python -m bench.transfer`.",
        "",
        "| copy | threads | rows | copy s | rows/s | verify s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        total = sum(r["rows"].values())
        lines.append(f"| {r['copy']} | {r['threads']:,} | {total:,} | {r['seconds']:.1f} | "
                     f"{total / r['seconds']:,.0f} | {r['verify']:.1f} | {r['rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help=f"which copies, of: {', '.join(PAIRS)}")
    parser.add_argument("--out", default=str(HERE / "results" / "transfer.md"))
    args = parser.parse_args()
    results = asyncio.run(run([int(x) for x in args.sizes.split(",")], args.steps,
                              tuple(args.pairs.split(","))))
    text = report(results, args.steps)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
