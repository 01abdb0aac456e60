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

Runtimes: with ``project``, ``region`` and ``service`` set, ``cloudpool runtime
deploy|list|delete --backend cloudrun`` manage the service through the Cloud Run Admin
API v2 (``projects/{p}/locations/{l}/services``, long-running operations polled to
their end), authenticated with an OAuth access token from Application Default
Credentials. A deployed service gets the custom audience ``cloudpool:{p}/{l}/{service}``
(the runtime is told to accept it), so callers can mint ID tokens before knowing its
URL; without ``url`` the backend reads the service's URL from the Admin API, and a
missing service is refused naming the deploy command. The container image is built and
pushed by you (``runtime/cloudrun/Dockerfile``).
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from . import declared
from .knative import KnativeBackend

ADMIN_ENDPOINT = "https://run.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
RUNTIME_LABEL = "cloudpool-runtime"
#: Cloud Run's limits: memory 128 MiB..32 GiB, request timeout up to 3600 s.
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 32768
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 3600
DEFAULT_MEMORY_MB = 1024
DEFAULT_TIMEOUT_S = 600
_OPERATION_WAIT = 600.0
_ID_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROJECT_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+\d+$")

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
    option_names = declared.CLOUDRUN.options
    secret_option_names = declared.CLOUDRUN.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        options = dict(options)
        if "token" in options:
            raise ValueError("the cloudrun backend authenticates with Google ID tokens, not a shared 'token': "
                             "remove it (give 'audience' if the service checks another audience than its URL)")
        admin = {k: options.pop(k) for k in ("project", "region", "service", "image", "memory_mb", "timeout",
                                             "admin_endpoint", "admin_credentials") if k in options}
        self._admin = _Admin(admin, options.get("concurrency"))
        self._missing: Optional[BaseException] = None
        if "url" not in options and "urls" not in options:
            if not self._admin.complete:
                raise ValueError("the cloudrun backend needs the service: set the cloudrun option 'url' "
                                 "(`gcloud run services describe SERVICE --region REGION --format "
                                 "'value(status.url)'`), or 'project', 'region' and 'service'")
            try:
                options["url"] = self._admin.service_url()
            except FileNotFoundError as exc:
                # Still built, so `cloudpool runtime deploy` can create it; calls are refused.
                self._missing = exc
                options["url"] = f"https://{self._admin.service}.invalid"
        audience = options.pop("audience", None)
        credentials = options.pop("credentials", None)
        if credentials is not None and not (hasattr(credentials, "refresh") and hasattr(credentials, "token")):
            raise ValueError("the cloudrun backend's 'credentials' must be google-auth credentials whose token "
                             "is an ID token (e.g. google.oauth2.service_account.IDTokenCredentials)")
        # The knative machinery reads a token option; ours changes per hour (the _headers
        # property). This instance alone accepts it, for that internal use: a user's 'token'
        # was refused above (and by the configuration, which checks the declared options).
        options["token"] = "google-id-token"
        self.option_names = declared.CLOUDRUN.options | {"token"}
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        if audience is None:
            # A service cloudpool deployed accepts its custom audience; any other, its URL.
            audience = self._admin.audience if self._admin.complete else self._services[0].url
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

    def _fetch_runtime(self, session, svc):
        try:
            return super()._fetch_runtime(session, svc)
        except PermissionError as exc:
            # The inherited message speaks of knative's shared token; say what is wrong here.
            raise PermissionError(
                f"{svc.url} refused the Google ID token minted for audience {self.audience!r} ({exc}): the "
                f"caller needs roles/run.invoker on the service, and 'audience' must be one the service "
                f"accepts (its URL, or the custom audience cloudpool's deploy gives it)") from None

    def describe(self) -> Dict[str, Any]:
        if self._missing is not None:
            return {"backend": self.name, "error": str(self._missing)}
        return dict(super().describe(), backend=self.name, audience=self.audience)

    # ------------------------------------------------------------------ runtimes (Admin API v2)
    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        raise NotImplementedError(
            "the cloudrun backend does not build images: build runtime/cloudrun/Dockerfile from the "
            "repository root and push it (e.g. `gcloud builds submit`), then set the cloudrun option 'image' "
            "and run `cloudpool runtime deploy --backend cloudrun`")

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        return self._admin.deploy(name, memory_mb=memory_mb, timeout=timeout)

    def list_runtimes(self) -> List[Dict[str, Any]]:
        return self._admin.list()

    def delete_runtime(self, name: str) -> None:
        self._admin.delete(name)


