"""Amazon S3 storage (``s3://bucket/key``) through boto3, and the S3 API code COS shares.

This module owns everything that speaks the S3 API: ranged GETs, ListObjectsV2 paging,
DeleteObjects batching, multipart uploads and the translation of S3 error codes into
the ``OSError`` family. ``S3CompatibleStorage`` is written against an ``_SDK`` bundle
(the client factory, ``Config``, ``TransferConfig`` and exception classes), so the same
code serves boto3 here and IBM's fork ``ibm_boto3`` in ``cos.py``; a subclass only says
how to build the client (which options are credentials, which endpoint).

Transient failures: botocore retries each request itself (its "standard" mode by default:
connection errors, time-outs, 5xx, and throttling codes such as SlowDown, with jittered
exponential back-off), ``max_attempts`` tries in all; ``retry_mode`` may select
"adaptive", which also rate-limits the client after throttling. What botocore leaves
out is retried here with ``StorageRetry``: a GET whose body is cut off after the answer
began (botocore only retries until the headers arrive) and a bare HTTP 429 without a
throttling code. 4xx errors (NoSuchBucket, AccessDenied...) are never retried.

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

from . import declared
from .base import (TRANSIENT_HTTP_STATUSES, Bytes, CommonPrefix, ObjectInfo, PerProcess, StorageBackend,
                   StorageRetry, check_delimiter, positive_int_option)

__all__ = ["S3Storage", "S3CompatibleStorage"]

MiB = 1024 * 1024

# Codes S3 (and S3-compatible servers) use for a refused identity or signature.
_DENIED_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity",
    "AccountProblem", "403", "Forbidden", "Unauthorized", "401",
})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
#: Throttling codes botocore retries itself (in every mode): a 429 carrying one of them
#: has had its retries already.
_SDK_THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
})
#: botocore's bucket addressing: in the host name ("virtual"), in the path, or its choice.
ADDRESSING_STYLES = ("auto", "path", "virtual")
#: botocore's retry modes; "legacy" is botocore's old default, kept for completeness.
RETRY_MODES = ("standard", "adaptive", "legacy")
#: Tries per request, the first included. botocore waits rand(0, 1) * min(2**n, 20) s
#: (n = 0, 1, ...) between them, so 8 tries span up to 1+2+4+8+16+20+20 = 71 s, ~35 s on
#: average. Its jitter starts at zero, so fewer tries would often give up within a few
#: seconds (6 tries: 3% of requests within 6 s, measured); 8 ride out a store that
#: restarts (SeaweedFS: ~4 s) while one that stays down fails within about a minute.
DEFAULT_MAX_ATTEMPTS = 8


class _BodyCut(Exception):
    """The answer's headers arrived but its body did not (reset, time-out, short read)."""


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
        self.max_attempts = positive_int_option(self.scheme, "max_attempts",
                                                options.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
        self.retry_mode = options.get("retry_mode", "standard")
        if self.retry_mode not in RETRY_MODES:
            raise ValueError(f"{self.scheme}:// storage option 'retry_mode' must be one of "
                             f"{', '.join(RETRY_MODES)}, not {self.retry_mode!r}")
        # Our own retries (what botocore leaves out) get the same number of tries.
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._client: PerProcess[Any] = PerProcess(self._make_client)

    # ------------------------------------------------------------------ client
    def _client_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``session.client("s3", ...)`` besides ``config``."""
        raise NotImplementedError

    def _config_kwargs(self) -> Dict[str, Any]:
        return {
            # "standard" retries back off on throttling and 5xx, which a burst of
            # parallel result fetches can provoke, and on refused or reset connections.
            # total_max_attempts counts the first try (botocore's max_attempts does not).
            "retries": {"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
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

    # ------------------------------------------------------------------ retries
    def _left_to_us(self, exc: BaseException) -> Optional[float]:
        """Transient failures botocore did not retry: seconds to wait at least, or None."""
        if isinstance(exc, _BodyCut):
            return 0.0
        if isinstance(exc, self.sdk.client_error):
            response = exc.response  # type: ignore[attr-defined]
            meta = response.get("ResponseMetadata", {})
            code = response.get("Error", {}).get("Code")
            if meta.get("HTTPStatusCode") == 429 and code not in _SDK_THROTTLING_CODES:
                # Throttled, with a code botocore does not know: it did not retry.
                try:
                    return float((meta.get("HTTPHeaders") or {}).get("retry-after", 0))
                except ValueError:
                    return 0.0
        return None

    def _call(self, request: Callable[[], Any]) -> Any:
        return self._retry.run(request, self._left_to_us)

    # ------------------------------------------------------------------ errors
    def _error(self, exc: BaseException, key: Optional[str], action: str) -> OSError:
        """Turn an SDK exception into the ``OSError`` family, naming the URL."""
        if isinstance(exc, _BodyCut) and exc.__cause__ is not None:
            exc = exc.__cause__
        url = self.url(key or "")
        if isinstance(exc, self.sdk.no_credentials_errors):
            return PermissionError(
                f"{url}: {action} failed: no usable credentials ({exc}); set them in the "
                f"environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), a profile, or the "
                f"storage options"
            )
        if not isinstance(exc, self.sdk.client_error):
            name = type(exc).__name__
            if any(word in name for word in ("Connection", "Timeout", "Streaming", "IncompleteRead")):
                return OSError(f"{url}: {action} failed after {self.max_attempts} attempts, the last "
                               f"with {name}: {exc} (the storage option max_attempts sets how many)")
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
        if status in TRANSIENT_HTTP_STATUSES:
            return OSError(f"{url}: {action} failed (HTTP {status} {code}: {message or code}) after "
                           f"{self.max_attempts} attempts; the store at {self.client.meta.endpoint_url} "
                           f"kept failing (raise the storage option max_attempts to wait longer)")
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
            self._call(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body))
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

        def read_whole() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            try:
                return response["Body"].read()
            except self.sdk.core_error as exc:
                raise _BodyCut(f"the answer was cut: {exc}") from exc

        try:
            return self._call(read_whole)
        except _BodyCut as exc:
            raise self._error(exc, key, "GET") from exc.__cause__
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
            response = self._call(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
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
        return self._list_pages(prefix, start_after, None)  # type: ignore[return-value]

    def list_level(self, prefix: str = "", delimiter: str = "/") -> Iterator[Any]:
        # ListObjectsV2 with a Delimiter: a folder of a million keys costs one entry.
        return self._list_pages(prefix, None, check_delimiter(delimiter))

    def _list_pages(self, prefix: str, start_after: Optional[str], delimiter: Optional[str]) -> Iterator[Any]:
        kwargs: Dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if start_after:
            kwargs["StartAfter"] = start_after
        kwargs["MaxKeys"] = self.list_page_size
        # One request per page, made only when the previous page is used up, so a caller
        # that stops early pays for what it read.
        try:
            while True:
                page = self._call(lambda: self.client.list_objects_v2(**kwargs))
                entries: list = []
                for item in page.get("Contents", ()):
                    modified = item.get("LastModified")
                    entries.append(ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=(item.get("ETag") or "").strip('"') or None,
                        mtime=modified.timestamp() if modified is not None else None,
                    ))
                # A page holds its objects and folders as two lists, each in key order.
                entries.extend(CommonPrefix(p["Prefix"]) for p in page.get("CommonPrefixes", ()))
                if delimiter:
                    entries.sort(key=lambda e: e.key if isinstance(e, ObjectInfo) else e.prefix)
                yield from entries
                if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                    return
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
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
                response = self._call(lambda: self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                ))
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
            self._call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except (self.sdk.client_error, self.sdk.core_error) as exc:
            err = self._error(exc, "", "HEAD bucket")
            # HEAD bucket answers a bare 404: the bucket, not a key, is missing.
            raise (self._no_bucket("") if isinstance(err, FileNotFoundError) else err) from exc


class S3Storage(S3CompatibleStorage):
    """``s3://`` on Amazon S3 or any S3-compatible server (moto, SeaweedFS, MinIO, ...)."""

    scheme = "s3"
    sdk = BOTO3
    option_names: ClassVar[FrozenSet[str]] = declared.S3.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.S3.secrets

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

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        style = options.get("addressing_style", "auto")
        if style not in ADDRESSING_STYLES:
            raise ValueError(f"s3:// storage option 'addressing_style' must be one of "
                             f"{', '.join(ADDRESSING_STYLES)}, not {style!r} (MinIO and Ceph RGW "
                             f"behind a plain host name or IP need 'path')")
        signing = options.get("payload_signing", True)
        if not isinstance(signing, bool):
            raise ValueError(f"s3:// storage option 'payload_signing' must be true or false, not {signing!r}")

    def _config_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._config_kwargs()
        # S3-compatible servers (MinIO, Ceph RGW, SeaweedFS) answer at one host name or
        # IP: "path" puts the bucket in the path (http://host:9000/bucket/key) instead of
        # the host name (bucket.host), which needs wildcard DNS the servers seldom have.
        # payload_signing=False sends UNSIGNED-PAYLOAD instead of the body's SHA-256,
        # saving a pass over each upload; the signature still covers the headers.
        s3: Dict[str, Any] = {"addressing_style": self.options.get("addressing_style", "auto")}
        if self.options.get("payload_signing") is False:
            s3["payload_signing_enabled"] = False
        kwargs["s3"] = s3
        # Since botocore 1.36 every upload carries a CRC checksum by default, which
        # several S3-compatible servers reject; send one only when an API requires it.
        kwargs["request_checksum_calculation"] = "when_required"
        kwargs["response_checksum_validation"] = "when_required"
        return kwargs
