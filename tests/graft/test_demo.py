"""`graft demo --size tiny` end to end (what `make demo` runs, in CI's reduced size)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_tiny_runs_the_whole_story_and_leaves_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / ".graft"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    cmd = [sys.executable, "-m", "graft.cli", "demo", "--size", "tiny", "--data-dir", str(data_dir)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for method in ("teacher g_T", "supervised 20", "distillation", "back-distillation"):
        assert method in out
    assert "grid (category × task)" in out and "style2" in out

    # The data stays for a later `graft serve`: adapters registered with lineage, jobs succeeded.
    assert (data_dir / "demo-token").read_text().strip()
    with sqlite3.connect(data_dir / "graft.db") as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM jobs")]
        adapters = [n for (n,) in db.execute("SELECT m.name FROM module_versions v JOIN modules m "
                                             "ON m.id = v.module_id WHERE v.job_id IS NOT NULL")]
    assert statuses == ["succeeded"] * 3
    assert sorted(adapters) == ["style2-cls-back-distillation", "style2-cls-distillation",
                                "style2-cls-supervised-20"]


@pytest.mark.slow
def test_demo_real_tiny_pushes_pretrained_networks_and_transplants(tmp_path: Path) -> None:
    """`make demo WORLD=real SIZE=tiny`: the pretrained pair split by the client, two jobs, a table."""
    data_dir = tmp_path / ".graft"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    cmd = [sys.executable, "-m", "graft.cli", "demo", "--world", "real", "--size", "tiny",
           "--data-dir", str(data_dir)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "lite1 split after _blocks.14" in out and "lite0 split after _blocks.10" in out
    for row in ("whole Lite0", "no adapter", "back-distillation", "distillation"):
        assert row in out
    with sqlite3.connect(data_dir / "graft.db") as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM jobs")]
        parents = [p for (p,) in db.execute("SELECT parents FROM module_versions WHERE job_id IS NOT NULL")]
    assert statuses == ["succeeded"] * 2
    assert len(parents) == 2 and all('"role": "reference"' in p for p in parents)  # lineage names lite0-f
