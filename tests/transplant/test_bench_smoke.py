"""Seconds-long passes through the science (both modes), search and real-network benchmarks (`--smoke`),
run as a user runs them (`python -m bench.<name>`), so that they cannot silently break. Tests import
nothing from bench/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> str:
    """Run `python -m bench.<args>` from the repository root; its output (fails the test on an error)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_bench_science_smoke(tmp_path):
    out = bench("bench.science", "--smoke", "--threads", "1", "--out", str(tmp_path))
    md = (tmp_path / "science_quick.md").read_text()
    assert "Headline" in out and "Headline" in md
    assert "back-distillation step" in md  # the cost rows
    assert (tmp_path / "science_quick.png").stat().st_size > 0


def test_bench_search_smoke_and_merge(tmp_path):
    out = bench("bench.search", "--smoke", "--out", str(tmp_path), "--name", "s")
    assert "best-mean fixed candidate" in out and "warm ÷ cold steps" in out
    stored = json.loads((tmp_path / "s.json").read_text())
    (run,) = stored["runs"]
    assert len(run["fixed"]) == 4 and run["auto"]["steps"] <= 12
    assert run["auto"]["supernet_steps"] + run["auto"]["race_steps"] + run["auto"]["finetune_steps"] <= 12
    for mode in ("finetuned", "retrained"):
        w = run["warm"][mode]
        assert [s for s, _ in w["cold_curve"]] == list(range(0, 21, 10)) and w["feature_drift"] > 0
    assert set(stored["conditions"]["verdict"]) == {"quality", "cost", "warm"}

    # --merge: one report over the runs of several stored result files.
    parts = []
    for seed in (0, 1):
        parts.append(tmp_path / f"part{seed}.json")
        conditions = {**stored["conditions"], "quick": False, "total_s": 1.0}
        parts[-1].write_text(json.dumps({"conditions": conditions, "runs": [{**run, "seed": seed}]}))
    bench("bench.search", "--merge", *map(str, parts), "--name", "pooled", "--out", str(tmp_path))
    merged = json.loads((tmp_path / "pooled.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1] and merged["conditions"]["total_s"] == 2.0
    assert "for seeds [0, 1]" in (tmp_path / "pooled.md").read_text()
    # A rewrite keeps the report's hand-written commentary.
    (tmp_path / "pooled.md").write_text("old report\n## Commentary\nkept by hand\n")
    bench("bench.search", "--merge", *map(str, reversed(parts)), "--seeds", "1", "--name", "pooled",
          "--out", str(tmp_path))
    assert [r["seed"] for r in json.loads((tmp_path / "pooled.json").read_text())["runs"]] == [1]
    md = (tmp_path / "pooled.md").read_text()
    assert "for seeds [1]" in md and md.endswith("## Commentary\nkept by hand\n") and "old report" not in md


def test_bench_datafree_smoke(tmp_path):
    out = bench("bench.science", "--datafree", "--smoke", "--threads", "1", "--out", str(tmp_path))
    md = (tmp_path / "datafree_quick.md").read_text()
    for method in ("deepinversion", "features", "noise", "di-cheap"):
        assert f"- **{method}**: data-free bd" in out and f"- **{method}**" in md
    assert "## Synthesis quality and cost" in md and "## Synthetic inputs plus 8 real ones" in md
    cells = json.loads((tmp_path / "datafree_quick.json").read_text())["cells"]
    assert len(cells) == 2  # one new category × cls, seg
    for cell in cells.values():
        assert {"sup 10", "bd all", "bd deepinversion+8", "dist di-cheap"} <= set(cell["cols"])
        assert cell["cost"]["deepinversion synth"][0] > 0
    assert (tmp_path / "datafree_quick.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_real_datafree_smoke(tmp_path):
    """`bench.real --datafree --smoke`: the pretrained pair at tiny sizes, real-input and data-free rows."""
    out = bench("bench.real", "--datafree", "--smoke", "--out", str(tmp_path))
    stored = json.loads((tmp_path / "real-datafree.json").read_text())
    rows = stored["rows"]
    assert [r["data"] for r in rows.values()] == ["real", "synthetic"] + ["real"] * 2 + ["synthetic"] * 2
    assert [r["steps"] for r in rows.values()] == [0, 0, 4, 4, 4, 4]  # two untrained stitches first
    syn = stored["synthesis"]
    assert syn["method"] == "deepinversion" and syn["n"] == 16 and syn["bn_layers"]["category_module"] > 0
    assert syn["bn_distance"] < syn["bn_distance_init"]  # two steps already move the statistics
    synthetic = [r for r in rows.values() if r["data"] == "synthetic"]
    assert all(r["real_inputs"] == 0 and r["inputs"] == 16 and r["synthesis_s"] > 0 for r in synthetic)
    md = (tmp_path / "real-datafree.md").read_text()
    assert "back-distillation, synthetic inputs only" in md and "≤ 3× the transplant" in md and md in out
