"""The Python client of a Graft server: push networks and data, transplant, compose, predict (HTTP only)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from graft._http import DEFAULT_URL, GraftError, Http
from graft.progress import FINAL, follow, job_updates

Ref = str | dict


class JobFailed(Exception):
    """A job the caller waited on ended without success; `job` holds its last state."""

    def __init__(self, job: dict) -> None:
        self.job = job
        error = job.get("error") or "no error recorded"
        super().__init__(f"job {job.get('id')} {job.get('status')}: {error}")


def split_ref(ref: Ref) -> tuple[str, str]:
    """(module name, version ref) of "name@N" | "name@alias" | "name" | {"name", "version"}."""
    if isinstance(ref, dict):
        return str(ref["name"]), str(ref.get("version") or "latest")
    name, _, version = str(ref).partition("@")
    return name, version or "latest"


def ref_str(ref: Ref) -> str:
    """A reference as the "name@version" string the API accepts everywhere."""
    name, version = split_ref(ref)
    return name if version == "latest" else f"{name}@{version}"


class Job:
    """A server-side job (transplant, amalgamation) followed by id."""

    def __init__(self, client: Client, data: dict) -> None:
        self._client = client
        self.data = data
        self.id: str = data.get("id") or data["job_id"]

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def result(self) -> dict | None:
        return self.data.get("result")

    def refresh(self) -> Job:
        self.data = self._client.job_data(self.id)
        return self

    def cancel(self) -> Job:
        self.data = self._client._http.json("POST", f"/v1/jobs/{self.id}/cancel") or self.data
        return self

    def wait(self, progress: bool = True, *, timeout: float | None = None, check: bool = True,
             poll_s: float = 1.0, label: str | None = None) -> dict:
        """Follow the job to its end (a progress bar when `progress`); its final state.

        With `check`, a job that did not succeed raises `JobFailed`.
        """
        updates = job_updates(self._client._http, self.id, poll_s=poll_s, timeout=timeout)
        state = follow(updates, label=label or f"job {self.id[:8]}", show=progress)
        self.data = state if state.get("status") in FINAL else self._client.job_data(self.id)
        if check and self.status != "succeeded":
            raise JobFailed(self.data)
        return self.data


class Client:
    """Talks to one Graft server; `url` and `token` default to $GRAFT_URL and $GRAFT_TOKEN."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 120.0) -> None:
        self.url = url or os.environ.get("GRAFT_URL") or DEFAULT_URL
        self._http = Http(self.url, token if token is not None else os.environ.get("GRAFT_TOKEN"), timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- reading ---------------------------------------------------------------------------------
    def _paged(self, path: str, params: dict | None = None, limit: int = 100) -> Iterator[dict]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        query["limit"] = limit
        while True:
            page = self._http.json("GET", path, params=query)
            yield from page.get("items", [])
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def health(self) -> dict:
        return self._http.json("GET", "/healthz")

    def modules(self, *, kind: str | None = None, category: str | None = None,
                task: str | None = None) -> list[dict]:
        return list(self._paged("/v1/modules", {"kind": kind, "category": category, "task": task}))

    def module(self, name: str) -> dict:
        return self._http.json("GET", f"/v1/modules/{name}")

    def version(self, ref: Ref) -> dict:
        name, version = split_ref(ref)
        return self._http.json("GET", f"/v1/modules/{name}/versions/{version}")

    def dataset(self, dataset_id: str) -> dict:
        return self._http.json("GET", f"/v1/datasets/{dataset_id}")

    def grid(self) -> dict:
        return self._http.json("GET", "/v1/grid")

    def jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The newest jobs first (at most `limit`)."""
        out: list[dict] = []
        for item in self._paged("/v1/jobs", {"status": status, "kind": kind}, limit=min(limit, 100)):
            out.append(item)
            if len(out) >= limit:
                break
        return out

    def job_data(self, job_id: str) -> dict:
        return self._http.json("GET", f"/v1/jobs/{job_id}")

    def job(self, job_id: str) -> Job:
        return Job(self, self.job_data(job_id))

    def cancel(self, job_id: str) -> dict:
        return self._http.json("POST", f"/v1/jobs/{job_id}/cancel")

    # -- pushing ---------------------------------------------------------------------------------
    def create_module(self, name: str, kind: str, *, category: str | None = None, task: str | None = None,
                      description: str | None = None, exist_ok: bool = True) -> dict:
        """Create module `name` (or, with `exist_ok`, return it when it exists with the same kind)."""
        body = {"name": name, "kind": kind, "category": category, "task": task, "description": description}
        try:
            body = {k: v for k, v in body.items() if v is not None}
            return self._http.json("POST", "/v1/modules", json=body)
        except GraftError as exc:
            if exc.status != 409 or not exist_ok:
                raise
        existing = self.module(name)
        if existing.get("kind") != kind:
            raise GraftError(409, f"module {name!r} exists with kind {existing.get('kind')!r}, not {kind!r}; "
                                  "choose another name")
        return existing

    def upload_version(self, name: str, path: Path, meta: dict) -> dict:
        """Upload one artifact file as a new version of module `name` (idempotent on its bytes).

        The file's sha256 goes in `meta` (sent before the file): the server can then store the bytes
        while they arrive, and it refuses them if they changed on the way.
        """
        with open(path, "rb") as fh:
            meta = {**meta, "sha256": hashlib.file_digest(fh, "sha256").hexdigest()}
            fh.seek(0)
            files = {"file": (Path(path).name, fh, "application/octet-stream")}
            return self._http.json("POST", f"/v1/modules/{name}/versions", files=files,
                                   data={"meta": json.dumps(meta)})

    def push_module(self, module: Any, example_input: Any, *, kind: str, name: str,
                    category: str | None = None, task: str | None = None, format: str = "torch_export",
                    trained_on: list[str] | None = None, metrics: dict | None = None,
                    description: str | None = None) -> dict:
        """Export `module` (eval mode) and upload it as a version of `name`; input_shape from the example."""
        from graft.export import export_module, shape_of

        self.create_module(name, kind, category=category, task=task, description=description)
        meta: dict[str, Any] = {"format": format, "input_shape": shape_of(example_input)}
        if trained_on is not None:
            meta["trained_on"] = trained_on
        if metrics is not None:
            meta["metrics"] = metrics
        if description is not None:
            meta["description"] = description
        with tempfile.TemporaryDirectory(prefix="graft-push-") as tmp:
            path = Path(tmp) / f"{name}.{'pt2' if format == 'torch_export' else 'pt'}"
            export_module(module, example_input, format, path)
            return self.upload_version(name, path, meta)

    def push_teacher(self, model: Any, split_at: str, example_input: Any, *, category: str, task: str,
                     name_prefix: str | None = None, format: str = "torch_export",
                     metrics: dict | None = None) -> dict[str, dict]:
        """Split one pre-trained network after submodule `split_at` into f and g_T and upload both.

        f becomes version of `<prefix>-f` (kind category), g_T of `<prefix>-<task>` (kind task);
        the prefix defaults to the category. Returns {"category_module": ..., "teacher_task_module": ...}.
        """
        import torch

        from graft.split import split_network

        f, g = split_network(model, split_at, example_input)
        prefix = name_prefix or category
        with torch.no_grad():
            features = f(example_input)
        fv = self.push_module(f, example_input, kind="category", name=f"{prefix}-f", category=category,
                              format=format, trained_on=[category],
                              description=f"category module of a {category} {task} teacher")
        gv = self.push_module(g, features, kind="task", name=f"{prefix}-{task}", task=task,
                              category=category, format=format, trained_on=[category], metrics=metrics,
                              description=f"teacher task module for {category} ({task})")
        return {"category_module": fv, "teacher_task_module": gv}

    def push_dataset(self, x: Any, y: Any = None, *, name: str, category: str | None = None) -> dict:
        """Upload samples `x` (float32, N×…) with optional labels/targets `y` as an .npz dataset."""
        arrays = {"x": np.asarray(_numpy(x), dtype=np.float32)}
        if y is not None:
            arrays["y"] = np.asarray(_numpy(y))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return self._upload_dataset(buf.getvalue(), name=name, category=category)

    def push_dataset_file(self, path: str | Path, *, name: str, category: str | None = None) -> dict:
        """Upload an existing .npz file (array `x`, optional `y`) as a dataset."""
        return self._upload_dataset(Path(path).read_bytes(), name=name, category=category)

    def _upload_dataset(self, npz: bytes, *, name: str, category: str | None) -> dict:
        meta = {"name": name, **({"category": category} if category else {})}
        files = {"file": (f"{name}.npz", npz, "application/octet-stream")}
        return self._http.json("POST", "/v1/datasets", files=files, data={"meta": json.dumps(meta)})

    # -- jobs, compositions, inference ------------------------------------------------------------
    def transplant(self, *, category_module: Ref, teacher_task_module: Ref, student_task_module: Ref,
                   dataset: str | None = None, method: str = "back_distillation",
                   adapter: dict | str | None = None,
                   steps: int | None = None, epochs: int | None = None, seed: int | None = None,
                   reference_category_module: Ref | None = None,
                   result_module: str | None = None, train: dict | None = None,
                   synthesis: dict | None = None) -> Job:
        """Request a transplant; the returned `Job` can `wait()` for it (`train`: TrainConfig knobs).

        steps / epochs: the budget (default: the server's, sized to the data); reference_category_module:
        the student task module's own category module for the same inputs, if there is one.
        dataset None: a data-free transplant on inputs the worker synthesises from the networks;
        synthesis: {"method": "auto"|"deepinversion"|"features"|"noise", "n", "steps", "seed", …}."""
        body: dict[str, Any] = {
            "category_module": ref_str(category_module),
            "teacher_task_module": ref_str(teacher_task_module),
            "student_task_module": ref_str(student_task_module),
            "method": method,
        }
        extra = {"dataset": dataset, "synthesis": synthesis, "adapter": adapter, "steps": steps,
                 "epochs": epochs, "seed": seed,
                 "reference_category_module": ref_str(reference_category_module) if reference_category_module
                 else None, "result_module": result_module, "train": train}
        body.update({k: v for k, v in extra.items() if v is not None})
        data = self._http.json("POST", "/v1/transplants", json=body)
        return Job(self, {"id": data["job_id"], **data})

    def compose(self, category: str | None = None, task: str | None = None, *,
                category_module: Ref | None = None, adapter: Ref | None = None,
                task_module: Ref | None = None) -> dict:
        """A composition for a category × task cell, or of explicit pieces (adapter None: native)."""
        if category_module is not None or task_module is not None:
            if category_module is None or task_module is None:
                raise ValueError("an explicit composition needs both category_module and task_module")
            body: dict[str, Any] = {"category_module": ref_str(category_module),
                                    "task_module": ref_str(task_module),
                                    "adapter": ref_str(adapter) if adapter is not None else None}
        elif category and task:
            body = {"category": category, "task": task}
        else:
            raise ValueError("compose needs (category, task) or explicit category_module and task_module")
        return self._http.json("POST", "/v1/compositions", json=body)

    def predict(self, composition_id: str, x: Any, *, chunk: int = 64) -> np.ndarray:
        """Run composition `composition_id` on the batch `x`; its outputs as a numpy array.

        Large batches are sent `chunk` samples per request (the server caps one request's batch).
        """
        x = np.ascontiguousarray(np.asarray(_numpy(x), dtype=np.float32))
        if x.ndim and x.shape[0] > chunk:
            starts = range(0, len(x), chunk)
            parts = [self.predict(composition_id, x[i:i + chunk], chunk=chunk) for i in starts]
            return np.concatenate(parts)
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        response = self._http.request(
            "POST", f"/v1/compositions/{composition_id}/predict", content=buf.getvalue(),
            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
        )
        if response.headers.get("content-type", "").startswith("application/json"):
            return np.asarray(response.json()["outputs"], dtype=np.float32)
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def pull(self, ref: Ref, path: str | Path) -> Path:
        """Download the artifact of version `ref` to `path` (a folder gets `<name>@<version>.<ext>`)."""
        name, version = split_ref(ref)
        info = self.version(ref)
        dest = Path(path)
        if dest.is_dir():
            ext = {"torch_export": "pt2", "torchscript": "pt", "safetensors": "safetensors"}.get(
                info.get("format", ""), "bin")
            dest = dest / f"{name}@{info.get('version', version)}.{ext}"
        part = dest.with_name(dest.name + ".part")
        with open(part, "wb") as fh:
            self._http.download(f"/v1/modules/{name}/versions/{info.get('version', version)}/artifact", fh)
        part.replace(dest)  # never leave a half-written file under the final name
        return dest


def _numpy(x: Any) -> Any:
    """Tensors (detached, on CPU) and array-likes as numpy arrays."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x
