"""A seconds-long pass through the benchmark path so that it cannot silently break."""

import torch

from bench import science
from bench.science_cost import world_step_cost
from transplant.world import SIZES, build_world


def test_bench_science_smoke(tmp_path, monkeypatch):
    monkeypatch.setitem(
        SIZES,
        "small",
        {"n_old": 1, "n_new": 1, "n_train": 48, "n_unlab": 24, "n_test": 16, "steps": 2, "gen_steps": 2},
    )
    s = science.settings(quick=True)
    s.update(seeds=[0], labels=[10], few=[8], steps=2, steps_per_epoch=2)
    world = build_world(seed=0, size="small", name="shapes")
    cells = {
        f"shapes / {world.new_categories[0]} / {t}": science.run_cell(world, world.new_categories[0], t, s)
        for t in world.tasks
    }
    cost = world_step_cost(world, reps=1, batch_size=8)
    assert cost["time_ratio"] > 0 and cost["memory_ratio"] > 1  # the extra VJPs keep more tensors alive
    s["n_unlab"] = 24
    head = science.write_report(cells, s, cost, 1.0, tmp_path / "science.md")
    science.plot(cells, s, tmp_path / "science.png")
    assert "Headline" in head and (tmp_path / "science.png").stat().st_size > 0
    assert all(0.0 <= v <= 1.0 for cols in cells.values() for vals in cols.values() for v in vals)
    torch.set_num_threads(1)
