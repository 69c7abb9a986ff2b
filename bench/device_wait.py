"""Benchmark only: `graft worker` whose training steps also wait, as a host does while its GPU computes.

This machine has no GPU. On a GPU worker the host thread spends most of a training step blocked
(kernel launches return at once; `loss.item()` waits for the device), so its CPU is nearly idle
while the job runs. To measure the job system (queue, claim, acknowledgements, progress writes,
registration) as it scales on such workers, `bench.scale` starts its "CPU-light" workers with

    python -m bench.device_wait worker ...      # GRAFT_BENCH_DEVICE_WAIT_S=0.1

which is the real `graft worker` (same Celery app, same task, same lifecycle, real training on the
CPU) with one addition: after every training step the worker sleeps GRAFT_BENCH_DEVICE_WAIT_S seconds,
standing in for the device time of that step. Nothing in the production code path knows about it:
the wait is an extra engine callback added here, in the benchmark's own worker process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

WAIT_ENV = "GRAFT_BENCH_DEVICE_WAIT_S"


class DeviceWait:
    """Engine callback: each step ends with `seconds` of waiting (the simulated device time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.waited = 0.0

    def on_step_end(self, info: dict) -> None:
        time.sleep(self.seconds)
        self.waited += self.seconds


def with_device_wait(run_transplant: Callable, seconds: float) -> Callable:
    """`run_transplant` with a DeviceWait appended to its callbacks."""

    def run(*args, callbacks=(), **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return run_transplant(*args, callbacks=[*callbacks, DeviceWait(seconds)], **kwargs)

    return run


def install(seconds: float) -> None:
    """Make this process's transplant task wait `seconds` after each training step."""
    import workers.tasks.transplant as task

    task.run_transplant = with_device_wait(task.run_transplant, seconds)


if __name__ == "__main__":
    install(float(os.environ[WAIT_ENV]))
    from graft.cli import app

    app()
