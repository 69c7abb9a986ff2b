"""What users do from the shell: modules, datasets, transplant, jobs, grid, compose, predict, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Group
from rich.text import Text

from graft.cli._common import (
    fmt_metric,
    global_options,
    handles_errors,
    opts,
    out,
    parse_json_option,
    show,
    table,
    usage,
)

modules_app = typer.Typer(help="List, inspect, upload and download modules.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload datasets (.npz with x and optional y).", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow and cancel transplant / amalgamation jobs.", no_args_is_help=True)

STATUS_STYLE = {"native": "green", "transplanted": "cyan", "running": "yellow", "missing": "dim",
                "succeeded": "green", "failed": "red", "cancelled": "magenta", "queued": "dim"}
METRIC_KEYS = ("accuracy", "task_metric", "teacher_agreement", "val_loss")


def headline_metric(metrics: dict | None) -> str:
    """The one number worth showing in a cell: accuracy first, then agreement with the teacher."""
    for key in METRIC_KEYS:
        if metrics and isinstance(metrics.get(key), (int, float)):
            return f"{key.replace('_', ' ')} {fmt_metric(float(metrics[key]))}"
    return ""


# -- modules ----------------------------------------------------------------------------------------
@modules_app.command("ls")
@handles_errors
def modules_ls(ctx: typer.Context, kind: str = typer.Option(None, help="category | task | adapter"),
               category: str = typer.Option(None), task: str = typer.Option(None)) -> None:
    """List modules."""
    with opts(ctx).client() as c:
        items = c.modules(kind=kind, category=category, task=task)
    show(ctx, items, lambda rows: table("modules", ("name", "kind", "category", "task", "versions"), (
        (m["name"], m.get("kind"), m.get("category"), m.get("task"),
         m.get("latest_version") or len(m.get("versions") or []) or "") for m in rows)))


@modules_app.command("show")
@handles_errors
def modules_show(ctx: typer.Context, name: str) -> None:
    """Show a module and its versions."""
    with opts(ctx).client() as c:
        data = c.module(name)

    def render(m: dict) -> Group:
        head = Text(f"{m['name']}  kind={m.get('kind')} category={m.get('category')} task={m.get('task')}")
        rows = ((v.get("version"), v.get("format"), v.get("input_shape"), v.get("output_shape"),
                 (v.get("sha256") or "")[:12], headline_metric(v.get("metrics")), v.get("created_at"))
                for v in m.get("versions") or [])
        cols = ("version", "format", "input", "output", "sha256", "metric", "created")
        return Group(head, table(None, cols, rows))

    show(ctx, data, render)


@modules_app.command("push")
@handles_errors
def modules_push(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="An exported artifact file."),
    name: str = typer.Option(..., help="Module name (created when new)."),
    kind: str = typer.Option(..., help="category | task | adapter"),
    input_shape: str = typer.Option(..., help='JSON, null = batch dim, e.g. "[null, 3, 32, 32]".'),
    format: str = typer.Option("torch_export", help="torch_export | safetensors"),
    category: str = typer.Option(None), task: str = typer.Option(None),
    arch: str = typer.Option(None, help="JSON architecture spec (safetensors only)."),
    description: str = typer.Option(None),
) -> None:
    """Upload an artifact file as a new version of a module."""
    shape = parse_json_option(input_shape, "--input-shape")
    if not isinstance(shape, list):
        raise usage('--input-shape must be a JSON list such as "[null, 3, 32, 32]"')
    meta = {"format": format, "input_shape": shape}
    if arch:
        meta["arch"] = parse_json_option(arch, "--arch")
    if description:
        meta["description"] = description
    with opts(ctx).client() as c:
        c.create_module(name, kind, category=category, task=task, description=description)
        version = c.upload_version(name, file, meta)
    show(ctx, version, lambda v: f"pushed {v['name']}@{v['version']} ({v.get('format')}, "
                                 f"{v.get('input_shape')} → {v.get('output_shape')})")


@modules_app.command("pull")
@handles_errors
def modules_pull(ctx: typer.Context, ref: str = typer.Argument(..., help="name@N, name@alias or name"),
                 path: Path = typer.Argument(Path("."), help="A file, or a folder to put it in.")) -> None:
    """Download a module version's artifact."""
    with opts(ctx).client() as c:
        dest = c.pull(ref, path)
    show(ctx, {"ref": ref, "path": str(dest)}, lambda d: f"saved {d['ref']} to {d['path']}")


