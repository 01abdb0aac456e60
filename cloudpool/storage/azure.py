"""Azure Blob Storage (``az://container/blob``) through azure-storage-blob.

The "bucket" is a container of one storage account. This module owns the container
client (one per process), ranged downloads, paged listings, batched deletes and the
translation of ``azure.core`` errors into the ``OSError`` family.

Which account and credential, in order:

1. the ``connection_string`` option (secret);
2. the ``account_url`` option (``https://ACCOUNT.blob.core.windows.net``, may carry a
   SAS query) with the ``credential`` option (secret: an account key, a SAS token or a
   ``TokenCredential``), or, when that is absent and ``azure-identity`` is installed,
   ``DefaultAzureCredential`` (managed identity, environment, CLI login);
3. the ``AZURE_STORAGE_CONNECTION_STRING`` environment variable.

Transient failures (connection errors, time-outs, 408, 5xx) are retried by the SDK's
``ExponentialRetry`` policy, set here to ``max_attempts`` tries in all (6 by default)
with waits of about 1.6, 2.4, 3.5, 5.2, 7.7 s (~20 s in all) -- the SDK's default waits
15 s and more, too slow for a store that blinks. A bare 429, which the SDK does not retry, is retried by
``StorageRetry``. Other 4xx answers are never retried.
"""
from __future__ import annotations

import itertools
import os
from enum import Enum
from typing import Any, BinaryIO, ClassVar, FrozenSet, Iterable, Iterator, Optional

import requests
import requests.adapters
from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError,
                                   ResourceNotFoundError)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobPrefix, BlobServiceClient, ContainerClient, ExponentialRetry

from . import declared
from .base import (Bytes, CommonPrefix, ObjectInfo, PerProcess, StorageBackend, StorageRetry, check_delimiter,
                   positive_int_option)

try:  # optional: the platform credential chain for account_url without a credential
    from azure.identity import DefaultAzureCredential
except ImportError:
    DefaultAzureCredential = None

__all__ = ["AzureBlobStorage"]

#: Tries per request, the first included, when ``max_attempts`` is not set.
DEFAULT_MAX_ATTEMPTS = 6

_DENIED_CODES = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions", "AccountIsDisabled",
})


