"""Progress of a transfer, and its summary.

On a terminal, :class:`TerminalProgress` draws one live bar per entity with rich (rows, rows/s,
time left where the total is known); elsewhere (CI, a log file, a pipe) :class:`LogProgress`
writes a plain line per entity every few seconds and at the end of each phase. The library
functions take any :class:`Progress`; the default, :class:`NoProgress`, says nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

__all__ = ["LogProgress", "NoProgress", "Progress", "Summary", "TerminalProgress",
           "for_stream"]

#: Bars in the order they are shown.
BARS: tuple[str, ...] = ("users", "threads", "steps", "elements", "feedbacks", "files")


class Progress(Protocol):
    def start(self, phase: str, totals: Mapping[str, int | None]) -> None:
        """A phase begins (``copy``, ``export``, ``import``, ``verify``) with what is known of
        its size per bar (None: unknown)."""

    def advance(self, bar: str, rows: int, nbytes: int = 0) -> None: ...

    def stop(self) -> None:
        """The phase ended (also on failure)."""


class NoProgress:
    def start(self, phase: str, totals: Mapping[str, int | None]) -> None:
        return None

    def advance(self, bar: str, rows: int, nbytes: int = 0) -> None:
        return None

    def stop(self) -> None:
        return None


class LogProgress:
    """Plain lines: ``copy: threads 1200/10000 (12%) 850/s`` every ``every`` seconds."""

    def __init__(self, stream: IO[str] | None = None, every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self.phase = ""
        self.done: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self.started = self.last = 0.0

    def start(self, phase: str, totals: Mapping[str, int | None]) -> None:
        self.phase = phase
        self.done = {}
        self.totals = dict(totals)
        self.started = self.last = time.monotonic()
        self.stream.write(f"{phase}: started\n")
        self.stream.flush()

    def advance(self, bar: str, rows: int, nbytes: int = 0) -> None:
        self.done[bar] = self.done.get(bar, 0) + rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._report(now)

    def _report(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        parts = []
        for bar in BARS:
            if bar not in self.done and bar not in self.totals:
                continue
            done, total = self.done.get(bar, 0), self.totals.get(bar)
            shown = f"{bar} {done}" if total is None else (
                f"{bar} {done}/{total} ({100 * done // max(total, 1)}%)")
            parts.append(f"{shown} {done / elapsed:.0f}/s")
        if parts:
            self.stream.write(f"{self.phase}: {', '.join(parts)}\n")
            self.stream.flush()

    def stop(self) -> None:
        now = time.monotonic()
        self._report(now)
        self.stream.write(f"{self.phase}: finished in {now - self.started:.1f} s\n")
        self.stream.flush()


class TerminalProgress:
    """Live bars per entity (rich): count, total, rows/s and time left."""

    def __init__(self, stream: IO[str] | None = None, *, force_terminal: bool | None = None
                 ) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def start(self, phase: str, totals: Mapping[str, int | None]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"{phase} [bold]{{task.description:>9}}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]:>9}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, refresh_per_second=4)
        self.tasks = {}
        self.started = time.monotonic()
        for bar in BARS:
            if bar in totals:
                self.tasks[bar] = self.progress.add_task(bar, total=totals[bar], rate="")
        self.progress.start()

    def advance(self, bar: str, rows: int, nbytes: int = 0) -> None:
        if self.progress is None:
            return
        if bar not in self.tasks:
            self.tasks[bar] = self.progress.add_task(bar, total=None, rate="")
        task = self.tasks[bar]
        self.progress.advance(task, rows)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = self.progress.tasks[task].completed
        self.progress.update(task, rate=f"{done / elapsed:,.0f}/s")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def for_stream(stream: IO[str]) -> Progress:
    """Live bars on a terminal, plain lines elsewhere."""
    return TerminalProgress(stream) if stream.isatty() else LogProgress(stream)


@dataclass
class Summary:
    """What a transfer did; :meth:`lines` is what the CLI prints at the end."""

    action: str
    source: str
    destination: str
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    files_missing: list[str] = field(default_factory=list)
    files_in_place: bool = False
    files_skipped: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    verified_threads: int | None = None
    resumed_after: str | None = None
    schema: list[str] = field(default_factory=list)

    #: rows written by this run (``rows`` also counts those of the runs a resume continues)
    moved: int | None = None

    def rows_per_second(self) -> float:
        """This run's rate: rows it wrote over its seconds (a resumed run that found nothing
        left wrote 0 rows; the rows of earlier runs are not its own)."""
        moved = sum(self.rows.values()) if self.moved is None else self.moved
        return moved / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [f"{self.action}: {self.source} -> {self.destination}"]
        if self.resumed_after:
            out.append(f"  resumed after thread {self.resumed_after} (checkpoint)")
        total = sum(self.rows.values())
        rate = f"{self.seconds:.1f} s, {self.rows_per_second():,.0f} rows/s"
        this_run = ("" if self.moved is None or self.moved == total
                    else f"; {self.moved} of them in this run, ")
        out.append("  rows: " + ", ".join(f"{n} {name}" for name, n in self.rows.items())
                   + (f" ({total}{this_run}{rate})" if this_run else f" ({total} in {rate})"))
        if self.files_skipped:
            out.append("  files: not copied (--no-files)")
        elif self.files_in_place:
            out.append(f"  files: {self.files} ({self.bytes} bytes) already in place: source "
                       "and destination use the same storage")
        else:
            out.append(f"  files: {self.files} ({self.bytes} bytes)")
        if self.files_missing:
            out.append(f"  files missing in the source storage: {len(self.files_missing)} "
                       f"(first: element {self.files_missing[0]}); their records were copied")
        for reason, count in sorted(self.skipped.items()):
            out.append(f"  left out: {count} {reason}")
        if self.verified_threads is not None:
            out.append(f"  verified: {self.verified_threads} threads and every row count match "
                       f"({self.verify_seconds:.1f} s)")
        return out
