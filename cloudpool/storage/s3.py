"""Amazon S3 storage (``s3://bucket/key``) through boto3, and the S3 API code COS shares.

This module owns everything that speaks the S3 API: ranged GETs, ListObjectsV2 paging,
DeleteObjects batching, multipart uploads and the translation of S3 error codes into
the ``OSError`` family. ``S3CompatibleStorage`` is written against an ``_SDK`` bundle
(the client factory, ``Config``, ``TransferConfig`` and exception classes), so the same
code serves boto3 here and IBM's fork ``ibm_boto3`` in ``cos.py``; a subclass only says
how to build the client (which options are credentials, which endpoint).

Credentials come only from the ``aws_*`` options or, when absent, from boto3's own
chain (environment, profile, instance role); they are ``secret_option_names``, so they
never reach a payload. ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured by
boto3 itself when ``endpoint_url`` is not set.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, ClassVar, Dict, FrozenSet, Iterable, Iterator, Optional

import boto3
import boto3.s3.transfer
import botocore.config
import botocore.exceptions
import botocore.utils

from .base import Bytes, ObjectInfo, PerProcess, StorageBackend

__all__ = ["S3Storage", "S3CompatibleStorage"]

MiB = 1024 * 1024

# Codes S3 (and S3-compatible servers) use for a refused identity or signature.
_DENIED_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity",
    "AccountProblem", "403", "Forbidden", "Unauthorized", "401",
})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})


@dataclass(frozen=True)
class _SDK:
    """The parts of a boto3-shaped SDK that the shared code needs."""

    session_factory: Any          # boto3.session.Session
    config_cls: Any               # botocore.config.Config
    transfer_config_cls: Any      # boto3.s3.transfer.TransferConfig
    client_error: type            # botocore.exceptions.ClientError
    core_error: type              # botocore.exceptions.BotoCoreError
    no_credentials_errors: tuple  # NoCredentialsError, PartialCredentialsError, ...
    content_length: Callable[[Any], Optional[int]]  # botocore.utils.determine_content_length


BOTO3 = _SDK(
    session_factory=boto3.session.Session,
    config_cls=botocore.config.Config,
    transfer_config_cls=boto3.s3.transfer.TransferConfig,
    client_error=botocore.exceptions.ClientError,
    core_error=botocore.exceptions.BotoCoreError,
    no_credentials_errors=(botocore.exceptions.NoCredentialsError,
                           botocore.exceptions.PartialCredentialsError),
    content_length=botocore.utils.determine_content_length,
)


class _KeepOpen:
    """Reads through to the caller's file but never closes it.

    s3transfer closes the file object it uploads from; that file is the caller's (for
    ``open("wb")`` it is the writer whose ``close()`` started this very upload).
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._f.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        return None


