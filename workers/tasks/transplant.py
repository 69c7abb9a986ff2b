"""Task `graft.transplant`: load the job → fetch f, g_T, g_S and the data → run the engine → register h.

Thin and idempotent: the job row decides whether anything runs (see `workers.lifecycle`), and the
adapter is registered with `job_id`/`job_role="adapter"`, so running the task twice for one job never
makes two adapter versions.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from celery import shared_task
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.datasets.service import get_dataset, load_arrays
from app.jobs.context import JobContext
from app.models import ModuleVersion
from app.modules.service import resolve_version, version_ref, warm_start_versions
from transplant import TrainConfig, run_transplant
from transplant.adapters import fit_adapter_config, save_adapter
from transplant.artifacts import ArtifactError, load_module
from transplant.search import run_auto_transplant
from transplant.synth import NeedsBatchNorm, SynthesisConfig, mix_real, synthesise
from workers import lifecycle
from workers.lifecycle import JobFailed, JobRun, Register
from workers.module_cache import cache_key, process_cache
from workers.registration import register_artifact, result_module

log = logging.getLogger(__name__)

ROLES = (
    ("category_module", "category"), ("teacher_task_module", "teacher"), ("student_task_module", "student")
)


MAX_WARM_STARTS = 16
"""Registered adapters offered to an auto search as starting points (the nearest ones first)."""


def borrow_module(ctx: JobContext, version: ModuleVersion) -> AbstractContextManager[torch.nn.Module]:
    """One module version for this job alone: from the worker's cache, else downloaded and loaded."""

    def fetch() -> torch.nn.Module:
        with tempfile.TemporaryDirectory(prefix="graft-job-") as tmp:
            return fetch_module(ctx, version, Path(tmp))

    cache = process_cache(ctx.settings.model_cache_bytes)
    return cache.borrow(cache_key(version.storage_key, version.format, version.arch), fetch)


def fetch_module(ctx: JobContext, version: ModuleVersion, folder: Path) -> torch.nn.Module:
    """Download one module version and load it without unpickling."""
    path = folder / f"{version.module.name}-{version.version}.{version.format}"
    try:
        ctx.store.get_to_file(version.storage_key, path)
        return load_module(path, version.format, version.arch)
    except ArtifactError as exc:
        raise JobFailed(f"Module {version.module.name}@{version.version} failed to load: {exc}.") from None
    except OSError as exc:
        raise JobFailed(
            f"Module {version.module.name}@{version.version} could not be fetched from the artifact store "
            f"({exc})."
        ) from None


def _auto_options(req: dict) -> dict | None:
    """The search options when the request asks for `"adapter": "auto"` (either spelling), else None."""
    adapter = req.get("adapter")
    if adapter == "auto":
        return {"budget": {}}
    if isinstance(adapter, dict) and "auto" in adapter:
        return adapter["auto"] or {"budget": {}}
    return None


def _adapter_config(run: JobRun, f_out: list, g_in: list):  # noqa: ANN202
    return fit_adapter_config(tuple(f_out[1:]), tuple(g_in[1:]), **(run.request.get("adapter") or {}))


def _warm_starts(ctx: JobContext, versions: list[ModuleVersion], folder: Path) -> tuple[list, dict]:
    """(name, module, arch) triples for the search, and each name's version reference."""
    starts, refs = [], {}
    for version in versions:
        name = f"{version.module.name}@{version.version}"
        try:
            module = fetch_module(ctx, version, folder)
        except JobFailed as exc:  # a broken registered adapter is no reason to fail this job
            log.warning("warm start %s skipped: %s", name, exc)
            continue
        starts.append((name, module, version.arch))
        refs[name] = version_ref(version)
    return starts, refs


