"""An S3 multipart upload fed while the file is still being received (`PendingPut` for `S3ArtifactStore`).

Parts are read back from the receiver's temp file (in the page cache: no copy held in our memory) by
a few threads, so the upload to S3 runs alongside the upload from the client instead of after it.

Each part is PUT to a presigned `upload_part` URL with sendfile(2): the kernel moves the bytes. boto3
would read, hash (SigV4 payload hash, CRC32) and send them in Python, and the API shares its cores
with everything else (the upload's CPU per process is in bench/results/registry.md).
The file's sha256 has been checked by then; the transfer itself is covered by TCP (or TLS). With an
HTTP(S) proxy configured in the environment, parts go through boto3 instead, which honours it.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from s3transfer.utils import ReadFileChunk

from app.storage.base import PendingPut

log = logging.getLogger(__name__)
# Per-part checksums boto3 may add (its default CRC32); S3 wants them again in the completion call.
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


class S3MultipartPut(PendingPut):
    """One multipart upload of the file at `path` to `bucket`/`key` (see `PendingPut`).

    While the file is still arriving, `receiving` parts are in flight: on the 2-core benchmark
    machine more senders only slowed the receiving down. Once it is complete, the rest drains with
    `concurrency` (bench/results/registry.md).
    """

    def __init__(self, client, bucket: str, key: str, path: Path, *, part_size: int,  # noqa: ANN001
                 receiving: int = 2, concurrency: int = 8) -> None:
        self.client, self.bucket, self.key, self.path = client, bucket, key, path
        self.part_size = part_size
        self.next_part_end = part_size
        self._sent = 0  # bytes handed to parts so far
        self._parts: list[Future] = []
        self._lock = threading.Lock()
        self._state = "open"  # open -> completed | aborted
        self.upload_id: str | None = None
        self.skipped = False  # the object already exists: content-addressed, so nothing to send
        self._via_boto3 = _proxied(client.meta.endpoint_url)  # a proxy is configured: boto3 honours it
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(receiving)  # parts in flight; widened by `finish`
        self._widen = concurrency - receiving
        # Started in a thread: the receiver calls us on the event loop, which must never block.
        self._started = self._pool.submit(self._start)

    def _start(self) -> None:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
            if refresh_object(self.client, self.bucket, self.key):  # young again: see S3 put_file
                self.skipped = True
                return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        with self._lock:
            if self._state != "open":
                return
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]

    def _send(self, number: int, start: int, length: int) -> dict | None:
        self._started.result()
        with self._slots:
            if self.skipped or self._state != "open":
                return None
            if self._via_boto3:
                return self._put_part_boto3(number, start, length)
            return {"PartNumber": number, "ETag": self._put_part(number, start, length)}

    def _put_part(self, number: int, start: int, length: int, attempts: int = 3) -> str:
        """PUT one part with sendfile to a presigned URL (see the module docstring); its ETag."""
        params = {"Bucket": self.bucket, "Key": self.key, "UploadId": self.upload_id, "PartNumber": number}
        url = urlsplit(self.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=3600))
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        error: Exception | None = None
        for attempt in range(attempts):
            conn = cls(url.hostname, url.port, timeout=60)
            try:
                conn.putrequest("PUT", f"{url.path}?{url.query}", skip_accept_encoding=True)
                conn.putheader("Content-Length", str(length))
                conn.endheaders()
                with open(self.path, "rb") as fh:
                    conn.sock.sendfile(fh, start, length)
                resp = conn.getresponse()
                body = resp.read(4000)
                if resp.status == 200 and resp.getheader("ETag"):
                    return resp.getheader("ETag")
                error = RuntimeError(f"S3 answered {resp.status} to part {number}: {body[:300]!r}")
                if resp.status < 500:
                    break  # refused, not a hiccup: retrying will not help
            except (OSError, http.client.HTTPException) as exc:
                error = exc
            finally:
                conn.close()
            time.sleep(0.2 * (attempt + 1))
        raise ConnectionError(f"part {number} of {self.key} was not stored: {error}")

    def _put_part_boto3(self, number: int, start: int, length: int) -> dict:
        with ReadFileChunk.from_filename(str(self.path), start, length, enable_callbacks=False) as body:
            resp = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body,
            )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        part.update({k: resp[k] for k in _CHECKSUMS if k in resp})
        return part

    def _submit(self, length: int) -> None:
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._send, number, self._sent, length))
        self._sent += length

    def available(self, nbytes: int) -> None:
        while self._state == "open" and nbytes - self._sent >= self.part_size:
            self._submit(self.part_size)
        self.next_part_end = self._sent + self.part_size

    def finish(self, size: int) -> None:
        self.available(size)
        if self._state == "open" and (size > self._sent or not self._parts):
            self._submit(size - self._sent)  # the last part may be short (S3 allows it for the last one)
        self.next_part_end = size + 1
        self._open_slots(self._widen)  # nothing left to receive: drain with every sender

    def _open_slots(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()
        self._widen -= n

    def wait(self) -> None:
        self._started.result()
        for part in self._parts:
            part.result()

    def complete(self) -> None:
        self.wait()
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"upload of {self.key} was {self._state}")
            if not self.skipped:
                parts = [p.result() for p in self._parts]
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
            self._state = "completed"
        self._pool.shutdown(wait=False)

    def abort(self) -> None:
        with self._lock:
            if self._state != "open":
                return
            self._state = "aborted"  # parts not started yet see this and send nothing
        self._open_slots(self._widen + 1)  # let senders waiting for a slot see it and return
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # the sweeper (`graft gc`) aborts stale uploads later
            log.warning("could not abort the multipart upload of %s: %s", self.key, exc)


def _proxied(endpoint_url: str) -> bool:
    """Whether the environment sends requests to `endpoint_url` through a proxy."""
    url = urlsplit(endpoint_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    return bool(proxy) and not urllib.request.proxy_bypass(url.hostname or "")

def refresh_object(client, bucket: str, key: str) -> bool:  # noqa: ANN001
    """Reset an object's LastModified (a copy onto itself); False when that failed (then re-upload it)."""
    try:
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                           MetadataDirective="REPLACE")
        return True
    except Exception as exc:  # noqa: BLE001 - e.g. objects over 5 GB cannot be copied in one request
        log.info("could not refresh %s (%s); uploading it again", key, exc)
        return False