class S3CompatibleStorage(StorageBackend):
    """The S3 API over one bucket; subclasses pick the SDK and build the client."""

    sdk: ClassVar[_SDK]
    #: Keys per ListObjectsV2 page (S3's maximum is 1000; tests lower it to exercise paging).
    list_page_size: ClassVar[int] = 1000
    #: Objects this big or bigger are uploaded by ``put_file`` in parts of this size.
    multipart_chunksize: ClassVar[int] = 8 * MiB
    #: The executor fetches results from many threads at once; botocore's default pool
    #: of 10 connections would make the rest wait or reconnect.
    max_pool_connections: ClassVar[int] = 64

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self._client: PerProcess[Any] = PerProcess(self._make_client)

    # ------------------------------------------------------------------ client
    def _client_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``session.client("s3", ...)`` besides ``config``."""
        raise NotImplementedError

    def _config_kwargs(self) -> Dict[str, Any]:
        return {
            # "standard" retries back off on throttling and 5xx, which a burst of
            # parallel result fetches can provoke; 5 attempts ride out a brief outage.
            "retries": {"max_attempts": 5, "mode": "standard"},
            "max_pool_connections": self.max_pool_connections,
            "connect_timeout": 10,
            "read_timeout": 60,
        }

    @property
    def client(self) -> Any:
        """The SDK's S3 client, one per process (see ``PerProcess``)."""
        return self._client.get()

    def _make_client(self) -> Any:
        # A Session per storage: boto3's default session is not thread-safe.
        session = self.sdk.session_factory()
        config = self.sdk.config_cls(**self._config_kwargs())
        client = session.client("s3", config=config, **self._client_kwargs())
        # After the SDK's own handler, which adds "Expect: 100-continue" to every
        # PUT, even an empty one (RFC 9110 forbids that); SeaweedFS then answers
        # without a 100 and the next request on that connection hangs.
        client.meta.events.register_last("before-call.s3", self._no_continue_if_empty)
        return client

    def _no_continue_if_empty(self, params: Dict[str, Any], **_kwargs: Any) -> None:
        headers = params.get("headers") or {}
        if "Expect" in headers and self.sdk.content_length(params.get("body")) == 0:
            del headers["Expect"]

    # ------------------------------------------------------------------ errors
    def _error(self, exc: BaseException, key: Optional[str], action: str) -> OSError:
        """Turn an SDK exception into the ``OSError`` family, naming the URL."""
        url = self.url(key or "")
        if isinstance(exc, self.sdk.no_credentials_errors):
            return PermissionError(
                f"{url}: {action} failed: no usable credentials ({exc}); set them in the "
                f"environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), a profile, or the "
                f"storage options"
            )
        if not isinstance(exc, self.sdk.client_error):
            return OSError(f"{url}: {action} failed: {exc}")
        response = exc.response  # type: ignore[attr-defined]
        err = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return self._error_from_code(str(err.get("Code", "")), err.get("Message"), status, key, action)

    def _error_from_code(self, code: str, message: Optional[str], status: Optional[int],
                         key: Optional[str], action: str) -> OSError:
        url = self.url(key or "")
        if code == "NoSuchBucket":
            return self._no_bucket(key)
        if code in _MISSING_KEY_CODES or status == 404:
            return FileNotFoundError(f"{url}: no such object")
        if code in _DENIED_CODES or status in (401, 403):
            return PermissionError(
                f"{url}: {action} refused ({code}: {message or code}); check the credentials "
                f"and that they may access bucket {self.bucket!r}"
            )
        return OSError(f"{url}: {action} failed ({code}: {message or code})")

    def _no_bucket(self, key: Optional[str]) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.url(key or '')}: bucket {self.bucket!r} does not exist at "
            f"{self.client.meta.endpoint_url}; create it or fix the storage URL"
        )

    def _missing(self, key: str) -> FileNotFoundError:
        """A bare 404 (a HEAD has no body to say which): tell a missing bucket apart."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            if isinstance(self._error(exc, key, "HEAD bucket"), FileNotFoundError):
                return self._no_bucket(key)
        return FileNotFoundError(f"{self.url(key)}: no such object")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            raise self._error(exc, key, "PUT") from exc

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        # The SDK's transfer manager switches to a multipart upload past the threshold,
        # sending parts from a few threads, so a large object is never held whole.
        config = self.sdk.transfer_config_cls(
            multipart_threshold=self.multipart_chunksize,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=4,
        )
        try:
            self.client.upload_fileobj(_KeepOpen(fileobj), self.bucket, key, Config=config)
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            raise self._error(exc, key, "upload") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""  # nothing to read: no request at all
        kwargs: Dict[str, Any] = {}
        if start or end is not None:
            # HTTP ranges are inclusive at both ends; ours is half-open.
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            return response["Body"].read()
        except self.sdk.client_error as exc:
            err = exc.response.get("Error", {})  # type: ignore[attr-defined]
            if err.get("Code") == "InvalidRange":
                # Starts at or past the end (S3 clips only the end of a range).
                return b""
            if err.get("Code") == "404":  # no error body: which is missing?
                raise self._missing(key) from exc
            raise self._error(exc, key, "GET") from exc
        except self.sdk.core_error as exc:
            raise self._error(exc, key, "GET") from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except self.sdk.client_error as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")  # type: ignore[attr-defined]
            if status == 404:
                raise self._missing(key) from exc
            raise self._error(exc, key, "HEAD") from exc
        except self.sdk.core_error as exc:
            raise self._error(exc, key, "HEAD") from exc
        modified = response.get("LastModified")
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=(response.get("ETag") or "").strip('"') or None,
            mtime=modified.timestamp() if modified is not None else None,
        )

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        kwargs: Dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(**kwargs, PaginationConfig={"PageSize": self.list_page_size})
        # The paginator requests a page only when the previous one is used up, so a
        # caller that stops early pays for what it read.
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    modified = item.get("LastModified")
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=(item.get("ETag") or "").strip('"') or None,
                        mtime=modified.timestamp() if modified is not None else None,
                    )
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            raise self._error(exc, prefix, "LIST") from exc

    def delete(self, keys: Iterable[str]) -> None:
        it = iter(keys)
        while True:
            # DeleteObjects takes at most 1000 keys per request.
            chunk = list(itertools.islice(it, 1000))
            if not chunk:
                return
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except (self.sdk.client_error, self.sdk.core_error) as exc:
                raise self._error(exc, chunk[0], "DELETE") from exc
            for failure in response.get("Errors", ()):
                if failure.get("Code") == "NoSuchKey":  # already gone is fine
                    continue
                raise self._error_from_code(str(failure.get("Code", "")), failure.get("Message"),
                                            None, failure.get("Key"), "DELETE")

    def check(self) -> None:
        # HEAD bucket is the cheapest request that proves both the bucket and the keys.
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            err = self._error(exc, "", "HEAD bucket")
            # HEAD bucket answers a bare 404: the bucket, not a key, is missing.
            raise (self._no_bucket("") if isinstance(err, FileNotFoundError) else err) from exc


class S3Storage(S3CompatibleStorage):
    """``s3://`` on Amazon S3 or any S3-compatible server (moto, SeaweedFS, MinIO, ...)."""

    scheme = "s3"
    sdk = BOTO3
    option_names: ClassVar[FrozenSet[str]] = frozenset({
        "endpoint_url", "region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    })
    secret_option_names: ClassVar[FrozenSet[str]] = frozenset({
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    })

    def _client_kwargs(self) -> Dict[str, Any]:
        o = self.options
        # Absent options stay None, so boto3 falls back to its own chain
        # (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials file, instance role, ...).
        return {
            "endpoint_url": o.get("endpoint_url"),
            "region_name": o.get("region"),
            "aws_access_key_id": o.get("aws_access_key_id"),
            "aws_secret_access_key": o.get("aws_secret_access_key"),
            "aws_session_token": o.get("aws_session_token"),
        }

    def _config_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._config_kwargs()
        # Since botocore 1.36 every upload carries a CRC checksum by default, which
        # several S3-compatible servers reject; send one only when an API requires it.
        kwargs["request_checksum_calculation"] = "when_required"
        kwargs["response_checksum_validation"] = "when_required"
        return kwargs
