"""Compose and predict on each backend configuration (SQLite+folder, PostgreSQL+S3)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tests.compositions.conftest import FEAT_SHAPE, X_SHAPE, local_forward, make_module, npy, upload


def test_compose_and_predict(api, artifacts, tmp_path: Path) -> None:
    make_module(api, "bird-f", "category", category="bird")
    upload(api, "bird-f", artifacts.f, "torch_export", X_SHAPE)
    make_module(api, "generic", "task", task="classify")
    upload(api, "generic", artifacts.g_s, "torch_export", FEAT_SHAPE)
    make_module(api, "bird-h", "adapter", category="bird", task="classify")
    upload(api, "bird-h", artifacts.h, "safetensors", FEAT_SHAPE, arch=artifacts.h_spec,
           metrics={"agreement": 1})

    resp = api.post("/v1/compositions", json={"category": "bird", "task": "classify"})
    assert resp.status_code == 201, resp.text
    comp = resp.json()
    assert comp["adapter"] == {"name": "bird-h", "version": 1}

    x = np.random.default_rng(1).standard_normal((3, 3, 6, 6)).astype(np.float32)
    out = api.post(f"/v1/compositions/{comp['id']}/predict", content=npy(x),
                   headers={"Content-Type": "application/x-npy"})
    assert out.status_code == 200, out.text
    got = np.load(io.BytesIO(out.content), allow_pickle=False)
    assert np.abs(got - local_forward(api, comp, x, tmp_path)).max() <= 1e-5

    cells = api.get("/v1/grid").json()["cells"]
    assert cells == [{
        "category": "bird", "task": "classify", "status": "transplanted", "composition": comp["id"],
        "metrics": {"agreement": 1}, "category_module": {"name": "bird-f", "version": 1},
        "adapter": {"name": "bird-h", "version": 1}, "task_module": {"name": "generic", "version": 1},
        "job_id": None,
        "selection": {"rule": "newest",
                      "reason": "bird-h@1 is the newest adapter version without a held-out metric "
                                "(1 in the cell)"},
    }]
