"""The engine's defaults on a world nobody tuned them for: few inputs, no budget given.

Before the step budget, 16 unlabelled inputs meant 10 optimiser steps (one epoch was one step) and an
adapter at chance (0.497 against a 0.925 teacher). The defaults now count steps with a minimum.
"""

from __future__ import annotations

import torch

from transplant.distill.trainer import TrainConfig
from transplant.run import run_transplant
from transplant.world import build_world


def test_sixteen_unlabelled_inputs_with_default_settings_reach_the_teacher() -> None:
    torch.manual_seed(0)
    world = build_world(seed=0, size="small", name="digits")
    cat = world.new_categories[0]
    f, g_t = world.teachers[cat]["cls"]
    g_s = world.generic["cls"]
    test = world.data[cat].test

    def accuracy(model) -> float:  # noqa: ANN001
        with torch.no_grad():
            return (model(test.x).argmax(1) == test.labels("cls")).float().mean().item()

    teacher = accuracy(lambda x: g_t(f(x)))
    result = run_transplant(f, g_t, g_s, world.data[cat].unlabelled.x[:16], method="back_distillation",
                            train=TrainConfig())
    student = accuracy(lambda x: g_s(result.adapter(f(x))))
    assert result.metrics["steps"] >= 100  # a budget in steps, not one epoch of one batch
    assert student >= teacher - 0.08, (student, teacher)  # measured 0.898 against 0.922


def test_a_reference_category_module_anchors_the_adapter_to_its_features() -> None:
    """With a reference, the adapter starts as the stitch onto it and the anchor keeps it near it."""
    world = build_world(seed=0, size="small", name="shapes")
    cat, old = world.new_categories[0], world.old_categories[0]
    f, g_t = world.teachers[cat]["cls"]
    reference = world.teachers[old]["cls"][0]  # another category module giving g_S-shaped features
    g_s = world.generic["cls"]
    x, held_out = world.data[cat].unlabelled.x[:64], world.data[cat].test.x

    def distance(result) -> float:  # noqa: ANN001 - relative squared distance to the reference's features
        with torch.no_grad():
            want = reference(held_out)
            return ((result.adapter(f(held_out)) - want) ** 2).mean().item() / want.var().item()

    runs = {a: run_transplant(f, g_t, g_s, x, method="distillation", reference=reference,
                              train=TrainConfig(steps=150, anchor=a)) for a in (0.0, 10.0)}
    assert runs[0.0].metrics["init"] and runs[10.0].metrics["steps"] == runs[0.0].metrics["steps"]
    assert distance(runs[10.0]) < 0.5 * distance(runs[0.0])
