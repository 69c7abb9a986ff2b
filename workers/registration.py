"""The registration tail every task shares: the result's module, and an artifact added as a version of it.

Runs inside the job's final transaction (`Register`, see `workers.lifecycle`): the version carries
`job_id` and `job_role`, so a second delivery of the same job registers nothing twice, and a rollback
leaves a stored object no row references to the sweeper's grace period.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.models import Module, ModuleVersion
from app.modules.service import add_version, check_job_can_write, file_sha256, get_or_create_module
from workers.lifecycle import JobFailed, JobRun


def result_module(session: Session, name: str, kind: str, *, owner_token_id: int | None, description: str,
                  what: str, **fields: str) -> Module:
    """Module `name` for a job's result, created (of `kind`, owned by the job's token) when missing;
    JobFailed if it is another kind or the job's token may not write it.

    what: the result, as the error names it ("the adapter", "the student's task module")."""
    module = get_or_create_module(session, name=name, kind=kind, description=description,
                                  owner_token_id=owner_token_id, **fields)
    if module.kind != kind:
        raise JobFailed(
            f"Module {name!r} is a {module.kind} module; {what} cannot be registered into it (give a "
            f"module name that is new or of kind {kind})."
        )
    # Checked again here (the request was checked too): another token may have created it since.
    reason = check_job_can_write(session, module, owner_token_id)
    if reason is not None:
        raise JobFailed(reason + ".")
    return module


def register_artifact(run: JobRun, session: Session, *, module: Module, data: bytes, filename: str,
                      meta: dict, parents: list[dict], job_role: str) -> ModuleVersion:
    """`data` added as a new version of `module` by job `run` (the same version when it already was)."""
    ctx = run.ctx
    with tempfile.TemporaryDirectory(prefix="graft-result-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        sha256 = file_sha256(path)[0]  # a rollback leaves the stored object to the sweeper (`graft gc`)
        version, _created = add_version(
            session, ctx.store, ctx.settings, module=module, file_path=path, meta=meta, parents=parents,
            job_id=run.job_id, job_role=job_role, sha256=sha256,
        )
    return version
