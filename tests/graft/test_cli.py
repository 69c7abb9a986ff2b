"""The `graft` command line as scripts use it: a subprocess per command, JSON out, exit codes."""

from __future__ import annotations

import json
import os
import re
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


def test_token_create_asks_the_server_with_the_bootstrap_token(graft_server: LocalServer,
                                                               tmp_path: Path) -> None:
    made = subprocess.run([*GRAFT, "token", "create", "--scope", "write", "--name", "ci"], cwd=tmp_path,
                          env=_env(graft_server),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("graft_") and list(tmp_path.iterdir()) == []  # nothing written here
    works = graft(graft_server, "--json", "modules", "ls", token=token)
    assert works.returncode == 0, works.stderr

    no_token = subprocess.run([*GRAFT, "token", "create"], env={**_env(graft_server), "GRAFT_TOKEN": ""},
                              capture_output=True, text=True, timeout=120)
    assert no_token.returncode == 2 and "GRAFT_BOOTSTRAP_TOKEN" in flat(no_token.stderr)
    writer = graft(graft_server, "token", "create", token=token)  # a write token is not an admin
    assert writer.returncode == 1 and "403" in writer.stderr and "GRAFT_BOOTSTRAP_TOKEN" in writer.stderr
    none = subprocess.run([*GRAFT, "modules", "ls"], env={**_env(graft_server), "GRAFT_TOKEN": ""},
                          capture_output=True, text=True, timeout=120)
    assert none.returncode == 1 and "401" in none.stderr and "set GRAFT_TOKEN" in flat(none.stderr)
    wrong = graft(graft_server, "modules", "ls", token="not-a-token")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "GRAFT_BOOTSTRAP_TOKEN" in wrong.stderr


def flat(text: str) -> str:
    """Text of a rich error panel without its frame and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _env(server: LocalServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    return {**env, "GRAFT_URL": server.url, "GRAFT_TOKEN": server.token}


def test_modules_push_as_a_newcomer_writes_it(graft_server: LocalServer, tmp_path: Path) -> None:
    """The README's line: the name from the file, the shape as null,3,32,32, the format from .pt2."""
    from graft.export import export_module

    category = f"nc{uuid.uuid4().hex[:6]}"
    f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    artifact = tmp_path / f"{category}-f.pt2"
    export_module(f, torch.zeros(2, 3, 8, 8), "torch_export", artifact)
    pushed = graft(graft_server, "--json", "modules", "push", str(artifact), "--kind", "category",
                   "--category", category, "--input-shape", "null,3,8,8")
    assert pushed.returncode == 0, pushed.stderr
    v = json.loads(pushed.stdout)
    assert v["name"] == f"{category}-f" and v["format"] == "torch_export"
    assert v["input_shape"] == [None, 3, 8, 8]

    shown = graft(graft_server, "--json", "modules", "show", f"{category}-f")
    version = json.loads(shown.stdout)["versions"][0]
    assert version["input_shape"] == [None, 3, 8, 8] and version["output_shape"] == [None, 4, 8, 8]
    table = graft(graft_server, "modules", "show", f"{category}-f")
    assert "null,3,8,8" in table.stdout and "null,4,8,8" in table.stdout

    bad = graft(graft_server, "modules", "push", str(artifact), "--kind", "category",
                "--input-shape", "3x8x8")
    assert bad.returncode == 2 and "null,3,32,32" in flat(bad.stderr)
    helped = graft(None, "modules", "push", "--help")
    assert "null,3,32,32" in helped.stdout and "[null, 3, 32, 32]" in flat(helped.stdout)


def test_compose_by_options_and_predict_refuses_what_is_not_a_batch(graft_server: LocalServer,
                                                                     tmp_path: Path) -> None:
    category = f"nc{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    x = torch.randn(10, 6)
    with Client(graft_server.url, graft_server.token) as c:
        c.push_module(f, x[:2], kind="category", name=f"{category}-f", category=category)
        c.push_module(nn.Linear(8, 3), f(x[:2]), kind="task", name=f"{category}-cls", task="cls",
                      category=category, trained_on=[category])
    comp = graft(graft_server, "--json", "compose", "--category", category, "--task", "cls")
    assert comp.returncode == 0, comp.stderr
    body = json.loads(comp.stdout)
    assert body["selection"]["rule"] == "native"
    assert graft(graft_server, "compose", category, "cls").returncode == 0  # the positional form too

    np.savez(tmp_path / "data.npz", x=x.numpy(), y=np.zeros(10))
    from_npz = graft(graft_server, "--json", "predict", body["id"], str(tmp_path / "data.npz"))
    assert from_npz.returncode == 0, from_npz.stderr
    assert json.loads(from_npz.stdout)["shape"] == [10, 3]

    np.savez(tmp_path / "no-x.npz", inputs=x.numpy())
    (tmp_path / "notes.txt").write_text("1 2 3\n")
    model = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(nn.Linear(6, 2), (x[:2],)), str(model))
    refusals = ((tmp_path / "no-x.npz", "no array named x"), (tmp_path / "notes.txt", "not a numpy file"),
                (model, "graft modules push"))
    for path, says in refusals:
        refused = graft(graft_server, "predict", body["id"], str(path))
        assert refused.returncode == 2 and says in flat(refused.stderr), refused.stderr
        assert "Traceback" not in refused.stderr and "allow_pickle" not in refused.stderr


def test_token_create_names_the_server_with_its_own_option(graft_server: LocalServer) -> None:
    """What the 401 message advises works as written: `graft token create --server URL`."""
    env = {**_env(graft_server), "GRAFT_URL": f"http://127.0.0.1:{free_port()}"}  # the wrong default
    made = subprocess.run([*GRAFT, "token", "create", "--server", graft_server.url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert graft(graft_server, "modules", "ls", token=made.stdout.strip()).returncode == 0

def test_transplant_without_a_dataset(graft_server: LocalServer) -> None:
    """`graft transplant` with no --dataset: the worker synthesises inputs (--synthesis: a method or JSON)."""
    category = f"clidf-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(0)
    f, g_t, g_s = nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 3), nn.Linear(8, 3)
    x = torch.randn(4, 6)
    with Client(graft_server.url, graft_server.token) as c:
        c.push_module(f, x[:2], kind="category", name=f"{category}-f", category=category)
        c.push_module(g_t, f(x[:2]), kind="task", name=f"{category}-cls", task="cls")
        c.push_module(g_s, f(x[:2]), kind="task", name=f"{category}-gs", task="cls")
    common = ["--json", "transplant", "--category-module", f"{category}-f@1", "--teacher-task-module",
              f"{category}-cls@1", "--student-task-module", f"{category}-gs@1", "--epochs", "2", "--wait"]
    job = graft(graft_server, *common, "--synthesis", '{"method": "noise", "n": 16, "steps": 5}')
    assert job.returncode == 0, job.stderr
    done = json.loads(job.stdout)
    assert done["status"] == "succeeded", done
    assert done["request"]["dataset"] is None and done["result"]["metrics"]["data"] == "synthetic"
    assert done["result"]["metrics"]["synthesis"]["n"] == 16
    # f has no BatchNorm: deepinversion is refused with what it needs.
    bad = graft(graft_server, *common, "--synthesis", "deepinversion", "--result-module", f"{category}-di")
    failed = json.loads(bad.stdout) if bad.stdout.strip() else {}
    assert failed.get("status") == "failed" or bad.returncode != 0
    assert "BatchNorm" in (failed.get("error") or bad.stderr)
