"""Seconds through bench.search (fixed vs auto, warm starts, report) so that it cannot silently break."""

import json
import sys

import pytest
import torch

from bench import search, search_ceiling, search_lift, search_warm
from bench.commentary import write_keeping_commentary
from bench.search_report import _blocks, _cost, report
from transplant.world import SIZES


@pytest.fixture
def tiny_worlds(monkeypatch):
    """bench_world's "small" worlds shrunk to seconds."""
    monkeypatch.setitem(
        SIZES,
        "small",
        {"n_old": 2, "n_new": 1, "n_train": 48, "n_unlab": 24, "n_test": 16, "steps": 2, "gen_steps": 2},
    )


def test_bench_search_smoke(monkeypatch, tmp_path, tiny_worlds):
    monkeypatch.setattr(search_warm, "CURVE_STEPS", 20)
    monkeypatch.setattr(search_warm, "FINETUNE_STEPS", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = search.run_seed(0, steps=12, quick=True, n_test=16)
    finally:
        torch.set_num_threads(threads)
    assert len(run["fixed"]) == 4 and run["auto"]["steps"] <= 12
    assert run["auto"]["supernet_steps"] + run["auto"]["race_steps"] + run["auto"]["finetune_steps"] <= 12
    for mode in ("finetuned", "retrained"):
        w = run["warm"][mode]
        assert [s for s, _ in w["cold_curve"]] == list(range(0, 21, 10)) and w["feature_drift"] > 0
        assert set(w["auto_warm_scores"]) == {"f@1-adapter", "style0/cls", "style1/cls"}
    conditions = {"steps": 12, "n_test": 16, "seeds": [0], "total_s": 1.0, "load_before": (0, 0, 0),
                  "load_after": (0, 0, 0), "threads": 1, "quick": True, "protocol": search.PROTOCOL,
                  "second": search.SECOND_NAME}
    text = report([run], conditions, search.SPACE)
    assert "best-mean fixed candidate" in text and "warm ÷ cold steps" in text
    assert f"second auto budget ({search.SECOND_NAME})" in text and "auto ÷ the run of the best-mean" in text
    assert set(conditions["verdict"]) == {"quality", "cost", "warm"}

    # --merge: one report over the runs of several stored result files (fresh worlds pooled with 0-9).
    monkeypatch.setattr(search, "RESULTS", tmp_path)
    parts = []
    for seed in (0, 1):
        parts.append(tmp_path / f"part{seed}.json")
        stored = {"conditions": {**conditions, "quick": False}, "runs": [{**run, "seed": seed}]}
        parts[-1].write_text(json.dumps(stored, default=str))
    monkeypatch.setattr(sys, "argv", ["bench.search", "--merge", *map(str, parts), "--name", "pooled"])
    search.main()
    merged = json.loads((tmp_path / "pooled.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1] and merged["conditions"]["total_s"] == 2.0
    assert "for seeds [0, 1]" in (tmp_path / "pooled.md").read_text()
    (tmp_path / "pooled.md").write_text("old report\n## Commentary\nkept by hand\n")
    monkeypatch.setattr(sys, "argv", ["bench.search", "--merge", *map(str, reversed(parts)), "--seeds", "1",
                                      "--name", "pooled"])
    search.main()
    assert [r["seed"] for r in json.loads((tmp_path / "pooled.json").read_text())["runs"]] == [1]
    md = (tmp_path / "pooled.md").read_text()
    assert "for seeds [1]" in md and md.endswith("## Commentary\nkept by hand\n") and "old report" not in md


def test_report_splits_many_worlds_into_blocks_of_ten():
    runs = [{"seed": s} for s in range(12)]
    diff = [-1.0] * 10 + [2.0, 4.0]
    (line,) = _blocks(runs, diff, [0.0] * 12)
    assert "0–9: -1.00 (SE 0.00, median -1.00; second +0.00)" in line
    assert "10–11: +3.00 (SE 1.00, median +3.00; second +0.00)" in line
    assert _blocks(runs[:10], diff[:10], [0.0] * 10) == []


def test_results_rewrite_keeps_the_hand_written_commentary(tmp_path):
    md = tmp_path / "r.md"
    write_keeping_commentary(md, "tables v1\n", "## Commentary", default="## Commentary\n")
    assert md.read_text() == "tables v1\n## Commentary\n"
    md.write_text(md.read_text() + "by hand\n")
    write_keeping_commentary(md, "tables v2\n", "## Commentary", default="## Commentary\n")
    assert md.read_text() == "tables v2\n## Commentary\nby hand\n"
    write_keeping_commentary(tmp_path / "new.md", "tables\n", "## Commentary")
    assert (tmp_path / "new.md").read_text() == "tables\n"


def test_bench_search_lift_smoke(monkeypatch, tiny_worlds):
    monkeypatch.setattr(search_warm, "FINETUNE_STEPS", 2)
    row = search_lift.run_world(0, steps=12)  # one torch thread: tests/transplant/conftest.py
    for mode in search_lift.MODES:
        assert set(row[mode]) == {"cold", "warm", "lift"}
        assert row[mode]["cold"]["lifted_into"] == [] and row[mode]["warm"]["lifted_into"] == [None] * 3
        assert all(row[mode]["lift"]["lifted_into"])  # the default adapter grows in the default space
    text = search_lift.report([row, {**row, "seed": 1}])
    assert "Worlds 0–1 (2;" in text and "- lift − warm: **" in text


def test_machines_section_compares_the_same_fixed_runs():
    def stored(acc):
        return [{"seed": s, "fixed": [{"label": "d1 k1", "acc": acc + s}, {"label": "d1 k3", "acc": 50.0}]}
                for s in range(12)]

    runs = {"search-pooled.json": stored(10.0), "search-run1.json": stored(10.0), "search.json": stored(11.0)}
    text = "\n".join(search_ceiling.machines_section(runs))
    assert "| search-pooled.json → search-run1.json | 0-9 | 20 of 20 | 0.00 |" in text
    assert "| search-run1.json → search.json | 10-19 | 2 of 4 | 0.50 |" in text


def _fixed(label_acc_cpu: dict) -> list[dict]:
    return [{"label": lab, "acc": acc, "cpu_s": cpu, "wall_s": cpu}
            for lab, (acc, cpu) in label_acc_cpu.items()]


def test_cost_divides_auto_by_the_fixed_run_of_its_own_pick():
    fixed = _fixed({"d1 k1": (70.0, 1.0), "d1 k3": (75.0, 2.0), "d3 w64 k3": (80.0, 4.0)})
    picks = [("d1 k1", 1.5), ("d3 w64 k3", 9.0)]
    runs = [{"seed": s, "fixed": fixed, "auto": {"label": pick, "cpu_s": cpu, "wall_s": cpu},
             "auto_second": {"cpu_s": 1.0}} for s, (pick, cpu) in enumerate(picks)]
    lines, c = _cost(runs, "d3 w64 k3")
    assert c["cpu_ratio_to_pick"] == [1.5, 2.25] and c["cpu_ratio"] == [0.75, 4.5]
    assert "(training its answer directly): 1.88 ± 0.53× (≤ 2× in every world: **MISSED**, max 2.25×)" in (
        "\n".join(lines))
    runs[1]["auto"]["label"] = "d2 w16 k1"  # a quick run: auto kept a child no fixed run trained
    lines, c = _cost(runs, "d3 w64 k3")
    assert "not taken: 1 of 2 picks have no fixed run" in "\n".join(lines) and "| — |" in lines[5]


def test_estimate_counts_a_world_run_twice_once_as_the_mean_of_its_runs():
    def run(seed, auto, ref):
        return {"seed": seed, "auto": {"acc": auto}, "fixed": [{"label": "big", "acc": ref},
                                                              {"label": "small", "acc": ref - 5}]}

    stored = {"search-run1.json": [run(0, 80.0, 80.0)], "search.json": [run(0, 78.0, 81.0)]}
    text = "\n".join(search_ceiling.estimate_section(stored))
    assert "worlds 0-0 (1 worlds)" in text and "**not taken (no run 3)**" in text
    assert "| auto | -1.50 " in text
    stored[search_ceiling.RUN3] = [run(30, 70.0, 70.5)]
    text = "\n".join(search_ceiling.estimate_section(stored))
    assert "Reference: **big**" in text and "| auto | -1.00 ± 0.50 | -1.5 |" in text and "**met**" in text
    stored[search_ceiling.RUN3] = [run(30, 70.0, 70.6)]
    assert "**MISSED**" in "\n".join(search_ceiling.estimate_section(stored))
