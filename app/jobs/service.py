"""Transplant requests and jobs: validate everything before queueing, then read, list and cancel."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from datetime import datetime

import torch
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.datasets.service import get_dataset
from app.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from app.jobs import repository
from app.jobs.dispatch import enqueue_after_commit
from app.jobs.schemas import (
    AmalgamationCreate,
    AutoBudgetOptions,
    AutoOptions,
    SynthesisOptions,
    TransplantCreate,
)
from app.models import Job, Module, ModuleVersion
from app.models.job import FINAL_STATUSES
from app.modules.schemas import NAME_PATTERN
from app.modules.service import check_job_can_write, get_module, resolve_version, version_ref
from transplant.adapters import AdapterConfig, build_adapter, fit_adapter_config
from transplant.amalgamate import StudentConfig
from transplant.amalgamate.student import block_shapes
from transplant.errors import TransplantError
from transplant.search import AutoBudget, SearchSpace
from transplant.search.auto import SPACE_KEYS

TRANSPLANT_TASK = "graft.transplant"
AMALGAMATE_TASK = "graft.amalgamate"
MAX_PAGE = 200
_ADAPTER_KEYS = {"arch", "layers", "hidden", "kernel_size", "skip", "activation", "resize", "shortcut",
                 "normalise", "extra"}


def _shape(shape: list | None) -> list:
    return list(shape or [])


def _fixed_tail(v: ModuleVersion, which: str, shape: list) -> tuple[int, ...]:
    """A version's shape without the batch dim; adapters need every other dim fixed."""
    tail = shape[1:]
    if not tail or any(not isinstance(d, int) for d in tail):
        raise Unprocessable(
            f"{v.module.name}@{v.version} has {which} {shape}, with a dynamic dimension besides the "
            "batch; an adapter needs fixed feature shapes, so upload a version with fixed shapes."
        )
    return tuple(tail)


def _resolve(session: Session, field: str, ref: str | dict, kind: str) -> ModuleVersion:
    """The exact version behind `ref`, checked to be of `kind`."""
    if isinstance(ref, dict) and not isinstance(ref.get("name"), str):
        raise Unprocessable(f'{field} must be "name@version" or {{"name", "version"}}, not {ref!r}.')
    version = resolve_version(session, ref)
    module: Module = version.module
    if module.kind != kind:
        raise Unprocessable(
            f"{field} {module.name!r} is a {module.kind} module, but a {kind} module is needed here."
        )
    return version


def _check_dataset_fits(dataset, f: ModuleVersion) -> None:  # noqa: ANN001
    f_in, ds_in = _shape(f.input_shape)[1:], _shape(dataset.input_shape)[1:]
    if len(f_in) != len(ds_in) or any(a is not None and a != b for a, b in zip(f_in, ds_in, strict=True)):
        raise Unprocessable(
            f"Dataset {dataset.id} holds samples of shape {ds_in}, but the category module "
            f"{f.module.name}@{f.version} takes inputs of shape {f_in}; upload a matching dataset."
        )


def check_adapter(overrides: dict | None, f_out: tuple, g_in: tuple) -> AdapterConfig:
    """The adapter config that maps f's output to g_S's input; 422 naming both shapes if none does."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - _ADAPTER_KEYS
    if unknown:
        raise Unprocessable(
            f"Unknown adapter option(s) {sorted(unknown)}; use some of {sorted(_ADAPTER_KEYS)}."
        )
    for key, hi in (("layers", 16), ("hidden", 8192), ("kernel_size", 15)):
        value = overrides.get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= hi):
            raise Unprocessable(f"adapter.{key} must be an integer from 1 to {hi}, not {value!r}.")
    try:
        config = fit_adapter_config(f_out, g_in, **overrides)
        # Built on the meta device: checks the architecture without allocating its weights.
        with torch.device("meta"):
            build_adapter(config)
    except (TransplantError, ValueError, TypeError) as exc:
        raise Unprocessable(
            f"No adapter maps the category module's output shape {list(f_out)} to the student task "
            f"module's input shape {list(g_in)} ({exc}); pick modules whose shapes chain, or another "
            "adapter architecture."
        ) from None
    return config


def is_auto(adapter: object) -> bool:
    """Whether the request's `adapter` asks for the search: "auto" or {"auto": {...}}."""
    return adapter == "auto" or (isinstance(adapter, dict) and "auto" in adapter)


