"""Queries on modules, module_versions and aliases."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, joinedload

from app.models import Alias, Dataset, Module, ModuleVersion


def get_by_name(session: Session, name: str) -> Module | None:
    return session.scalars(select(Module).where(Module.name == name)).one_or_none()


def lock(session: Session, module_id: int) -> None:
    """Lock the module row until commit, so concurrent uploads number versions one at a time."""
    session.execute(select(Module.id).where(Module.id == module_id).with_for_update())


def list_modules(
    session: Session, *, kind: str | None, category: str | None, task: str | None, after: int | None,
    limit: int,
) -> list[tuple[Module, int | None]]:
    latest = (
        select(func.max(ModuleVersion.version))
        .where(ModuleVersion.module_id == Module.id)
        .correlate(Module)
        .scalar_subquery()
    )
    query = select(Module, latest).order_by(Module.id).limit(limit)
    if kind:
        query = query.where(Module.kind == kind)
    if category:
        query = query.where(Module.category == category)
    if task:
        query = query.where(Module.task == task)
    if after is not None:
        query = query.where(Module.id > after)
    return [(m, v) for m, v in session.execute(query)]


def module_page(
    session: Session, *, kind: str | None, category: str | None, task: str | None, after: int | None,
    limit: int,
) -> list[dict]:
    """One page of modules as plain column dicts (with `latest_version`), for the list route.

    Columns, not entities: a page of 50 ORM objects spent more time in identity-map bookkeeping than
    PostgreSQL spent on the query.
    """
    latest = (
        select(func.max(ModuleVersion.version))
        .where(ModuleVersion.module_id == Module.id)
        .correlate(Module)
        .scalar_subquery()
    )
    query = select(*PAGE_COLUMNS, latest.label("latest_version")).order_by(Module.id).limit(limit)
    if kind:
        query = query.where(Module.kind == kind)
    if category:
        query = query.where(Module.category == category)
    if task:
        query = query.where(Module.task == task)
    if after is not None:
        query = query.where(Module.id > after)
    return [dict(row) for row in session.execute(query).mappings()]


PAGE_COLUMNS = (
    Module.id, Module.name, Module.kind, Module.category, Module.task, Module.description, Module.created_at,
)


def resolve(session: Session, name: str, *, number: int | None = None, alias: str | None = None
            ) -> tuple[ModuleVersion, Module, list[str]] | None:
    """Version `number`, the one `alias` names, or (neither) the latest, of module `name`, with the
    module and the version's aliases: one query, where resolving took three. None if nothing matched."""
    pick = (
        select(ModuleVersion.id).join(Module, Module.id == ModuleVersion.module_id).where(Module.name == name)
    )
    if number is not None:
        pick = pick.where(ModuleVersion.version == number)
    elif alias is not None:
        on_alias = (Alias.module_id == Module.id) & (Alias.version_id == ModuleVersion.id)
        pick = pick.join(Alias, on_alias).where(Alias.alias == alias)
    else:  # latest: a backward scan of uq_module_versions_module_version (module_id, version)
        pick = pick.order_by(ModuleVersion.version.desc())
    query = (
        select(ModuleVersion, Module, Alias.alias)
        .join(Module, Module.id == ModuleVersion.module_id)
        # module_id in the join condition: the aliases primary key (module_id, alias) serves it.
        .outerjoin(Alias, (Alias.module_id == Module.id) & (Alias.version_id == ModuleVersion.id))
        .where(ModuleVersion.id == pick.limit(1).scalar_subquery())
        .order_by(Alias.alias)
    )
    rows = session.execute(query).all()
    if not rows:
        return None
    version, module = rows[0][0], rows[0][1]
    return version, module, [row[2] for row in rows if row[2] is not None]


def _versions(session: Session, with_module: bool = True):
    # with_module=False when the caller already holds the Module row and attaches it itself: the
    # JOIN to modules is then pure cost on the hottest read (resolve a version).
    query = select(ModuleVersion)
    return query.options(joinedload(ModuleVersion.module)) if with_module else query


