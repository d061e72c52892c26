"""One purge in a process of its own (the two-process test): ``python -m
tests.lifecycle.purge_worker BACKEND HANDLE FILES_ROOT NOW BATCH OUT``. Writes the ids its hook
was called with, one a line, to OUT, then the report's thread count."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from chainlit_orm import FsspecStorage
from tests.contract.conftest import CONTRACT_BACKENDS
from tests.lifecycle.conftest import open_layer


async def main(backend: str, handle: str, files_root: str, now: str, batch: int, out: str
               ) -> None:
    seen: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        seen.append(thread_id)

    storage = FsspecStorage(f"file://{files_root}", mount=False)
    layer = open_layer(CONTRACT_BACKENDS[backend], handle, storage, on_delete=hook)
    try:
        report = await layer.purge(older_than=timedelta(days=90), now=now, batch=batch)
    finally:
        await layer.close()
    Path(out).write_text("".join(f"{t}\n" for t in seen) + f"report {report.counts['thread']}\n")


if __name__ == "__main__":
    backend, handle, root, now, batch, out = sys.argv[1:]
    asyncio.run(main(backend, handle, root, now, int(batch), out))
