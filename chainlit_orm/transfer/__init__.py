"""Move chat history anywhere: copy, export and import between every chainlit-orm backend, and
out of Chainlit's official data layer.

* :func:`copy`: one store into another (SQLite, PostgreSQL, MySQL/MariaDB, DynamoDB; or, as a
  source only, a ``ChainlitDataLayer`` PostgreSQL database), files included, resumable, verified.
* :func:`export` / :func:`import_bundle`: a portable, versioned bundle directory (JSON Lines per
  entity, files alongside, a manifest with counts and SHA-256 hashes), streamed in flat memory.

Modules: :mod:`~chainlit_orm.transfer.copy` (the loop, checkpoint, storage resolution),
:mod:`~chainlit_orm.transfer.sources` and :mod:`~chainlit_orm.transfer.sinks` (bulk reads and
writes per backend), :mod:`~chainlit_orm.transfer.official` (the official schema),
:mod:`~chainlit_orm.transfer.bundle` (the bundle format), :mod:`~chainlit_orm.transfer.records`
(records and their canonical form), :mod:`~chainlit_orm.transfer.verify`,
:mod:`~chainlit_orm.transfer.progress`; everything taken from the layers' internals is in
:mod:`~chainlit_orm.transfer._layer`.
"""

from __future__ import annotations

from chainlit_orm.transfer.copy import DEFAULT_BATCH, SOURCE_KINDS, copy, export, import_bundle
from chainlit_orm.transfer.progress import (
    LogProgress,
    NoProgress,
    Progress,
    Summary,
    TerminalProgress,
)

__all__ = [
    "DEFAULT_BATCH",
    "SOURCE_KINDS",
    "LogProgress",
    "NoProgress",
    "Progress",
    "Summary",
    "TerminalProgress",
    "copy",
    "export",
    "import_bundle",
]