class _Phases:
    """Forwards the search's events to the job, keeping its stage (supernet/search/finetune) as `phase`."""

    def __init__(self, run: JobRun) -> None:
        self.run = run

    def _phase(self, info: dict) -> dict:
        info = dict(info)
        info["phase"] = info.pop("stage", None)
        return info

    def on_step_end(self, info: dict) -> None:
        self.run.on_step_end(self._phase(info))

    def on_epoch_end(self, record: dict) -> None:
        self.run.on_epoch_end(self._phase(record))


def _train_config(req: dict) -> TrainConfig:
    knobs = req.get("train") or {}
    return TrainConfig(steps=req.get("steps"), epochs=req.get("epochs"), seed=int(req["seed"]), device="auto",
                       **knobs)


def _run_engine(run: JobRun, f, g_t, g_s, x, y, train, auto, warm_starts, f_v, g_s_v, reference):  # noqa: ANN001, ANN202
    """The search (`"adapter": "auto"`) or a fixed-adapter transplant on the loaded modules."""
    req = run.request
    if auto is not None:
        budget = dict(auto.get("budget") or {})
        if list(f_v.output_shape[1:]) != list(g_s_v.input_shape[1:]):
            budget["out_shape"] = list(g_s_v.input_shape[1:])
        return run_auto_transplant(
            f, g_t, g_s, x, y, method=req["method"], budget=budget, warm_starts=warm_starts, train=train,
            callbacks=[_Phases(run)], should_stop=run.should_stop,
        )
    config = _adapter_config(run, f_v.output_shape, g_s_v.input_shape)
    return run_transplant(
        f, g_t, g_s, x, y, method=req["method"], adapter=config, train=train, callbacks=[run],
        should_stop=run.should_stop, reference=reference,
    )


def _work(run: JobRun) -> Register:
    """Everything but the final transaction: fetch, load, train; returns the registration step."""
    ctx, req = run.ctx, run.request
    run.report(stage="loading", epoch=0, attempt=run.attempts)
    with ctx.sessionmaker() as session:
        versions = {field: resolve_version(session, req[field]) for field, _ in ROLES}
        if req.get("reference_category_module"):
            versions["reference_category_module"] = resolve_version(session, req["reference_category_module"])
        dataset = get_dataset(session, req["dataset"]) if req.get("dataset") else None
    f_v, g_s_v = versions["category_module"], versions["student_task_module"]
    auto = _auto_options(req)
    warm_versions = []
    if auto is not None:
        with ctx.sessionmaker() as session:
            warm_versions = warm_start_versions(
                session, task=req["task"], category=req["category"], category_module=f_v,
                student_task_module=g_s_v, limit=MAX_WARM_STARTS,
            )
    x = y = None
    if dataset is not None:
        try:
            x_np, y_np = load_arrays(ctx.store, dataset)
        except (OSError, ValueError) as exc:
            raise JobFailed(
                f"Dataset {dataset.id} could not be read from the artifact store ({exc})."
            ) from None
        x = torch.from_numpy(x_np)
        if y_np is not None:
            y = torch.from_numpy(y_np)
            y = y.long() if not y.is_floating_point() else y.float()
    train = _train_config(req)
    synthesis = None
    with contextlib.ExitStack() as borrowed:
        # f, g_T and g_S come from this worker's cache when an earlier job loaded them (their bytes
        # never change); they go back to it only when the engine returns normally.
        f, g_t, g_s = (borrowed.enter_context(borrow_module(ctx, versions[field])) for field, _ in ROLES)
        reference = None
        if "reference_category_module" in versions:
            reference = borrowed.enter_context(borrow_module(ctx, versions["reference_category_module"]))
        with tempfile.TemporaryDirectory(prefix="graft-job-") as tmp:
            warm_starts, warm_refs = _warm_starts(ctx, warm_versions, Path(tmp))
        f_used = f
        if req.get("synthesis"):
            synthesis, f_used, x = _synthesise(run, f, g_t, x, f_v, train)
            y = None  # synthetic inputs carry no labels (supervised is refused before queueing)
        run.report(stage="training", device=str(train.resolved_device()))
        result = _run_engine(run, f_used, g_t, g_s, x, y, train, auto, warm_starts, f_v, g_s_v, reference)
    weights, spec = save_adapter(result.adapter, result.config)
    warm_name = (result.metrics.get("search") or {}).get("warm_start")
    metrics = {**result.metrics, "dataset": dataset.id if dataset is not None else None, "job_id": run.job_id}
    if synthesis is not None:
        metrics["synthesis"] = synthesis
        metrics["data"] = "synthetic" if dataset is None else "synthetic+dataset"
        # teacher_agreement and val_loss were measured on these inputs, not on real ones.
        metrics["metrics_on"] = f"synthetic {metrics.get('metrics_on', 'inputs')}"
    run.report(stage="registering", **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)})

    def register(session: Session) -> dict:
        module = result_module(
            session, req["result_module"], "adapter", owner_token_id=run.owner_token_id,
            category=req["category"], task=req["task"],
            description=f"Adapters from category {req['category']!r} to task {req['task']!r}.",
            what="the adapter",
        )
        parents = [{**version_ref(versions[field]), "role": role} for field, role in ROLES]
        if "reference_category_module" in versions:
            parents.append({**version_ref(versions["reference_category_module"]), "role": "reference"})
        if warm_name in warm_refs:
            parents.append({**warm_refs[warm_name], "role": "warm_start"})
        version = register_artifact(
            run, session, module=module, data=weights, filename="adapter.safetensors", job_role="adapter",
            parents=parents, meta={
                "format": "safetensors",
                "input_shape": list(f_v.output_shape),
                "arch": spec,
                "trained_on": [req["category"]],
                "metrics": metrics,
                "description": (
                    f"{req['method']} adapter {req['category']} → {req['task']} learned by job "
                    f"{run.job_id} {_data_words(dataset, synthesis)}"
                ),
            },
        )
        return {"adapter": version_ref(version), "metrics": metrics}

    return register


