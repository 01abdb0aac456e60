"""The ``codeengine`` backend: IBM Cloud Code Engine applications running the cloudpool HTTP runtime.

A Code Engine application is a Knative Service in the project's Kubernetes namespace, so
invoking it is the ``knative`` backend's job, inherited unchanged (posting threads,
429/503 back-off within ``retry_seconds``, streamed notices, the ``GET /runtime`` version
handshake, cancelling). This module owns what is specific to Code Engine:

- **IAM**: the IBM Cloud API key is exchanged for an IAM access token at
  ``{iam_endpoint}/identity/token`` (grant type ``urn:ibm:params:oauth:grant-type:apikey``),
  cached and refreshed before it expires; the token is the bearer credential of every
  request to the project's Kubernetes API (``api_server``).
- **Runtimes**: ``cloudpool runtime deploy|list|delete --backend codeengine`` create,
  list and delete ``serving.knative.dev/v1`` Services (labelled ``cloudpool-runtime``)
  through the ``kubernetes`` client, with the runtime's shared token in a Secret
  (``{app}-token``) that the container reads as ``CLOUDPOOL_RUNTIME_TOKEN``.
- **Discovery**: without ``url``/``token`` the backend reads the app's URL from the
  Service's ``status.url`` and the shared token from its Secret; a missing app is
  refused naming the deploy command.

The API key and IAM token go only to IAM and the Kubernetes API; the runtime token only
in the Authorization header of invocations. None enters an event.
"""
from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import requests

from . import declared
from .knative import KnativeBackend

IAM_ENDPOINT = "https://iam.cloud.ibm.com"
GRANT_TYPE = "urn:ibm:params:oauth:grant-type:apikey"
GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
RUNTIME_LABEL = "cloudpool-runtime"
DEFAULT_APP = "cloudpool-runtime"
#: Code Engine application limits: memory up to 48 GB (in the combinations it lists),
#: request timeout up to 600 s.
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 49152
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 600
DEFAULT_MEMORY_MB = 1024
DEFAULT_TIMEOUT_S = 300
_REFRESH_MARGIN = 300.0
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_REGION_RE = re.compile(r"^[a-z]{2}-[a-z]+$")


