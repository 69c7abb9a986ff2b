"""What users do from the shell: modules, datasets, transplant, jobs, grid, compose, predict, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Group
from rich.text import Text

from graft.cli._common import (
    global_options,
    handles_errors,
    opts,
    out,
    parse_json_option,
    show,
    usage,
)
from graft.render import STATUS_STYLE, fmt_metric, headline_metric, render_grid, table

modules_app = typer.Typer(help="List, inspect, upload and download modules.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload datasets (.npz with x and optional y).", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow and cancel transplant / amalgamation jobs.", no_args_is_help=True)

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
        def shape(s: list | None) -> str:
            return ",".join("null" if d is None else str(d) for d in s) if s else ""

        rows = ((v.get("version"), v.get("format"), shape(v.get("input_shape")), shape(v.get("output_shape")),
                 headline_metric(v.get("metrics")), str(v.get("created_at"))[:10])
                for v in m.get("versions") or [])
        t = table(None, ("version", "format", "input", "output", "metric", "created"), rows)
        t.columns[1].no_wrap = True
        return Group(head, t)

    show(ctx, data, render)


FORMAT_BY_SUFFIX = {".pt2": "torch_export", ".pt": "torchscript", ".ts": "torchscript",
                    ".safetensors": "safetensors"}


def parse_shape(value: str) -> list[int | None]:
    """An input shape written `null,3,32,32` (null or None = the batch dimension) or as a JSON list."""
    text = value.strip()
    try:
        shape = json.loads(text if text.startswith("[") else f"[{text}]".replace("None", "null"))
    except ValueError:
        shape = None
    if not (isinstance(shape, list) and shape and all(d is None or (isinstance(d, int) and d > 0)
                                                      for d in shape)):
        raise usage(f"--input-shape {value!r} is not a shape: write the sizes separated by commas with null "
                    "for the batch dimension, e.g. null,3,32,32 (or JSON: [null, 3, 32, 32])")
    return shape


@modules_app.command("push")
@handles_errors
def modules_push(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="An exported artifact file, e.g. bird-f.pt2 (graft.export writes one)."),
    kind: str = typer.Option(..., help="What the file is: category (f), task (g) or adapter (h), "
                             "e.g. --kind category."),
    input_shape: str = typer.Option(..., help="The input's shape, null for the batch dimension, "
                                    "e.g. --input-shape null,3,32,32 (JSON \\[null, 3, 32, 32] works too)."),
    name: str = typer.Option(None, help="Module name, created when new; default: the file name without "
                             "its suffix (bird-f.pt2 → bird-f)."),
    format: str = typer.Option(None, help="torch_export | safetensors; default from the suffix "
                               "(.pt2 → torch_export, .safetensors → safetensors)."),
    category: str = typer.Option(None, help="The category a category module reads, e.g. --category bird."),
    task: str = typer.Option(None, help="The task a task module solves, e.g. --task cls."),
    arch: str = typer.Option(None, help='safetensors only: the architecture as JSON, '
                             'e.g. --arch \'{"arch": "conv", "layers": 2}\'.'),
    description: str = typer.Option(None, help='Free text, e.g. --description "ResNet-18 up to layer3".'),
) -> None:
    """Upload an artifact file as a new version of a module (the module is created when new).

    Example: graft modules push bird-f.pt2 --kind category --category bird --input-shape null,3,32,32
    """
    shape = parse_shape(input_shape)
    name = name or file.name.split(".", 1)[0]
    format = format or FORMAT_BY_SUFFIX.get(file.suffix.lower())
    if format is None:
        raise usage(f"cannot tell the format of {file.name} from its suffix: "
                    "add --format torch_export, torchscript or safetensors")
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
def datasets_push(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="An .npz with x (and y), e.g. crops.npz."),
    name: str = typer.Option(..., help="A label, e.g. --name crops."),
    category: str = typer.Option(None, help="The category of its inputs, e.g. --category bird."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the dataset's id, for scripts: "
                               "DATA=$(graft datasets push crops.npz --name crops -q)."),
) -> None:
    """Upload an .npz file (array x, optional y) as a dataset."""
    with opts(ctx).client() as c:
        data = c.push_dataset_file(file, name=name, category=category)
    if quiet:
        out.print(data["id"], highlight=False)
        return
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
    dataset: str = typer.Option(None, help="Dataset id (inputs of the category); omit for a data-free "
                                "transplant on synthesised inputs."),
    synthesis: str = typer.Option(
        None, help='Synthesise inputs: a method (auto, deepinversion, features, noise) or JSON, e.g. '
        '\'{"method": "deepinversion", "n": 256, "steps": 200, "seed": 0}\' (without --dataset: auto).'),
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
    synthesis_value = None
    if synthesis is not None:
        synthesis_value = (parse_json_option(synthesis, "--synthesis") if synthesis.lstrip().startswith("{")
                           else {"method": synthesis})
    with opts(ctx).client() as c:
        job = c.transplant(category_module=category_module, teacher_task_module=teacher_task_module,
                           student_task_module=student_task_module, dataset=dataset, method=method,
                           adapter=adapter_value, steps=steps, epochs=epochs, seed=seed,
                           reference_category_module=reference_category_module, result_module=result_module,
                           synthesis=synthesis_value)
        if wait:
            job.wait(progress=not opts(ctx).json, label=f"{method} {job.id[:8]}")
    show(ctx, job.data, lambda j: f"job {j['id']} {j.get('status')}"
         + (f" → {j['result']['adapter']['name']}@{j['result']['adapter']['version']}"
            if (j.get("result") or {}).get("adapter") else ""))


@handles_errors
def grid(ctx: typer.Context) -> None:
    """Show the category × task grid: native, transplanted, running or missing."""
    with opts(ctx).client() as c:
        data = c.grid()
    show(ctx, data, render_grid)


@handles_errors
def compose(
    ctx: typer.Context,
    category: str = typer.Argument(None, help="The cell's category, e.g. bird (or --category bird)."),
    task: str = typer.Argument(None, help="The cell's task, e.g. cls (or --task cls)."),
    category_opt: str = typer.Option(None, "--category", help="The cell's category, e.g. --category bird."),
    task_opt: str = typer.Option(None, "--task", help="The cell's task, e.g. --task cls."),
    category_module: str = typer.Option(None, help="Explicit pieces instead: f, e.g. bird-f@1."),
    adapter: str = typer.Option(None, help="The adapter h between them, e.g. bird-cls-distillation@2 "
                                "(none: native)."),
    task_module: str = typer.Option(None, help="The task module g, e.g. cls@1."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the composition's id, for "
                               "scripts: COMP=$(graft compose --category bird --task cls -q)."),
) -> None:
    """Compose a category × task cell (or explicit modules) into a callable network.

    Examples: graft compose --category bird --task cls;  graft compose bird cls;
    graft compose --category-module bird-f@1 --adapter bird-cls-back-distillation --task-module cls@1
    """
    if (category and category_opt and category != category_opt) or (task and task_opt and task != task_opt):
        raise usage("the category and task are given twice with different values")
    category, task = category or category_opt, task or task_opt
    explicit = category_module is not None or task_module is not None
    if explicit == bool(category and task) or (explicit and not (category_module and task_module)):
        raise usage("give --category and --task, or --category-module and --task-module (with --adapter)")
    with opts(ctx).client() as c:
        if explicit:
            data = c.compose(category_module=category_module, adapter=adapter, task_module=task_module)
        else:
            data = c.compose(category, task)
    if quiet:
        out.print(data["id"], highlight=False)
        return

    def render(d: dict) -> str:
        line = f"composition {d['id']}: {d.get('input_shape')} → {d.get('output_shape')}"
        chosen = d.get("selection") or {}
        if chosen.get("rule"):
            line += f"\n{chosen.get('rule')}: {chosen.get('reason') or ''}".rstrip(": ")
        return line

    show(ctx, data, render)


def load_inputs(path: Path) -> np.ndarray:
    """The input batch in `path`: an .npy array, or the `x` array of a dataset .npz; else a usage error."""
    head = path.read_bytes()[:8]
    if head.startswith(b"PK"):  # a zip: an .npz dataset, or an exported module (.pt2 / .pt)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = all(n.endswith(".npy") for n in npz.zip.namelist())
                if arrays and "x" in npz.files:
                    return npz["x"]
                names = ", ".join(npz.files) or "none" if arrays else None
        except (ValueError, OSError):
            names = None
        if names is None:
            raise usage(f"{path} is a zip file but not an .npz of arrays (an exported model? push it with "
                        "`graft modules push`); predict takes an .npy batch or a dataset .npz with x")
        raise usage(f"{path} has no array named x (it has: {names}); save the inputs with "
                    "numpy.save('inputs.npy', x) or numpy.savez('data.npz', x=x)")
    if not head.startswith(b"\x93NUMPY"):
        raise usage(f"{path} is not a numpy file; save the inputs with numpy.save('inputs.npy', x) "
                    "(float32, the batch dimension first)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise usage(f"{path} is not a readable .npy array of numbers ({exc})") from None


@handles_errors
def predict(
    ctx: typer.Context,
    composition_id: str,
    inputs: Path = typer.Argument(..., exists=True, dir_okay=False,
                                  help="An .npy batch (numpy.save), or a dataset .npz (its x), "
                                  "e.g. inputs.npy."),
    output: Path = typer.Option(None, "--out", help="Write the outputs to this .npy file, e.g. --out y.npy."),
) -> None:
    """Run a composition on a batch; prints outputs (or writes them with --out).

    Example: graft predict 3f2c… inputs.npy --out outputs.npy
    """
    x = load_inputs(inputs)
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
    size: str = typer.Option("small", help="small (the full story, about 1 min on 2 cores) | "
                             "tiny (CI's reduced run)"),
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


__all__ = ["register"]
