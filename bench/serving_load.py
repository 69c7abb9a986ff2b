"""Load generators for bench.serving: N concurrent clients posting one-input .npy predicts back to back.

`wrk` (Debian's package, `apt-get install wrk`) is the default: one C thread drives all the
connections, so on a 2-core machine the load generator takes little of the CPU the server needs
(32 Python client threads took about as much CPU as the server). Each wrk connection is one client
with one request in flight; a Lua script sets the method, headers and the .npy body. Without wrk the
benchmark falls back to Python client threads and says so in its results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

TICKS = os.sysconf("SC_CLK_TCK")

_LUA = """
local f = assert(io.open(os.getenv("GRAFT_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/x-npy"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("GRAFT_BENCH_TOKEN")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'GRAFT {"requests": %d, "duration_us": %d, "socket_errors": %d, "bad_status": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def generator() -> str:
    """"wrk" when it is installed, else "python-threads"."""
    return "wrk" if shutil.which("wrk") else "python-threads"


def _served(url: str) -> dict:
    """Batches and input rows served so far, from /metrics (the sum over every API process)."""
    r = httpx.get(f"{url}/metrics", timeout=30)
    r.raise_for_status()
    samples = {s.name: s.value for family in text_string_to_metric_families(r.text) for s in family.samples
               if not s.labels}
    return {"batches": samples["graft_predict_batch_inputs_count"],
            "inputs": samples["graft_predict_batch_inputs_sum"]}


def tree_cpu_s(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def run_wrk(url: str, token: str, body: bytes, clients: int, seconds: float) -> dict:
    """One wrk run of `clients` connections for `seconds`; its counts, latency and CPU."""
    with tempfile.TemporaryDirectory(prefix="graft-wrk-") as tmp:
        script, body_path = Path(tmp) / "predict.lua", Path(tmp) / "body.npy"
        script.write_text(_LUA)
        body_path.write_bytes(body)
        env = {**os.environ, "GRAFT_BENCH_BODY": str(body_path), "GRAFT_BENCH_TOKEN": token}
        cmd = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), url]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((x for x in out.splitlines() if x.startswith("GRAFT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    stats = json.loads(line[len("GRAFT "):])
    stats["client_cpu_s"] = usage.ru_utime + usage.ru_stime
    return stats


def run_threads(url: str, token: str, body: bytes, clients: int, seconds: float) -> dict:
    """The fallback: `clients` Python threads (httpx), each posting back to back for `seconds`."""
    counts, bad = [0] * clients, [0] * clients
    stop, go = threading.Event(), threading.Barrier(clients + 1)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-npy"}

    def run(i: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            go.wait()
            while not stop.is_set():
                ok = c.post(url, content=body).status_code == 200
                counts[i] += 1
                bad[i] += not ok

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"requests": sum(counts), "duration_us": int((time.perf_counter() - t0) * 1e6),
            "socket_errors": 0, "bad_status": sum(bad), "p50_us": None, "p99_us": None, "client_cpu_s": None}


def concurrent_load(server, cid: str, body: bytes, clients: int, seconds: float, token: str) -> dict:  # noqa: ANN001
    """Requests/s, mean batch formed, latency and CPU (server, client) of `clients` concurrent clients."""
    url = f"{server.url}/v1/compositions/{cid}/predict"
    run = run_wrk if generator() == "wrk" else run_threads
    run(url, token, body, clients, 1.0)  # warm-up: connections, threads, the batcher
    pids = server.pids()
    before, server0 = _served(server.url), tree_cpu_s(pids)
    stats = run(url, token, body, clients, seconds)
    server_cpu = tree_cpu_s(pids) - server0
    after = _served(server.url)
    if stats["bad_status"] or stats["socket_errors"]:
        raise RuntimeError(f"the load run had failed requests: {stats}")
    batches = after["batches"] - before["batches"]
    inputs = after["inputs"] - before["inputs"]
    elapsed = stats["duration_us"] / 1e6
    return {
        "generator": generator(),
        "rps": stats["requests"] / elapsed,
        "requests": stats["requests"],
        "mean_batch": inputs / max(batches, 1),
        "p50_ms": stats["p50_us"] / 1000 if stats["p50_us"] is not None else None,
        "p99_ms": stats["p99_us"] / 1000 if stats["p99_us"] is not None else None,
        "server_cpu_ms_per_request": 1000 * server_cpu / max(1, stats["requests"]),
        "server_cores_used": server_cpu / elapsed,
        "client_cpu_s": stats["client_cpu_s"],
        "client_cores_used": (stats["client_cpu_s"] / elapsed) if stats["client_cpu_s"] is not None else None,
    }
