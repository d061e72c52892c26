"""Resident set size of the bench process, sampled by a thread: per-workload peaks.

``resource.getrusage(...).ru_maxrss`` is the peak since the process started, so it only ever
grows and cannot give a later workload's own peak. A daemon thread reads the current RSS from
``/proc/self/statm`` every ``interval`` seconds and keeps the maximum since the last
:meth:`RssSampler.reset`; the reading is a file read of a few bytes, taken off the event loop.
"""

from __future__ import annotations

import os
import resource
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The current resident set size of this process (Linux: /proc/self/statm; elsewhere the
    peak so far, the best the platform offers)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """``with RssSampler() as s: ... s.reset(); ...; s.peak()`` — the largest RSS seen since the
    last reset (the reading at reset included, so a peak is never below the start)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        now = rss_bytes()
        with self._lock:
            if now > self._peak:
                self._peak = now
        return now

    def reset(self) -> int:
        """Start a new peak from the current RSS, which is returned."""
        now = rss_bytes()
        with self._lock:
            self._peak = now
        return now

    def peak(self) -> int:
        self.sample()
        with self._lock:
            return self._peak

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def mib(n: int) -> float:
    return n / (1024 * 1024)


__all__ = ["RssSampler", "mib", "rss_bytes"]