# -- datasets ---------------------------------------------------------------------------------------
@datasets_app.command("push")
@handles_errors
def datasets_push(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False),
                  name: str = typer.Option(...), category: str = typer.Option(None)) -> None:
    """Upload an .npz file (array x, optional y) as a dataset."""
    with opts(ctx).client() as c:
        data = c.push_dataset_file(file, name=name, category=category)
    show(ctx, data, lambda d: f"dataset {d['id']} ({d.get('n')} samples of {d.get('input_shape')})")


# -- jobs -------------------------------------------------------------------------------------------
def _job_row(j: dict) -> tuple:
    p = j.get("progress") or {}
    epochs = f"{p.get('epoch', '')}/{p.get('epochs', '')}" if p.get("epochs") else ""
    loss = fmt_metric(p.get("loss")) if isinstance(p.get("loss"), (int, float)) else ""
    status = j.get("status", "")
    return (j["id"], j.get("kind"), Text(status, style=STATUS_STYLE.get(status, "")), epochs, loss,
            headline_metric((j.get("result") or {}).get("metrics")), j.get("created_at"))


def _jobs_table(rows: list[dict]):
    t = table("jobs", ("id", "kind", "status", "epoch", "loss", "result", "created"), [])
    for j in rows:
        t.add_row(*(x if isinstance(x, Text) else ("" if x is None else str(x)) for x in _job_row(j)))
    return t


@jobs_app.command("ls")
@handles_errors
def jobs_ls(ctx: typer.Context, status: str = typer.Option(None), kind: str = typer.Option(None),
            limit: int = typer.Option(20, min=1, max=1000)) -> None:
    """List the newest jobs."""
    with opts(ctx).client() as c:
        items = c.jobs(status=status, kind=kind, limit=limit)
    show(ctx, items, _jobs_table)


@jobs_app.command("show")
@handles_errors
def jobs_show(ctx: typer.Context, job_id: str,
              wait: bool = typer.Option(False, "--wait", help="Follow it to its end.")) -> None:
    """Show one job (its request, progress, result or error)."""
    with opts(ctx).client() as c:
        job = c.job(job_id)
        if wait:
            job.wait(progress=not opts(ctx).json)
    show(ctx, job.data, lambda j: Group(_jobs_table([j]), Text(json.dumps(
        {k: j.get(k) for k in ("request", "result", "error") if j.get(k)}, indent=2, default=str))))


@jobs_app.command("cancel")
@handles_errors
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Ask a job to stop (a running job stops at its next batch)."""
    with opts(ctx).client() as c:
        data = c.cancel(job_id) or c.job_data(job_id)
    show(ctx, data, lambda j: f"job {j.get('id', job_id)}: {j.get('status')}")


# -- transplant, grid, compose, predict -------------------------------------------------------------
@handles_errors
def transplant(
    ctx: typer.Context,
    category_module: str = typer.Option(..., help="The new category's f, e.g. bird-f@1."),
    teacher_task_module: str = typer.Option(..., help="The teacher's g_T, e.g. bird-seg@1."),
    student_task_module: str = typer.Option(..., help="The generic network's g_S, e.g. seg@3."),
    dataset: str = typer.Option(..., help="Dataset id (inputs of the category)."),
    method: str = typer.Option("back_distillation", help="back_distillation | distillation | supervised"),
    adapter: str = typer.Option(None, help='"auto" or JSON, e.g. \'{"arch": "conv", "layers": 2}\'.'),
    steps: int = typer.Option(None, min=1, help="Optimiser steps (default: sized to the dataset)."),
    epochs: int = typer.Option(None, min=1, help="The budget as passes over the dataset instead."),
    seed: int = typer.Option(None),
    reference_category_module: str = typer.Option(
        None, help="g_S's own category module for the same inputs (starts the adapter as a stitch)."),
    result_module: str = typer.Option(None, help="Adapter module to register the result into."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job with a progress bar until it ends."),
) -> None:
    """Request a transplant: learn an adapter so g_S works on the new category's features."""
    adapter_value = adapter if adapter in (None, "auto") else parse_json_option(adapter, "--adapter")
    with opts(ctx).client() as c:
        job = c.transplant(category_module=category_module, teacher_task_module=teacher_task_module,
                           student_task_module=student_task_module, dataset=dataset, method=method,
                           adapter=adapter_value, steps=steps, epochs=epochs, seed=seed,
                           reference_category_module=reference_category_module, result_module=result_module)
        if wait:
            job.wait(progress=not opts(ctx).json, label=f"{method} {job.id[:8]}")
    show(ctx, job.data, lambda j: f"job {j['id']} {j.get('status')}"
         + (f" → {j['result']['adapter']['name']}@{j['result']['adapter']['version']}"
            if (j.get("result") or {}).get("adapter") else ""))


