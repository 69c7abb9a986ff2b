"""Uploads streamed to S3 while they arrive, and downloads answered by a 307 to a presigned URL.

On the real SeaweedFS and PostgreSQL of the test run. A streamed upload goes under its final key as a
multipart upload; each way it can fail (wrong declared digest, a refused artifact, too large, the
client gone) must leave no object, no row and no incomplete multipart upload behind.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlparse

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from app.main import create_app
from app.storage import key_for
from app.storage.s3_stream import S3MultipartPut
from app.storage.sweeper import sweep_orphans
from support.services import s3_settings
from tests.app.test_modules import make_module
from tests.conftest import ADMIN_TOKEN
from tests.ops.test_metrics import growth
from transplant.artifacts import save_module

PART = 5 * 1024 * 1024  # S3's smallest part: the threshold too, so a few-MB artifact is streamed
SIDE = 1600  # a Linear(1600, 1600): 10.2 MB of weights, two parts (more than the 7.9 MB sent before a gate)


@pytest.fixture(scope="module")
def big() -> bytes:
    torch.manual_seed(0)
    return save_module(torch.nn.Linear(SIDE, SIDE, bias=False).eval(), torch.zeros(2, SIDE), "torch_export")


@pytest.fixture
def s3_api(seaweedfs, pg_database, tmp_path):
    settings = s3_settings(
        seaweedfs, pg_database, tmp_path / "graft", bootstrap_token=ADMIN_TOKEN,
        s3_multipart_threshold=PART, s3_presign_downloads=True,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        make_module(api, "big", "task", task="t")
        yield api


@pytest.fixture
def s3_calls(s3_api, monkeypatch) -> dict[str, int]:
    """How many multipart uploads the store began and aborted, and how many parts it stored."""
    client = s3_api.app.state.store.client
    calls = {"create_multipart_upload": 0, "abort_multipart_upload": 0, "part": 0}
    for name in ("create_multipart_upload", "abort_multipart_upload"):
        real = getattr(client, name)

        def counted(*args, _real=real, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)
    real_put = S3MultipartPut._put_part

    def counted_part(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        etag = real_put(self, *args, **kwargs)
        calls["part"] += 1
        return etag

    monkeypatch.setattr(S3MultipartPut, "_put_part", counted_part)
    return calls


def send(api, data: bytes, sha256: str | None, **meta):
    meta = {"format": "torch_export", "input_shape": [None, SIDE], **meta}
    if sha256 is not None:
        meta["sha256"] = sha256
    files = {"file": ("big.pt", data)}
    return api.post("/v1/modules/big/versions", files=files, data={"meta": json.dumps(meta)})


def incomplete_uploads(api) -> list[dict]:
    store = api.app.state.store
    listed = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix + "/")
    return listed.get("Uploads", [])


def assert_nothing_left(api, sha256: str) -> None:
    assert api.get("/v1/modules/big").json()["versions"] == []
    assert not api.app.state.store.exists(key_for(sha256))
    assert incomplete_uploads(api) == []
    assert not list((api.app.state.settings.data_dir / "incoming").glob("*"))


@pytest.mark.parametrize("sender", ["sendfile", "boto3"])
def test_streamed_upload_then_presigned_download(s3_api, s3_calls, big, monkeypatch, sender: str) -> None:
    """Parts go by sendfile to presigned part URLs, or through boto3 when a proxy is configured."""
    store = s3_api.app.state.store
    if sender == "boto3":
        monkeypatch.setattr("app.storage.s3_stream._proxied", lambda url: True)
    sha = hashlib.sha256(big).hexdigest()

    def no_second_put(path, key):  # noqa: ANN001
        raise AssertionError("a declared digest must stream, not put the file again")

    monkeypatch.setattr(store, "put_file", no_second_put)
    before = s3_api.get("/metrics").text
    resp = send(s3_api, big, sha)
    assert resp.status_code == 201, resp.text
    assert (resp.json()["sha256"], resp.json()["size"]) == (sha, len(big))
    assert store.exists(key_for(sha)) and incomplete_uploads(s3_api) == []
    assert s3_calls["create_multipart_upload"] == 1 and s3_calls["abort_multipart_upload"] == 0
    assert s3_calls["part"] == (2 if sender == "sendfile" else 0)  # 5 MiB + the rest
    assert send(s3_api, big, sha).status_code == 200  # same bytes again: the same version, nothing sent

    # Where the uploads' time went (/metrics): both bodies were received, only the first was probed
    # and stored.
    after = s3_api.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return growth(before, after, name, **labels)

    assert grew("graft_upload_phase_seconds_count", phase="receive") == 2
    assert grew("graft_upload_phase_seconds_count", phase="probe") == 1
    assert grew("graft_upload_phase_seconds_count", phase="store") == 1
    assert grew("graft_upload_phase_seconds_sum", phase="probe") > 0
    assert grew("graft_uploaded_bytes_total") == 2 * len(big)

    redirect = s3_api.get("/v1/modules/big/versions/1/artifact", follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["etag"] == f'"{sha}"'
    location = redirect.headers["location"]
    assert urlparse(location).netloc == urlparse(store.client.meta.endpoint_url).netloc
    unchanged = s3_api.get("/v1/modules/big/versions/1/artifact", headers={"If-None-Match": f'"{sha}"'},
                           follow_redirects=False)
    assert unchanged.status_code == 304

    got = httpx.get(location)  # a plain client: no Graft token, the URL's signature is the credential
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == sha and got.content == big
    assert 'filename="big-1.pt2"' in got.headers.get("content-disposition", "")


@pytest.fixture
def live(s3_api) -> Iterator[int]:
    """The same app served by a real uvicorn (in a thread) on a free port: bodies arrive in chunks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(s3_api.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def wait_for(condition, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def raw_upload(port: int, meta: dict, data: bytes, *, gate, finish: bool) -> int | None:  # noqa: ANN001
    """POST `data` in two halves over a socket: the rest only once `gate()` holds (then the status), or,
    with `finish` False, close the connection there instead (the client is gone)."""
    boundary = "graftboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n{json.dumps(meta)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pt\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    request = (f"POST /v1/modules/big/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n").encode()
    cut = PART + PART // 2  # one whole part and half of the next
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(request + head + data[:cut])
        wait_for(gate, "a part on its way to S3")
        if not finish:
            return None
        try:
            conn.sendall(data[cut:] + tail)
        except OSError:  # the server answered (413) and stopped reading
            pass
        status_line = conn.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize("case", ["wrong_digest", "refused_artifact", "too_large", "client_gone"])
def test_a_failed_streamed_upload_leaves_nothing(s3_api, s3_calls, live, big, case: str) -> None:
    """Each failure after a part has gone to S3 (the upload is held back until one has)."""
    sha = hashlib.sha256(big).hexdigest()
    meta = {"format": "torch_export", "input_shape": [None, SIDE], "sha256": sha}
    if case == "wrong_digest":
        meta["sha256"] = hashlib.sha256(b"other bytes").hexdigest()
    elif case == "refused_artifact":
        meta["input_shape"] = [None, SIDE + 1]  # the probe fails on this shape
    elif case == "too_large":
        # Under the early Content-Length check (limit + framing allowance), over the limit mid-stream.
        s3_api.app.state.settings.max_upload_bytes = len(big) - 1024 * 1024
    status = raw_upload(live, meta, big, gate=lambda: s3_calls["part"] >= 1,
                        finish=case != "client_gone")
    assert status == {"wrong_digest": 422, "refused_artifact": 422, "too_large": 413}.get(case)
    # The abort runs as the request ends, which for a vanished client is after we stopped looking.
    wait_for(lambda: s3_calls["abort_multipart_upload"] == 1, "the multipart upload to be aborted")
    assert s3_calls["create_multipart_upload"] == 1
    assert_nothing_left(s3_api, sha if case != "wrong_digest" else meta["sha256"])
    assert not s3_api.app.state.store.exists(key_for(sha))


def test_sweeper_aborts_stale_incomplete_uploads(s3_api) -> None:
    """A crash mid-upload leaves an incomplete multipart upload: swept once older than the grace period."""
    store = s3_api.app.state.store
    key = store._key(key_for("cd" * 32))
    upload_id = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    with s3_api.app.state.sessionmaker() as session:
        young = sweep_orphans(session, store, grace=timedelta(hours=1))
        assert young.aborted_uploads == [] and len(incomplete_uploads(s3_api)) == 1
        dry = sweep_orphans(session, store, grace=timedelta(0), dry_run=True)
        assert dry.aborted_uploads == [key_for("cd" * 32)] and len(incomplete_uploads(s3_api)) == 1
        swept = sweep_orphans(session, store, grace=timedelta(0))
    assert swept.aborted_uploads == [key_for("cd" * 32)]
    assert incomplete_uploads(s3_api) == []
