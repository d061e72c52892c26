"""Profile one target's W1 write path with pyinstrument:
``.venv/bin/python -m bench.profile_w1 sqlite`` (sqlite | postgresql | mariadb)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

from chainlit.context import init_http_context
from pyinstrument import Profiler

import chainlit_orm

from . import dataset
from .targets.orm import URLS
from .workloads import _w1_script


async def main(backend: str) -> None:
    init_http_context()
    path = os.path.join(tempfile.mkdtemp(), "p.sqlite")
    url = URLS[backend].format(path=path)
    if backend == "postgresql":
        from .rawdb import pg_recreate
        await pg_recreate("bench_orm")
    elif backend == "mariadb":
        from .rawdb import my_recreate
        await my_recreate("bench_orm")
    r = chainlit_orm.migrate(url)
    if asyncio.iscoroutine(r):
        await r
    layer = chainlit_orm.SQLDataLayer(url)
    u = await layer.create_user(__import__("chainlit").User(identifier="prof"))
    scripts = [_w1_script(u.id, 6, 1000 + k) for k in range(30)]
    prof = Profiler(async_mode="enabled")
    prof.start()
    for tid, pairs in scripts:
        await layer.update_thread(tid, name="x", user_id=u.id)
        for d0, d1 in pairs:
            await layer.create_step(dict(d0))
            await layer.update_step(dict(d1))
    prof.stop()
    print(prof.output_text(unicode=False, color=False, show_all=False))
    await layer.close()


if __name__ == "__main__":
    dataset.templates  # noqa: B018
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sqlite"))
