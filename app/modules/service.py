"""Modules and their immutable versions: create, resolve references, register artifacts, move aliases.

Services never commit: the caller (a route or a job) commits once. A failed upload never deletes the
object it stored: objects are content-addressed and shared, so another upload of the same bytes may have
found it in place and be about to commit a row pointing at it. Orphans are left to the sweeper
(`graft gc`), whose grace period covers uploads in flight.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.auth.service import Principal
from app.config import Settings
from app.errors import BackendUnavailable, Conflict, Forbidden, NotFound, Unprocessable, UnsupportedFormat
from app.models import ApiToken, Module, ModuleVersion
from app.modules import repository
from app.modules.probe import ProbeFailed, probe_artifact
from app.modules.schemas import ALIAS_PATTERN, NAME_PATTERN, VersionMeta
from app.ops.metrics import UPLOAD_PHASE
from app.storage import ArtifactStore, key_for
from app.storage.base import PendingPut
from transplant.artifacts import ArtifactError, PickledArtifact, check_format, shape_elements

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"^[0-9]{1,9}$")


def savepoint(session: Session) -> AbstractContextManager:
    """A SAVEPOINT to retry a failed insert in, except on SQLite.

    pysqlite opens no transaction before the first write, so there a SAVEPOINT starts one and its
    RELEASE commits it: the row would be committed before the route decides to. SQLite has one writer
    at a time, so a plain flush (and a 409 "retry" in the rare lost race) is the honest choice there.
    """
    if session.get_bind().dialect.name == "sqlite":
        return nullcontext()
    return session.begin_nested()


def check_can_write(module: Module, principal: Principal) -> None:
    """Only the token that created a module (or an admin) may add versions or move its aliases."""
    if module.owner_token_id is None or principal.is_admin or principal.token_id == module.owner_token_id:
        return
    raise Forbidden(
        f"Module {module.name!r} belongs to another token; push with that token, or ask an admin."
    )


def check_job_can_write(session: Session, module: Module, owner_token_id: int | None) -> str | None:
    """Why a job queued by token `owner_token_id` may not write into `module`, or None when it may.

    The rule of version uploads, for the token that asked for the job: its own modules, unowned ones,
    or any module when that token is an admin (the bootstrap token, id None, is one).
    """
    if module.owner_token_id is None or owner_token_id is None or module.owner_token_id == owner_token_id:
        return None
    token = session.get(ApiToken, owner_token_id)
    if token is not None and "admin" in (token.scopes or []):
        return None
    return (
        f"Module {module.name!r} belongs to another token: a job writes only into modules of the token "
        "that asked for it (or any module, for an admin); name another result_module"
    )


def get_module(session: Session, name: str) -> Module:
    """The module called `name`, or NotFound."""
    module = repository.get_by_name(session, name)
    if module is None:
        raise NotFound(f"No module is called {name!r}; create it with POST /v1/modules first.")
    return module


def _new_module(session: Session, *, name: str, **fields: str | int | None) -> Module:
    """A validated new module added to the session (not flushed); Conflict if the name is taken."""
    if not re.match(NAME_PATTERN, name):
        raise Unprocessable(
            f"Module name {name!r} is invalid; use lowercase letters, digits, '.', '_' or '-'."
        )
    if repository.get_by_name(session, name) is not None:
        raise Conflict(f"A module called {name!r} already exists; pick another name or upload a new version.")
    module = Module(name=name, **fields)
    session.add(module)
    return module


def create_module(
    session: Session, *, name: str, kind: str, category: str | None = None, task: str | None = None,
    description: str | None = None, owner_token_id: int | None = None,
) -> Module:
    """Create a module; Conflict if the name is taken."""
    module = _new_module(
        session, name=name, kind=kind, category=category, task=task, description=description,
        owner_token_id=owner_token_id,
    )
    try:
        with savepoint(session):
            session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A module called {name!r} already exists; pick another name.") from None
    return module


def get_or_create_module(
    session: Session, *, name: str, kind: str, category: str | None = None, task: str | None = None,
    description: str | None = None, owner_token_id: int | None = None,
) -> Module:
    """The module `name`, created when missing; when a concurrent transaction creates it first, that one.

    Jobs register into a result module they create on first use, so two workers finishing at once
    race to create it (found by bench/load.py: the loser's job failed with a 409 message). On
    PostgreSQL the losing insert waits for the winner's commit, then fails inside its own SAVEPOINT,
    which keeps the job's transaction (and its row lock) alive; reading again finds the winner's row.
    SQLite has one writer at a time, so there a plain create_module is enough.
    """
    module = repository.get_by_name(session, name)
    if module is not None:
        return module
    fields = {"kind": kind, "category": category, "task": task, "description": description,
              "owner_token_id": owner_token_id}
    if session.get_bind().dialect.name == "sqlite":
        return create_module(session, name=name, **fields)
    try:
        with session.begin_nested():
            module = _new_module(session, name=name, **fields)
            session.flush()
        return module
    except IntegrityError:
        module = repository.get_by_name(session, name)
        if module is None:
            raise
        return module


def _parse_ref(ref: str | dict) -> tuple[str, str]:
    if isinstance(ref, dict):
        if not isinstance(ref.get("name"), str) or ref.get("version") in (None, ""):
            raise Unprocessable(
                'A module reference object needs "name" and "version", e.g. {"name": "f", "version": 1}.'
            )
        return ref["name"], str(ref["version"])
    if not isinstance(ref, str) or not ref:
        raise Unprocessable(
            'A module reference must be "name@N", "name@alias", "name" or {"name", "version"}.'
        )
    name, _, selector = ref.partition("@")
    return name, selector or "latest"


def find_version(session: Session, module: Module, selector: str) -> ModuleVersion:
    """The version of `module` named by a number, an alias or `latest`; NotFound otherwise."""
    # The module row is in hand: load the version alone and attach it (no JOIN to modules).
    if _NUMBER.match(selector):
        version = repository.get_version(session, module.id, int(selector), with_module=False)
    elif selector == "latest":
        version = repository.get_latest(session, module.id, with_module=False)
        if version is None:
            raise NotFound(f"Module {module.name!r} has no versions yet; upload one first.")
    else:
        version = repository.get_by_alias(session, module.id, selector, with_module=False)
    if version is None:
        raise NotFound(
            f"Module {module.name!r} has no version or alias {selector!r}; list its versions to pick one."
        )
    if "module" not in version.__dict__:  # a version already loaded with its module keeps it
        set_committed_value(version, "module", module)
    return version


def find_version_by_name(session: Session, name: str, selector: str) -> tuple[ModuleVersion, list[str]]:
    """The version of module `name` named by a number, an alias or `latest`, and its aliases; NotFound
    otherwise. One query on the hit path (the read routes' hot path)."""
    if _NUMBER.match(selector):
        found = repository.resolve(session, name, number=int(selector))
    elif selector == "latest":
        found = repository.resolve(session, name)
    else:
        found = repository.resolve(session, name, alias=selector)
    if found is None:
        # A miss: the step-by-step path says which is missing, the module or the version.
        version = find_version(session, get_module(session, name), selector)
        return version, repository.aliases_of_version(session, version.id)
    version, module, aliases = found
    if "module" not in version.__dict__:
        set_committed_value(version, "module", module)
    return version, aliases


def resolve_version(session: Session, ref: str | dict) -> ModuleVersion:
    """The version a reference ("name@N", "name@alias", "name", {"name","version"}) names; .module loaded."""
    name, selector = _parse_ref(ref)
    return find_version(session, get_module(session, name), selector)


def version_ref(version: ModuleVersion) -> dict:
    """`{"name", "version"}` of a version (its module must be loaded)."""
    return {"name": version.module.name, "version": version.version}


def parse_meta(meta: dict) -> VersionMeta:
    """Validate an upload's meta; Unprocessable with a readable sentence."""
    try:
        return VersionMeta.model_validate(meta)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:4]:
            where = ".".join(str(p) for p in err["loc"]) or "meta"
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise Unprocessable("Invalid meta: " + "; ".join(parts) + ".") from None


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _probe(settings: Settings, path: Path, meta: VersionMeta) -> list[int | None]:
    elements = shape_elements(meta.input_shape, batch=2)
    if elements > settings.probe_max_elements:
        raise Unprocessable(
            f"input_shape {meta.input_shape} needs {elements} elements to probe, over the server's limit "
            f"of {settings.probe_max_elements} (GRAFT_PROBE_MAX_ELEMENTS); check the shape."
        )
    try:
        memory = settings.probe_max_memory_bytes
        return probe_artifact(
            path, meta.format, meta.arch, meta.input_shape, timeout_s=settings.probe_timeout_s,
            max_memory_bytes=memory + 2 * path.stat().st_size if memory else None,
        )
    except ProbeFailed as exc:
        if exc.pickled:
            raise UnsupportedFormat(f"Refused: {exc}.") from None
        raise Unprocessable(f"The artifact was not accepted: {exc}.") from None


def add_version(
    session: Session, store: ArtifactStore, settings: Settings, *, module: Module, file_path: Path,
    meta: dict, parents: list[dict] = (), job_id: str | None = None, job_role: str | None = None,
    sha256: str | None = None, pending: PendingPut | None = None,
) -> tuple[ModuleVersion, bool]:
    """Validate, probe and store an artifact, then add its version row (flushed, not committed).

    Idempotent: the same bytes in this module, or the same (job_id, job_role), return the existing
    version with created=False. The object is stored before the row exists, so a row never points at
    missing bytes; the caller commits (and deletes nothing on failure). `pending` is the store
    upload already fed while the file arrived (under the declared sha256): it is completed only once
    the digest and the probe passed, and the caller aborts it whatever else happens.
    """
    parsed = parse_meta(meta)
    if job_id is not None:
        existing = repository.get_by_job(session, job_id, job_role)
        if existing is not None:
            return existing, False
    if sha256 is None:
        sha256, size = file_sha256(file_path)
    else:
        size = file_path.stat().st_size
    if size == 0:
        raise Unprocessable("The artifact file is empty; attach the saved module as `file`.")
    if parsed.sha256 is not None and parsed.sha256 != sha256:
        raise Unprocessable(
            f"The file's sha256 is {sha256}, not the {parsed.sha256} that meta.sha256 declares: the bytes "
            "changed on the way or the digest is wrong; resend the file with its own sha256."
        )
    existing = repository.get_by_sha(session, module.id, sha256)
    if existing is not None:
        return existing, False
    try:  # cheap layout check first, so pickles and garbage never reach the store
        check_format(file_path, parsed.format)
    except PickledArtifact as exc:
        raise UnsupportedFormat(f"Refused: {exc}.") from None
    except ArtifactError as exc:
        raise Unprocessable(f"The artifact was not accepted: {exc}.") from None
    key = key_for(sha256)
    # The upload to the store and the probe overlap (both take seconds for big files); the row is
    # still added only after both succeeded, and a refused artifact's fresh object is removed again.
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Streamed: only the parts still in flight are left to wait for.
        put = pool.submit(pending.wait) if pending else pool.submit(store.put_file, file_path, key)
        try:
            started = time.perf_counter()
            output_shape = _probe(settings, file_path, parsed)
            probed = time.perf_counter()
            UPLOAD_PHASE.labels("probe").observe(probed - started)
        except BaseException:
            if pending is not None:
                pending.abort()  # nothing was visible yet
            # A stored object stays: a concurrent upload of the same bytes may rely on it (see above).
            raise
        try:
            put.result()
            if pending is not None:
                pending.complete()
            UPLOAD_PHASE.labels("store").observe(time.perf_counter() - probed)
        except Exception as exc:
            if pending is not None:
                pending.abort()
            log.warning("artifact store put failed for %s: %s", key, exc)
            raise BackendUnavailable(
                "The artifact store is unreachable right now; retry the upload."
            ) from None
    for _attempt in range(5):
        repository.lock(session, module.id)
        version = ModuleVersion(
            module_id=module.id, version=repository.max_version(session, module.id) + 1, sha256=sha256,
            size=size, format=parsed.format, storage_key=key, input_shape=parsed.input_shape,
            output_shape=output_shape, arch=parsed.arch, trained_on=parsed.trained_on,
            metrics=parsed.metrics, description=parsed.description, parents=[dict(p) for p in parents],
            job_id=job_id, job_role=job_role,
        )
        try:
            with savepoint(session):
                session.add(version)
                session.flush()
            # Loaded without touching Module.versions (lazy="raise"), so callers can read .module.
            set_committed_value(version, "module", module)
            return version, True
        except IntegrityError:
            if session.get_bind().dialect.name == "sqlite":
                session.rollback()
                raise Conflict("Another upload to this module finished first; retry the upload.") from None
            # Another upload won the race: for the same bytes, theirs is ours; else renumber.
            existing = repository.get_by_sha(session, module.id, sha256)
            if existing is not None:
                return existing, False
    raise Conflict("Too many concurrent uploads to this module; retry in a moment.")


def set_alias(session: Session, *, module: Module, alias: str, number: int) -> ModuleVersion:
    """Point `alias` of `module` at its version `number`."""
    if not re.match(ALIAS_PATTERN, alias) or alias == "latest":
        raise Unprocessable(
            f"Alias {alias!r} is invalid; start with a letter, use lowercase letters, digits, "
            "'.', '_' or '-' "
            "(and not `latest`)."
        )
    version = repository.get_version(session, module.id, number)
    if version is None:
        raise NotFound(f"Module {module.name!r} has no version {number}; list its versions to pick one.")
    repository.set_alias(session, module_id=module.id, alias=alias, version_id=version.id)
    return version


def warm_start_versions(
    session: Session, *, task: str, category: str, category_module: ModuleVersion,
    student_task_module: ModuleVersion, limit: int = 16,
) -> list[ModuleVersion]:
    """Latest versions of `task`'s adapter modules that map the category module's output to the student
    task module's input, nearest first (at most `limit`): the starting points an auto search is offered.

    Nearest: adapters learned from any version of this very category module (a new version of f is
    where reuse pays), then the category's other adapters, then adapters into the same student task
    module, then the rest; newest first within each group.
    """
    want_in, want_out = list(category_module.output_shape[1:]), list(student_task_module.input_shape[1:])
    found: list[ModuleVersion] = []
    after = None
    while True:
        page = repository.list_modules(session, kind="adapter", category=None, task=task, after=after,
                                       limit=200)
        for module, latest in page:
            if latest is None:
                continue
            version = repository.get_version(session, module.id, latest)
            config = ((version.arch or {}).get("config") or {}) if version is not None else {}
            if (version is not None and version.format == "safetensors"
                    and config.get("in_shape") == want_in and config.get("out_shape") == want_out):
                found.append(version)
        if len(page) < 200:
            break
        after = page[-1][0].id

    def nearness(version: ModuleVersion) -> tuple:
        parents = {(p.get("role"), p.get("name")) for p in version.parents or []}
        return (
            ("category", category_module.module.name) not in parents,
            version.module.category != category,
            ("student", student_task_module.module.name) not in parents,
            -version.module_id,
        )

    return sorted(found, key=nearness)[:limit]
