"""A throwaway PostgreSQL server of the test's own, for faults that would disturb a shared one.

Restarting the shared server on 127.0.0.1:5432 breaks every other test running against it at that
moment (other engineers' runs, parallel CI jobs). A restart test gets its own cluster instead:
``initdb`` into a fresh directory, ``pg_ctl start`` on a free port bound to 127.0.0.1 (trust
authentication, ``fsync=off``: nothing here needs to survive a crash of the machine), run as the
``postgres`` user, stopped and deleted afterwards. Needs the PostgreSQL server binaries
(``scripts/services.sh`` installs them); a missing binary fails loudly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PrivatePostgres", "private_postgres"]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (run scripts/services.sh)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A running private cluster: its URL, and a restart."""

    port: int
    data: Path
    bindir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                      "-w", *args])

    def restart(self) -> None:
        """A fast shutdown (every session terminated) and a start, as an operator's restart."""
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")


def _as_postgres(cmd: list[str]) -> None:
    result = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                            text=True, timeout=60)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}{result.stderr}")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster, stopped and deleted on exit."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="clorm-pg-"))
    user = pwd.getpwnam("postgres")
    os.chown(root, user.pw_uid, user.pw_gid)
    data, sockets = root / "data", root / "sockets"
    try:
        _as_postgres(["mkdir", str(sockets)])
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--no-sync"])
        server = None
        for _ in range(3):  # a free port can be taken between the probe and the start
            candidate = PrivatePostgres(_free_port(), data, bindir, root / "server.log")
            try:
                candidate._pg_ctl("-o", f"-p {candidate.port} -k {sockets} "
                                  "-c listen_addresses=127.0.0.1 -c fsync=off", "start")
            except RuntimeError:
                continue
            server = candidate
            break
        if server is None:
            raise RuntimeError(f"the private PostgreSQL did not start: {root / 'server.log'}")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
