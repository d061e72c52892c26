"""A Chainlit app process that keeps writing to a user's threads while another process erases
the user (the cross-process tombstone test): ``python -m tests.lifecycle.late_writer BACKEND
HANDLE FILES_ROOT IDENTIFIER THREAD_IDS OUT ERASED STOP``.

Round after round until the file STOP exists, for each thread of THREAD_IDS (comma-separated)
it makes Chainlit's own calls of a running conversation: ``create_step`` (a user message, which
moves the thread's activity, and an assistant message), ``create_element`` (a file, uploaded
to the storage first) and ``update_thread(metadata=...)`` (``persist_user_session``). Every
text holds IDENTIFIER, so a scan finds anything of it that survives. One line per write goes
to OUT as it returns: ``KIND THREAD AFTER OUTCOME``, AFTER being whether the file ERASED (made
once ``erase_user`` returned) existed when the write began, OUTCOME ``ok``, ``refused`` (the
typed refusal of a write to an erased thread) or ``error:<repr>``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import chainlit as cl
from chainlit.context import init_http_context

from chainlit_orm import FsspecStorage
from chainlit_orm.errors import NotFoundError
from tests.contract.conftest import CONTRACT_BACKENDS, message
from tests.lifecycle.conftest import open_layer


async def main(backend: str, handle: str, files_root: str, identifier: str, thread_ids: str,
               out: str, erased: str, stop: str) -> None:
    init_http_context()
    storage = FsspecStorage(f"file://{files_root}", mount=False)
    layer = open_layer(CONTRACT_BACKENDS[backend], handle, storage)
    threads = thread_ids.split(",")
    n = 0
    with Path(out).open("a", buffering=1) as log:

        async def attempt(kind: str, tid: str, write: Callable[[], Awaitable[object]]) -> None:
            after = Path(erased).exists()
            try:
                await write()
                outcome = "ok"
            except NotFoundError as exc:
                outcome = "refused" if f"thread {tid} was erased" in str(exc) else (
                    f"error:{exc!r}")
            except Exception as exc:  # recorded for the test to assert on, never swallowed
                outcome = f"error:{exc!r}"
            log.write(f"{kind} {tid} {after} {outcome}\n")

        try:
            while not Path(stop).exists():
                for tid in threads:
                    n += 1
                    asked = message(tid, f"{identifier} asks {n}")
                    await attempt("user_step", tid, lambda m=asked: layer.create_step(m))
                    said = message(tid, f"{identifier} is told {n}", type_="assistant_message")
                    await attempt("step", tid, lambda m=said: layer.create_step(m))
                    file = cl.File(name=f"{identifier}-{n}.txt", for_id=said["id"],
                                   content=f"{identifier} file {n}".encode())
                    file.thread_id = tid
                    await attempt("element", tid, lambda f=file: layer.create_element(f))
                    meta = {"owner": identifier, "round": n}
                    await attempt("metadata", tid, lambda t=tid, m=meta: layer.update_thread(
                        t, metadata=m))
                await asyncio.sleep(0.01)
        finally:
            await layer.close()
            await storage.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
