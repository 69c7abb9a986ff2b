"""GET /v1/grid: native, transplanted, running and missing cells, following a transplant's progress."""

from __future__ import annotations

import uuid
from pathlib import Path

from app.models import Job
from app.modules import service as modules
from tests.compositions.conftest import FEAT_SHAPE, X_SHAPE, make_module, upload


def _cell(client, category: str, task: str) -> dict:
    grid = client.get("/v1/grid").json()
    assert category in grid["categories"] and task in grid["tasks"]
    assert len(grid["cells"]) == len(grid["categories"]) * len(grid["tasks"])
    return next(c for c in grid["cells"] if (c["category"], c["task"]) == (category, task))


def test_grid_follows_a_transplant(served, artifacts, tmp_path: Path) -> None:
    app = served.app
    # bird has its teacher's own head (native) and an adapter into the generic module: transplanted wins.
    bird = _cell(served, "bird", "classify")
    assert bird["status"] == "transplanted" and bird["adapter"] == {"name": "bird-classify-h", "version": 1}
    owl = _cell(served, "owl", "classify")
    assert owl["status"] == "transplanted" and owl["metrics"] == {"agreement": 0.88}

    make_module(served, "heron-f", "category", category="heron")
    upload(served, "heron-f", artifacts.f, "torch_export", X_SHAPE)
    assert _cell(served, "heron", "classify")["status"] == "missing"

    # A transplant job for the cell is running (rows made directly: the jobs domain owns the real flow).
    job_id = str(uuid.uuid4())
    with app.state.sessionmaker() as session:
        session.add(Job(id=job_id, kind="transplant", status="running", request={
            "category": "heron", "task": "classify", "category_module": {"name": "heron-f", "version": 1},
            "teacher_task_module": {"name": "bird-classify-teacher", "version": 1},
            "student_task_module": {"name": "classify-generic", "version": 1},
        }))
        session.commit()
    cell = _cell(served, "heron", "classify")
    assert cell["status"] == "running" and cell["job_id"] == job_id and cell.get("metrics") is None
    resp = served.post("/v1/compositions", json={"category": "heron", "task": "classify"})
    assert resp.status_code == 404 and job_id in resp.json()["detail"]

    # The job registers its adapter, with lineage, through the modules service, and succeeds.
    path = tmp_path / "h.safetensors"
    path.write_bytes(artifacts.h)
    with app.state.sessionmaker() as session:
        module = modules.create_module(session, name="heron-classify-h", kind="adapter", category="heron",
                                       task="classify")
        # Lineage names the teacher's head as the student: lineage wins over the alias/newest rule.
        parents = [{"name": "heron-f", "version": 1, "role": "category"},
                   {"name": "classify-generic", "version": 1, "role": "teacher"},
                   {"name": "bird-classify-teacher", "version": 1, "role": "student"}]
        modules.add_version(
            session, app.state.store, app.state.settings, module=module, file_path=path,
            meta={"format": "safetensors", "input_shape": FEAT_SHAPE, "arch": artifacts.h_spec,
                  "metrics": {"agreement": 0.97}},
            parents=parents, job_id=job_id, job_role="adapter",
        )
        session.get(Job, job_id).status = "succeeded"
        session.commit()
    cell = _cell(served, "heron", "classify")
    assert cell["status"] == "transplanted" and cell["metrics"] == {"agreement": 0.97}
    assert cell["adapter"] == {"name": "heron-classify-h", "version": 1}
    assert cell["task_module"] == {"name": "bird-classify-teacher", "version": 1}
    assert cell["composition"] is None and cell["job_id"] is None

    comp = served.post("/v1/compositions", json={"category": "heron", "task": "classify"})
    assert comp.status_code == 201, comp.text
    assert comp.json()["task_module"] == {"name": "bird-classify-teacher", "version": 1}
    assert _cell(served, "heron", "classify")["composition"] == comp.json()["id"]


def test_grid_on_an_empty_registry(embedded_client) -> None:
    assert embedded_client.get("/v1/grid").json() == {"categories": [], "tasks": [], "cells": []}
    assert embedded_client.get("/v1/grid", headers={"Authorization": "Bearer wrong"}).status_code == 401
