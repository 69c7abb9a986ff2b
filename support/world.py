"""A tiny transplant world made in the tests: f, g_T, g_S and a dataset, uploaded over HTTP."""

from __future__ import annotations

import functools
import io
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transplant.artifacts import save_module

X_SHAPE = (3, 6, 6)
FEAT_SHAPE = (4, 6, 6)


@functools.cache
def tiny_nets(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """f: (3, 6, 6) → (4, 6, 6); g_T, g_S: (4, 6, 6) → 3 logits (g_T with BatchNorm and GELU).

    Cached: the same nets (and their exported bytes) serve every test of a run; nobody trains them.
    """
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())
    g_t = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.GELU(), nn.Flatten(),
                        nn.Linear(5 * 36, 3))
    g_s = nn.Sequential(nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3))
    for m in (f, g_t, g_s):
        m.eval()
    return f, g_t, g_s


@functools.cache
def nan_head() -> nn.Module:
    return NanHead().eval()


class NanHead(nn.Module):
    """A task module whose outputs are NaN: training on it must fail as diverged."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("nan")


@dataclass
class World:
    """Names of the uploaded pieces and the local nets they came from."""

    prefix: str
    f: nn.Module
    g_t: nn.Module
    g_s: nn.Module
    x: np.ndarray
    dataset: str

    @property
    def category(self) -> str:
        return f"{self.prefix}cat"

    def refs(self) -> dict:
        return {
            "category_module": f"{self.prefix}-f@1",
            "teacher_task_module": f"{self.prefix}-gt@1",
            "student_task_module": f"{self.prefix}-gs",
            "dataset": self.dataset,
        }


def _ok(resp, status: int = 201) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()


_EXPORTED: dict[int, tuple[nn.Module, bytes]] = {}


def exported(net: nn.Module, in_shape: tuple) -> bytes:
    """torch.export bytes of `net`, cached for the run: exporting costs seconds, the nets are fixed."""
    key = id(net)
    if key not in _EXPORTED:
        _EXPORTED[key] = (net, save_module(net, torch.zeros(2, *in_shape), "torch_export"))
    return _EXPORTED[key][1]


def upload_module(api, name: str, kind: str, net: nn.Module, in_shape: tuple, **fields) -> dict:
    _ok(api.post("/v1/modules", json={"name": name, "kind": kind, **fields}))
    data = exported(net, in_shape)
    meta = {"format": "torch_export", "input_shape": [None, *in_shape]}
    return _ok(api.post(
        f"/v1/modules/{name}/versions",
        files={"file": ("model.pt2", data, "application/octet-stream")},
        data={"meta": json.dumps(meta)},
    ))


def upload_dataset(api, name: str, x: np.ndarray, y: np.ndarray | None = None) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **({"x": x} if y is None else {"x": x, "y": y}))
    return _ok(api.post(
        "/v1/datasets",
        files={"file": ("data.npz", buf.getvalue(), "application/octet-stream")},
        data={"meta": json.dumps({"name": name})},
    ))


def make_world(api, prefix: str, *, n: int = 64, labels: bool = False, g_s: nn.Module | None = None,
               seed: int = 0) -> World:
    """Upload f (category), g_T and g_S (task "cls") and a dataset of n samples."""
    f, g_t, g_s_default = tiny_nets(seed)
    g_s = g_s or g_s_default
    category = f"{prefix}cat"
    upload_module(api, f"{prefix}-f", "category", f, X_SHAPE, category=category)
    upload_module(api, f"{prefix}-gt", "task", g_t, FEAT_SHAPE, task="cls")
    upload_module(api, f"{prefix}-gs", "task", g_s, FEAT_SHAPE, task="cls")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *X_SHAPE)).astype(np.float32)
    y = rng.integers(0, 3, n) if labels else None
    ds = upload_dataset(api, f"{prefix}-data", x, y)
    return World(prefix=prefix, f=f, g_t=g_t, g_s=g_s, x=x, dataset=ds["id"])


def transplant(api, world: World, **body) -> str:
    """Request a transplant of `world` (overridden by `body`); the job id."""
    resp = api.post("/v1/transplants", json={**world.refs(), **body})
    data = _ok(resp, 202)
    assert data["status"] == "queued"
    return data["job_id"]


def wait_for(api, job_id: str, cond, timeout: float = 60.0, poll: float = 0.1) -> dict:
    """Poll GET /v1/jobs/{id} until `cond(job)`; the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = _ok(api.get(f"/v1/jobs/{job_id}"), 200)
        if cond(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the condition: {job}"
        time.sleep(poll)


def final(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def sse_events(api, job_id: str) -> list[tuple[str, dict]]:
    """All (event, data) of the job's event stream, read until the server ends it."""
    events: list[tuple[str, dict]] = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def check_adapter_reproduces_teacher(api, world: World, job: dict) -> dict:
    """Download the registered adapter; g_S(h(f(x))) agrees with g_T(f(x)) as the job reported."""
    from transplant.adapters import load_adapter

    ref = job["result"]["adapter"]
    version = _ok(api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}"), 200)
    blob = api.get(f"/v1/modules/{ref['name']}/versions/{ref['version']}/artifact", follow_redirects=True)
    assert blob.status_code == 200
    h = load_adapter(blob.content, version["arch"])
    with torch.no_grad():
        feats = world.f(torch.from_numpy(world.x))
        agree = float((world.g_s(h(feats)).argmax(1) == world.g_t(feats).argmax(1)).float().mean())
    reported = job["result"]["metrics"]["teacher_agreement"]
    # The job measured on every sample (val_fraction 0): the same number up to rare argmax ties.
    assert abs(agree - reported) <= 1.5 / len(world.x), (agree, reported)
    return version
