"""Artifact store on any S3 server (AWS, MinIO, SeaweedFS) through boto3.

Uploads above `s3_multipart_threshold` go as concurrent multipart uploads (boto3's TransferConfig), or,
when the uploader declared the sha256 (the key) up front, as a multipart upload fed while the bytes still
arrive (`begin_put`, app/storage/s3_stream.py). Downloads stream the object body in chunks, or are
answered with a presigned URL (`download_url`); no direction holds a whole artifact in memory.
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, roles).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from app.config import Settings
from app.storage.base import ArtifactStore, PendingPut
from app.storage.s3_stream import S3MultipartPut, refresh_object


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str = "us-east-1",
        multipart_threshold: int = 16 * 1024 * 1024, presign: bool = False,
        public_endpoint_url: str | None = None, presign_expires_s: int = 300,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            max_pool_connections=32, s3={"addressing_style": "path"},
            signature_version="s3v4",  # presigned URLs too (boto3 would presign with SigV2)
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.presign, self.presign_expires_s = presign, presign_expires_s
        # A signature covers the host, so URLs for clients are signed for the host clients reach.
        public = public_endpoint_url or endpoint_url
        self.presigner = self.client if public == endpoint_url else boto3.client(
            "s3", endpoint_url=public, region_name=region, config=config
        )
        self.multipart_threshold = multipart_threshold
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(8 * 1024 * 1024, multipart_threshold),
            max_concurrency=8, use_threads=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ArtifactStore:
        parsed = urlparse(settings.resolved_artifacts_url)
        return cls(
            parsed.netloc, parsed.path, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            multipart_threshold=settings.s3_multipart_threshold, presign=settings.s3_presign_downloads,
            public_endpoint_url=settings.s3_public_endpoint_url,
            presign_expires_s=settings.s3_presign_expires_s,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, path: Path, key: str) -> None:
        # Content-addressed: an existing object already holds these exact bytes; it is made young again
        # so the sweeper's grace period covers this upload until its row commits.
        if self.exists(key) and refresh_object(self.client, self.bucket, self._key(key)):
            return
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def begin_put(self, key: str, path: Path, *, expected_size: int | None) -> PendingPut | None:
        if expected_size is None or expected_size < self.multipart_threshold:
            return None  # small (or of unknown size): one put_object after the fact is cheaper
        # Parts of the threshold's size (S3's smallest part is 5 MiB, the last one excepted).
        part_size = max(5 * 1024 * 1024, self.multipart_threshold)
        return S3MultipartPut(self.client, self.bucket, self._key(key), path, part_size=part_size)

    def abort_stale_uploads(self, older_than: datetime, *, dry_run: bool = False) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        aborted = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key("sha256/")):
            for upload in page.get("Uploads", ()):
                if upload["Initiated"] >= older_than:
                    continue  # may be an upload still in progress
                if not dry_run:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                aborted.append(upload["Key"][strip:])
        return aborted

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return self._chunks(body, chunk_size)

    @staticmethod
    def _chunks(body, chunk_size: int) -> Iterator[bytes]:  # noqa: ANN001
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def get_to_file(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(path), Config=self.transfer)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str = "sha256/") -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", ()):
                yield obj["Key"][strip:]

    def list_modified(self, prefix: str = "sha256/") -> Iterator[tuple[str, datetime]]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", ()):
                yield obj["Key"][strip:], obj["LastModified"]

    def download_url(self, key: str, *, filename: str) -> str | None:
        if not self.presign:
            return None
        # Presigning is local (no request to S3); S3 sends the filename and type the API would have.
        return self.presigner.generate_presigned_url(
            "get_object", ExpiresIn=self.presign_expires_s,
            Params={
                "Bucket": self.bucket, "Key": self._key(key),
                "ResponseContentType": "application/octet-stream",
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
        )

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

