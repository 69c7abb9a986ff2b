"""A job loads its modules through the same operator check as uploads: a stored artifact whose graph was
changed after upload to call `aten.from_file` fails the job, naming the operator, and writes no file."""

from __future__ import annotations

from pathlib import Path

from support.world import X_SHAPE, World, final, tiny_nets, transplant, upload_module, wait_for
from tests.hardening import hostile_graphs as hostile


def test_job_refuses_a_stored_graph_changed_to_call_from_file(embedded_api, embedded_world: World,
                                                               tmp_path: Path) -> None:
    api = embedded_api
    f, _, _ = tiny_nets(5)  # bytes of its own: the stored object is not shared with other tests
    version = upload_module(api, "hostile-f", "category", f, X_SHAPE, category=embedded_world.category)
    settings = api.app.state.settings
    stored = next(p for p in Path(settings.data_dir).rglob(version["sha256"]) if p.is_file())
    target = tmp_path / "written-by-a-job.bin"
    stored.chmod(0o644)
    stored.write_bytes(hostile.from_file_graph(str(target), shared=True))
    job_id = transplant(api, embedded_world, category_module="hostile-f@1", result_module="hostile-h",
                        epochs=1)
    job = wait_for(api, job_id, final, timeout=60)
    assert job["status"] == "failed" and "aten.from_file" in job["error"], job
    assert not target.exists()
