"""The client against a real server on PostgreSQL + SeaweedFS that streams uploads and presigns downloads.

The presigned URLs point at a small recording proxy in front of SeaweedFS (the deployment case of
`GRAFT_S3_PUBLIC_ENDPOINT_URL`: clients reach S3 under another name than the API does), so the test
sees exactly what the client sent to the S3 side: never the Graft bearer token.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from graft import Client
from graft.local_server import LocalServer
from support.services import ACCESS_KEY, SECRET_KEY, S3Server
from transplant.artifacts import save_module


class RecordingProxy(ThreadingHTTPServer):
    """Forwards GETs to the S3 server unchanged (Host included: it is signed) and records their headers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.seen: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        proxy: RecordingProxy = self.server  # type: ignore[assignment]
        headers = dict(self.headers.items())
        proxy.seen.append({"path": self.path, **{k.lower(): v for k, v in headers.items()}})
        conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        conn.request("GET", self.path, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("connection", "transfer-encoding"):
                self.send_header(key, value)
        self.end_headers()
        while chunk := resp.read(1 << 20):
            self.wfile.write(chunk)
        conn.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(seaweedfs: S3Server) -> Iterator[RecordingProxy]:
    server = RecordingProxy(seaweedfs.endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3_server(
    seaweedfs: S3Server, pg_database: str, proxy: RecordingProxy, tmp_path: Path
) -> Iterator[LocalServer]:
    env = {
        "GRAFT_DATABASE_URL": pg_database,
        "GRAFT_ARTIFACTS_URL": f"s3://{seaweedfs.bucket}/pull-{tmp_path.name[-12:]}",
        "GRAFT_S3_ENDPOINT_URL": seaweedfs.endpoint,
        "GRAFT_S3_PUBLIC_ENDPOINT_URL": proxy.url,
        "GRAFT_S3_PRESIGN_DOWNLOADS": "true",
        "GRAFT_S3_MULTIPART_THRESHOLD": str(5 * 1024 * 1024),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    server = LocalServer(tmp_path / "data", env=env)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"the Graft server did not start: {exc}")
    yield server
    server.stop()


def test_pull_follows_the_presigned_redirect_without_the_token(s3_server, proxy, tmp_path) -> None:
    artifact = tmp_path / "big.pt"
    torch.manual_seed(1)
    linear = torch.nn.Linear(1400, 1400).eval()
    artifact.write_bytes(save_module(linear, torch.zeros(2, 1400), "torch_export"))
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    with Client(s3_server.url, s3_server.token) as c:
        c.create_module("big", "task", task="t")
        # Over the threshold with its sha256 declared by the client: streamed to S3 as it arrives.
        v = c.upload_version("big", artifact, {"format": "torch_export", "input_shape": [None, 1400]})
        assert (v["sha256"], v["size"]) == (sha, artifact.stat().st_size)
        pulled = c.pull("big@1", tmp_path / "out.pt")
    assert hashlib.sha256(pulled.read_bytes()).hexdigest() == sha
    assert pulled.read_bytes() == artifact.read_bytes()
    assert len(proxy.seen) == 1, proxy.seen  # the bytes came from the S3 side, through the redirect
    seen = proxy.seen[0]
    assert "authorization" not in seen and s3_server.token not in str(seen)
    assert "X-Amz-Signature=" in seen["path"]
