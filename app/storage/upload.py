"""Receive a multipart upload straight from the socket: one pass to a temp file, hashed as it comes.

Starlette's form parser would spool the whole body to its own temp file before a route runs, so a size
limit could only be checked after receiving everything; parsing the stream here lets an oversize body
be refused as soon as it crosses `max_upload_bytes` (or at once from its Content-Length).

With `start_put`, the file can also go on to the artifact store while it arrives: called when the
file part begins (with the parts before it, e.g. a `meta` that declares the sha256, the final key),
it may return a `PendingPut` that is fed each whole part as it lands on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from app.errors import BadRequest, TooLarge, UnsupportedFormat
from app.ops.metrics import UPLOAD_PHASE, UPLOADED_BYTES
from app.storage.base import PendingPut

# (the text parts received before the file part, the temp file's path) -> a PendingPut, or None.
StartPut = Callable[[dict[str, str], Path], PendingPut | None]

# Small non-file parts (the `meta` JSON) are kept in memory up to this size.
MAX_FIELD_BYTES = 1024 * 1024
# Multipart framing (boundaries, part headers, the meta part) on top of the file itself.
FRAMING_ALLOWANCE = 2 * MAX_FIELD_BYTES


@dataclass
class ReceivedUpload:
    """The file part, written to `path` (the caller deletes it), and the other parts as text."""

    path: Path
    sha256: str
    size: int
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)
    pending: PendingPut | None = None
    """The store upload fed while receiving (`start_put`); the caller completes or aborts it."""

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def multipart_openapi(meta_description: str) -> dict:
    """OpenAPI request body of an upload route (the body is parsed by hand, so it is declared here)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "meta"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "meta": {"type": "string", "description": meta_description},
                        },
                    }
                }
            },
        }
    }


class _Receiver:
    def __init__(self, tmp_dir: Path, max_bytes: int, file_field: str, start_put: StartPut | None) -> None:
        self.tmp_dir, self.max_bytes, self.file_field = tmp_dir, max_bytes, file_field
        self.start_put = start_put
        self.pending: PendingPut | None = None
        self.fields: dict[str, str] = {}
        self.hasher = hashlib.sha256()
        self.size = 0
        self.path: Path | None = None
        self.fh = None
        self.filename: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: str | None = None
        self._buffer = bytearray()
        self.error: Exception | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "name"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "value"),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def _add(self, data: bytes, start: int, end: int, which: str) -> None:
        if which == "name":
            self._header_name += data[start:end]
        else:
            self._header_value += data[start:end]

    def on_part_begin(self) -> None:
        self._headers, self._current, self._buffer = {}, None, bytearray()

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._current = name
        if name == self.file_field:
            if self.fh is not None:
                raise BadRequest(f"Send exactly one `{self.file_field}` part.")
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
            self.path = Path(tmp)
            self.fh = os.fdopen(fd, "wb")
            if self.start_put is not None:
                self.pending = self.start_put(dict(self.fields), self.path)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = memoryview(data)[start:end]  # no copy of the socket's chunk
        if self._current == self.file_field:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise TooLarge(
                    f"The file is larger than the server's limit of {self.max_bytes} bytes "
                    "(GRAFT_MAX_UPLOAD_BYTES); send a smaller file."
                )
            self.hasher.update(chunk)
            self.fh.write(chunk)
            if self.pending is not None and self.size >= self.pending.next_part_end:
                self.fh.flush()  # the part's sender reads the file, not our buffer
                self.pending.available(self.size)
        else:
            self._buffer += chunk
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise TooLarge(f"The `{self._current}` part is over {MAX_FIELD_BYTES} bytes; keep it small.")

    def on_part_end(self) -> None:
        if self._current and self._current != self.file_field:
            self.fields[self._current] = self._buffer.decode("utf-8", "replace")


async def receive_multipart(
    request: Request, *, tmp_dir: Path, max_bytes: int, file_field: str = "file",
    start_put: StartPut | None = None,
) -> ReceivedUpload:
    """Parse the request's multipart body: the file part to a temp file (sha256 as it streams).

    On any failure (bad body, too large, the client gone) the temp file is removed and a started
    `PendingPut` aborted before the error propagates.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UnsupportedFormat(
            "Send the upload as multipart/form-data with a `file` part and a `meta` JSON part."
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + FRAMING_ALLOWANCE:
        raise TooLarge(
            f"The request body ({length} bytes) is larger than the server's limit of {max_bytes} bytes "
            "(GRAFT_MAX_UPLOAD_BYTES); send a smaller file."
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(tmp_dir, max_bytes, file_field, start_put)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    started = time.perf_counter()
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if receiver.fh is None or receiver.path is None:
            raise BadRequest(f"The upload has no `{file_field}` part; attach the file as `{file_field}`.")
        receiver.fh.close()
        if receiver.pending is not None:
            receiver.pending.finish(receiver.size)
        UPLOAD_PHASE.labels("receive").observe(time.perf_counter() - started)
        UPLOADED_BYTES.inc(receiver.size)
    except BaseException as exc:
        if receiver.fh is not None:
            receiver.fh.close()
        if receiver.path is not None:
            receiver.path.unlink(missing_ok=True)
        if receiver.pending is not None:
            if isinstance(exc, Exception):  # aborting waits for parts in flight: off the event loop
                await run_in_threadpool(receiver.pending.abort)
            else:  # cancelled: an await here would be cancelled too, so abort right here
                receiver.pending.abort()
        if isinstance(exc, (TooLarge, BadRequest)) or not isinstance(exc, Exception):
            raise
        raise BadRequest(f"The multipart body could not be parsed ({exc}); resend it.") from None
    return ReceivedUpload(
        path=receiver.path, sha256=receiver.hasher.hexdigest(), size=receiver.size,
        filename=receiver.filename, fields=receiver.fields, pending=receiver.pending,
    )
