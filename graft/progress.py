"""Follow a job to its end: its server-sent event stream feeds a rich progress bar; polling as fallback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graft._http import GraftError, Http, iter_sse

FINAL = ("succeeded", "failed", "cancelled")


def _merge(state: dict, event: str, payload: Any) -> dict:
    """Fold one event into the job state: a whole job, a progress record, or a status change."""
    if not isinstance(payload, dict):
        return state
    if "status" in payload or "progress" in payload:
        state = {**state, **{k: v for k, v in payload.items() if v is not None}}
    elif event in FINAL:
        state = {**state, "status": event}
    else:  # a bare progress record: {"epoch", "epochs", "loss", ...}
        state = {**state, "progress": {**(state.get("progress") or {}), **payload}}
    return state


def job_updates(
    http: Http, job_id: str, *, poll_s: float = 1.0, timeout: float | None = None
) -> Iterator[dict]:
    """Successive states of job `job_id` until it ends: from its event stream, else by polling."""
    deadline = None if timeout is None else time.monotonic() + timeout
    state = http.json("GET", f"/v1/jobs/{job_id}")
    yield state
    if state.get("status") in FINAL:
        return
    try:
        lines = http.stream_lines(f"/v1/jobs/{job_id}/events", timeout=max(poll_s * 30, 30))
        for event, data in iter_sse(lines):
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            state = _merge(state, event, payload)
            yield state
            if state.get("status") in FINAL or (deadline and time.monotonic() > deadline):
                break
    except GraftError:
        # No event stream, or it broke off or went quiet: polling gives the same states, only coarser
        # (and raises ServerUnreachable itself when the server is really gone).
        pass
    while True:
        state = http.json("GET", f"/v1/jobs/{job_id}")
        yield state
        if state.get("status") in FINAL:
            return
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {state.get('status')} after {timeout:.0f} s")
        time.sleep(poll_s)


def _describe(state: dict, label: str) -> str:
    progress = state.get("progress") or {}
    loss = progress.get("loss")
    text = f"{label} [{state.get('status', '?')}]"
    return text + (f" loss {loss:.4g}" if isinstance(loss, (int, float)) else "")


def follow(
    updates: Iterator[dict],
    *,
    label: str,
    show: bool = True,
    console: Console | None = None,
    on_update: Callable[[dict], None] | None = None,
) -> dict:
    """Drain `updates`, drawing a bar of epochs done (when `show`); the last state."""
    state: dict = {}
    if not show:
        for state in updates:
            if on_update:
                on_update(state)
        return state
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)
        for state in updates:
            progress = state.get("progress") or {}
            epochs, epoch = progress.get("epochs"), progress.get("epoch")
            if state.get("status") == "succeeded" and epochs:
                epoch = epochs
            bar.update(task, total=epochs or None, completed=epoch or 0, description=_describe(state, label))
            if on_update:
                on_update(state)
    return state