def _int_in_range(name: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or not low <= value <= high:
        raise ValueError(f"the cloudrun backend's {name!r} must be a whole number of {unit} from {low} to "
                         f"{high} (Cloud Run's limits), not {value!r}")
    return int(value)


class _Admin:
    """The Cloud Run Admin API v2 for one project and region (services and their operations)."""

    def __init__(self, opts: Dict[str, Any], concurrency: Any) -> None:
        self.project = opts.get("project")
        self.region = opts.get("region")
        self.service = opts.get("service")
        for key, value, pattern, example in (("project", self.project, _PROJECT_RE, "my-project-123"),
                                             ("region", self.region, _REGION_RE, "europe-west1"),
                                             ("service", self.service, _ID_RE, "cloudpool-runtime")):
            if value is not None and (not isinstance(value, str) or not pattern.match(value)):
                raise ValueError(f"the cloudrun backend's {key!r} must look like {example!r}, not {value!r}")
        self.complete = all((self.project, self.region, self.service))
        self.image = opts.get("image")
        self.memory_mb = _int_in_range("memory_mb", opts.get("memory_mb", DEFAULT_MEMORY_MB),
                                       MEMORY_MIN_MB, MEMORY_MAX_MB, "MiB")
        self.timeout = _int_in_range("timeout", opts.get("timeout", DEFAULT_TIMEOUT_S),
                                     TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        endpoint = opts.get("admin_endpoint", ADMIN_ENDPOINT)
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise ValueError(f"the cloudrun backend's 'admin_endpoint' must be an http(s) URL, not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._credentials = opts.get("admin_credentials")
        self.concurrency = concurrency or 4
        self._session = None

    @property
    def audience(self) -> str:
        return f"cloudpool:{self.project}/{self.region}/{self.service}"

    def _need(self, verb: str) -> None:
        missing = [k for k in ("project", "region") if not getattr(self, k)]
        if missing:
            raise ValueError(f"to {verb} Cloud Run runtimes, set the cloudrun option(s) {missing} (the Google "
                             f"Cloud project and region of the service)")

    @property
    def session(self):
        if self._session is None:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests

            credentials = self._credentials
            if credentials is None:
                try:
                    credentials, _ = google.auth.default(scopes=[SCOPE])
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise PermissionError(
                        f"no Google credentials for the Cloud Run Admin API ({exc}): run `gcloud auth "
                        f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from None
            self._session = google.auth.transport.requests.AuthorizedSession(credentials)
        return self._session

    def _parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def _call(self, method: str, path: str, verb: str, name: str, **kwargs: Any) -> Any:
        import requests

        try:
            resp = self.session.request(method, f"{self.endpoint}/v2/{path}", timeout=60, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionError(f"could not reach the Cloud Run Admin API at {self.endpoint}: {exc}") from None
        if resp.status_code == 404:
            raise FileNotFoundError(
                f"the Cloud Run service {name!r} does not exist in {self.project}/{self.region}: deploy the "
                f"runtime with `cloudpool runtime deploy --backend cloudrun {name}`")
        if resp.status_code in (401, 403):
            raise PermissionError(f"the Cloud Run Admin API refused to {verb} {name!r} (HTTP {resp.status_code}: "
                                  f"{resp.text[:300]}); the caller needs roles/run.admin (or run.developer)")
        if resp.status_code >= 400:
            raise RuntimeError(f"could not {verb} the Cloud Run service {name!r}: HTTP {resp.status_code}: "
                               f"{resp.text[:300]}")
        return resp.json() if resp.content else {}

    def _wait(self, operation: Dict[str, Any], verb: str, name: str) -> Dict[str, Any]:
        deadline = time.monotonic() + _OPERATION_WAIT
        delay = 0.2
        while not operation.get("done"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Cloud Run operation to {verb} {name!r} did not finish within "
                                   f"{_OPERATION_WAIT:g} s: {operation.get('name')}")
            time.sleep(delay)
            delay = min(5.0, delay * 2)
            operation = self._call("GET", operation["name"], verb, name)
        if operation.get("error"):
            raise RuntimeError(f"Cloud Run could not {verb} {name!r}: {operation['error'].get('message')}")
        return operation.get("response") or {}

    def service_url(self) -> str:
        svc = self._call("GET", f"{self._parent()}/services/{self.service}", "read", self.service)
        if not svc.get("uri"):
            raise RuntimeError(f"the Cloud Run service {self.service!r} has no URL yet; is it ready?")
        return svc["uri"]

    def _body(self, name: str, memory: int, timeout_s: int) -> Dict[str, Any]:
        audience = f"cloudpool:{self.project}/{self.region}/{name}"
        return {
            "labels": {RUNTIME_LABEL: "true"},
            "customAudiences": [audience],
            "template": {
                "timeout": f"{timeout_s}s",
                "maxInstanceRequestConcurrency": self.concurrency,
                "containers": [{
                    "image": self.image,
                    "args": ["--concurrency", str(self.concurrency)],
                    "env": [{"name": "CLOUDRUN_AUDIENCE", "value": audience}],
                    "resources": {"limits": {"memory": f"{memory}Mi"}},
                    "ports": [{"containerPort": 8080}],
                }],
            },
        }

    def deploy(self, name: Optional[str], *, memory_mb: Optional[int], timeout: Optional[float]) -> Dict[str, Any]:
        self._need("deploy")
        name = name or self.service
        if not isinstance(name, str) or not _ID_RE.match(name):
            raise ValueError(f"a Cloud Run service name is lower-case letters, digits and '-', not {name!r}")
        if not self.image:
            raise ValueError("deploying to Cloud Run needs the runtime image you pushed: set the cloudrun option "
                             "'image' (built from runtime/cloudrun/Dockerfile)")
        memory = _int_in_range("memory_mb", memory_mb if memory_mb is not None else self.memory_mb,
                               MEMORY_MIN_MB, MEMORY_MAX_MB, "MiB")
        timeout_s = _int_in_range("timeout", timeout if timeout is not None else self.timeout,
                                  TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        body = self._body(name, memory, timeout_s)
        try:
            self._call("GET", f"{self._parent()}/services/{name}", "read", name)
            exists = True
        except FileNotFoundError:
            exists = False
        if exists:
            op = self._call("PATCH", f"{self._parent()}/services/{name}", "update", name, json=body)
        else:
            op = self._call("POST", f"{self._parent()}/services", "create", name, params={"serviceId": name},
                            json=body)
        svc = self._wait(op, "deploy", name)
        return {"name": name, "uri": svc.get("uri"), "image": self.image, "memory_mb": memory,
                "timeout": timeout_s, "audience": body["customAudiences"][0], "project": self.project,
                "region": self.region}

    def list(self) -> List[Dict[str, Any]]:
        self._need("list")
        found: List[Dict[str, Any]] = []
        token = None
        while True:
            params = {"pageToken": token} if token else {}
            page = self._call("GET", f"{self._parent()}/services", "list", "*", params=params)
            for svc in page.get("services") or []:
                if (svc.get("labels") or {}).get(RUNTIME_LABEL) != "true":
                    continue
                container = ((svc.get("template") or {}).get("containers") or [{}])[0]
                found.append({"name": svc["name"].rsplit("/", 1)[-1], "uri": svc.get("uri"),
                              "image": container.get("image"),
                              "memory": ((container.get("resources") or {}).get("limits") or {}).get("memory"),
                              "timeout": (svc.get("template") or {}).get("timeout")})
            token = page.get("nextPageToken")
            if not token:
                return sorted(found, key=lambda r: r["name"])

    def delete(self, name: str) -> None:
        self._need("delete")
        svc = self._call("GET", f"{self._parent()}/services/{name}", "read", name)
        if (svc.get("labels") or {}).get(RUNTIME_LABEL) != "true":
            raise PermissionError(f"the Cloud Run service {name!r} is not a cloudpool runtime (no "
                                  f"{RUNTIME_LABEL} label); delete it with `gcloud run services delete`")
        self._wait(self._call("DELETE", f"{self._parent()}/services/{name}", "delete", name), "delete", name)
