"""The bounded load run (bench/load.py; tests/hardening/test_load.py runs a short one): mixed clients
against the whole stack (timed requests, fresh artifacts, what was accepted), then the checks that
nothing was lost."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from app.config import Settings
from graft.local_server import LocalServer
from support.workers import Workers, worker_env
from support.world import World, make_world, transplant, wait_for

TOKEN = "load-admin-token-0123456789"
JOB = {"epochs": 1, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
X_SHAPE = [None, 3, 6, 6]
N_ADAPTER_MODULES = 3
_SAVE_LOCK = threading.Lock()


@dataclass
class Stats:
    """Latencies and statuses per route; errors (unexpected answers) and expected 4xx kept apart."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter = field(default_factory=Counter)
    expected_4xx: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, route: str, status: int | None, seconds: float, ok: bool, note: str = "") -> None:
        with self.lock:
            self.latencies[route].append(seconds)
            self.statuses[route][status if status is not None else "transport"] += 1
            if not ok:
                self.errors[route] += 1
                if len(self.samples) < 20:
                    self.samples.append(f"{route}: {status} {note[:300]}")

    def summary(self) -> dict:
        out = {}
        for route, times in sorted(self.latencies.items()):
            ms = sorted(t * 1000 for t in times)
            q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
            out[route] = {"requests": len(ms), "p50_ms": statistics.median(ms), "p99_ms": q[98],
                          "errors": self.errors[route], "statuses": dict(self.statuses[route])}
        return out


class ArtifactMaker:
    """Fresh bytes of one small conv (3, 6, 6) → (4, 6, 6) per call: weights nudged, then saved."""

    def __init__(self, fmt: str, seed: int) -> None:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
        self.fmt = fmt
        batch = torch.export.Dim("batch", min=1)
        self.obj = torch.export.export(net, (torch.zeros(2, 3, 6, 6),), dynamic_shapes=({0: batch},))
        self.param = self.obj.state_dict["0.weight"]

    def next(self) -> bytes:
        """New weights, new bytes (saving a tiny module takes milliseconds; exporting would take seconds)."""
        with torch.no_grad():
            self.param.add_(torch.randn_like(self.param) * 0.01)
        buf = io.BytesIO()
        with _SAVE_LOCK:  # torch.export.save registers process-global pickling hooks
            torch.export.save(self.obj, buf)
        return buf.getvalue()


@dataclass
class Upload:
    name: str
    version: int
    sha256: str
    data: bytes


