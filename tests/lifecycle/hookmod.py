"""An on-delete hook for ``--on-delete tests.lifecycle.hookmod:record``: appends each removed
thread's id and owner to the file named by ``CLORM_TEST_HOOK_FILE``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


async def record(thread_id: str, user_id: str | None) -> None:
    path = Path(os.environ["CLORM_TEST_HOOK_FILE"])
    line = f"{thread_id} {user_id}\n"
    await asyncio.to_thread(lambda: path.open("a").write(line))


async def hang(thread_id: str, user_id: str | None) -> None:
    """Records the call, then never ends on its own (a hook whose service is down): what
    ``--on-delete-breaker`` stops calling."""
    await record(thread_id, user_id)
    await asyncio.Event().wait()
