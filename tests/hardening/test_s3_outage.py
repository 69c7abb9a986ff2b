"""The S3 server stopped: uploads answer 503 and leave no row; after a restart downloads work again.

This test starts its own SeaweedFS (the session's shared one must stay up for the other tests), stops
it with SIGTERM and starts it again on the same ports and folder.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from support.services import ACCESS_KEY, SECRET_KEY, S3Server, _free_ports, _weed_binary, s3_settings
from tests.app.test_modules import conv_net, make_module, upload
from tests.conftest import ADMIN_TOKEN
from transplant.artifacts import save_module


class Weed:
    """One SeaweedFS server that can be stopped and started again with the same ports and data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master, self.volume, self.filer, self.s3 = _free_ports(4)
        self.server = S3Server(endpoint=f"http://127.0.0.1:{self.s3}", log_path=workdir / "weed.log")
        self.proc: subprocess.Popen | None = None
        self.started_once = False

    def start(self, timeout_s: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _weed_binary(), "server", f"-dir={self.workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master}", f"-master.port.grpc={self.master + 10000}",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume + 10000}", "-volume.max=64",
            "-volume.preStopSeconds=0", "-master.volumeSizeLimitMB=128",
            f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer + 10000}",
            f"-filer.localSocket={self.workdir}/filer.sock",
            "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3 + 10000}", "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.workdir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                client = self.server.client()
                if not self.started_once:
                    client.create_bucket(Bucket=self.server.bucket)
                client.put_object(Bucket=self.server.bucket, Key="probe", Body=b"ok")
                self.started_once = True
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"SeaweedFS did not start: {(self.workdir / 'weed.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def weed(tmp_path: Path):
    server = Weed(tmp_path / "weed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_s3_down_upload_503_no_row_then_downloads_after_restart(weed: Weed, pg_database, tmp_path) -> None:
    settings = s3_settings(weed.server, pg_database, tmp_path / "graft", bootstrap_token=ADMIN_TOKEN)
    first = save_module(conv_net(), torch.zeros(2, 3, 8, 8), "torch_export")
    second = save_module(torch.nn.Sequential(conv_net(), torch.nn.ReLU()).eval(), torch.zeros(2, 3, 8, 8),
                         "torch_export")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        make_module(api)
        assert upload(api, "bird-f", first).status_code == 201
        weed.stop()

        down = upload(api, "bird-f", second)
        assert down.status_code == 503, down.text
        assert "retry" in down.json()["detail"]
        assert [v["version"] for v in api.get("/v1/modules/bird-f").json()["versions"]] == [1]
        assert api.get("/v1/modules/bird-f/versions/2").status_code == 404
        assert not list((settings.data_dir / "incoming").glob("*"))

        weed.start()
        got = api.get("/v1/modules/bird-f/versions/1/artifact")
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(first).hexdigest()
        again = upload(api, "bird-f", second)
        assert again.status_code == 201, again.text
        assert again.json()["version"] == 2
