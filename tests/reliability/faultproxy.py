"""A TCP proxy the tests control, to put real faults between the layer and a real server.

The proxy runs its own event loop in a daemon thread, so a test's loop (and the layer on it) never
shares a scheduler with the fault: a black-holed call really waits on the network, not on a mock.

Modes (set at any time with :meth:`FaultProxy.set_mode`; new and existing connections follow it):

* ``pass``: bytes flow both ways unchanged.
* ``refuse``: new connections are accepted and closed at once (the client sees a reset/EOF before
  any byte, as from a server that is going down); existing ones are cut.
* ``blackhole``: connections are accepted and every byte either way is held, never forwarded and
  never answered, as from a host whose route was dropped. Existing connections stall too. Leaving
  the mode releases what is held; call :meth:`FaultProxy.cut_all` first to lose it instead (the
  clients gave up: a cut connection's held bytes are never forwarded).
* ``drop_response``: the next response chunk from the server is cut after half of it has been
  sent, then the connection is closed (a server dying mid-response); the mode then returns to
  ``pass``.
* ``slow``: every chunk from the server is delayed by ``delay`` seconds.

:meth:`FaultProxy.cut_all` closes every open connection (an idle-timeout in a middlebox, a
failover) while leaving the mode unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "refuse", "blackhole", "drop_response", "slow"]

__all__ = ["FaultProxy", "Mode", "fault_proxy"]


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` with injectable faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay = 0.5
        self.port = 0
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resume = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"fault-proxy->{target_port}")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = fut.result(10)
        return self

    async def _start(self) -> int:
        self._resume = asyncio.Event()
        self._resume.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------------------

    def set_mode(self, mode: Mode, *, delay: float | None = None) -> None:
        """Switch the fault mode; ``refuse`` also cuts the connections already open."""
        async def _set() -> None:
            self.mode = mode
            if delay is not None:
                self.delay = delay
            if mode == "blackhole":
                self._resume.clear()
            else:
                self._resume.set()
            if mode == "refuse":
                self._cut()
        asyncio.run_coroutine_threadsafe(_set(), self._loop).result(10)

    def cut_all(self) -> None:
        """Close every open connection, keeping the mode (an idle timeout in a middlebox)."""
        async def _cut() -> None:
            self._cut()
        asyncio.run_coroutine_threadsafe(_cut(), self._loop).result(10)

    def _cut(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    # -- forwarding ------------------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.mode == "refuse":
            client_w.transport.abort()
            return
        self._writers.add(client_w)
        try:
            await self._resume.wait()
            if client_w.is_closing():  # cut while held: its bytes are lost, never delivered late
                return
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(client_w)
            client_w.transport.abort()
            return
        self._writers.add(server_w)
        up = asyncio.ensure_future(self._pipe(client_r, server_w, upstream=True))
        down = asyncio.ensure_future(self._pipe(server_r, client_w, upstream=False))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for w in (client_w, server_w):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await self._resume.wait()
            if writer.is_closing():  # cut while held: its bytes are lost, never delivered late
                return
            if not upstream and self.mode == "drop_response":
                self.mode = "pass"
                writer.write(data[: max(1, len(data) // 2)])
                with contextlib.suppress(Exception):
                    await writer.drain()
                return
            if not upstream and self.mode == "slow":
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()


@contextlib.contextmanager
def fault_proxy(target_host: str, target_port: int) -> Iterator[FaultProxy]:
    """A started proxy, stopped on exit."""
    proxy = FaultProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
