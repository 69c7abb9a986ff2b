"""`graft demo`: the whole story on the embedded defaults, from teachers to a transplanted grid.

It starts a server on loopback (data in `--data-dir`), builds the engine's benchmark world, pushes
the teachers and the generic network, transplants the new category with back-distillation and the
baselines, composes and calls the results on held-out inputs, and prints the comparison and the grid.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from graft._http import GraftError
from graft.client import Client, Job
from graft.render import render_grid, table

SIZES = {
    # tasks transplanted, label counts of the supervised baselines, epochs per transplant, and whether
    # a data-free back-distillation row (inputs synthesised by the worker) is added
    "tiny": {"world": "small", "tasks": ("cls",), "labels": (20,), "epochs": 3},
    "small": {"world": "small", "tasks": ("cls", "seg"), "labels": (10, 100), "epochs": 30,
              "data_free": True},
}


@dataclass
class Row:
    """One line of the comparison table."""

    task: str
    method: str
    labels: int
    adapter: str
    accuracy: float | None = None
    agreement: float | None = None
    train_s: float | None = None
    status: str = "succeeded"


def accuracy(task: str, outputs: np.ndarray, samples) -> float:
    """Top-1 accuracy (cls) or pixel accuracy (seg) of logits against the samples' labels."""
    pred = outputs.argmax(axis=1)  # (N,) or (N, H, W)
    labels = samples.labels(task).numpy()
    return float((pred == labels).mean())


def _token_for(data_dir: Path) -> str:
    """The demo's admin token, kept beside its data so a later `graft serve` can reuse it."""
    path = data_dir / "demo-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def push_world(c: Client, world, tasks: tuple[str, ...], console: Console) -> dict:
    """Push every category's teachers, the generic task modules and the old categories' adapters."""
    import torch

    refs: dict = {"f": {}, "teacher": {}, "generic": {}}
    for cat in world.categories:
        x = world.data[cat].test.x[:4]
        f, g_first = world.teachers[cat][tasks[0]]
        # The common case: one whole pre-trained network, split by the client at a named child.
        whole = torch.nn.Sequential(OrderedDict(features=f, head=g_first))
        pushed = c.push_teacher(whole, "features", x, category=cat, task=tasks[0], name_prefix=cat)
        refs["f"][cat] = _ref(pushed["category_module"])
        refs["teacher"][(cat, tasks[0])] = _ref(pushed["teacher_task_module"])
        with torch.no_grad():
            feats = f(x)
        for task in tasks[1:]:
            g = world.teachers[cat][task][1]
            v = c.push_module(g, feats, kind="task", name=f"{cat}-{task}", task=task, category=cat,
                              trained_on=[cat], description=f"teacher task module for {cat} ({task})")
            refs["teacher"][(cat, task)] = _ref(v)
        console.print(f"  pushed teacher [bold]{cat}[/bold]: {refs['f'][cat]} + "
                      + ", ".join(refs["teacher"][(cat, t)] for t in tasks))
    old0 = world.old_categories[0]
    with torch.no_grad():
        feats = world.teachers[old0][tasks[0]][0](world.data[old0].test.x[:4])  # (4, *feature_shape)
    for task in tasks:
        v = c.push_module(world.generic[task], feats, kind="task", name=f"generic-{task}", task=task,
                          trained_on=list(world.old_categories),
                          description=f"the generic network's {task} module (fixed)")
        refs["generic"][task] = _ref(v)
        for cat in world.old_categories:
            c.push_module(world.old_adapters[cat][task], feats, kind="adapter", name=f"{cat}-{task}-adapter",
                          category=cat, task=task, trained_on=[cat],
                          description="trained with the generic network on this old category")
    console.print(f"  pushed generic task modules {', '.join(refs['generic'].values())} "
                  f"and adapters for {', '.join(world.old_categories)}")
    return refs


def _ref(version: dict) -> str:
    return f"{version['name']}@{version['version']}"


def transplant_all(c: Client, world, cfg: dict, refs: dict, seed: int, console: Console) -> list:
    """Queue every (new category, task, method) transplant; [(row, job)] in request order."""
    queued = []
    for cat in world.new_categories:
        data = world.data[cat]
        unlab = c.push_dataset(data.unlabelled.x, name=f"{cat}-unlabelled", category=cat)
        for task in cfg["tasks"]:
            common = {"category_module": refs["f"][cat], "teacher_task_module": refs["teacher"][(cat, task)],
                      "student_task_module": refs["generic"][task], "epochs": cfg["epochs"], "seed": seed}
            # No dataset at all: the worker synthesises inputs from f and g_T (queued first, so the
            # adapter learned from real inputs is the newest and serves the grid's cell).
            plan = [("back-distillation, no data", "back_distillation", None)] if cfg.get("data_free") else []
            plan += [(f"supervised {k}", "supervised", k) for k in cfg["labels"]]
            plan += [("distillation", "distillation", 0), ("back-distillation", "back_distillation", 0)]
            for label, method, k in plan:
                if k is None:
                    ds = None
                elif k:
                    ds = c.push_dataset(data.train.x[:k], data.train.labels(task)[:k],
                                        name=f"{cat}-{task}-{k}-labels", category=cat)["id"]
                else:
                    ds = unlab["id"]
                suffix = method.replace("_", "-") + (f"-{k}" if k else "-no-data" if k is None else "")
                job = c.transplant(method=method, dataset=ds, result_module=f"{cat}-{task}-{suffix}",
                                   **common)
                queued.append((Row(task=task, method=label, labels=k or 0, adapter=""), cat, job))
    console.print(f"  queued {len(queued)} transplant jobs")
    return queued


