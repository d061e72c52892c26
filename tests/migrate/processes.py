"""Several ``chainlit-orm`` commands in processes of their own, started at the same moment.

Each process runs :mod:`tests.migrate.migrate_worker`: it imports everything first, says
``ready``, and runs its command when the start file appears. Output goes to files, so a test can
wait for a log line (a process waiting for the lock, a migration step done) while they run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What a process that waited for another migration and found nothing to do prints.
WAITING_LOG = "waiting for the migration lock of"


@dataclass(frozen=True)
class Outcome:
    """A finished process: exit code, stdout lines, stderr."""

    code: int
    lines: list[str]
    stderr: str


class Workers:
    """``n`` worker processes running ``argv`` (the CLI's arguments) on one start file."""

    def __init__(self, tmp_path: Path, n: int, argv: list[str]) -> None:
        self.start_file = tmp_path / f"start-{time.monotonic_ns()}"
        self.outs = [tmp_path / f"worker{i}-{time.monotonic_ns()}.out" for i in range(n)]
        self.errs = [out.with_suffix(".err") for out in self.outs]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.migrate.migrate_worker", str(self.start_file),
                 *argv],
                cwd=ROOT, env=env, stdout=out.open("w"), stderr=err.open("w"))
            for out, err in zip(self.outs, self.errs, strict=True)
        ]

    def stderr(self, i: int) -> str:
        return self.errs[i].read_text(encoding="utf-8")

    async def wait_for(self, text: str, *, which: list[int] | None = None,
                       timeout: float = 120.0) -> None:
        """Until every process (or those in ``which``) wrote ``text`` on stderr."""
        indexes = range(len(self.processes)) if which is None else which
        deadline = time.monotonic() + timeout
        while not all(text in self.stderr(i) for i in indexes):
            for i in indexes:
                code = self.processes[i].poll()
                if code is not None and text not in self.stderr(i):
                    raise AssertionError(f"worker {i} exited ({code}) before {text!r}:\n"
                                         f"{self.stderr(i)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n" + "\n".join(
                    self.stderr(i) for i in indexes))
            await asyncio.sleep(0.02)

    async def ready(self) -> None:
        await self.wait_for("ready")

    def go(self) -> None:
        self.start_file.touch()

    def kill(self, i: int) -> None:
        self.processes[i].send_signal(signal.SIGKILL)
        self.processes[i].wait()

    async def finished(self, timeout: float = 300.0) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.processes):
            if time.monotonic() > deadline:
                for p in self.processes:
                    p.kill()
                raise AssertionError("workers still running after "
                                     f"{timeout} s:\n" + "\n".join(
                                         self.stderr(i) for i in range(len(self.processes))))
            await asyncio.sleep(0.05)
        return [Outcome(p.returncode, out.read_text(encoding="utf-8").splitlines(),
                        err.read_text(encoding="utf-8"))
                for p, out, err in zip(self.processes, self.outs, self.errs, strict=True)]

    def close(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()
