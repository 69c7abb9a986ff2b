"""Two real `graft worker` processes on one Redis queue: every job runs exactly once, both take work."""

from __future__ import annotations

from collections import Counter

from support.world import final, make_world, transplant, wait_for
from tests.jobs.conftest import (  # noqa: F401 (fixtures)
    module_database,
    queue_client,
    queue_settings,
    redis_broker,
    workers,
)

SMALL = {"epochs": 3, "train": {"batch_size": 16, "val_fraction": 0.0, "lr": 0.01}}
JOBS = 10


def test_two_workers_share_the_queue_each_job_once(queue_client, workers) -> None:  # noqa: F811
    api = queue_client
    world = make_world(api, "two", n=48)
    first, second = workers.start(), workers.start()

    ids = [transplant(api, world, result_module=f"two-adapter-{i}", seed=i, **SMALL) for i in range(JOBS)]
    jobs = [wait_for(api, job_id, final, timeout=90) for job_id in ids]

    assert [j["status"] for j in jobs] == ["succeeded"] * JOBS, [j["error"] for j in jobs]
    assert [j["attempts"] for j in jobs] == [1] * JOBS  # delivered once: nobody ran a job twice
    for i, job in enumerate(jobs):
        assert job["result"]["adapter"] == {"name": f"two-adapter-{i}", "version": 1}
        versions = api.get(f"/v1/modules/two-adapter-{i}/versions").json()
        assert [v["version"] for v in versions["items"]] == [1], versions  # one adapter version each
    by_worker = Counter(j["worker"].split("-", 1)[0] for j in jobs)
    assert set(by_worker) == {"w0", "w1"}, by_worker  # both processes took work
    logs = first.log(), second.log()
    for job_id in ids:  # each delivery is in exactly one worker's log
        assert sum(f"graft.transplant[{job_id}]" in log for log in logs) == 1, job_id
