"""An S3 multipart upload fed while the file is still being received (`PendingPut` for `S3ArtifactStore`).

Parts are read back from the receiver's temp file (in the page cache: no copy held in our memory) by
a few threads, so the upload to S3 runs alongside the upload from the client instead of after it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import ClientError
from s3transfer.utils import ReadFileChunk

from app.storage.base import PendingPut

log = logging.getLogger(__name__)
# Per-part checksums boto3 may add (its default CRC32); S3 wants them again in the completion call.
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


class S3MultipartPut(PendingPut):
    """One multipart upload of the file at `path` to `bucket`/`key` (see `PendingPut`)."""

    def __init__(self, client, bucket: str, key: str, path: Path, *, part_size: int,  # noqa: ANN001
                 concurrency: int = 4) -> None:
        self.client, self.bucket, self.key, self.path = client, bucket, key, path
        self.part_size = part_size
        self.next_part_end = part_size
        self._sent = 0  # bytes handed to parts so far
        self._parts: list[Future] = []
        self._lock = threading.Lock()
        self._state = "open"  # open -> completed | aborted
        self.upload_id: str | None = None
        self.skipped = False  # the object already exists: content-addressed, so nothing to send
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-part")
        # Started in a thread: the receiver calls us on the event loop, which must never block.
        self._started = self._pool.submit(self._start)

    def _start(self) -> None:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
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
        if self.skipped or self._state != "open":
            return None
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
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # the sweeper (`graft gc`) aborts stale uploads later
            log.warning("could not abort the multipart upload of %s: %s", self.key, exc)
