"""The target protocol the workloads drive."""

from __future__ import annotations

import contextlib
from typing import Any

from chainlit.types import Pagination, ThreadFilter

from ..dataset import Dataset


class Unavailable(Exception):
    """The target cannot run here; the message is the reason shown in the report."""


class Target:
    name: str = "?"
    backend: str = "?"  # sqlite | postgresql | mariadb | dynamodb
    kind: str = "?"  # orm | chainlit | floor
    description: str = ""
    max_w2_n: int = 10**9  # W2 stops at this N (DynamoDB on moto: see targets/dynamo.py)
    # Lighter runs for targets on moto, which serves ~50 writes/s: Scale fields replaced for this
    # target (W1 threads and steps, W2/W3 repetitions, W5 iterations; the figures are rates and
    # medians, so only their spread changes).
    scale_overrides: dict[str, int] = {}
    # What the target's list_threads search looks in: "name" (the thread's name) and/or "text"
    # (its messages' output). W2 checks each search answer against this declared scope.
    search_scope: frozenset[str] = frozenset({"name"})

    def scaled(self, scale: Any, field: str) -> int:
        return int(self.scale_overrides.get(field, getattr(scale, field)))

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.settings: dict[str, Any] = {}

    # lifecycle -----------------------------------------------------------------------------
    async def setup(self, ds: Dataset) -> None:
        """Create an empty store with this target's schema and bulk-load the dataset."""
        raise NotImplementedError

    async def close(self) -> None:
        pass

    # the Chainlit calls under test ------------------------------------------------------------
    async def get_user(self, identifier: str) -> Any:
        raise NotImplementedError

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict | None = None,
                            tags: list[str] | None = None) -> None:
        raise NotImplementedError

    async def create_step(self, step: dict[str, Any]) -> None:
        raise NotImplementedError

    async def update_step(self, step: dict[str, Any]) -> None:
        raise NotImplementedError

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> Any:
        raise NotImplementedError

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def delete_thread(self, thread_id: str) -> None:
        raise NotImplementedError

    # read-back helpers ---------------------------------------------------------------------------
    def user_key(self, user: Any) -> str:
        """The user id this target's layer hands to Chainlit (PersistedUser.id)."""
        return str(user.id)

    async def leftover_rows(self, thread: Any) -> int | None:
        """Rows/items of a deleted thread still in the store (None: not checkable)."""
        return None


class LayerTarget(Target):
    """A target whose calls go straight to a ``BaseDataLayer`` instance."""

    layer: Any

    async def get_user(self, identifier: str) -> Any:
        return await self.layer.get_user(identifier)

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict | None = None,
                            tags: list[str] | None = None) -> None:
        await self.layer.update_thread(thread_id, name=name, user_id=user_id, metadata=metadata,
                                       tags=tags)

    async def create_step(self, step: dict[str, Any]) -> None:
        await self.layer.create_step(step)

    async def update_step(self, step: dict[str, Any]) -> None:
        await self.layer.update_step(step)

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> Any:
        return await self.layer.list_threads(pagination, filters)

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        return await self.layer.get_thread(thread_id)

    async def delete_thread(self, thread_id: str) -> None:
        await self.layer.delete_thread(thread_id)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.layer.close()
