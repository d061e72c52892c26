"""``python -m bench [--quick|--full]``: run W1..W5 on every available target (and, in --full, the
PostgreSQL SCALE workload), write the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata as im
from pathlib import Path
from typing import Any

from . import counting, dataset, report
from .targets.base import Target, Unavailable
from .workloads import WORKLOADS, Results

HERE = Path(__file__).resolve().parent


@dataclass
class Scale:
    rounds: int
    w1_threads_c1: int
    w1_steps: int  # (create_step, update_step) pairs per W1 thread
    w1_waves: int  # W1 c=32: threads per worker, one after the other
    w1_bursts: int  # W1 burst: bursts of 32 threads per round
    w2_ns: tuple[int, ...]
    w2_reps: int
    w3_steps: tuple[int, ...]
    w3_reps: int
    w4_rounds: int
    w4_per_round: int
    w5_users: int
    w5_threads_per_user: int
    w5_iters: int
    scale_sizes: tuple[int, ...]  # SCALE: threads per PostgreSQL store (bench/scale.py)


QUICK = Scale(rounds=3, w1_threads_c1=160, w1_steps=3, w1_waves=8, w1_bursts=5,
              w2_ns=(100, 1000, 10000), w2_reps=5, w3_steps=(10, 100, 1000), w3_reps=5,
              w4_rounds=3, w4_per_round=5, w5_users=32, w5_threads_per_user=4, w5_iters=12,
              scale_sizes=(10_000, 100_000))
FULL = Scale(rounds=7, w1_threads_c1=160, w1_steps=3, w1_waves=8, w1_bursts=5,
             w2_ns=(100, 1000, 10000, 100000), w2_reps=5, w3_steps=(10, 100, 1000), w3_reps=5,
             w4_rounds=8, w4_per_round=5, w5_users=32, w5_threads_per_user=8, w5_iters=24,
             scale_sizes=(10_000, 100_000, 1_000_000))


#: chainlit-orm's PostgreSQL layer through PgBouncer in transaction mode (opt-in, see below)
PGBOUNCER_TARGET = "chainlit-orm/postgresql-pgbouncer"


def all_targets(workdir: str) -> list[tuple[str, Any]]:
    """(name, factory) in run order; chainlit-orm first so the SQLite floor can copy its PRAGMAs."""
    from .targets import chainlit_sql, dynamo, floor_sql, orm

    out: list[tuple[str, Any]] = []
    for b in ("sqlite", "postgresql", "mariadb"):
        out.append((f"chainlit-orm/{b}", lambda b=b: orm.OrmSQL(workdir, b)))
    if os.environ.get("CHAINLIT_ORM_BENCH_TRACING") == "both":  # --tracing both (bench/otel.py)
        for b in ("sqlite", "postgresql", "mariadb"):
            out.append((f"chainlit-orm+otel/{b}", lambda b=b: orm.OrmSQL(workdir, b, True)))
    # opt-in (PgBouncer is an extra service): run only when --targets names "pgbouncer"
    out.append((PGBOUNCER_TARGET, lambda: orm.OrmSQL(workdir, "postgresql", via="pgbouncer")))
    out.append(("chainlit-orm/dynamodb", lambda: orm.OrmDynamo(workdir)))
    for b in ("sqlite", "postgresql"):
        out.append((f"chainlit-sqlalchemy/{b}",
                    lambda b=b: chainlit_sql.ChainlitSQLAlchemy(workdir, b)))
    out.append(("chainlit-official/postgresql", lambda: chainlit_sql.ChainlitOfficial(workdir)))
    out.append(("chainlit-dynamodb/dynamodb", lambda: dynamo.ChainlitDynamo(workdir)))
    for b in ("sqlite", "postgresql", "mariadb"):
        out.append((f"floor/{b}", lambda b=b: floor_sql.FloorSQL(workdir, b)))
    out.append(("floor/sqlite-1conn", lambda: floor_sql.FloorSQL(workdir, "sqlite", "1conn")))
    out.append(("floor/dynamodb", lambda: dynamo.FloorDynamo(workdir)))
    return out


def _v(pkg: str) -> str:
    try:
        return im.version(pkg)
    except im.PackageNotFoundError:
        return "not installed"


async def machine() -> dict[str, Any]:
    import sqlite3

    from . import rawdb

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    try:
        cpu = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
               if ln.startswith("model name")]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else "?"
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) // 1024} MiB"
    except OSError:
        pass
    info["sqlite"] = sqlite3.sqlite_version
    try:
        import asyncpg

        c = await asyncpg.connect(rawdb.PG_DSN.format(db="postgres"))
        info["postgresql"] = (await c.fetchval("SHOW server_version")) + ", fsync=" + (
            await c.fetchval("SHOW fsync")) + ", server synchronous_commit=" + (
            await c.fetchval("SHOW synchronous_commit"))
        await c.close()
        info["postgresql"] += ("; the bench's databases: " + (
            f"synchronous_commit={rawdb.PG_SYNC_COMMIT[0]} (--pg-sync-commit, ALTER DATABASE)"
            if rawdb.PG_SYNC_COMMIT[0] else "the server's setting (no --pg-sync-commit)"))
    except Exception as e:
        info["postgresql"] = f"unreachable: {e}"
    try:
        import asyncmy

        c = await asyncmy.connect(**rawdb.MY_KW)
        async with c.cursor() as cur:
            await cur.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit")
            v, f = await cur.fetchone()
        c.close()
        info["mariadb"] = f"{v}, innodb_flush_log_at_trx_commit={f}"
    except Exception as e:
        info["mariadb"] = f"unreachable: {e}"
    info["packages"] = ", ".join(f"{p} {_v(p)}" for p in (
        "chainlit", "sqlalchemy", "asyncpg", "aiosqlite", "asyncmy", "boto3", "pynamodb", "moto",
        "chainlit-orm"))
    with contextlib.suppress(OSError):
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, cwd=HERE.parent, check=False).stdout.strip()
    return info


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """A private moto server, so the DynamoDB figures see neither other users' tables nor load."""
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    # moto's server with per-item transaction rollback (see bench/moto_server.py)
    proc = subprocess.Popen([sys.executable, "-m", "bench.moto_server", "-H", "127.0.0.1",
                             "-p", str(port)], cwd=HERE.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import atexit
    import signal

    atexit.register(lambda: proc.poll() is None and proc.terminate())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so atexit runs on kill too
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


async def run(args: argparse.Namespace) -> int:

    scale = QUICK if not args.full else FULL
    if args.rounds:
        scale.rounds = args.rounds
    if args.scale_sizes:
        scale.scale_sizes = tuple(int(x) for x in args.scale_sizes.split(","))
    from . import rawdb

    rawdb.PG_SYNC_COMMIT[0] = args.pg_sync_commit
    scale.w4_rounds = max(scale.w4_rounds, scale.rounds + 1)  # W4 deletes threads every round
    t_start = time.perf_counter()
    counting.hook_botocore()
    from .targets import dynamo

    moto = None
    if args.dynamodb_url:
        dynamo.set_endpoint(args.dynamodb_url)
    elif _dynamodb_selected(args) and _workloads(args) != ["SCALE"]:
        moto, url = start_moto()
        dynamo.set_endpoint(url)
    try:
        return await _run(args, scale, t_start, private_moto=moto is not None)
    finally:
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:  # busy answering a scan: it need not finish
                moto.kill()
                moto.wait(10)


def _dynamodb_selected(args: argparse.Namespace) -> bool:
    """Whether a DynamoDB target runs, read from the target names themselves: ``--targets
    chainlit-orm,floor`` selects ``chainlit-orm/dynamodb`` although it does not say "dynamo" (the
    old test of the option's text sent those runs to the shared moto server of the tests)."""
    want = [s for s in (args.targets or "").split(",") if s]
    return any(name.endswith("/dynamodb") for name, _ in all_targets("")
               if not want or any(w in name for w in want))


def _workloads(args: argparse.Namespace) -> list[str]:
    # SCALE measures chainlit-orm/postgresql only: in the default list of --full unless --targets
    # leaves that target out
    want = [s for s in (args.targets or "").split(",") if s]
    scale_target = not want or any(w in "chainlit-orm/postgresql" for w in want)
    default = "W1,W2,W3,W4,W5" + (",SCALE" if args.full and scale_target else "")
    return [w.strip().upper() for w in (args.workloads or default).split(",") if w.strip()]


async def _run(args: argparse.Namespace, scale: Scale, t_start: float,
               private_moto: bool) -> int:
    from chainlit.context import init_http_context

    from . import memory
    from . import scale as scale_wl

    init_http_context()  # an HTTP (not websocket) context: queued writes run immediately
    wl = _workloads(args)
    unknown = [w for w in wl if w not in WORKLOADS and w != "SCALE"]
    if unknown:
        raise SystemExit(f"unknown workloads: {unknown}")
    sampler = memory.RssSampler()
    sampler.__enter__()
    rss0 = memory.mib(memory.rss_bytes())
    only_scale = wl == ["SCALE"]
    ds = dataset.build(scale) if not only_scale else None
    if ds is not None:
        print(f"dataset: {len(ds.users)} users, {len(ds.threads)} threads, "
              f"{sum(len(t.steps) for t in ds.threads)} steps", flush=True)
    workdir = str(HERE / ".work")
    os.makedirs(workdir, exist_ok=True)
    want = [s for s in (args.targets or "").split(",") if s]
    targets: list[Target] = []
    unavailable: dict[str, str] = {}
    orm_sqlite_pragmas: dict[str, str] = {}
    for name, make in ([] if only_scale else all_targets(workdir)):
        if want and not any(w in name for w in want):
            continue
        if name == PGBOUNCER_TARGET and not any("pgbouncer" in w for w in want):
            continue
        t0 = time.perf_counter()
        try:
            t = make()
            if hasattr(t, "check"):
                t.check()
            if name.startswith("floor/sqlite") and orm_sqlite_pragmas:
                t.sqlite_pragmas = orm_sqlite_pragmas
            await t.setup(ds)
            if name == "chainlit-orm/sqlite":
                orm_sqlite_pragmas = {k: str(v) for k, v in t.settings.items()
                                      if k in ("journal_mode", "synchronous")}
                sync = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
                orm_sqlite_pragmas["synchronous"] = sync.get(orm_sqlite_pragmas.get(
                    "synchronous", "2"), "FULL")
            targets.append(t)
            print(f"  {name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
        except Unavailable as e:
            unavailable[name] = str(e)
            print(f"  {name}: not available: {e}", flush=True)
        except Exception as e:
            unavailable[name] = f"setup failed: {type(e).__name__}: {e}"[:300]
            print(f"  {name}: setup failed: {e!r}", flush=True)
    from . import workloads

    # The dataset and the targets' set-up hold millions of objects a real app does not have; a
    # garbage collection that scans them lands inside whichever call triggers it (the layer that
    # allocates most). Frozen, they are out of every collection, for all targets alike.
    gc.collect()
    gc.freeze()
    workloads.VERBOSE[0] = args.verbose
    res = Results()
    res.memory["set-up"] = {"start": rss0, "peak": memory.mib(sampler.peak()),
                            "end": memory.mib(memory.rss_bytes())}
    durations: dict[str, float] = {}
    for w in wl:
        t0 = time.perf_counter()
        start = memory.mib(sampler.reset())
        if w == "SCALE":
            await scale_wl.run([scale_wl.Store(s) for s in scale.scale_sizes], res,
                               scale.rounds, scale.w2_reps, sampler)
        else:
            assert ds is not None
            await WORKLOADS[w](targets, ds, res, scale)
        durations[w] = time.perf_counter() - t0
        res.memory[w] = {"start": start, "peak": memory.mib(sampler.peak()),
                         "end": memory.mib(memory.rss_bytes())}
        print(f"{w} done in {durations[w]:.1f} s (peak RSS {res.memory[w]['peak']:.0f} MiB)",
              flush=True)
    sampler.__exit__(None, None, None)
    for t in targets:
        with contextlib.suppress(Exception):
            await t.close()
    an = report.analyse(res, targets)
    chk = report.checks(an, res, targets)
    meta = {"mode": "full" if args.full else "quick", "rounds": scale.rounds,
            "elapsed_s": time.perf_counter() - t_start, "workload_s": durations,
            "pg_sync_commit": args.pg_sync_commit or "server default", "scale": asdict(scale),
            "command": " ".join(["python -m bench", *sys.argv[1:]]), "machine": await machine()}
    from .targets import dynamo

    meta["machine"]["dynamodb"] = (f"moto server {dynamo.ENDPOINT}"
                                   + (" (private, started by the bench)" if private_moto else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("scale" if wl == ["SCALE"] else "quick" if not args.full else "full") + (
        f"_pgsync_{args.pg_sync_commit}" if args.pg_sync_commit else "") + (
        f"_tracing_{args.tracing}" if args.tracing else "")
    if args.tracing:
        from . import otel

        meta["tracing"] = {"setting": args.tracing, "spans exported": otel.flush()}
    md = report.markdown(an, res, targets, unavailable, meta, chk)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps({
        "meta": meta, "targets": [{"name": t.name, "kind": t.kind, "backend": t.backend,
                                   "description": t.description, "settings": t.settings}
                                  for t in targets],
        "unavailable": unavailable, "analysis": an, "calls": res.calls, "checks": chk,
        "memory_mib": res.memory, "scale": res.scale, "errors": res.errors}, indent=1,
        default=str))
    if any(k.startswith("W2 ") for k in an["metrics"]):
        report.plot(an, targets, str(out / f"{stem}_w2.png"))
    print(md)
    print(f"\nwritten: {out}/{stem}.md, {stem}.json (+ {stem}_w2.png with W2) "
          f"({meta['elapsed_s']:.0f} s)")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the < 12 minute run (default)")
    g.add_argument("--full", action="store_true", help="more rounds, bigger N, and SCALE")
    p.add_argument("--targets", help="comma-separated substrings of target names to run")
    p.add_argument("--workloads", help="comma-separated, e.g. W1,W3 or SCALE (default: W1..W5, "
                   "and SCALE in --full)")
    p.add_argument("--pg-sync-commit", choices=("on", "off"),
                   help="synchronous_commit of the bench's own PostgreSQL databases (ALTER "
                   "DATABASE; default: the server's setting); the report's name gets "
                   "_pgsync_on|off")
    p.add_argument("--scale-sizes", help="SCALE store sizes in threads, comma-separated "
                   "(multiples of 10000; default 10000,100000 quick, +1000000 full)")
    p.add_argument("--rounds", type=int, help="override the number of timed rounds")
    p.add_argument("--dynamodb-url", help="use this moto/DynamoDB endpoint instead of starting "
                   "a private moto server")
    p.add_argument("--tracing", choices=("on", "off", "both"),
                   help="chainlit-orm's OpenTelemetry spans (bench/otel.py): on = "
                   "CHAINLIT_ORM_TRACING=1 and the SDK with a batch processor whose exporter "
                   "drops the spans; off = CHAINLIT_ORM_TRACING=0; both = each chainlit-orm SQL "
                   "target twice, untraced and chainlit-orm+otel/... with tracing=True, taking "
                   "turns in every round; the report's name gets _tracing_on|off|both")
    p.add_argument("-v", "--verbose", action="store_true", help="time of every target turn")
    p.add_argument("--out", default=str(HERE / "results"), help="report directory")
    args = p.parse_args()
    logging.getLogger("chainlit").setLevel(logging.CRITICAL)
    logging.getLogger("chainlit.data.dynamodb").setLevel(logging.CRITICAL)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("LITERAL_API_KEY", None)
    if args.tracing:
        from . import otel

        otel.install(args.tracing)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
