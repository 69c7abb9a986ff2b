"""The Python client against a real server: round trips, push_teacher, a transplant waited to completion."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graft import Client, GraftError, JobFailed, ServerUnreachable
from graft._http import iter_sse
from graft.local_server import LocalServer, free_port
from graft.progress import _merge
from tests.graft.nets import ResNetish, trained_like


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_push_module_round_trip_fills_shapes_and_pulls_same_bytes(client: Client, tmp_path: Path) -> None:
    name = uid("mlp")
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    v = client.push_module(model, torch.randn(3, 6), kind="task", name=name, task="cls",
                           metrics={"accuracy": 0.5})
    assert (v["name"], v["version"], v["format"]) == (name, 1, "torch_export")
    assert v["input_shape"] == [None, 6] and v["output_shape"] == [None, 4]
    assert client.version(f"{name}@1")["metrics"] == {"accuracy": 0.5}
    assert [m["name"] for m in client.modules(task="cls") if m["name"] == name] == [name]

    path = client.pull(f"{name}@1", tmp_path)
    assert path.name == f"{name}@1.pt2"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == v["sha256"]
    # The same bytes again are the same version (idempotent), not a new one.
    again = client.upload_version(name, path, {"format": "torch_export", "input_shape": [None, 6]})
    assert (again["version"], again["sha256"]) == (1, v["sha256"])


def test_push_module_with_a_batch_of_one(client: Client) -> None:
    name = uid("ts")
    v = client.push_module(nn.Linear(5, 2), torch.randn(1, 5), kind="task", name=name, task="reg")
    assert (v["format"], v["input_shape"], v["output_shape"]) == ("torch_export", [None, 5], [None, 2])


def test_push_teacher_splits_a_residual_batchnorm_network_and_serves_it_unchanged(client: Client) -> None:
    category = uid("bird")
    model = trained_like(ResNetish(classes=3))
    x = torch.randn(6, 3, 8, 8)
    pushed = client.push_teacher(model, "block1", x, category=category, task="cls")
    f, g = pushed["category_module"], pushed["teacher_task_module"]
    assert (f["name"], f["kind"], f["input_shape"], f["output_shape"]) == (
        f"{category}-f", "category", [None, 3, 8, 8], [None, 8, 8, 8])
    assert (g["name"], g["kind"], g["input_shape"], g["output_shape"]) == (
        f"{category}-cls", "task", [None, 8, 8, 8], [None, 3])

    # The teacher's own pair, composed on the server, computes what the whole network computes.
    comp = client.compose(category_module=f"{category}-f@1", task_module=f"{category}-cls@1")
    out = client.predict(comp["id"], x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    cells = {(c["category"], c["task"]): c["status"] for c in client.grid()["cells"]}
    assert cells[(category, "cls")] == "native"


def test_server_errors_carry_status_and_detail(client: Client, graft_server: LocalServer,
                                               tmp_path: Path) -> None:
    with pytest.raises(GraftError) as missing:
        client.module(uid("nobody"))
    assert missing.value.status == 404 and missing.value.detail

    with Client(graft_server.url, "not-a-token") as bad, pytest.raises(GraftError) as unauth:
        bad.modules()
    assert unauth.value.status == 401

    pickled = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), pickled)
    name = uid("pickled")
    client.create_module(name, "task", task="cls")
    with pytest.raises(GraftError) as refused:
        client.upload_version(name, pickled, {"format": "torch_export", "input_shape": [None, 2]})
    assert refused.value.status == 415 and "pickle" in refused.value.detail

    with Client(f"http://127.0.0.1:{free_port()}", "x") as nowhere, pytest.raises(ServerUnreachable) as down:
        nowhere.grid()
    assert down.value.status == 0 and "graft serve" in down.value.detail


def test_push_dataset_with_labels(client: Client) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32)
    d = client.push_dataset(torch.from_numpy(x), np.arange(10) % 3, name=uid("ds"), category="bird")
    assert d["n"] == 10 and d["input_shape"] == [None, 3, 8, 8]
    assert client.dataset(d["id"])["id"] == d["id"]


def _student(category: str, client: Client) -> str:
    """A generic task module for features (8, 8, 8), pushed as the student g_S."""
    torch.manual_seed(1)
    g_s = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 3))
    v = client.push_module(g_s, torch.randn(2, 8, 8, 8), kind="task", name=f"{category}-generic", task="cls")
    return f"{v['name']}@{v['version']}"


def test_transplant_waited_to_completion_then_composed_and_called(client: Client, capsys) -> None:
    category = uid("heron")
    model = trained_like(ResNetish(classes=3), seed=2)
    x = torch.randn(48, 3, 8, 8)
    pushed = client.push_teacher(model, "block1", x[:4], category=category, task="cls")
    student = _student(category, client)
    dataset = client.push_dataset(x, name=f"{category}-unlabelled", category=category)

    job = client.transplant(category_module=pushed["category_module"],
                            teacher_task_module=pushed["teacher_task_module"], student_task_module=student,
                            dataset=dataset["id"], method="back_distillation", epochs=2, seed=0,
                            result_module=f"{category}-adapter")
    state = job.wait(progress=True, timeout=240)
    assert state["status"] == "succeeded"
    assert "job" in capsys.readouterr().err  # the progress bar was drawn (on stderr)
    adapter = state["result"]["adapter"]
    assert adapter["name"] == f"{category}-adapter"
    assert {"teacher_agreement", "val_loss"} <= set(state["result"]["metrics"])
    version = client.version(adapter)
    assert version["job_id"] == job.id and version["kind"] == "adapter"
    assert job.id in [j["id"] for j in client.jobs(limit=100)]

    comp = client.compose(category_module=pushed["category_module"], adapter=adapter, task_module=student)
    assert comp["adapter"] == {"name": adapter["name"], "version": adapter["version"]}
    assert client.predict(comp["id"], x[:5].numpy()).shape == (5, 3)
    # The cell itself is now served through the transplanted adapter (it outranks the teacher's pair).
    cell = client.compose(category, "cls")
    assert cell["adapter"] == {"name": adapter["name"], "version": adapter["version"]}


def test_transplant_without_data_on_a_pushed_batchnorm_teacher(client: Client) -> None:
    category = uid("kite")
    model = trained_like(ResNetish(classes=3), seed=3)
    pushed = client.push_teacher(model, "block1", torch.randn(4, 3, 8, 8), category=category, task="cls")
    job = client.transplant(category_module=pushed["category_module"],
                            teacher_task_module=pushed["teacher_task_module"],
                            student_task_module=_student(category, client), epochs=2, seed=0,
                            synthesis={"method": "deepinversion", "n": 16, "steps": 10})
    state = job.wait(timeout=240)
    assert state["status"] == "succeeded"
    syn = state["result"]["metrics"]["synthesis"]
    assert syn["method"] == "deepinversion" and syn["bn_layers"]["category_module"] >= 1
    assert syn["bn_distance"] < syn["bn_distance_init"]


def test_a_cancelled_job_raises_job_failed_when_checked(client: Client) -> None:
    category = uid("owl")
    model = trained_like(ResNetish(classes=3), seed=3)
    x = torch.randn(32, 3, 8, 8)
    pushed = client.push_teacher(model, "block1", x[:4], category=category, task="cls")
    dataset = client.push_dataset(x, name=f"{category}-x")
    job = client.transplant(category_module=pushed["category_module"],
                            teacher_task_module=pushed["teacher_task_module"],
                            student_task_module=_student(category, client), dataset=dataset["id"],
                            method="distillation", epochs=5000)
    job.cancel()
    with pytest.raises(JobFailed) as failed:
        job.wait(progress=False, timeout=120)
    assert failed.value.job["status"] == "cancelled"


def test_event_stream_parsing_and_merging() -> None:
    lines = ["id: 1", "event: status", 'data: {"id": "j", "status": "running", "progress": {}}', "",
             ": keep-alive", "", "event: progress", 'data: {"id": "j", "status": "running",',
             'data:  "progress": {"epoch": 2, "epochs": 5, "loss": 0.5}}', ""]
    events = list(iter_sse(iter(lines)))
    assert [e for e, _ in events] == ["status", "progress"]
    state: dict = {}
    for event, data in events:
        state = _merge(state, event, json.loads(data))
    assert state["progress"] == {"epoch": 2, "epochs": 5, "loss": 0.5}
    assert _merge({"status": "running"}, "message", {"epoch": 3})["progress"] == {"epoch": 3}
