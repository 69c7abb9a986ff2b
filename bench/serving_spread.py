"""How connections opened at once spread over two API processes: one shared socket vs one socket each.

    python -m bench.serving_spread        # writes bench/results/serving-spread.md

A load generator (wrk, a proxy's pool) opens its connections at once and keeps them. uvicorn's own
`--workers` shares one listening socket and the kernel hands each connection to whichever process
accepts first; `graft serve --workers` gives each process its own SO_REUSEPORT socket
(`app/supervisor.py`). Each round opens 32 connections, then asks each which process holds it
(`/v1/serving` answers its pid). No predict is served: this measures the spread alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx

from bench.serving import BENCH_BROKER, RESULTS, TOKEN, free_port

CONNECTIONS = 32
ROUNDS = 10


def connection_pids(port: int, token: str, n: int) -> list[int]:
    """Open `n` connections at once, then ask each which process holds it."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    request = (f"GET /v1/serving HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Connection: close\r\n\r\n").encode()
    pids = []
    try:
        for conn in conns:
            conn.sendall(request)
        for conn in conns:
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            pids.append(json.loads(reply.split(b"\r\n\r\n", 1)[1])["pid"])
    finally:
        for conn in conns:
            conn.close()
    return pids


def splits(cmd: list[str], port: int, env: dict[str, str]) -> list[list[int]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if len(set(connection_pids(port, TOKEN, 16))) == 2:  # both processes are up
                    break
            except (OSError, httpx.HTTPError, ValueError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start two processes")
            time.sleep(0.5)
        return [sorted(Counter(connection_pids(port, TOKEN, CONNECTIONS)).values()) for _ in range(ROUNDS)]
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="graft-spread-") as tmp:
        env = {**os.environ, "GRAFT_DATA_DIR": tmp, "GRAFT_BOOTSTRAP_TOKEN": TOKEN,
               "GRAFT_BROKER_URL": BENCH_BROKER}
        subprocess.run([sys.executable, "-m", "graft.cli", "db", "upgrade"], env=env, check=True,
                       capture_output=True)
        results = {}
        port = free_port()
        results["uvicorn --workers 2 (one shared socket)"] = splits(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_worker_app", "--port", str(port),
             "--workers", "2", "--log-level", "warning"], port, env)
        port = free_port()
        results["graft serve --workers 2 (a socket each)"] = splits(
            [sys.executable, "-m", "graft.cli", "serve", "--port", str(port), "--workers", "2"], port, env)
    lines = ["# Connections over two API processes (`python -m bench.serving_spread`)", "",
             f"{ROUNDS} rounds of {CONNECTIONS} connections opened at once; each cell is the split between "
             f"the two processes (fewer, more). Machine: {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.2f} at the end.", "",
             "| server | splits per round | smallest share |", "|---|---|---|"]
    for name, rounds in results.items():
        fewer = [0 if len(r) == 1 else r[0] for r in rounds]  # one count: every connection on one process
        cells = ", ".join(f"{a}/{r[-1]}" for a, r in zip(fewer, rounds, strict=True))
        smallest = min(fewer)
        lines.append(f"| {name} | {cells} | {smallest} of {CONNECTIONS} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "serving-spread.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