class AzureBlobStorage(StorageBackend):
    """``az://`` on Azure Blob Storage (or Azurite): one container of one account."""

    scheme = "az"
    option_names: ClassVar[FrozenSet[str]] = declared.AZURE.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.AZURE.secrets
    #: Blobs per listing page (the service's maximum is 5000; tests lower it).
    list_page_size: ClassVar[int] = 1000
    #: Keys per batch delete request (the service takes at most 256 sub-requests).
    delete_batch_size: ClassVar[int] = 256
    #: Parallel fetches by the executor need more pooled connections than requests' 10.
    max_pool_connections: ClassVar[int] = 64

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self.max_attempts = positive_int_option(self.scheme, "max_attempts",
                                                options.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._container: PerProcess[ContainerClient] = PerProcess(
            lambda: self._make_service().get_container_client(self.bucket))

    # ------------------------------------------------------------------ client
    @property
    def container(self) -> ContainerClient:
        """The SDK's container client, one per process (see ``PerProcess``)."""
        return self._container.get()

    def _make_service(self) -> BlobServiceClient:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.max_pool_connections)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        transport = RequestsTransport(session=session, session_owner=False)
        # The SDK waits initial_backoff + increment_base ** n (n = 1, 2, ...) +- jitter.
        retry = ExponentialRetry(initial_backoff=0.1, increment_base=1.5, retry_total=self.max_attempts - 1,
                                 random_jitter_range=0.25)
        o = self.options
        conn = o.get("connection_string")
        if conn:
            return BlobServiceClient.from_connection_string(conn, transport=transport, retry_policy=retry)
        if o.get("account_url"):
            credential = o.get("credential")
            if credential is None and DefaultAzureCredential is not None and "?" not in o["account_url"]:
                credential = DefaultAzureCredential()
            return BlobServiceClient(o["account_url"], credential=credential, transport=transport,
                                     retry_policy=retry)
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            return BlobServiceClient.from_connection_string(conn, transport=transport, retry_policy=retry)
        raise PermissionError(
            f"{self.url()}: no Azure account given; set AZURE_STORAGE_CONNECTION_STRING, or "
            f"the storage options connection_string, or account_url (+ credential)"
        )

    # ------------------------------------------------------------------ retries
    @staticmethod
    def _throttled(exc: BaseException) -> Optional[float]:
        """A bare 429 (the SDK retries 408 and 5xx only): seconds to wait at least, or None."""
        if isinstance(exc, HttpResponseError) and exc.status_code == 429:
            response = getattr(exc, "response", None)
            try:
                return float(response.headers.get("Retry-After", 0)) if response is not None else 0.0
            except (TypeError, ValueError):
                return 0.0
        return None

    def _call(self, request):
        return self._retry.run(request, self._throttled)

    # ------------------------------------------------------------------ errors
    def _error(self, exc: AzureError, key: str, action: str) -> OSError:
        url = self.url(key)
        is_http = isinstance(exc, HttpResponseError)
        raw_code = (exc.error_code if is_http else None) or ""
        # The SDK hands back a StorageErrorCode enum or a plain string.
        code = str(raw_code.value if isinstance(raw_code, Enum) else raw_code)
        status = exc.status_code if is_http else None
        if code == "ContainerNotFound":
            return FileNotFoundError(
                f"{url}: container {self.bucket!r} does not exist; create it or fix the storage URL"
            )
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            return FileNotFoundError(f"{url}: no such object")
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403) or code in _DENIED_CODES:
            return PermissionError(
                f"{url}: {action} refused ({code or status}); check the account key, SAS or "
                f"identity, and that it may access container {self.bucket!r}"
            )
        message = exc.message if is_http else str(exc)
        if status is not None:
            return OSError(f"{url}: {action} failed (HTTP {status} {code}) after {self.max_attempts} "
                           f"attempts (storage option max_attempts): {message}")
        return OSError(f"{url}: {action} failed ({code or type(exc).__name__}) after {self.max_attempts} "
                       f"attempts (storage option max_attempts): {message}")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        try:
            body = bytes(data)
            self._call(lambda: self.container.upload_blob(key, body, overwrite=True))
        except AzureError as exc:
            raise self._error(exc, key, "PUT") from exc

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        try:
            # The SDK stages blocks from the stream and commits them at the end, so
            # readers see the old object or the new one, never a part.
            self.container.upload_blob(key, fileobj, overwrite=True, max_concurrency=4)
        except AzureError as exc:
            raise self._error(exc, key, "upload") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        try:
            if start == 0 and end is None:
                return self._call(lambda: self.container.download_blob(key).readall())
            length = None if end is None else end - start
            return self._call(lambda: self.container.download_blob(key, offset=start, length=length).readall())
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""  # starts at or past the end
            raise self._error(exc, key, "GET") from exc
        except AzureError as exc:
            raise self._error(exc, key, "GET") from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            props = self._call(lambda: self.container.get_blob_client(key).get_blob_properties())
        except AzureError as exc:
            raise self._error(exc, key, "HEAD") from exc
        return ObjectInfo(key=key, size=int(props.size), etag=(props.etag or "").strip('"') or None,
                          mtime=props.last_modified.timestamp() if props.last_modified else None)

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        def fetch(token):
            # A fresh pager per attempt: one that failed mid-request cannot be resumed.
            pager = self.container.list_blobs(name_starts_with=prefix or None,
                                              results_per_page=self.list_page_size).by_page(token)
            return list(next(pager)), pager.continuation_token

        token = None
        try:
            while True:  # one request per page, made when reached
                page, token = self._call(lambda: fetch(token))
                for props in page:
                    # Azure has no StartAfter (its marker is opaque): skip client-side.
                    if start_after is not None and props.name <= start_after:
                        continue
                    yield ObjectInfo(
                        key=props.name, size=int(props.size),
                        etag=(props.etag or "").strip('"') or None,
                        mtime=props.last_modified.timestamp() if props.last_modified else None,
                    )
                if not token:
                    return
        except AzureError as exc:
            raise self._error(exc, prefix, "LIST") from exc

    def list_level(self, prefix: str = "", delimiter: str = "/") -> Iterator[Any]:
        check_delimiter(delimiter)

        def fetch(token):
            pager = self.container.walk_blobs(name_starts_with=prefix or None, delimiter=delimiter,
                                              results_per_page=self.list_page_size).by_page(token)
            return list(next(pager)), pager.continuation_token

        token = None
        try:
            while True:
                page, token = self._call(lambda: fetch(token))
                entries = [CommonPrefix(item.name) if isinstance(item, BlobPrefix) else ObjectInfo(
                    key=item.name, size=int(item.size), etag=(item.etag or "").strip('"') or None,
                    mtime=item.last_modified.timestamp() if item.last_modified else None) for item in page]
                # Azurite answers a page's BlobPrefix entries before its blobs: merge them.
                entries.sort(key=lambda e: e.key if isinstance(e, ObjectInfo) else e.prefix)
                yield from entries
                if not token:
                    return
        except AzureError as exc:
            raise self._error(exc, prefix, "LIST") from exc

    def delete(self, keys: Iterable[str]) -> None:
        it = iter(keys)
        while True:
            chunk = list(itertools.islice(it, self.delete_batch_size))
            if not chunk:
                return
            try:
                if len(chunk) == 1:
                    try:
                        self._call(lambda: self.container.delete_blob(chunk[0]))
                    except ResourceNotFoundError as exc:
                        if exc.error_code == "ContainerNotFound":
                            raise
                    continue
                # One batch request; a missing blob is a 404 sub-response, not a failure.
                responses = self._call(lambda: self.container.delete_blobs(*chunk, raise_on_any_failure=False))
            except AzureError as exc:
                raise self._error(exc, chunk[0], "DELETE") from exc
            for key, response in zip(chunk, responses):
                if response.status_code in (200, 202, 404):
                    continue
                raise self._error(
                    HttpResponseError(message=f"batch delete answered {response.status_code}",
                                      response=response), key, "DELETE")

    def check(self) -> None:
        next(iter(self.list("")), None)
