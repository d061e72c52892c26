"""Profile chainlit-orm's read path (get_thread of 1,000 steps, list_threads) with pyinstrument:
``.venv/bin/python -m bench.profile_reads postgresql`` (sqlite | postgresql | mariadb).
Uses its own database (``bench_prof``), filled through the layer."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import chainlit as cl
from chainlit.context import init_http_context
from chainlit.types import Pagination, ThreadFilter
from pyinstrument import Profiler

import chainlit_orm

from . import dataset, rawdb

URLS = {"sqlite": "sqlite+aiosqlite:///{path}",
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_prof",
        "mariadb": "mysql+asyncmy://root@127.0.0.1:3306/bench_prof?charset=utf8mb4"}


async def main(backend: str) -> None:
    init_http_context()
    url = URLS[backend].format(path=os.path.join(tempfile.mkdtemp(), "p.sqlite"))
    if backend == "postgresql":
        await rawdb.pg_recreate("bench_prof")
    elif backend == "mariadb":
        await rawdb.my_recreate("bench_prof")
    r = chainlit_orm.migrate(url)
    if asyncio.iscoroutine(r):
        await r
    layer = chainlit_orm.SQLDataLayer(url)
    u = await layer.create_user(cl.User(identifier="prof"))
    big = dataset.make_thread(dataset.make_user("x"), 0, 1000, at=100, n_elements=3,
                              n_feedback=100)
    await layer.update_thread(big.id, name="big", user_id=u.id)
    await asyncio.gather(*(layer.create_step(dict(s)) for s in big.steps))
    for i in range(300):
        await layer.update_thread(dataset.new_id(), name=f"t{i}", user_id=u.id)
    prof = Profiler(async_mode="enabled")
    prof.start()
    for _ in range(10):
        await layer.get_thread(big.id)
    for _ in range(50):
        await layer.list_threads(Pagination(first=35), ThreadFilter(userId=u.id))
    prof.stop()
    print(prof.output_text(unicode=False, color=False))
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql"))