def _int_in_range(name: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or not low <= value <= high:
        raise ValueError(f"the codeengine backend's {name!r} must be a whole number of {unit} from {low} to "
                         f"{high} (Code Engine's limits), not {value!r}")
    return int(value)


class IamToken:
    """An IBM Cloud IAM access token for an API key, fetched on use and refreshed before expiry."""

    def __init__(self, api_key: str, endpoint: str = IAM_ENDPOINT) -> None:
        self._api_key = api_key
        self.endpoint = endpoint.rstrip("/")
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires = 0.0

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.time() > self._expires - _REFRESH_MARGIN:
                self._token, self._expires = self._exchange()
            return self._token

    def _exchange(self):
        try:
            resp = requests.post(f"{self.endpoint}/identity/token",
                                 data={"grant_type": GRANT_TYPE, "apikey": self._api_key},
                                 headers={"Accept": "application/json"}, timeout=(10, 60))
        except requests.RequestException as exc:
            raise ConnectionError(f"could not reach IBM Cloud IAM at {self.endpoint}: {exc}") from None
        with resp:
            if resp.status_code in (400, 401, 403):
                raise PermissionError(f"IBM Cloud IAM refused the API key (HTTP {resp.status_code}: "
                                      f"{resp.text[:200]}): set the codeengine option 'api_key' to a valid "
                                      f"IBM Cloud API key (`ibmcloud iam api-key-create`)")
            if resp.status_code != 200:
                raise RuntimeError(f"IBM Cloud IAM answered HTTP {resp.status_code}: {resp.text[:200]}")
            body = resp.json()
        token = body["access_token"]
        expires = float(body.get("expiration") or time.time() + float(body.get("expires_in") or 3600))
        return token, expires


class CodeEngineBackend(KnativeBackend):
    """Runs invocations on a Code Engine application of the cloudpool HTTP runtime."""

    name = "codeengine"
    option_names = declared.CODEENGINE.options
    secret_option_names = declared.CODEENGINE.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        options = dict(options)
        own = {k: options.pop(k) for k in ("region", "api_key", "iam_endpoint", "api_server", "namespace",
                                           "app", "image", "memory_mb", "timeout") if k in options}
        unknown = set(options) - set(self.option_names)
        if unknown:  # before any network use
            from ..config import unknown_options_error

            raise unknown_options_error("the 'codeengine' backend", unknown, self.option_names)
        region = own.get("region")
        if region is not None and (not isinstance(region, str) or not _REGION_RE.match(region)):
            raise ValueError(f"the codeengine backend's 'region' must look like 'us-south', not {region!r}")
        api_server = own.get("api_server") or (f"https://proxy.{region}.codeengine.cloud.ibm.com" if region else None)
        if not api_server:
            raise ValueError("the codeengine backend needs the project's region: set the codeengine option "
                             "'region' (e.g. 'us-south'), or 'api_server' (its Kubernetes API URL)")
        if not isinstance(api_server, str) or not api_server.startswith(("https://", "http://")):
            raise ValueError(f"the codeengine backend's 'api_server' must be an http(s) URL, not {api_server!r}")
        namespace = own.get("namespace")
        if not isinstance(namespace, str) or not _NAME_RE.match(namespace):
            raise ValueError("the codeengine backend needs the project's Kubernetes namespace: set the codeengine "
                             "option 'namespace' (`ibmcloud ce project select --name PROJECT --kubecfg`, then "
                             "`kubectl config view --minify -o jsonpath='{..namespace}'`)"
                             + ("" if namespace is None else f"; {namespace!r} is not a namespace name"))
        api_key = own.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise PermissionError("the codeengine backend needs an IBM Cloud API key for IAM: set the codeengine "
                                  "option 'api_key' (config file, or CLOUDPOOL_CODEENGINE__API_KEY)")
        self.app = own.get("app", DEFAULT_APP)
        if not isinstance(self.app, str) or not _NAME_RE.match(self.app):
            raise ValueError(f"the codeengine backend's 'app' must be a Code Engine app name (lower-case "
                             f"letters, digits, '-'), not {self.app!r}")
        self.memory_mb = _int_in_range("memory_mb", own.get("memory_mb", DEFAULT_MEMORY_MB),
                                       MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        self.timeout = _int_in_range("timeout", own.get("timeout", DEFAULT_TIMEOUT_S),
                                     TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        self.image = own.get("image")
        self.namespace = namespace
        self.api_server = api_server.rstrip("/")
        self._iam = IamToken(api_key, own.get("iam_endpoint", IAM_ENDPOINT))
        self._api_client: Any = None
        self._missing: Optional[BaseException] = None
        if "url" not in options and "urls" not in options:
            try:
                options["url"] = self._app_url(self.app)
            except FileNotFoundError as exc:
                self._missing = exc  # still built, so `cloudpool runtime deploy` can create it
                options["url"] = f"https://{self.app}.invalid"
        if "token" not in options:
            options["token"] = "not-deployed" if self._missing else self._app_token(self.app)
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)

    # ------------------------------------------------------------------ Kubernetes API with IAM
    def _client(self):
        from kubernetes import client as k8s_client

        cfg = k8s_client.Configuration()
        cfg.host = self.api_server
        # Asked for on every request, so a refreshed IAM token is used as soon as it exists.
        cfg.refresh_api_key_hook = lambda c: c.api_key.update(authorization="Bearer " + self._iam.get())
        cfg.api_key = {"authorization": ""}
        return k8s_client.ApiClient(cfg)

    @property
    def api(self):
        if self._api_client is None:
            self._api_client = self._client()
        return self._api_client

    def _k8s(self, verb: str, name: str, fn, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise self._api_error(exc, verb, name) from None
        except HTTPError as exc:  # urllib3's: refused connections, timeouts (IAM errors pass through)
            raise ConnectionError(f"could not reach Code Engine's API at {self.api_server}: {exc}") from None

    def _api_error(self, exc: Any, verb: str, name: str) -> BaseException:
        """A Kubernetes ``ApiException`` as the stdlib error that says what to do."""
        detail = (exc.body or exc.reason or "")[:300]
        if exc.status == 404:
            return FileNotFoundError(
                f"the Code Engine app {name!r} does not exist in project namespace {self.namespace!r}: "
                f"deploy the runtime with `cloudpool runtime deploy --backend codeengine {name}`")
        if exc.status in (401, 403):
            return PermissionError(f"Code Engine refused to {verb} {name!r} (HTTP {exc.status}: {detail}): "
                                   f"check the codeengine options 'api_key' and 'namespace'")
        return RuntimeError(f"could not {verb} the Code Engine app {name!r}: HTTP {exc.status}: {detail}")

    def _custom(self):
        from kubernetes import client as k8s_client

        return k8s_client.CustomObjectsApi(self.api)

    def _core(self):
        from kubernetes import client as k8s_client

        return k8s_client.CoreV1Api(self.api)

    def _app_url(self, name: str) -> str:
        svc = self._k8s("read", name, self._custom().get_namespaced_custom_object,
                        GROUP, VERSION, self.namespace, PLURAL, name)
        url = (svc.get("status") or {}).get("url")
        if not url:
            raise RuntimeError(f"the Code Engine app {name!r} has no URL yet (not ready); wait and retry, or "
                               f"see `ibmcloud ce app get --name {name}`")
        return url

    def _app_token(self, name: str) -> str:
        secret = self._k8s("read", name, self._core().read_namespaced_secret, f"{name}-token", self.namespace)
        try:
            return base64.b64decode(secret.data["token"]).decode()
        except (KeyError, TypeError, ValueError):
            raise RuntimeError(f"the Secret {name}-token holds no 'token': redeploy with `cloudpool runtime "
                               f"deploy --backend codeengine {name}`") from None

    # ------------------------------------------------------------------ manager side
    def describe(self) -> Dict[str, Any]:
        if self._missing is not None:
            return {"backend": self.name, "error": str(self._missing)}
        return dict(super().describe(), backend=self.name, app=self.app, namespace=self.namespace)

    # ------------------------------------------------------------------ runtimes
    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        raise NotImplementedError(
            "the codeengine backend does not build images: build runtime/knative/Dockerfile and push it to a "
            "registry Code Engine can pull from (or `ibmcloud ce build create`), set the codeengine option "
            "'image', then run `cloudpool runtime deploy --backend codeengine`")

    def _service_body(self, name: str, memory: int, timeout_s: int, concurrency: int) -> Dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Service",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {RUNTIME_LABEL: "true"}},
            "spec": {"template": {"spec": {
                "containerConcurrency": concurrency,
                "timeoutSeconds": timeout_s,
                "containers": [{
                    "image": self.image,
                    "args": ["--concurrency", str(concurrency)],
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "CLOUDPOOL_RUNTIME_TOKEN",
                             "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": "token"}}}],
                    "resources": {"limits": {"memory": f"{memory}M"}, "requests": {"memory": f"{memory}M"}},
                }],
            }}},
        }

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        name = name or self.app
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"a Code Engine app name is lower-case letters, digits and '-', not {name!r}")
        if not self.image:
            raise ValueError("deploying to Code Engine needs the runtime image: set the codeengine option 'image' "
                             "(built from runtime/knative/Dockerfile)")
        memory = _int_in_range("memory_mb", memory_mb if memory_mb is not None else self.memory_mb,
                               MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        timeout_s = _int_in_range("timeout", timeout if timeout is not None else self.timeout,
                                  TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        concurrency = self._services[0].weight
        core, custom = self._core(), self._custom()
        try:
            self._k8s("read", name, core.read_namespaced_secret, f"{name}-token", self.namespace)
        except FileNotFoundError:
            # A fresh shared token for the runtime; the client reads it back from the Secret.
            self._k8s("create", name, core.create_namespaced_secret, self.namespace, {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": f"{name}-token", "namespace": self.namespace, "labels": {RUNTIME_LABEL: "true"}},
                # "data" (base64), not "stringData": stored as sent by every API server.
                "data": {"token": base64.b64encode(secrets.token_urlsafe(32).encode()).decode()}})
        body = self._service_body(name, memory, timeout_s, concurrency)
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            exists = True
        except ApiException as exc:
            if exc.status != 404:
                raise self._api_error(exc, "read", name) from None
            exists = False
        if exists:
            self._k8s("update", name, custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace,
                      PLURAL, name, {"metadata": {"labels": {RUNTIME_LABEL: "true"}}, "spec": body["spec"]})
        else:
            self._k8s("create", name, custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace,
                      PLURAL, body)
        return {"name": name, "namespace": self.namespace, "image": self.image, "memory_mb": memory,
                "timeout": timeout_s, "concurrency": concurrency, "token_secret": f"{name}-token"}

    def list_runtimes(self) -> List[Dict[str, Any]]:
        found = self._k8s("list", "*", self._custom().list_namespaced_custom_object, GROUP, VERSION,
                          self.namespace, PLURAL, label_selector=f"{RUNTIME_LABEL}=true")
        out = []
        for svc in found.get("items") or []:
            spec = ((svc.get("spec") or {}).get("template") or {}).get("spec") or {}
            container = (spec.get("containers") or [{}])[0]
            out.append({"name": svc["metadata"]["name"], "url": (svc.get("status") or {}).get("url"),
                        "image": container.get("image"),
                        "memory": ((container.get("resources") or {}).get("limits") or {}).get("memory"),
                        "timeout": spec.get("timeoutSeconds"), "concurrency": spec.get("containerConcurrency")})
        return sorted(out, key=lambda r: r["name"])

    def delete_runtime(self, name: str) -> None:
        custom = self._custom()
        svc = self._k8s("read", name, custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace,
                        PLURAL, name)
        if ((svc.get("metadata") or {}).get("labels") or {}).get(RUNTIME_LABEL) != "true":
            raise PermissionError(f"the Code Engine app {name!r} is not a cloudpool runtime (no {RUNTIME_LABEL} "
                                  f"label); delete it with `ibmcloud ce app delete --name {name}`")
        self._k8s("delete", name, custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace,
                  PLURAL, name)
        try:
            self._k8s("delete", name, self._core().delete_namespaced_secret, f"{name}-token", self.namespace)
        except FileNotFoundError:
            pass  # already gone: nothing left to remove
