"""Ports for servers a test starts itself (a private moto, a serial moto): one free port, and a
wait until something listens there that fails loudly when it never does."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A port nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, what: str, alive: Callable[[], str | None] = lambda: None,
                  tries: int = 200, pause: float = 0.1) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection. ``alive`` returns why the server
    died (its stderr), or None while it runs.

    Raises:
        AssertionError: the server died, or never listened within ``tries * pause`` seconds.
    """
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            died = alive()
            assert died is None, f"{what} exited: {died}"
            time.sleep(pause)
    raise AssertionError(f"{what} did not start on port {port}")