def _synthesise(run: JobRun, f, g_t, real, f_v: ModuleVersion, train: TrainConfig):  # noqa: ANN001, ANN202
    """The request's synthetic inputs (plus the dataset's, if any): (report, f for the engine, inputs)."""
    options = dict(run.request["synthesis"])
    cfg = SynthesisConfig(**options)
    run.report(stage="synthesising", synthesis={"method": cfg.method, "n": cfg.n, "steps": cfg.steps})
    try:
        syn = synthesise(f, g_t, tuple(f_v.input_shape[1:]), cfg, feature_shape=tuple(f_v.output_shape[1:]),
                         device=train.resolved_device())
    except NeedsBatchNorm as exc:
        raise JobFailed(f"Synthesis failed: {exc}.") from None
    report = {**syn.report, "n_real": 0 if real is None else int(len(real))}
    run.report(stage="synthesised", synthesis=report)
    f_used, x = mix_real(f, syn, real)
    return report, f_used, x


def _data_words(dataset, synthesis: dict | None) -> str:  # noqa: ANN001
    """How the adapter's training inputs came about, for its description."""
    if synthesis is None:
        return f"on dataset {dataset.id}"
    how = (f"{synthesis['n']} inputs synthesised by {synthesis['method']} (seed {synthesis['seed']}, "
           f"{synthesis['steps']} steps, BatchNorm distance {synthesis['bn_distance']})")
    if dataset is None:
        return f"without data, on {how}"
    return f"on dataset {dataset.id} plus {how}"


def execute(job_id: str, ctx: JobContext, *, redelivered: bool = False) -> str | None:
    """Run one delivery of transplant job `job_id`; its final status (None when not run here)."""
    return lifecycle.execute(job_id, ctx, _work, redelivered=redelivered)


@shared_task(name="graft.transplant", bind=True, autoretry_for=(OperationalError,), retry_backoff=5,
             max_retries=5)
def transplant(self, job_id: str) -> str | None:  # noqa: ANN001
    """Celery entry point: `execute` with this worker process's own backends."""
    return lifecycle.deliver_from_celery(self.request, job_id, _work)