def _readable(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors()[:4]:
        where = ".".join([prefix, *(str(p) for p in err["loc"])])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def check_auto(adapter: str | dict, f_out: tuple, g_in: tuple) -> dict:
    """`"auto"` or `{"auto": {"budget": …}}` checked against the shapes; the normalised `{"auto": …}`."""
    if adapter == "auto":
        options: object = {}
    else:
        assert isinstance(adapter, dict)
        if set(adapter) != {"auto"}:
            raise Unprocessable(
                f'adapter {{"auto": …}} takes no other keys, not {sorted(set(adapter) - {"auto"})}; '
                'put the search budget in {"auto": {"budget": {…}}}.'
            )
        options = adapter["auto"] if adapter["auto"] is not None else {}
    try:
        parsed = AutoOptions.model_validate(options)
    except ValidationError as exc:
        raise Unprocessable(
            f"Invalid adapter.auto ({_readable(exc, 'adapter.auto')}); the budget keys are "
            f"{', '.join(AutoBudgetOptions.model_fields)}."
        ) from None
    budget = parsed.budget.model_dump(exclude_none=True)
    try:
        plan = AutoBudget.from_dict({**budget, "out_shape": g_in})
        space = SearchSpace.for_shapes(f_out, g_in, **{k: getattr(plan, k) for k in SPACE_KEYS})
        if not space.candidates():
            raise ValueError("the budget leaves no candidate adapter")
    except (TransplantError, ValueError, TypeError) as exc:
        raise Unprocessable(
            f"No adapter search maps the category module's output shape {list(f_out)} to the student "
            f"task module's input shape {list(g_in)} within this budget ({exc}); pick modules whose "
            "shapes chain, or widen the budget."
        ) from None
    return {"auto": {"budget": budget}}


def _derived_name(category: str, task: str) -> str:
    """`<category>-to-<task>-adapter`, folded into a valid module name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", f"{category}-to-{task}-adapter".lower()).strip("-._")
    return name[:128]


def _check_owner(session: Session, module: Module, owner_token_id: int | None) -> None:
    reason = check_job_can_write(session, module, owner_token_id)
    if reason is not None:
        raise Forbidden(reason + ".")


def _check_result_module(session: Session, name: str, owner_token_id: int | None) -> None:
    if not re.match(NAME_PATTERN, name):
        raise Unprocessable(
            f"result_module {name!r} is not a valid module name; use lowercase letters, digits, '.', '_' "
            "or '-'."
        )
    try:
        module = get_module(session, name)
    except NotFound:
        return
    if module.kind != "adapter":
        raise Conflict(
            f"Module {name!r} exists and is a {module.kind} module; name another result_module "
            "for the adapter."
        )
    _check_owner(session, module, owner_token_id)


def create_transplant(session: Session, body: TransplantCreate, *, owner_token_id: int | None) -> Job:
    """Validate a transplant request, write its job row and queue it to be sent after commit."""
    f = _resolve(session, "category_module", body.category_module, "category")
    g_t = _resolve(session, "teacher_task_module", body.teacher_task_module, "task")
    g_s = _resolve(session, "student_task_module", body.student_task_module, "task")
    if g_t.module.task != g_s.module.task:
        raise Unprocessable(
            f"The teacher task module solves task {g_t.module.task!r} but the student task module "
            f"solves {g_s.module.task!r}; both must be modules of the same task."
        )
    dataset = None
    if body.dataset is not None:
        dataset = get_dataset(session, body.dataset)
        _check_dataset_fits(dataset, f)
    synthesis = check_synthesis(body, f) if body.dataset is None or body.synthesis is not None else None
    if body.method == "supervised" and dataset is not None and dataset.y_shape is None:
        raise Unprocessable(
            f"Method 'supervised' needs labels, but dataset {dataset.id} has no `y`; upload one with "
            "labels or use back_distillation, which needs none."
        )
    f_out = _fixed_tail(f, "output_shape", _shape(f.output_shape))
    t_in = _fixed_tail(g_t, "input_shape", _shape(g_t.input_shape))
    if f_out != t_in:
        raise Unprocessable(
            f"The teacher task module takes inputs of shape {list(t_in)}, but the category module "
            f"outputs {list(f_out)}; the teacher must be trained on this category module's features."
        )
    s_in = _fixed_tail(g_s, "input_shape", _shape(g_s.input_shape))
    adapter = body.adapter
    if is_auto(adapter):
        adapter = check_auto(adapter, f_out, s_in)
    else:
        check_adapter(adapter, f_out, s_in)
    reference = None
    if body.reference_category_module is not None and (synthesis or {}).get("method") == "features":
        raise Unprocessable(
            "synthesis 'features' makes f's features directly, with no inputs to run the reference category "
            "module on; drop reference_category_module or use synthesis 'deepinversion' or 'noise'."
        )
    if body.reference_category_module is not None:
        reference = _resolve(session, "reference_category_module", body.reference_category_module, "category")
        if _shape(reference.input_shape)[1:] != _shape(f.input_shape)[1:] or (
                _fixed_tail(reference, "output_shape", _shape(reference.output_shape)) != s_in):
            raise Unprocessable(
                f"The reference category module {reference.module.name}@{reference.version} must take "
                f"the category module's inputs {_shape(f.input_shape)[1:]} and give the student task "
                f"module's input {list(s_in)}; it gives {_shape(reference.output_shape)[1:]} from "
                f"{_shape(reference.input_shape)[1:]}."
            )
    category = f.module.category or f.module.name
    task = g_s.module.task or g_s.module.name
    result_module = body.result_module or _derived_name(category, task)
    _check_result_module(session, result_module, owner_token_id)
    request = {
        "category": category,
        "task": task,
        "category_module": version_ref(f),
        "teacher_task_module": version_ref(g_t),
        "student_task_module": version_ref(g_s),
        "reference_category_module": version_ref(reference) if reference is not None else None,
        "dataset": dataset.id if dataset is not None else None,
        "synthesis": synthesis,
        "method": body.method,
        "adapter": adapter,
        "steps": body.steps,
        "epochs": body.epochs,
        "seed": body.seed,
        "result_module": result_module,
        "train": body.train.model_dump(exclude_none=True) if body.train else {},
    }
    job = repository.create(
        session, job_id=str(uuid.uuid4()), kind="transplant", request=request, owner_token_id=owner_token_id
    )
    enqueue_after_commit(session, TRANSPLANT_TASK, job.id)
    return job


def check_synthesis(body: TransplantCreate, f: ModuleVersion) -> dict:
    """The request's synthesis options with their defaults and seed filled in; 422 when they cannot work."""
    options = body.synthesis or SynthesisOptions()
    if body.method == "supervised":
        raise Unprocessable(
            "Method 'supervised' trains on labels, and synthetic inputs have none; use back_distillation "
            "or distillation for a transplant without data, or give a labelled dataset and no synthesis."
        )
    _fixed_tail(f, "input_shape", _shape(f.input_shape))  # the synthetic inputs take f's input shape
    seed = body.seed if options.seed is None else options.seed
    return {**options.model_dump(exclude_none=True), "seed": seed}


def _teacher_classes(field: str, head: ModuleVersion, classes: list[str] | None) -> list[str]:
    """The class names of a teacher head's logits: the request's, else the head version's metrics."""
    label = f"{head.module.name}@{head.version}"
    out = _shape(head.output_shape)
    if len(out) != 2 or not isinstance(out[1], int):
        raise Unprocessable(
            f"{field}.task_module {label} outputs shape {out}; a teacher head must output logits "
            "[batch, classes]."
        )
    if classes is None:
        stored = (head.metrics or {}).get("classes")
        if not (isinstance(stored, list) and stored and all(isinstance(c, str) for c in stored)):
            raise Unprocessable(
                f"{field}: the head {label} records no class names (metrics.classes); list its {out[1]} "
                f"classes in {field}.classes, in the order of its logits."
            )
        classes = stored
    if len(classes) != out[1]:
        raise Unprocessable(
            f"{field}.classes names {len(classes)} classes, but the head {label} outputs {out[1]} logits; "
            "give one name per logit."
        )
    if len(set(classes)) != len(classes):
        raise Unprocessable(f"{field}.classes repeats a class name; each logit needs its own class.")
    return list(classes)


def _check_student_module(
    session: Session, name: str, kind: str, field: str, value: str, owner_token_id: int | None
) -> None:
    """A module the student will be registered into: new, or of `kind` for the same category/task."""
    try:
        module = get_module(session, name)
    except NotFound:
        return
    if module.kind != kind or getattr(module, field) != value:
        raise Conflict(
            f"Module {name!r} exists and is a {module.kind} module ({field} {getattr(module, field)!r}); "
            f"the student's {kind} module must be a {kind} module of {field} {value!r}: name another "
            "result_module."
        )
    _check_owner(session, module, owner_token_id)


def create_amalgamation(session: Session, body: AmalgamationCreate, *, owner_token_id: int | None) -> Job:
    """Validate an amalgamation request, write its job row and queue it to be sent after commit."""
    dataset = get_dataset(session, body.dataset)
    ds_in = _shape(dataset.input_shape)[1:]
    teachers, tasks = [], {}
    for i, t in enumerate(body.teachers):
        field = f"teachers[{i}]"
        f = _resolve(session, f"{field}.category_module", t.category_module, "category")
        head = _resolve(session, f"{field}.task_module", t.task_module, "task")
        _check_dataset_fits(dataset, f)
        f_out = _fixed_tail(f, "output_shape", _shape(f.output_shape))
        if _shape(head.input_shape)[1:] != list(f_out):
            raise Unprocessable(
                f"{field}: the head {head.module.name}@{head.version} takes inputs of shape "
                f"{_shape(head.input_shape)[1:]}, but the category module {f.module.name}@{f.version} "
                f"outputs {list(f_out)}; a teacher is a category module and a head trained on its features."
            )
        classes = _teacher_classes(field, head, t.classes)
        tasks[head.module.task or head.module.name] = field
        teachers.append(
            {"category_module": version_ref(f), "task_module": version_ref(head), "classes": classes}
        )
    if len(tasks) > 1:
        raise Unprocessable(
            f"The teachers' heads solve different tasks ({sorted(tasks)}); amalgamate teachers of one task."
        )
    task = next(iter(tasks))
    student = body.student.model_dump()
    if len(ds_in) != 3 or not all(isinstance(d, int) for d in ds_in):
        raise Unprocessable(
            f"Dataset {dataset.id} holds samples of shape {ds_in}; the student is a conv net and needs "
            "fixed (C, H, W) samples."
        )
    try:
        block_shapes(StudentConfig(input_shape=tuple(ds_in), **student))
    except (ValueError, TypeError) as exc:
        raise Unprocessable(f"The student does not fit inputs of shape {ds_in}: {exc}.") from None
    job_id = str(uuid.uuid4())
    category = body.result_module or f"amalgam-{job_id[:8]}"
    if not re.match(NAME_PATTERN, category):
        raise Unprocessable(
            f"result_module {category!r} is not a valid module name; use lowercase letters, digits, '.', "
            "'_' or '-'."
        )
    task_module = re.sub(r"[^a-z0-9._-]+", "-", f"{category}-{task}".lower()).strip("-._")[:128]
    _check_student_module(session, category, "category", "category", category, owner_token_id)
    _check_student_module(session, task_module, "task", "task", task, owner_token_id)
    request = {
        "teachers": teachers,
        "dataset": dataset.id,
        "task": task,
        "category": category,
        "category_module": category,
        "task_module": task_module,
        "student": student,
        "epochs": body.epochs,
        "seed": body.seed,
        "train": body.train.model_dump(exclude_none=True) if body.train else {},
    }
    job = repository.create(
        session, job_id=job_id, kind="amalgamation", request=request, owner_token_id=owner_token_id
    )
    enqueue_after_commit(session, AMALGAMATE_TASK, job.id)
    return job


def get_job(session: Session, job_id: str) -> Job:
    """The job `job_id`, or NotFound."""
    job = repository.get(session, job_id)
    if job is None:
        raise NotFound(f"No job with id {job_id!r}; list jobs with GET /v1/jobs.")
    return job


def _encode_cursor(job: Job) -> str:
    raw = json.dumps({"after": [job.created_at.isoformat(), job.id]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
        if "\x00" in str(job_id):
            raise ValueError
        return datetime.fromisoformat(created), str(job_id)
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadRequest("The cursor is not valid; pass the `next_cursor` of a previous page.") from None


def list_jobs(
    session: Session, *, limit: int, cursor: str | None, status: str | None, kind: str | None
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first, and the cursor of the next page (None at the end)."""
    limit = max(1, min(limit, MAX_PAGE))
    jobs = repository.list_page(
        session, limit=limit + 1, after=_decode_cursor(cursor), status=status, kind=kind
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (_encode_cursor(jobs[-1]) if more else None)


def cancel_job(session: Session, job_id: str, principal: Principal) -> Job:
    """Cancel a queued job at once, or ask a running one to stop; Conflict when it already ended.

    Only the token that queued the job, or an admin, may cancel it.
    """
    job = get_job(session, job_id)
    if not principal.is_admin and (job.owner_token_id is None or job.owner_token_id != principal.token_id):
        raise Forbidden(
            f"Job {job_id} was queued by another token: only the token that queued a job, or an admin, "
            "may cancel it."
        )
    if job.status not in FINAL_STATUSES:
        if repository.cancel_if_queued(session, job_id) or repository.request_cancel_if_running(
            session, job_id
        ):
            return get_job(session, job_id)
        job = get_job(session, job_id)  # it ended meanwhile
    raise Conflict(f"Job {job_id} is already {job.status}; only queued or running jobs can be cancelled.")
