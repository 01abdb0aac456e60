"""The ``cloudrun`` backend: Google Cloud Run / Cloud Functions 2nd gen services running the
cloudpool HTTP runtime, called with Google ID tokens.

A Cloud Run service is a Knative service, so everything about invoking it -- posting
threads, 429/503 back-off within ``retry_seconds``, streamed notices, the ``GET /runtime``
version handshake, cancelling -- is the ``knative`` backend's, inherited unchanged. This
module owns only what differs: the options (``url`` of the service, ``audience``), and
authentication: each request carries ``Authorization: Bearer <ID token>`` minted by
google-auth for the service's audience (``google.oauth2.id_token.fetch_id_token``, which
uses Application Default Credentials: a service-account key, the metadata server...),
refreshed before it expires. The runtime (``runtime/cloudrun/server.py``) verifies it.
No credential ever enters an event.

Not done yet (issue 16): deploy/list/delete through the Cloud Run Admin API v2; deploy
the service yourself (``gcloud run deploy``) with ``runtime/cloudrun/server.py``.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional

from .knative import KnativeBackend

#: Refresh an ID token this long before it expires (they live one hour).
_REFRESH_MARGIN = 300.0


class _IdTokens:
    """A Google ID token for one audience, fetched on first use and refreshed before expiry."""

    def __init__(self, audience: str, credentials: Any = None) -> None:
        self.audience = audience
        self._credentials = credentials  # google.auth credentials whose .token is an ID token, or None (ADC)
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires = 0.0

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.time() > self._expires - _REFRESH_MARGIN:
                self._token, self._expires = self._fetch()
            return self._token

    def _fetch(self):
        import google.auth.exceptions
        import google.auth.jwt
        import google.auth.transport.requests
        import google.oauth2.id_token

        request = google.auth.transport.requests.Request()
        try:
            if self._credentials is not None:
                self._credentials.refresh(request)
                token = self._credentials.token
            else:
                token = google.oauth2.id_token.fetch_id_token(request, self.audience)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise PermissionError(
                f"no Google credentials to mint an ID token for {self.audience} ({exc}): set "
                f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key with roles/run.invoker, or run "
                f"where the metadata server provides one") from None
        except google.auth.exceptions.GoogleAuthError as exc:
            raise PermissionError(f"could not mint a Google ID token for {self.audience}: {exc}") from None
        claims = google.auth.jwt.decode(token, verify=False)  # our own token: only its expiry is read
        return token, float(claims.get("exp", time.time() + 3600))


class CloudRunBackend(KnativeBackend):
    """Runs invocations on a Cloud Run service of the cloudpool runtime, authenticated by ID tokens."""

    name = "cloudrun"
    # "token" is listed only for the inherited machinery: a user's 'token' is refused below.
    option_names = frozenset({"url", "urls", "audience", "credentials", "concurrency", "request_timeout",
                              "retry_seconds", "notices", "token"})

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        options = dict(options)
        if "token" in options:
            raise ValueError("the cloudrun backend authenticates with Google ID tokens, not a shared 'token': "
                             "remove it (give 'audience' if the service checks another audience than its URL)")
        if "url" not in options and "urls" not in options:
            raise ValueError("the cloudrun backend needs the service's URL: set the cloudrun option 'url' "
                             "(`gcloud run services describe SERVICE --region REGION --format 'value(status.url)'`)")
        audience = options.pop("audience", None)
        credentials = options.pop("credentials", None)
        if credentials is not None and not (hasattr(credentials, "refresh") and hasattr(credentials, "token")):
            raise ValueError("the cloudrun backend's 'credentials' must be google-auth credentials whose token "
                             "is an ID token (e.g. google.oauth2.service_account.IDTokenCredentials)")
        # The knative machinery reads a token option; ours changes per hour (the _headers property).
        options["token"] = "google-id-token"
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        if audience is None:
            audience = self._services[0].url
        if not isinstance(audience, str) or not audience:
            raise ValueError(f"the cloudrun backend's 'audience' must be a non-empty string, not {audience!r}")
        self.audience = audience
        self._tokens = _IdTokens(audience, credentials)

    @property  # type: ignore[override]
    def _headers(self) -> Dict[str, str]:
        headers = dict(self.__dict__["_base_headers"])
        headers["Authorization"] = f"Bearer {self._tokens.get()}"
        return headers

    @_headers.setter
    def _headers(self, value: Dict[str, str]) -> None:
        self.__dict__["_base_headers"] = {k: v for k, v in value.items() if k != "Authorization"}

    def describe(self) -> Dict[str, Any]:
        return dict(super().describe(), backend=self.name, audience=self.audience)