class LoadRun:
    """The clients' actions; what they had accepted is kept for the loss checks."""

    def __init__(
        self, url: str, world: World, composition: str, upload_modules: list[str], seed: int
    ) -> None:
        self.url, self.world, self.composition = url, world, composition
        self.upload_modules = upload_modules
        self.stats = Stats()
        self.uploads: list[Upload] = []
        self.jobs: list[str] = []
        self.next_seed = 1000
        self.lock = threading.Lock()
        self.seed = seed

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def call(self, c: httpx.Client, route: str, method: str, url: str, expect: tuple[int, ...] = (200,),
             bad: bool = False, **kw) -> httpx.Response | None:
        """One timed request; an answer outside `expect` (or no answer) is an error of `route`."""
        t0 = time.perf_counter()
        try:
            resp = c.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.stats.add(route, None, time.perf_counter() - t0, False, f"{type(exc).__name__}: {exc}")
            return None
        ok = resp.status_code in expect
        self.stats.add(route, resp.status_code, time.perf_counter() - t0, ok, resp.text if not ok else "")
        if ok and bad:
            with self.stats.lock:
                self.stats.expected_4xx[f"{route} → {resp.status_code}"] += 1
        return resp if ok else None

    # -- clients ---------------------------------------------------------------------------------
    def uploader(self, c: httpx.Client, rng: random.Random, makers: list[ArtifactMaker]) -> None:
        with self.lock:
            done = list(self.uploads)
        if done and rng.random() < 0.2:  # identical bytes again: the existing version, 200
            old = rng.choice(done)
            resp = self.call(c, "POST /v1/modules/{name}/versions (repeat)", "POST",
                             f"/v1/modules/{old.name}/versions", files={"file": ("m.bin", old.data)},
                             data={"meta": json.dumps({"format": _fmt(old.data), "input_shape": X_SHAPE})})
            if resp is not None and resp.json()["version"] != old.version:
                self.stats.add("repeat returned another version", 200, 0.0, False, resp.text)
            return
        maker = rng.choice(makers)
        data, name = maker.next(), rng.choice(self.upload_modules)
        resp = self.call(c, "POST /v1/modules/{name}/versions", "POST", f"/v1/modules/{name}/versions",
                         expect=(201,), files={"file": ("m.bin", data)},
                         data={"meta": json.dumps({"format": maker.fmt, "input_shape": X_SHAPE})})
        if resp is not None:
            body = resp.json()
            with self.lock:
                self.uploads.append(Upload(name, body["version"], hashlib.sha256(data).hexdigest(), data))

    def reader(self, c: httpx.Client, rng: random.Random) -> None:
        w = self.world
        with self.lock:
            up = rng.choice(self.uploads) if self.uploads else None
            job = rng.choice(self.jobs) if self.jobs else None
        pick = rng.random()
        if pick < 0.15:
            self.call(c, "GET /v1/modules", "GET", "/v1/modules", params={"limit": 50})
        elif pick < 0.3:
            self.call(c, "GET /v1/modules?kind&category", "GET", "/v1/modules",
                      params={"kind": "category", "category": f"loadc{rng.randrange(4)}"})
        elif pick < 0.4:
            self.call(c, "GET /v1/modules/{name}", "GET", f"/v1/modules/{rng.choice(self.upload_modules)}")
        elif pick < 0.5:
            self.call(c, "GET /v1/modules/{name}/versions/{ref}", "GET",
                      f"/v1/modules/{w.prefix}-gs/versions/latest")
        elif pick < 0.65 and up is not None:
            resp = self.call(c, "GET /v1/modules/{name}/versions/{ref}/artifact", "GET",
                             f"/v1/modules/{up.name}/versions/{up.version}/artifact", follow_redirects=True)
            if resp is not None and hashlib.sha256(resp.content).hexdigest() != up.sha256:
                self.stats.add("download sha256 mismatch", 200, 0.0, False, f"{up.name}@{up.version}")
        elif pick < 0.8 and job is not None:
            self.call(c, "GET /v1/jobs/{id}", "GET", f"/v1/jobs/{job}")
        elif pick < 0.87:
            self.call(c, "GET /v1/grid", "GET", "/v1/grid")
        elif pick < 0.9:  # re-exports the composition: seconds of CPU, so rare
            fmt = rng.choice(("torch_export", "torchscript"))
            self.call(c, f"GET /v1/compositions/{{id}}/export ({fmt})", "GET",
                      f"/v1/compositions/{self.composition}/export", params={"format": fmt})
        else:
            # Same pieces as an earlier call: the existing composition, 200; new pieces: 201.
            self.call(c, "POST /v1/compositions (cell)", "POST", "/v1/compositions", expect=(200, 201),
                      json={"category": w.category, "task": "cls"})

    def predictor(self, c: httpx.Client, rng: random.Random) -> None:
        x = np.random.default_rng(rng.randrange(1 << 30)).standard_normal((rng.randint(1, 4), 3, 6, 6))
        x = x.astype(np.float32)
        url = f"/v1/compositions/{self.composition}/predict"
        if rng.random() < 0.5:
            resp = self.call(c, "POST /v1/compositions/{id}/predict (json)", "POST", url,
                             json={"inputs": x.tolist()})
            if resp is not None and len(resp.json()["outputs"]) != len(x):
                self.stats.add("predict answered the wrong batch", 200, 0.0, False, resp.text)
        else:
            buf = io.BytesIO()
            np.save(buf, x, allow_pickle=False)
            resp = self.call(c, "POST /v1/compositions/{id}/predict (npy)", "POST", url,
                             content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
            if resp is not None and np.load(io.BytesIO(resp.content), allow_pickle=False).shape[0] != len(x):
                self.stats.add("predict answered the wrong batch", 200, 0.0, False, "")

    def submitter(self, c: httpx.Client, rng: random.Random) -> None:
        # A seed of its own per job: two jobs with the same seed and target would train identical
        # bytes, which the registry (rightly) merges into one version.
        with self.lock:
            seed = self.next_seed = self.next_seed + 1
        body = {**self.world.refs(), **JOB, "seed": seed,
                "result_module": f"load-adapter-{rng.randrange(N_ADAPTER_MODULES)}"}
        resp = self.call(c, "POST /v1/transplants", "POST", "/v1/transplants", expect=(202,), json=body)
        if resp is not None:
            with self.lock:
                self.jobs.append(resp.json()["job_id"])

    def bad(self, c: httpx.Client, rng: random.Random) -> None:
        kind = rng.randrange(5)
        if kind == 0:  # a pickle in an artifact slot: refused from its bytes alone, never loaded
            self.call(c, "bad: pickle upload", "POST", f"/v1/modules/{self.upload_modules[0]}/versions",
                      expect=(415,), bad=True, files={"file": ("m.pt", pickle.dumps({"w": [1, 2]}))},
                      data={"meta": json.dumps({"format": "torchscript", "input_shape": X_SHAPE})})
        elif kind == 1:
            self.call(c, "bad: unknown module", "GET", "/v1/modules/no-such-module", expect=(404,), bad=True)
        elif kind == 2:
            self.call(c, "bad: predict wrong shape", "POST", f"/v1/compositions/{self.composition}/predict",
                      expect=(422,), bad=True, json={"inputs": [[1.0, 2.0]]})
        elif kind == 3:
            self.call(c, "bad: transplant unknown dataset", "POST", "/v1/transplants", expect=(404, 422),
                      bad=True, json={**self.world.refs(), "dataset": "no-such-dataset", **JOB})
        else:
            with self.client(token=None) as anon:
                self.call(anon, "bad: no token", "GET", "/v1/modules", expect=(401,), bad=True)


def _fmt(data: bytes) -> str:
    """The format of bytes this script made (torch_export archives hold `archive_format`)."""
    return "torch_export" if b"archive_format" in data else "torchscript"


FINAL = ("succeeded", "failed", "cancelled")


def _all_items(c: httpx.Client, url: str) -> list[dict]:
    items, cursor = [], None
    while True:
        resp = c.get(url, params={"limit": 200, **({"cursor": cursor} if cursor else {})})
        resp.raise_for_status()
        page = resp.json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def setup(c: httpx.Client, n_modules: int = 4) -> tuple[World, str, list[str]]:
    """The transplant world, one transplanted adapter and its cell composition, the upload targets."""
    world = make_world(c, "load", n=16)
    job = transplant(c, world, result_module="load-adapter-0", **JOB)
    done = wait_for(c, job, lambda j: j["status"] in FINAL, timeout=180)
    assert done["status"] == "succeeded", done
    resp = c.post("/v1/compositions", json={"category": world.category, "task": "cls"})
    resp.raise_for_status()
    names = []
    for k in range(n_modules):
        c.post("/v1/modules", json={"name": f"load-up-{k}", "kind": "category", "category": f"loadc{k}"}
               ).raise_for_status()
        names.append(f"load-up-{k}")
    return world, resp.json()["id"], names


def drive(run: LoadRun, duration: float, counts: dict[str, int], think: dict[str, float]) -> dict:
    """Run the clients for `duration` seconds; load averages sampled while they run."""
    loads: list[float] = []

    # Made here, one after another, before the clock starts: torch.export takes seconds and is not
    # meant to run in several threads at once.
    formats = ("torch_export",)  # TorchScript uploads are refused (transplant/allowlist.py)
    makers = {i: [ArtifactMaker(f, run.seed + 10 * i + j) for j, f in enumerate(formats)]
              for i in range(counts.get("uploader", 0))}

    def loop(role: str, i: int) -> None:
        rng = random.Random(f"{run.seed}-{role}-{i}")
        mine = makers[i] if role == "uploader" else None
        action = getattr(run, role)
        with run.client() as c:
            while time.monotonic() < deadline:
                try:
                    action(c, rng, mine) if mine else action(c, rng)
                except Exception as exc:  # noqa: BLE001 - a client bug must show up, not stop the run
                    run.stats.add(f"client {role}", None, 0.0, False, f"{type(exc).__name__}: {exc}")
                time.sleep(think.get(role, 0.0))

    threads = [threading.Thread(target=loop, args=(role, i), daemon=True)
               for role, n in counts.items() for i in range(n)]
    start = time.monotonic()
    deadline = start + duration
    for t in threads:
        t.start()
    while time.monotonic() < deadline:
        loads.append(os.getloadavg()[0])
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    for t in threads:
        t.join()
    return {"seconds": time.monotonic() - start, "load_average_during_max": max(loads, default=0.0),
            "load_average_during_mean": statistics.fmean(loads) if loads else 0.0}


def verify(run: LoadRun, drain_s: float) -> dict:
    """Every accepted upload downloadable with its sha256; every accepted job final, once, one version."""
    with run.client() as c:
        deadline = time.monotonic() + drain_s
        final: dict[str, dict] = {}
        t0 = time.monotonic()
        while True:
            for job_id in run.jobs:
                if job_id not in final:
                    job = c.get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in FINAL:
                        final[job_id] = job
            if len(final) == len(run.jobs) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        drained_s = time.monotonic() - t0
        bad_sha = missing = 0
        for up in run.uploads:
            meta = c.get(f"/v1/modules/{up.name}/versions/{up.version}")
            blob = c.get(f"/v1/modules/{up.name}/versions/{up.version}/artifact", follow_redirects=True)
            if meta.status_code != 200 or blob.status_code != 200:
                missing += 1
            elif hashlib.sha256(blob.content).hexdigest() != up.sha256 or meta.json()["sha256"] != up.sha256:
                bad_sha += 1
        extra_versions = 0
        for name in run.upload_modules:
            stored = len(_all_items(c, f"/v1/modules/{name}/versions"))
            extra_versions += stored - sum(u.name == name for u in run.uploads)
        versions_by_job: Counter = Counter()
        for k in range(N_ADAPTER_MODULES):
            for v in _all_items(c, f"/v1/modules/load-adapter-{k}/versions"):
                versions_by_job[v.get("job_id")] += 1
    statuses = Counter(j["status"] for j in final.values())
    succeeded = [j for j in final.values() if j["status"] == "succeeded"]
    return {
        "uploads_accepted": len(run.uploads), "uploads_missing": missing, "uploads_wrong_sha256": bad_sha,
        "versions_not_accounted_for": extra_versions,
        "jobs_accepted": len(run.jobs), "jobs_final": len(final),
        "jobs_not_final": len(run.jobs) - len(final),
        "jobs_by_status": dict(statuses), "drain_s": drained_s,
        "jobs_run_more_than_once": sum(j["attempts"] != 1 for j in final.values()),
        "succeeded_jobs_without_exactly_one_version": sum(versions_by_job[j["id"]] != 1 for j in succeeded),
        "versions_of_odd_jobs": {j["id"]: versions_by_job[j["id"]] for j in succeeded
                                 if versions_by_job[j["id"]] != 1},
        "failed_job_errors": [j.get("error") for j in final.values() if j["status"] != "succeeded"][:5],
    }


def _tracebacks(log_text: str) -> list[str]:
    """The tracebacks of a log: each up to its exception line (the first one not indented)."""
    out = []
    for part in log_text.split("Traceback (most recent call last):")[1:]:
        lines = part.splitlines()[1:]
        end = next((i for i, line in enumerate(lines) if line and not line[0].isspace()), len(lines) - 1)
        out.append("\n".join(lines[max(0, end - 6):end + 1]))
    return out


def lost(checks: dict) -> int:
    """Everything the loss checks count as lost or wrong (0 is the goal)."""
    keys = ("uploads_missing", "uploads_wrong_sha256", "versions_not_accounted_for", "jobs_not_final",
            "jobs_run_more_than_once", "succeeded_jobs_without_exactly_one_version")
    failed = sum(n for s, n in checks["jobs_by_status"].items() if s != "succeeded")
    return sum(abs(checks[k]) for k in keys) + failed


def run_load(settings: Settings, workdir: Path, *, duration: float, counts: dict[str, int],
             think: dict[str, float], workers: int = 1, drain_s: float = 300.0, seed: int = 0) -> dict:
    """Start an API and `workers` worker processes on `settings`, drive the clients, verify; the record."""
    env = {k: v for k, v in worker_env(settings).items() if k.startswith(("GRAFT_", "AWS_", "OMP_"))}
    server = LocalServer(workdir / "api", token=TOKEN, env=env).start()
    pool = Workers(settings, workdir)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
            for _ in range(workers):
                pool.start()
            world, composition, names = setup(c)
        run = LoadRun(server.url, world, composition, names, seed)
        before = os.getloadavg()[0]
        timing = drive(run, duration, counts, think)
        checks = verify(run, drain_s)
        log_text = server.log_tail(100000) + "".join(w.log() for w in pool.running)
    finally:
        pool.stop_all()
        server.stop()
    routes = run.stats.summary()
    requests = sum(r["requests"] for r in routes.values())
    errors = sum(run.stats.errors.values())
    return {
        "duration_s": duration, "clients": counts, "think_s": think, "workers": workers,
        "load_average_before": before, "load_average_after": os.getloadavg()[0], **timing,
        "requests": requests, "errors": errors, "error_rate": errors / max(1, requests),
        "error_samples": run.stats.samples, "expected_4xx": dict(run.stats.expected_4xx),
        "routes": routes, "checks": checks, "lost": lost(checks),
        "tracebacks_in_logs": log_text.count("Traceback (most recent call last)"),
        "traceback_samples": _tracebacks(log_text)[:3],
    }


DEFAULT_THINK = {"uploader": 0.1, "reader": 0.02, "predictor": 0.02, "submitter": 0.5, "bad": 0.5}
