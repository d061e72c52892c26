"""A ``chainlit-orm`` command line started at a given moment, in a process of its own.

``python -m tests.migrate.migrate_worker START_FILE ARGS...`` imports everything ``migrate``
needs, prints ``ready`` on stderr, waits until ``START_FILE`` exists, then runs
``chainlit_orm.cli.main(ARGS)`` and exits with its code. Several of them started on one start
file run their commands at the same moment (imports, which take a second, are done before).
The package's INFO log lines go to stderr: "waiting for the migration lock ..." and, for an
online migration, "step k/n done: ..." (what the tests wait for before releasing a lock or
killing a migration).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def main() -> int:
    start = Path(sys.argv[1])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    log = logging.getLogger("chainlit_orm.migrations")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # what the command imports lazily, imported before the start line
    import boto3  # noqa: F401

    import chainlit_orm.migrations.dynamo
    import chainlit_orm.migrations.sql  # noqa: F401
    from chainlit_orm.cli import main as cli

    print("ready", file=sys.stderr, flush=True)
    while not start.exists():
        time.sleep(0.005)
    code = cli(sys.argv[2:])
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
