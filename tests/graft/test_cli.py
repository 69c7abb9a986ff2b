"""The `graft` command line as scripts use it: a subprocess per command, JSON out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft import Client
from graft.local_server import LocalServer, free_port

GRAFT = [sys.executable, "-m", "graft.cli"]


def graft(server: LocalServer | None, *args: str, token: str | None = None,
          url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    if server is not None:
        env["GRAFT_URL"] = url or server.url
        env["GRAFT_TOKEN"] = token or server.token
    return subprocess.run([*GRAFT, *args], env=env, capture_output=True, text=True, timeout=180)


def test_modules_push_ls_show_pull_as_json(graft_server: LocalServer, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    artifact = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 2), (torch.zeros(2, 4),)), str(artifact))

    pushed = graft(graft_server, "--json", "modules", "push", str(artifact), "--name", name, "--kind", "task",
                   "--task", "cls", "--format", "torch_export", "--input-shape", "[null, 4]")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["output_shape"] == [None, 2]

    listed = graft(graft_server, "--json", "modules", "ls", "--task", "cls")
    assert listed.returncode == 0, listed.stderr
    assert name in [m["name"] for m in json.loads(listed.stdout)]

    shown = graft(graft_server, "modules", "show", name)  # the table form
    assert shown.returncode == 0 and name in shown.stdout and "torch_" in shown.stdout  # format, maybe cut

    pulled = graft(graft_server, "--json", "modules", "pull", f"{name}@1", str(tmp_path / "copy.pt"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "copy.pt").read_bytes() == artifact.read_bytes()


def test_exit_codes_server_said_no_usage_and_unreachable(graft_server: LocalServer) -> None:
    missing = graft(graft_server, "modules", "show", "no-such-module")
    assert missing.returncode == 1
    assert "404" in missing.stderr and "no-such-module" in missing.stderr

    unauthorised = graft(graft_server, "--json", "grid", token="wrong-token")
    assert unauthorised.returncode == 1 and "401" in unauthorised.stderr and unauthorised.stdout == ""

    bad_usage = graft(graft_server, "modules", "push")
    assert bad_usage.returncode == 2

    bad_shape = graft(graft_server, "modules", "push", __file__, "--name", "x", "--kind", "task",
                      "--input-shape", "not json")
    assert bad_shape.returncode == 2 and "--input-shape" in bad_shape.stderr

    down = graft(graft_server, "jobs", "ls", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_dataset_transplant_jobs_grid_compose_predict(graft_server: LocalServer, tmp_path: Path) -> None:
    category = f"cli-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    g_t, g_s = nn.Linear(8, 3), nn.Linear(8, 3)
    x = torch.randn(40, 6)
    with Client(graft_server.url, graft_server.token) as c:
        c.push_module(f, x[:2], kind="category", name=f"{category}-f", category=category)
        c.push_module(g_t, f(x[:2]), kind="task", name=f"{category}-cls", task="cls", category=category,
                      trained_on=[category])
        c.push_module(g_s, f(x[:2]), kind="task", name=f"{category}-gs", task="cls")
    npz = tmp_path / "x.npz"
    np.savez(npz, x=x.numpy())

    ds = graft(graft_server, "--json", "datasets", "push", str(npz), "--name", "x", "--category", category)
    assert ds.returncode == 0, ds.stderr
    dataset_id = json.loads(ds.stdout)["id"]

    job = graft(graft_server, "--json", "transplant", "--category-module", f"{category}-f@1",
                "--teacher-task-module", f"{category}-cls@1", "--student-task-module", f"{category}-gs@1",
                "--dataset", dataset_id, "--method", "distillation", "--epochs", "2", "--wait")
    assert job.returncode == 0, job.stderr
    done = json.loads(job.stdout)
    assert done["status"] == "succeeded" and done["result"]["adapter"]["version"] == 1

    jobs = graft(graft_server, "--json", "jobs", "ls", "--status", "succeeded")
    assert done["id"] in [j["id"] for j in json.loads(jobs.stdout)]
    shown = graft(graft_server, "jobs", "show", done["id"])
    assert shown.returncode == 0 and "succeeded" in shown.stdout
    cancel_done = graft(graft_server, "jobs", "cancel", done["id"])
    assert cancel_done.returncode == 1 and "409" in cancel_done.stderr  # it already ended

    grid = graft(graft_server, "--json", "grid")
    cells = {(c["category"], c["task"]): c["status"] for c in json.loads(grid.stdout)["cells"]}
    assert cells[(category, "cls")] in ("native", "transplanted")
    table = graft(graft_server, "grid")
    assert table.returncode == 0 and category in table.stdout

    comp = graft(graft_server, "--json", "compose", "--category-module", f"{category}-f@1", "--adapter",
                 done["result"]["adapter"]["name"], "--task-module", f"{category}-gs@1")
    assert comp.returncode == 0, comp.stderr
    comp_id = json.loads(comp.stdout)["id"]
    np.save(tmp_path / "in.npy", x[:3].numpy())
    pred = graft(graft_server, "--json", "predict", comp_id, str(tmp_path / "in.npy"),
                 "--out", str(tmp_path / "out.npy"))
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["shape"] == [3, 3]
    assert np.load(tmp_path / "out.npy").shape == (3, 3)