def render_grid(g: dict):
    """The category × task board as a rich table: each cell its status and headline metric."""
    tasks = g.get("tasks") or []
    cells = {(c["category"], c["task"]): c for c in g.get("cells") or []}
    t = table("grid (category × task)", ("category", *tasks), [])
    for cat in g.get("categories") or []:
        row: list = [cat]
        for task in tasks:
            cell = cells.get((cat, task)) or {"status": "missing"}
            status = cell.get("status", "missing")
            metric = headline_metric(cell.get("metrics"))
            row.append(Text(status + (f"\n{metric}" if metric else ""), style=STATUS_STYLE.get(status, "")))
        t.add_row(*row)
    return t


@handles_errors
def grid(ctx: typer.Context) -> None:
    """Show the category × task grid: native, transplanted, running or missing."""
    with opts(ctx).client() as c:
        data = c.grid()
    show(ctx, data, render_grid)


@handles_errors
def compose(
    ctx: typer.Context,
    category: str = typer.Argument(None), task: str = typer.Argument(None),
    category_module: str = typer.Option(None), adapter: str = typer.Option(None),
    task_module: str = typer.Option(None),
) -> None:
    """Compose a category × task cell (or explicit modules) into a callable network."""
    explicit = category_module is not None or task_module is not None
    if explicit == bool(category and task) or (explicit and not (category_module and task_module)):
        raise usage("give CATEGORY TASK, or --category-module and --task-module (with --adapter)")
    with opts(ctx).client() as c:
        if explicit:
            data = c.compose(category_module=category_module, adapter=adapter, task_module=task_module)
        else:
            data = c.compose(category, task)
    show(ctx, data, lambda d: f"composition {d['id']}: {d.get('input_shape')} → {d.get('output_shape')}")


@handles_errors
def predict(
    ctx: typer.Context,
    composition_id: str,
    inputs: Path = typer.Argument(..., exists=True, dir_okay=False, help="An .npy batch of inputs."),
    output: Path = typer.Option(None, "--out", help="Write the outputs to this .npy file."),
) -> None:
    """Run a composition on an .npy batch; prints outputs (or writes them with --out)."""
    try:
        x = np.load(inputs, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise usage(f"{inputs} is not a readable .npy array ({exc})") from None
    with opts(ctx).client() as c:
        y = c.predict(composition_id, x)
    if output:
        np.save(output, y)
    summary = {"shape": list(y.shape), "out": str(output) if output else None}
    if not output:
        summary["outputs"] = y.tolist()
    show(ctx, summary, lambda s: f"outputs {s['shape']}" + (f" → {s['out']}" if s["out"] else
                                                              f"\n{np.array2string(y, precision=4)}"))


def demo(
    size: str = typer.Option("small", help="small (the full story, ~10 min) | tiny (CI, ~1 min)"),
    data_dir: Path = typer.Option(Path(".graft"), help="Where the service keeps its data afterwards."),
    port: int = typer.Option(0, help="Loopback port for the demo server (0 = a free one)."),
    seed: int = typer.Option(0),
    world: str = typer.Option("toy", help="toy (networks Graft trains in a minute) | real "
                              "(ImageNet-pretrained EfficientNet-Lite0/1 from packages, real photographs)"),
) -> None:
    """Run the whole story on the embedded defaults: teachers, transplants, compositions, grid."""
    from graft.demo import SIZES, run_demo

    if size not in SIZES:
        raise usage(f"--size must be one of {', '.join(SIZES)}")
    if world not in ("toy", "real"):
        raise usage("--world must be toy or real")
    from rich.console import Console

    wide = Console(width=max(out.width, 120), soft_wrap=True)  # the comparison table needs the room
    if world == "real":
        from graft import demo_real

        raise typer.Exit(demo_real.main(size=size, data_dir=data_dir, port=port, seed=seed, console=wide))
    code = run_demo(size=size, data_dir=data_dir, port=port, seed=seed, console=wide)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the users' commands (and the global --url / --token / --json options) to `app`."""
    app.callback()(global_options)
    app.add_typer(modules_app, name="modules")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(jobs_app, name="jobs")
    app.command("transplant")(transplant)
    app.command("grid")(grid)
    app.command("compose")(compose)
    app.command("predict")(predict)
    app.command("demo")(demo)


__all__ = ["register", "render_grid"]