def reference_rows(c: Client, world, refs: dict, tasks: tuple[str, ...]) -> list[Row]:
    """The teacher's own pair (upper bound) and g_S on f's raw features (no adapter), on held-out inputs."""
    rows: list[Row] = []
    for cat in world.new_categories:
        test = world.data[cat].test
        for task in tasks:
            references = (("teacher g_T (bound)", refs["teacher"][(cat, task)]),
                          ("g_S, no adapter", refs["generic"][task]))
            for label, task_ref in references:
                comp = c.compose(category_module=refs["f"][cat], task_module=task_ref)
                outputs = c.predict(comp["id"], test.x.numpy())
                if task_ref == refs["teacher"][(cat, task)]:  # what the adapters are measured against
                    refs.setdefault("teacher_pred", {})[(cat, task)] = outputs.argmax(axis=1)
                acc = accuracy(task, outputs, test)
                rows.append(Row(task=task, method=label, labels=0, adapter="—", accuracy=acc))
    return rows


def evaluate(c: Client, world, refs: dict, queued: list, console: Console) -> list[Row]:
    """Watch every job to its end, then compose each adapter and measure it on held-out inputs."""
    states = []
    for row, cat, job in queued:
        job: Job
        states.append(job.wait(progress=True, check=False, label=f"{cat}/{row.task} {row.method}"))
    rows: list[Row] = []
    for (row, cat, job), state in zip(queued, states, strict=True):
        row.status = state.get("status", "?")
        if row.status != "succeeded":
            console.print(f"  [red]job {job.id} {row.status}[/red]: {state.get('error')}")
            rows.append(row)
            continue
        result = state.get("result") or {}
        metrics = result.get("metrics") or {}
        row.adapter = _ref(result["adapter"])
        row.train_s = metrics.get("wall_s")
        comp = c.compose(category_module=refs["f"][cat], adapter=row.adapter,
                         task_module=refs["generic"][row.task])
        test = world.data[cat].test
        outputs = c.predict(comp["id"], test.x.numpy())
        row.accuracy = accuracy(row.task, outputs, test)
        # Agreement with the teacher on the same held-out inputs (the job's own figure is on its
        # validation split, or on its training inputs when the dataset is too small to split).
        teacher = refs.get("teacher_pred", {}).get((cat, row.task))
        if teacher is not None:
            row.agreement = float((outputs.argmax(axis=1) == teacher).mean())
        rows.append(row)
    return rows


def comparison_table(rows: list[Row], new_categories: list[str]):
    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    return table(
        f"new category {', '.join(new_categories)}: g_S(h(f(x))) on held-out inputs "
        "(accuracy; agreement with the teacher's predictions)",
        ("task", "method", "labels", "adapter", "accuracy", "agrees w/ T", "train s", "status"),
        ((r.task, r.method, r.labels, r.adapter, num(r.accuracy), num(r.agreement),
          "" if r.train_s is None else f"{r.train_s:.1f}", r.status) for r in rows),
    )


def run_demo(*, size: str = "small", data_dir: Path = Path(".graft"), port: int = 0, seed: int = 0,
             console: Console | None = None) -> int:
    """Run the story; 0 when every step and job succeeded, 1 otherwise."""
    import torch

    from graft.local_server import LocalServer

    # One thread: on a shared 2-core machine more threads fight each other (3x slower measured).
    torch.set_num_threads(1)
    console = console or Console()
    cfg = SIZES[size]
    data_dir = Path(data_dir).resolve()
    token = _token_for(data_dir)
    t0 = time.perf_counter()
    console.rule(f"Graft demo ({size})")
    server = LocalServer(data_dir, port=port, token=token, log_path=data_dir / "demo-server.log")
    try:
        server.start()
    except RuntimeError as exc:
        console.print(f"[red]could not start the server[/red]: {exc}")
        return 1
    try:
        console.print(f"1. server up at {server.url} (data in {data_dir})")
        with Client(server.url, token) as c:
            from transplant.world import build_world  # the engine's benchmark world (pure PyTorch)

            console.print("2. training the teachers and the generic network (the benchmark world)…")
            world = build_world(seed, size=cfg["world"])
            console.print(f"   categories {world.categories}; new (unseen by g_S): {world.new_categories}")
            console.print("3. pushing them to the registry")
            refs = push_world(c, world, cfg["tasks"], console)
            rows = reference_rows(c, world, refs, cfg["tasks"])
            console.print("4. transplanting the new category: back-distillation and the baselines")
            queued = transplant_all(c, world, cfg, refs, seed, console)
            rows += evaluate(c, world, refs, queued, console)
            console.print("5. the new pairs, composed f → h → g_S and called on held-out inputs:")
            for row in rows:
                if row.method == "back-distillation" and row.status == "succeeded":
                    console.print(f"   {row.task}: {row.adapter} into {refs['generic'][row.task]}, "
                                  f"accuracy {row.accuracy:.3f}")
            console.print(comparison_table(rows, world.new_categories))
            console.print(render_grid(c.grid()))
    except GraftError as exc:
        console.print(f"[red]the server said no[/red] ({exc.status}): {exc.detail}")
        console.print(f"server log: {server.log_path}")
        return 1
    finally:
        server.stop()
    serve = f"GRAFT_DATA_DIR={data_dir} GRAFT_BOOTSTRAP_TOKEN=$(cat {data_dir}/demo-token) graft serve"
    console.print(f"done in {time.perf_counter() - t0:.0f} s. The data stays in {data_dir}; browse it with\n"
                  f"  {serve}\nand open http://127.0.0.1:8000/ui (paste the token).")
    return 0 if all(r.status == "succeeded" for r in rows) else 1


