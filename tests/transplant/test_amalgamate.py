"""Knowledge amalgamation on small digit teachers trained in the test (disjoint / overlapping classes)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from transplant.amalgamate import (
    AmalgamationConfig,
    Cancelled,
    StudentConfig,
    StudentFeatures,
    Teacher,
    amalgamate,
    count_params,
    distill_logits_baseline,
    merged_logits,
    stage_for_block,
)

FAST = AmalgamationConfig(epochs_per_layer=10, head_epochs=10, finetune_epochs=10, batch_size=64, seed=0)
STUDENT = StudentConfig(input_shape=(1, 8, 8), widths=(16, 32))


def _stage(c_in: int, c_out: int, pool: int, last: bool) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    mods += [nn.MaxPool2d(pool)] if pool > 1 else []
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if last else []
    return nn.Sequential(*mods)


def train_teacher(x, y, classes: list[int], widths, pools, seed: int = 0) -> Teacher:
    """A small conv classifier trained (a second or two) on the samples of its own classes."""
    torch.manual_seed(seed)
    chans = (1, *widths)
    layers = [_stage(chans[i], chans[i + 1], pools[i], i == len(widths) - 1) for i in range(len(widths))]
    f, g = nn.Sequential(*layers), nn.Linear(widths[-1], len(classes))
    keep = torch.isin(y, torch.tensor(classes))
    xs, ys = x[keep], torch.searchsorted(torch.tensor(classes), y[keep])
    opt = torch.optim.Adam([*f.parameters(), *g.parameters()], lr=1e-2)
    for _ in range(15):
        for idx in torch.randperm(len(xs)).split(64):
            loss = nn.functional.cross_entropy(g(f(xs[idx])), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Teacher(feature=f.eval(), head=g.eval(), classes=[str(c) for c in classes], layers=list(f))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1300], perm[1300:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module")
def teachers(digits):
    torch.set_num_threads(1)
    x, y, _, _ = digits
    # Different widths and depths: 2 stages vs 3 stages.
    return [
        train_teacher(x, y, [0, 1, 2, 3, 4], widths=(16, 32), pools=(2, 2)),
        train_teacher(x, y, [5, 6, 7, 8, 9], widths=(8, 16, 32), pools=(2, 1, 2), seed=1),
    ]


def _accuracy(result, x, y) -> float:
    with torch.no_grad():
        logits = result.task_module(result.category_module(x))
    pred = torch.tensor([int(result.classes[i]) for i in logits.argmax(1)])
    return float((pred == y).float().mean())


def test_student_classifies_union_and_is_smaller(digits, teachers):
    x, _, xt, yt = digits
    events: list[dict] = []
    res = amalgamate(teachers, x, student=STUDENT, config=FAST, callbacks=[events.append])
    assert sorted(res.classes) == [str(c) for c in range(10)]
    assert _accuracy(res, xt, yt) > 0.6  # chance is 0.1
    assert res.metrics["student_params"] < res.metrics["teachers_params"]
    assert {e["stage"] for e in events} == {"layer", "head", "finetune"}
    assert set(events[0]) >= {"stage", "layer", "epoch", "epochs", "loss"}
    assert res.category_module.blocks[0].fam is None  # folded


def test_fam_fold_is_exact():
    torch.manual_seed(0)
    cfg = StudentConfig(input_shape=(3, 12, 12), widths=(8, 16, 4), pools=(2, 1, 2))
    feats = StudentFeatures(cfg, "default")
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        before = [b.pre_activation(x) for b in feats.blocks[:1]] + [feats(x)]
        n_before = count_params(feats)
        feats.fold()
        after = [b.pre_activation(x) for b in feats.blocks[:1]] + [feats(x)]
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())
    assert count_params(feats) < n_before


def test_overlapping_classes_are_merged():
    ta = Teacher(feature=nn.Identity(), head=nn.Identity(), classes=["a", "b", "c"])
    tb = Teacher(feature=nn.Identity(), head=nn.Identity(), classes=["c", "d"])
    za, zb = torch.tensor([[1.0, 2.0, 6.0]]), torch.tensor([[4.0, 0.0]])
    merged = merged_logits([za, zb], [ta, tb], ["a", "b", "c", "d"])
    # centred: a → (-2, -1, 3), b → (2, -2); the shared class "c" is the mean of 3 and 2.
    assert torch.allclose(merged, torch.tensor([[-2.0, -1.0, 2.5, -2.0]]))


def test_overlapping_teachers_amalgamate(digits):
    x, y, xt, yt = digits
    ts = [train_teacher(x, y, list(range(0, 6)), (8, 16), (2, 2)),
          train_teacher(x, y, list(range(4, 10)), (8, 16), (2, 2), seed=1)]
    res = amalgamate(ts, x, student=STUDENT, config=FAST)
    assert len(res.classes) == 10 and res.task_module[-1].out_features == 10
    assert _accuracy(res, xt, yt) > 0.5


def test_stage_mapping():
    assert stage_for_block(1, 2) == [None, 0]  # a black box supervises only the last block
    assert stage_for_block(3, 2) == [0, 2]
    assert stage_for_block(2, 3) == [None, 0, 1]
    assert stage_for_block(2, 2) == [0, 1]


def test_cancellation_stops(digits, teachers):
    x = digits[0]
    seen: list[dict] = []
    with pytest.raises(Cancelled):
        amalgamate(teachers, x, student=STUDENT, config=FAST, callbacks=[seen.append],
                   should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2


def test_black_box_teachers_and_exportable_student(digits, teachers):
    x, _, xt, yt = digits
    sample = x[:4]
    boxed = []
    for t in teachers:
        batch = ({0: torch.export.Dim("batch")},)
        f = torch.export.export(t.feature, (sample,), dynamic_shapes=batch).module()
        g = torch.export.export(t.head, (t.feature(sample),), dynamic_shapes=batch).module()
        boxed.append(Teacher(feature=f, head=g, classes=t.classes))
    res = amalgamate(boxed, x, student=STUDENT, config=FAST)
    assert set(res.metrics["ae_explained"]) == {1}  # only f's output: the last block's target
    assert _accuracy(res, xt, yt) > 0.5
    for m, inp in ((res.category_module, xt[:3]), (res.task_module, res.category_module(xt[:3]))):
        ep = torch.export.export(m, (inp,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        assert torch.allclose(ep.module()(inp), m(inp), atol=1e-5)


def test_baseline_runs(digits, teachers):
    x, _, xt, yt = digits
    res = distill_logits_baseline(teachers, x, student=STUDENT, config=FAST, epochs=8)
    assert _accuracy(res, xt, yt) > 0.5
    assert res.history[-1]["stage"] == "baseline"
