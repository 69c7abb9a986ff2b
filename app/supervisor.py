"""Several API processes on one port (`graft serve --workers N`), each with a listening socket of its own.

uvicorn's own `--workers` shares one listening socket between its processes, and the kernel hands a
new connection to whichever process accepts first: a client that opens its connections at once can
land every one of them on one process (docs/serving.md, earlier runs: run B2 had a round where all 32
did; the spread is there too). Here each
process binds the port itself with SO_REUSEPORT, and the kernel spreads connections between the
sockets by a hash of their addresses.

The parent does no HTTP: it starts the processes, starts a new one when one dies, and on SIGINT or
SIGTERM stops them all (each finishes its requests: uvicorn's graceful shutdown). A process that dies
within `QUICK_DEATH_S` of its start is a configuration error (the port taken, a bad setting), not a
crash: the parent then stops the others and exits with an error instead of restarting in a loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

QUICK_DEATH_S = 10.0
BACKLOG = 2048  # uvicorn's default


def bind_shared(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port) that other processes may bind too (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    return sock


def _worker(host: str, port: int, factory: str) -> None:
    import uvicorn

    sock = bind_shared(host, port)
    config = uvicorn.Config(factory, factory=True, proxy_headers=True, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    """Keeps `workers` processes running `_worker` until told to stop."""

    def __init__(self, host: str, port: int, workers: int,
                 factory: str = "app.main:create_worker_app") -> None:
        self.args = (host, port, factory)
        self.workers = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[tuple[BaseProcess, float]] = []
        self.stopping = False

    def _start_one(self, index: int) -> tuple[BaseProcess, float]:
        proc = self.ctx.Process(target=_worker, args=self.args, name=f"graft-api-{index}")
        proc.start()
        return proc, time.monotonic()

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (exit status 0) or a process that cannot start (1)."""
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        self.procs = [self._start_one(i) for i in range(self.workers)]
        status = 0
        while not self.stopping:
            time.sleep(0.2)
            for i, (proc, started) in enumerate(self.procs):
                if proc.is_alive() or self.stopping:
                    continue
                if time.monotonic() - started < QUICK_DEATH_S:
                    log.error("API process %s exited with %s right after starting; stopping", proc.name,
                              proc.exitcode)
                    self.stopping, status = True, 1
                    break
                log.warning("API process %s exited with %s; starting another", proc.name, proc.exitcode)
                self.procs[i] = self._start_one(i)
        for proc, _ in self.procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for proc, _ in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        return status