def get_version(
    session: Session, module_id: int, number: int, *, with_module: bool = True
) -> ModuleVersion | None:
    query = _versions(session, with_module).where(
        ModuleVersion.module_id == module_id, ModuleVersion.version == number
    )
    return session.scalars(query).one_or_none()


def get_latest(session: Session, module_id: int, *, with_module: bool = True) -> ModuleVersion | None:
    # One index probe: a backward scan of uq_module_versions_module_version (module_id, version).
    query = (
        _versions(session, with_module).where(ModuleVersion.module_id == module_id)
        .order_by(ModuleVersion.version.desc()).limit(1)
    )
    return session.scalars(query).first()


def get_by_alias(
    session: Session, module_id: int, alias: str, *, with_module: bool = True
) -> ModuleVersion | None:
    query = _versions(session, with_module).join(Alias, Alias.version_id == ModuleVersion.id).where(
        Alias.module_id == module_id, Alias.alias == alias
    )
    return session.scalars(query).one_or_none()


def get_by_sha(session: Session, module_id: int, sha256: str) -> ModuleVersion | None:
    query = _versions(session).where(ModuleVersion.module_id == module_id, ModuleVersion.sha256 == sha256)
    return session.scalars(query).one_or_none()


def get_by_job(session: Session, job_id: str, job_role: str | None) -> ModuleVersion | None:
    query = _versions(session).where(ModuleVersion.job_id == job_id, ModuleVersion.job_role == job_role)
    return session.scalars(query.limit(1)).first()


def max_version(session: Session, module_id: int) -> int:
    query = select(func.max(ModuleVersion.version)).where(ModuleVersion.module_id == module_id)
    return session.scalar(query) or 0


def list_versions(session: Session, module_id: int, *, after: int | None, limit: int) -> list[ModuleVersion]:
    query = _versions(session).where(ModuleVersion.module_id == module_id)
    if after is not None:
        query = query.where(ModuleVersion.version > after)
    return list(session.scalars(query.order_by(ModuleVersion.version).limit(limit)))


def version_summaries(session: Session, module_id: int) -> list[ModuleVersion]:
    query = select(ModuleVersion).where(ModuleVersion.module_id == module_id).order_by(ModuleVersion.version)
    return list(session.scalars(query))


def aliases_of_module(session: Session, module_id: int) -> dict[str, int]:
    query = (
        select(Alias.alias, ModuleVersion.version)
        .join(ModuleVersion, ModuleVersion.id == Alias.version_id)
        .where(Alias.module_id == module_id)
        .order_by(Alias.alias)
    )
    return {a: v for a, v in session.execute(query)}


def aliases_of_version(session: Session, version_id: int) -> list[str]:
    query = select(Alias.alias).where(Alias.version_id == version_id).order_by(Alias.alias)
    return list(session.scalars(query))


def aliases_by_version(session: Session, module_id: int) -> dict[int, list[str]]:
    """The module's aliases grouped by the id of the version they point at."""
    query = select(Alias.version_id, Alias.alias).where(Alias.module_id == module_id).order_by(Alias.alias)
    out: dict[int, list[str]] = {}
    for version_id, alias in session.execute(query):
        out.setdefault(version_id, []).append(alias)
    return out


def set_alias(session: Session, *, module_id: int, alias: str, version_id: int) -> None:
    existing = session.get(Alias, (module_id, alias))
    if existing is None:
        session.add(Alias(module_id=module_id, alias=alias, version_id=version_id))
    else:
        session.execute(
            update(Alias)
            .where(Alias.module_id == module_id, Alias.alias == alias)
            .values(version_id=version_id)
        )
    session.flush()


def object_in_use(session: Session, sha256: str) -> bool:
    """Whether any version or dataset row references the content-addressed object of `sha256`."""
    in_versions = select(ModuleVersion.id).where(ModuleVersion.sha256 == sha256).limit(1)
    in_datasets = select(Dataset.id).where(Dataset.sha256 == sha256).limit(1)
    return session.scalar(in_versions) is not None or session.scalar(in_datasets) is not None
