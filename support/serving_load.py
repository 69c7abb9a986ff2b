"""The load client of bench.serving: N keep-alive connections posting .npy predicts back to back.

One asyncio event loop on raw sockets drives every connection, so on a 2-core machine the client
takes a small share of the CPU the server needs (32 Python threads with httpx took about as much
CPU as the server). Each connection is one client with one request in flight; client `i` calls
composition `cids[i % len(cids)]`, so `len(cids)` distinct compositions share the load.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_s(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def served(url: str) -> dict:
    """Batches and input rows served so far, from /metrics (the sum over every API process)."""
    r = httpx.get(f"{url}/metrics", timeout=30)
    r.raise_for_status()
    samples = {s.name: s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if not s.labels}
    return {"batches": samples["graft_predict_batch_inputs_count"],
            "inputs": samples["graft_predict_batch_inputs_sum"]}


def _request(port: int, token: str, cid: str, body: bytes) -> bytes:
    return (f"POST /v1/compositions/{cid}/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _client(port: int, request: bytes, until: float, latencies: list[float], bad: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if head[9:12] != b"200":
                bad.append(int(head[9:12]))
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], seconds: float) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    bad: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, r, t0 + seconds, latencies, bad) for r in requests))
    return latencies, bad, time.perf_counter() - t0


def run_load(port: int, token: str, cids: list[str], body: bytes, clients: int, seconds: float) -> dict:
    """`clients` connections for `seconds`, client i on cids[i % len(cids)]; counts and latency."""
    requests = [_request(port, token, cids[i % len(cids)], body) for i in range(clients)]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    latencies, bad, elapsed = asyncio.run(_load(port, requests, seconds))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    return {
        "requests": len(latencies), "elapsed_s": elapsed, "bad_status": len(bad),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


def concurrent_load(server, cids: list[str], body: bytes, clients: int, seconds: float, token: str) -> dict:  # noqa: ANN001
    """Requests/s, mean batch formed, latency and CPU (server, client) of `clients` concurrent clients."""
    run_load(server.port, token, cids, body, clients, 0.5)  # warm-up: connections, the executor
    pids = server.pids()
    before, server0 = served(server.url), tree_cpu_s(pids)
    stats = run_load(server.port, token, cids, body, clients, seconds)
    server_cpu = tree_cpu_s(pids) - server0
    after = served(server.url)
    if stats["bad_status"]:
        raise RuntimeError(f"the load run had failed requests: {stats}")
    batches, inputs = after["batches"] - before["batches"], after["inputs"] - before["inputs"]
    elapsed = stats["elapsed_s"]
    return {
        "rps": stats["requests"] / elapsed, "requests": stats["requests"],
        "mean_batch": inputs / max(batches, 1), "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
        "server_cpu_ms_per_request": 1000 * server_cpu / max(1, stats["requests"]),
        "server_cores_used": server_cpu / elapsed, "client_cores_used": stats["client_cpu_s"] / elapsed,
    }
