"""Compositions: pick or resolve pieces, check that shapes chain, persist pinned; the grid of cells."""

from __future__ import annotations

import uuid
from datetime import UTC

from sqlalchemy.orm import Session

from app.compositions import repository
from app.compositions.schemas import CompositionCreate, CompositionRead, Grid, GridCell, Selection, VersionRef
from app.compositions.selection import Candidates, Pick, pick_cell
from app.errors import NotFound, Unprocessable
from app.models import Composition, ModuleVersion
from app.modules.service import resolve_version
from app.serving.runtime import Piece, ServingSpec
from transplant.compose import ChainMismatch, check_chain


def label(v: ModuleVersion) -> str:
    return f"{v.module.name}@{v.version}"


def _candidates(session: Session, *, category: str | None = None, task: str | None = None) -> Candidates:
    return Candidates.build(
        repository.versions_of(session, "category", category=category),
        repository.versions_of(session, "task", task=task),
        repository.versions_of(session, "adapter", category=category, task=task),
        repository.aliased_version_ids(session),
    )


def _pick_for_cell(session: Session, category: str, task: str) -> Pick:
    pick = pick_cell(_candidates(session, category=category, task=task), category, task)
    if pick is not None:
        return pick
    running = [
        j for j in repository.active_transplant_jobs(session)
        if (j.request or {}).get("category") == category and (j.request or {}).get("task") == task
    ]
    if running:
        raise NotFound(
            f"Cell ({category}, {task}) has no adapter yet; transplant job {running[0].id} is "
            f"{running[0].status}, compose again once it has succeeded."
        )
    raise NotFound(
        f"No category module of {category!r} can be composed with a task module of {task!r}: there is "
        "no native pair and no adapter for this cell; request one with POST /v1/transplants."
    )


def _resolve_explicit(session: Session, body: CompositionCreate) -> Pick:
    def resolve(ref, role: str, kind: str) -> ModuleVersion:
        v = resolve_version(session, ref.model_dump() if hasattr(ref, "model_dump") else ref)
        if v.module.kind != kind:
            raise Unprocessable(
                f"{role} {label(v)} is a {v.module.kind} module, not a {kind} module; pass a {kind} module."
            )
        return v

    f = resolve(body.category_module, "category_module", "category")
    h = resolve(body.adapter, "adapter", "adapter") if body.adapter is not None else None
    g = resolve(body.task_module, "task_module", "task")
    return Pick("transplanted" if h is not None else "native", f, h, g)


def create_composition(session: Session, body: CompositionCreate) -> tuple[Composition, bool, Selection]:
    """A composition of a cell or of explicit pieces, pinned to exact versions; (row, created, why)."""
    if body.is_cell:
        pick = _pick_for_cell(session, body.category, body.task)
    else:
        pick = _resolve_explicit(session, body)
    f, h, g = pick.category, pick.adapter, pick.task
    try:
        check_chain(
            f.output_shape, h.input_shape if h else None, h.output_shape if h else None, g.input_shape,
            labels=(f"category module {label(f)}", f"adapter {label(h)}" if h else None,
                    f"task module {label(g)}"),
        )
    except ChainMismatch as exc:
        raise Unprocessable(f"The pieces do not chain: {exc.detail}; pick pieces whose shapes fit.") from None
    existing = repository.find_by_versions(
        session, category_version_id=f.id, adapter_version_id=h.id if h else None, task_version_id=g.id
    )
    selection = Selection(rule=pick.rule, reason=pick.reason or "the pieces named in the request")
    if existing is not None:
        return existing, False, selection
    composition = Composition(
        id=str(uuid.uuid4()),
        category_version_id=f.id,
        adapter_version_id=h.id if h else None,
        task_version_id=g.id,
        category=body.category if body.is_cell else f.module.category,
        task=body.task if body.is_cell else g.module.task,
        input_shape=list(f.input_shape),
        output_shape=list(g.output_shape),
    )
    session.add(composition)
    session.flush()
    return composition, True, selection


def get_composition(session: Session, composition_id: str) -> Composition:
    """The composition `composition_id`, or NotFound."""
    composition = repository.get(session, composition_id)
    if composition is None:
        raise NotFound(f"No composition has id {composition_id!r}; create one with POST /v1/compositions.")
    return composition


def _ref(v: ModuleVersion | None) -> VersionRef | None:
    return VersionRef(name=v.module.name, version=v.version) if v is not None else None


def to_read(
    composition: Composition, versions: dict[int, ModuleVersion]
) -> CompositionRead:
    return CompositionRead(
        id=composition.id,
        category=composition.category,
        task=composition.task,
        category_module=_ref(versions[composition.category_version_id]),
        adapter=_ref(versions.get(composition.adapter_version_id)),
        task_module=_ref(versions[composition.task_version_id]),
        input_shape=composition.input_shape,
        output_shape=composition.output_shape,
        # SQLite hands datetimes back without their zone; they were written in UTC.
        created_at=composition.created_at if composition.created_at.tzinfo else
        composition.created_at.replace(tzinfo=UTC),
    )


def read_many(session: Session, compositions: list[Composition]) -> list[CompositionRead]:
    """Response bodies of `compositions`, with one query for all their versions."""
    ids = [i for c in compositions for i in (c.category_version_id, c.adapter_version_id, c.task_version_id)]
    versions = repository.versions_by_id(session, ids)
    return [to_read(c, versions) for c in compositions]


def serving_spec(session: Session, composition_id: str) -> ServingSpec:
    """What the runtime needs to load and call the composition (NotFound for an unknown id)."""
    c = get_composition(session, composition_id)
    versions = repository.versions_by_id(
        session, (c.category_version_id, c.adapter_version_id, c.task_version_id)
    )

    def piece(version_id: int | None) -> Piece | None:
        if version_id is None:
            return None
        v = versions[version_id]
        return Piece(label=label(v), storage_key=v.storage_key, format=v.format, arch=v.arch, sha256=v.sha256)

    return ServingSpec(
        id=c.id, category=piece(c.category_version_id), adapter=piece(c.adapter_version_id),
        task=piece(c.task_version_id), input_shape=tuple(c.input_shape), output_shape=tuple(c.output_shape),
    )


def grid(session: Session) -> Grid:
    """Every category × task cell with its status (see app.compositions.selection for the rule)."""
    categories = repository.labels_of(session, "category", "category")
    tasks = repository.labels_of(session, "task", "task")
    cands = _candidates(session)
    compositions = repository.newest_composition_by_cell(session)
    jobs: dict[tuple[str, str], str] = {}
    for job in repository.active_transplant_jobs(session):
        request = job.request or {}
        jobs.setdefault((request.get("category"), request.get("task")), job.id)
    cells = []
    for c in categories:
        for t in tasks:
            cell = GridCell(category=c, task=t, status="missing", composition=compositions.get((c, t)))
            pick = pick_cell(cands, c, t)
            if pick is not None:
                # A running transplant outranks a native pair (see selection's rule).
                cell.status = "running" if pick.status == "native" and (c, t) in jobs else pick.status
                cell.category_module, cell.adapter, cell.task_module = (
                    _ref(pick.category), _ref(pick.adapter), _ref(pick.task)
                )
                metrics = (pick.adapter or pick.task).metrics
                cell.metrics = dict(metrics) if metrics else None
                cell.selection = Selection(rule=pick.rule, reason=pick.reason)
            elif (c, t) in jobs:
                cell.status = "running"
            cell.job_id = jobs.get((c, t))
            cells.append(cell)
    return Grid(categories=categories, tasks=tasks, cells=cells)
