"""Google Cloud Storage (``gs://bucket/key``) through google-cloud-storage.

This module owns the GCS client (one per process), ranged downloads, paged listings,
deletes, and the translation of ``google.api_core`` errors into the ``OSError`` family.

Credentials come from Google's own chain (Application Default Credentials); the only
options are ``project`` and ``endpoint_url``. When ``STORAGE_EMULATOR_HOST`` is set, or
``endpoint_url`` is plain ``http://`` (only emulators such as fake-gcs-server speak
it), the client sends no credentials at all (``AnonymousCredentials``).

Transient failures (connection errors, 408, 429, 5xx) are retried by google-api-core's
``Retry`` on every request, with jittered exponential back-off from 0.2 s to 5 s for at
most ``retry_timeout`` seconds (30 by default; the SDK's own default is 120 s); 4xx
answers such as a missing bucket or refused credentials are not retried.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, ClassVar, FrozenSet, Iterable, Iterator, Optional

import google.api_core.exceptions as gexc
import google.auth.exceptions
import requests
import requests.adapters
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from . import declared
from .base import Bytes, CommonPrefix, ObjectInfo, PerProcess, StorageBackend, check_delimiter

#: Seconds a request keeps being retried when ``retry_timeout`` is not set.
DEFAULT_RETRY_TIMEOUT = 30.0

__all__ = ["GCSStorage"]

MiB = 1024 * 1024


class GCSStorage(StorageBackend):
    """``gs://`` on Google Cloud Storage or an emulator."""

    scheme = "gs"
    option_names: ClassVar[FrozenSet[str]] = declared.GCS.options
    #: Objects per listing page (GCS's maximum is 1000; tests lower it to exercise paging).
    list_page_size: ClassVar[int] = 1000
    #: Resumable uploads send parts of this size (a multiple of 256 KiB, as GCS requires).
    upload_chunk_size: ClassVar[int] = 8 * MiB
    #: Threads deleting objects one request each (the JSON API's batch endpoint is
    #: not supported by emulators, and a pool is as fast for cloudpool's few keys).
    delete_threads: ClassVar[int] = 8
    #: Parallel fetches by the executor need more pooled connections than requests' 10.
    max_pool_connections: ClassVar[int] = 64

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        timeout = options.get("retry_timeout", DEFAULT_RETRY_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"gs:// storage option 'retry_timeout' must be a positive number of "
                             f"seconds, not {timeout!r}")
        # The SDK's predicate (what is transient) with our bounds on time and back-off.
        self._retry = DEFAULT_RETRY.with_delay(initial=0.2, maximum=5.0, multiplier=2.0).with_timeout(
            float(timeout))
        self._client: PerProcess[storage.Client] = PerProcess(self._make_client)

    # ------------------------------------------------------------------ client
    def _emulator(self) -> Optional[str]:
        endpoint = self.options.get("endpoint_url")
        if endpoint:
            return endpoint if endpoint.startswith("http://") else None
        return os.environ.get("STORAGE_EMULATOR_HOST") or None

    @property
    def client(self) -> storage.Client:
        """The SDK client, one per process (see ``PerProcess``)."""
        return self._client.get()

    def _make_client(self) -> storage.Client:
        endpoint = self.options.get("endpoint_url")
        client_options = {"api_endpoint": endpoint} if endpoint else None
        try:
            if self._emulator():
                client = storage.Client(
                    project=self.options.get("project") or "cloudpool-emulator",
                    credentials=AnonymousCredentials(), client_options=client_options,
                )
            else:
                client = storage.Client(project=self.options.get("project"),
                                        client_options=client_options)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise PermissionError(
                f"{self.url()}: no Google credentials found ({exc}); run "
                f"'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from exc
        # The client's session is a requests.Session; widen its connection pool.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.max_pool_connections)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        return client

    @property
    def _bucket(self) -> storage.Bucket:
        return self.client.bucket(self.bucket)

    # ------------------------------------------------------------------ errors
    def _no_bucket(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.url(key)}: bucket {self.bucket!r} does not exist; create it or fix the storage URL"
        )

    def _missing(self, key: str) -> FileNotFoundError:
        """A 404 on an object: say whether the bucket itself is missing."""
        try:
            bucket_exists = self._bucket.exists(retry=self._retry)
        except (gexc.GoogleAPIError, requests.RequestException):
            bucket_exists = True  # cannot tell (no buckets.get permission): blame the key
        if not bucket_exists:
            return self._no_bucket(key)
        return FileNotFoundError(f"{self.url(key)}: no such object")

    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized, google.auth.exceptions.GoogleAuthError)):
            return PermissionError(
                f"{url}: {action} refused ({exc}); check the Google credentials and that "
                f"they may access bucket {self.bucket!r}"
            )
        if isinstance(exc, gexc.NotFound):
            return FileNotFoundError(f"{url}: no such object")
        return OSError(f"{url}: {action} failed: {exc}")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        blob = self._bucket.blob(key)
        try:
            # Retrying is safe: an object is always written whole, by one writer.
            blob.upload_from_string(bytes(data), content_type="application/octet-stream",
                                    retry=self._retry)
        except gexc.NotFound as exc:
            raise self._no_bucket(key) from exc
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, key, "PUT") from exc

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        blob = self._bucket.blob(key, chunk_size=self.upload_chunk_size)
        try:
            # Size unknown: a resumable upload, sent chunk by chunk from the file.
            blob.upload_from_file(fileobj, rewind=False, content_type="application/octet-stream",
                                  retry=self._retry)
        except gexc.NotFound as exc:
            raise self._no_bucket(key) from exc
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, key, "upload") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        blob = self._bucket.blob(key)
        try:
            # GCS ranges are inclusive at both ends; ours is half-open.
            return blob.download_as_bytes(start=start or None,
                                          end=None if end is None else end - 1, retry=self._retry)
        except gexc.RequestRangeNotSatisfiable:
            return b""  # starts at or past the end
        except gexc.NotFound as exc:
            raise self._missing(key) from exc
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, key, "GET") from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            blob = self._bucket.get_blob(key, retry=self._retry)
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, key, "HEAD") from exc
        if blob is None:
            raise self._missing(key)
        return ObjectInfo(key=key, size=int(blob.size or 0), etag=blob.etag,
                          mtime=blob.updated.timestamp() if blob.updated else None)

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        # start_offset is inclusive where S3's StartAfter is not: skip the key itself.
        blobs = self.client.list_blobs(self.bucket, prefix=prefix or None,
                                       start_offset=start_after or None,
                                       page_size=self.list_page_size, retry=self._retry)
        try:
            for page in blobs.pages:  # one request per page, made when reached
                for blob in page:
                    if start_after is not None and blob.name <= start_after:
                        continue
                    yield ObjectInfo(key=blob.name, size=int(blob.size or 0), etag=blob.etag,
                                     mtime=blob.updated.timestamp() if blob.updated else None)
        except gexc.NotFound as exc:
            raise self._no_bucket(prefix) from exc
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, prefix, "LIST") from exc

    def list_level(self, prefix: str = "", delimiter: str = "/") -> Iterator[Any]:
        check_delimiter(delimiter)
        blobs = self.client.list_blobs(self.bucket, prefix=prefix or None, delimiter=delimiter,
                                       page_size=self.list_page_size, retry=self._retry)
        entries: list = []
        try:
            for page in blobs.pages:
                for blob in page:
                    entries.append(ObjectInfo(key=blob.name, size=int(blob.size or 0), etag=blob.etag,
                                              mtime=blob.updated.timestamp() if blob.updated else None))
                entries.extend(CommonPrefix(p) for p in page.prefixes)
        except gexc.NotFound as exc:
            raise self._no_bucket(prefix) from exc
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, prefix, "LIST") from exc
        # The API reports a page's folders apart from its objects: merge into key order.
        entries.sort(key=lambda e: e.key if isinstance(e, ObjectInfo) else e.prefix)
        return iter(entries)

    def _delete_one(self, key: str) -> None:
        try:
            self._bucket.blob(key).delete(retry=self._retry)
        except gexc.NotFound:
            return  # already gone (or no bucket: nothing to delete either way)
        except (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            raise self._error(exc, key, "DELETE") from exc

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if len(keys) <= 1:
            for key in keys:
                self._delete_one(key)
            return
        with ThreadPoolExecutor(min(self.delete_threads, len(keys)),
                                thread_name_prefix="cloudpool-gcs-delete") as pool:
            # Re-raises the first failure (in key order); leaving the block still
            # waits for the other deletes.
            for _ in pool.map(self._delete_one, keys):
                pass

    def check(self) -> None:
        # Listing one object needs only storage.objects.list, which cloudpool needs
        # anyway (buckets.get is often not granted to object-level roles).
        next(iter(self.list("")), None)
