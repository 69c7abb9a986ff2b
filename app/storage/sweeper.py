"""The orphan sweeper: delete stored objects no module version or dataset references.

An upload stores its object before its row commits (so a row never points at missing bytes); a crash
between the two leaves an object nobody references. Objects younger than the grace period are kept,
since an upload in flight has stored its object but not yet committed its row.

A crash in the middle of an upload streamed to S3 leaves an incomplete multipart upload instead (its
parts take space but no key shows them); the sweep aborts those that are older than the grace period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from app.models import Dataset, ModuleVersion
from app.storage.base import ArtifactStore

log = logging.getLogger(__name__)
DEFAULT_GRACE = timedelta(hours=1)


@dataclass
class SweepReport:
    """What one sweep saw and did."""

    scanned: int = 0
    referenced: int = 0
    too_young: int = 0
    deleted: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)


def referenced_keys(session: Session) -> set[str]:
    """Every storage key a module version or a dataset row points at."""
    query = union(select(ModuleVersion.storage_key), select(Dataset.storage_key))
    return set(session.scalars(query))


def sweep_orphans(
    session: Session, store: ArtifactStore, *, grace: timedelta = DEFAULT_GRACE, dry_run: bool = False,
    now: datetime | None = None,
) -> SweepReport:
    """Delete objects older than `grace` that no row references, and abort incomplete uploads older than
    `grace`; the report lists both."""
    now = now or datetime.now(UTC)
    report = SweepReport()
    report.aborted_uploads = store.abort_stale_uploads(now - grace, dry_run=dry_run)
    for key in report.aborted_uploads:
        log.info("stale incomplete upload of %s%s", key, " (dry run)" if dry_run else " aborted")
    listed = list(store.list_modified())
    # Read the rows after listing: an object whose row commits in between is then seen as referenced.
    in_use = referenced_keys(session)
    for key, modified in listed:
        report.scanned += 1
        if key in in_use:
            report.referenced += 1
        elif now - modified < grace:
            report.too_young += 1
        else:
            if not dry_run:
                store.delete(key)
            log.info("orphan object %s%s", key, " (dry run)" if dry_run else " deleted")
            report.deleted.append(key)
    return report
