"""The ``containerapps`` backend: Azure Container Apps running the cloudpool HTTP runtime.

A container app with HTTP ingress serves Knative-style requests, so invoking it is the
``knative`` backend's job, inherited unchanged (posting threads, 429/503 back-off within
``retry_seconds``, streamed notices, the ``GET /runtime`` version handshake, cancelling).
This module owns what is specific to Container Apps:

- **Authentication of invocations**: ``auth="token"`` (default) sends the runtime's shared
  token, which the app holds as the Container Apps secret ``cloudpool-token`` (the
  container reads it as ``CLOUDPOOL_RUNTIME_TOKEN`` through a ``secretRef``);
  ``auth="entra"`` sends a Microsoft Entra access token from azure-identity for the
  scope ``api://{client_id}/.default``, for apps behind Container Apps authentication
  (Easy Auth), which checks the token before the request reaches the runtime. Deploying
  with ``auth="entra"`` creates the app token-checked, then configures its
  ``authConfigs/current`` (Entra, unauthenticated requests answered 401), and only then
  redeploys the runtime without a token check of its own.
- **Runtimes**: ``cloudpool runtime deploy|list|delete --backend containerapps`` go through
  the Azure Resource Manager REST API (``Microsoft.App/containerApps``, api-version
  ``2024-03-01``) with plain ``requests``: PUT to create or update, GET by resource group
  to list (apps tagged ``cloudpool-runtime``), DELETE, and the long-running operations
  polled through their ``Azure-AsyncOperation`` or ``Location`` headers. ARM calls carry
  an access token for ``https://management.azure.com/.default`` from azure-identity
  (``DefaultAzureCredential`` unless a ``credential`` or ``management_token`` is given).
- **Discovery**: without ``url`` the backend reads the app's ingress FQDN from ARM and
  its token through the ``listSecrets`` action; a missing app, or one that is not
  serving yet, is refused naming the deploy command.

The tokens (runtime, Entra, ARM) travel only in Authorization headers -- the runtime
token also in the management-plane PUT that stores it as a secret -- never in an event.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import requests

from . import declared
from .knative import KnativeBackend

MANAGEMENT_ENDPOINT = "https://management.azure.com"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
API_VERSION = "2024-03-01"
RUNTIME_TAG = "cloudpool-runtime"
SECRET_NAME = "cloudpool-token"
DEFAULT_APP = "cloudpool-runtime"
#: Consumption-plan sizes: vCPU 0.25..4 in 0.25 steps, each with memory = 2 x vCPU GiB.
CPU_MIN, CPU_MAX, CPU_STEP = 0.25, 4.0, 0.25
DEFAULT_CPU = 0.5
#: Container Apps ends an HTTP request through its ingress after 240 s.
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 240
DEFAULT_TIMEOUT_S = 240
_OPERATION_WAIT = 900.0
_REFRESH_MARGIN = 300.0
# Container app names: lower-case letters, digits and '-', start with a letter, 2..32 chars.
_APP_RE = re.compile(r"^[a-z][-a-z0-9]{0,30}[a-z0-9]$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RG_RE = re.compile(r"^[-\w._()]{1,90}$")
_REGION_RE = re.compile(r"^[a-z]+[a-z0-9]*$")

_OWN = ("auth", "client_id", "tenant_id", "entra_scope", "credential", "management_token", "management_endpoint",
        "subscription_id", "resource_group", "app", "region", "environment_id", "image", "cpu", "memory_gi",
        "timeout", "max_replicas")


def _fail(name: str, wanted: str, value: Any) -> ValueError:
    return ValueError(f"the containerapps backend's {name!r} must be {wanted}, not {value!r}")


def check_size(cpu: Any, memory_gi: Any = None) -> Tuple[float, float]:
    """(cpu, memory_gi) if Container Apps' Consumption plan allows the pair, else ValueError."""
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not CPU_MIN <= cpu <= CPU_MAX \
            or abs(cpu / CPU_STEP - round(cpu / CPU_STEP)) > 1e-9:
        raise _fail("cpu", "a vCPU count from 0.25 to 4 in steps of 0.25 (Container Apps' Consumption sizes)", cpu)
    cpu = round(float(cpu), 2)
    if memory_gi is None:
        memory_gi = cpu * 2
    if isinstance(memory_gi, bool) or not isinstance(memory_gi, (int, float)) or abs(memory_gi - cpu * 2) > 1e-9:
        raise ValueError(f"the containerapps backend's 'memory_gi' must be twice 'cpu' (Container Apps allows "
                         f"0.25 vCPU/0.5Gi, 0.5/1Gi, ... 4/8Gi), not {memory_gi!r} with cpu={cpu:g}")
    return cpu, round(float(memory_gi), 2)


def _auth_errors() -> tuple:
    """What a credential raises when it cannot sign in (azure-core's error, if installed)."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
    except ImportError:
        return (OSError, ValueError)
    return (ClientAuthenticationError, OSError, ValueError)


class _Tokens:
    """Access tokens for one scope from an azure-identity credential, refreshed before expiry."""

    def __init__(self, scope: str, credential: Any = None, static: Optional[str] = None) -> None:
        self.scope = scope
        self._credential = credential
        self._static = static
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires = 0.0

    def get(self) -> str:
        if self._static:
            return self._static
        with self._lock:
            if self._token is None or time.time() > self._expires - _REFRESH_MARGIN:
                if self._credential is None:
                    try:
                        from azure.identity import DefaultAzureCredential
                    except ImportError:
                        raise ImportError("Microsoft Entra tokens need azure-identity: pip install "
                                          "'cloudpool[azure]'") from None
                    self._credential = DefaultAzureCredential()
                try:
                    got = self._credential.get_token(self.scope)
                except _auth_errors() as exc:
                    raise PermissionError(f"could not get a Microsoft Entra token for {self.scope} ({exc}): "
                                          f"sign in with `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/"
                                          f"AZURE_CLIENT_SECRET or a managed identity") from None
                self._token, self._expires = got.token, float(got.expires_on)
            return self._token


class ContainerAppsBackend(KnativeBackend):
    """Runs invocations on an Azure container app of the cloudpool HTTP runtime."""

    name = "containerapps"
    option_names = declared.CONTAINERAPPS.options
    secret_option_names = declared.CONTAINERAPPS.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        options = dict(options)
        unknown = set(options) - set(declared.CONTAINERAPPS.options)
        if unknown:  # before any network use
            from ..config import unknown_options_error

            raise unknown_options_error("the 'containerapps' backend", unknown, declared.CONTAINERAPPS.options)
        own = {k: options.pop(k) for k in _OWN if k in options}
        self.auth = own.get("auth", "token")
        if self.auth not in ("token", "entra"):
            raise _fail("auth", "'token' (the runtime's shared token) or 'entra' (Microsoft Entra tokens, for "
                                "apps behind Container Apps authentication)", self.auth)
        credential = own.get("credential")
        if credential is not None and not hasattr(credential, "get_token"):
            raise _fail("credential", "an azure-identity credential (an object with get_token)", credential)
        self.subscription_id = own.get("subscription_id")
        if self.subscription_id is not None and not (isinstance(self.subscription_id, str)
                                                     and _UUID_RE.match(self.subscription_id)):
            raise _fail("subscription_id", "the subscription's GUID (`az account show --query id`)",
                        self.subscription_id)
        self.resource_group = own.get("resource_group")
        if self.resource_group is not None and not (isinstance(self.resource_group, str)
                                                    and _RG_RE.match(self.resource_group)):
            raise _fail("resource_group", "a resource group name", self.resource_group)
        self.app = own.get("app", DEFAULT_APP)
        if not isinstance(self.app, str) or not _APP_RE.match(self.app):
            raise _fail("app", "a container app name (2-32 lower-case letters, digits and '-', starting with a "
                               "letter)", self.app)
        self.region = own.get("region")
        if self.region is not None and not (isinstance(self.region, str) and _REGION_RE.match(self.region)):
            raise _fail("region", "an Azure region name like 'eastus'", self.region)
        self.environment_id = own.get("environment_id")
        if self.environment_id is not None and not (isinstance(self.environment_id, str) and
                                                    "/providers/Microsoft.App/managedEnvironments/" in
                                                    self.environment_id):
            raise _fail("environment_id", "a Container Apps environment's resource ID (/subscriptions/.../"
                                          "providers/Microsoft.App/managedEnvironments/NAME)", self.environment_id)
        self.image = own.get("image")
        self.cpu, self.memory_gi = check_size(own.get("cpu", DEFAULT_CPU), own.get("memory_gi"))
        timeout = own.get("timeout", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not TIMEOUT_MIN_S <= timeout <= TIMEOUT_MAX_S:
            raise _fail("timeout", f"seconds from {TIMEOUT_MIN_S} to {TIMEOUT_MAX_S} (Container Apps' HTTP "
                                   f"ingress ends requests after 240 s)", timeout)
        self.timeout = int(timeout)
        max_replicas = own.get("max_replicas", 10)
        if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or not 1 <= max_replicas <= 1000:
            raise _fail("max_replicas", "an integer from 1 to 1000", max_replicas)
        self.max_replicas = max_replicas
        endpoint = own.get("management_endpoint", MANAGEMENT_ENDPOINT)
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise _fail("management_endpoint", "an http(s) URL", endpoint)
        self.management_endpoint = endpoint.rstrip("/")
        static = own.get("management_token")
        if static is not None and (not isinstance(static, str) or not static):
            raise _fail("management_token", "an ARM access token string (`az account get-access-token`)", "...")
        self._arm_tokens = _Tokens(MANAGEMENT_SCOPE, credential, static)
        self._arm_session: Optional[requests.Session] = None
        self._arm_lock = threading.Lock()

        self._entra: Optional[_Tokens] = None
        if self.auth == "entra":
            if "token" in options:
                raise ValueError("the containerapps backend takes 'token' only with auth='token'; with "
                                 "auth='entra' it sends Microsoft Entra tokens")
            scope = own.get("entra_scope")
            client_id = own.get("client_id")
            if scope is None:
                if not isinstance(client_id, str) or not client_id:
                    raise ValueError("auth='entra' needs the app registration that Container Apps "
                                     "authentication checks: set the containerapps option 'client_id' (or "
                                     "'entra_scope')")
                scope = f"api://{client_id}/.default"
            if not isinstance(scope, str) or not scope.endswith("/.default"):
                raise _fail("entra_scope", "a scope like 'api://CLIENT_ID/.default'", scope)
            self.entra_scope = scope
            self._entra = _Tokens(scope, credential)
        self.client_id = own.get("client_id")
        self.tenant_id = own.get("tenant_id")
        if self.tenant_id is not None and not (isinstance(self.tenant_id, str) and _UUID_RE.match(self.tenant_id)):
            raise _fail("tenant_id", "the Microsoft Entra tenant's GUID (`az account show --query tenantId`)",
                        self.tenant_id)

        self._missing: Optional[BaseException] = None
        if "url" not in options and "urls" not in options:
            self._need("find", ("subscription_id", "resource_group"))
            try:
                options["url"] = self._app_url(self.app)
            except FileNotFoundError as exc:
                self._missing = exc  # still built, so `cloudpool runtime deploy` can create it
                options["url"] = f"https://{self.app}.invalid"
        if self.auth == "entra":
            # The knative machinery wants a token option; ours is minted per request (_headers).
            options["token"] = "entra"
        elif "token" not in options:
            options["token"] = "not-deployed" if self._missing else self._app_token(self.app)
        if "request_timeout" not in options:
            options["request_timeout"] = float(self.timeout)
        self.option_names = declared.CONTAINERAPPS.options | {"token"}
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)

    # ------------------------------------------------------------------ invocation auth
    @property  # type: ignore[override]
    def _headers(self) -> Dict[str, str]:
        headers = dict(self.__dict__["_base_headers"])
        if self._entra is not None:
            headers["Authorization"] = f"Bearer {self._entra.get()}"
        return headers

    @_headers.setter
    def _headers(self, value: Dict[str, str]) -> None:
        if self.__dict__.get("_entra") is not None:
            value = {k: v for k, v in value.items() if k != "Authorization"}
        self.__dict__["_base_headers"] = value

    def _fetch_runtime(self, session, svc):
        try:
            return super()._fetch_runtime(session, svc)
        except PermissionError as exc:
            if self._entra is None:
                raise PermissionError(f"{exc}; the app's token is its Container Apps secret {SECRET_NAME!r} "
                                      f"(`az containerapp secret show`), or leave 'token' unset to read it "
                                      f"from Azure") from None
            raise PermissionError(f"{svc.url} refused the Microsoft Entra token for {self.entra_scope} ({exc}): "
                                  f"the app's authentication must accept that audience, and the caller be "
                                  f"allowed by it") from None

    # ------------------------------------------------------------------ ARM
    def _need(self, verb: str, keys: Sequence[str]) -> None:
        missing = [k for k in keys if not getattr(self, k)]
        if missing:
            raise ValueError(f"to {verb} the container app, set the containerapps option(s) "
                             f"{', '.join(repr(k) for k in missing)}"
                             + (" (or 'url' and 'token' to call an app directly)" if verb == "find" else ""))

    def _base(self) -> str:
        return (f"{self.management_endpoint}/subscriptions/{self.subscription_id}/resourceGroups/"
                f"{self.resource_group}/providers/Microsoft.App/containerApps")

    def _arm(self, method: str, url: str, verb: str, name: str, *, expect_json: bool = True,
             **kwargs: Any) -> requests.Response:
        with self._arm_lock:
            if self._arm_session is None:
                self._arm_session = requests.Session()
        params = kwargs.pop("params", None)
        if "api-version=" not in url:
            params = dict(params or {}, **{"api-version": API_VERSION})
        headers = {"Authorization": f"Bearer {self._arm_tokens.get()}", "Accept": "application/json"}
        try:
            resp = self._arm_session.request(method, url, params=params, headers=headers, timeout=(10, 60), **kwargs)
        except requests.RequestException as exc:
            raise ConnectionError(f"could not reach Azure Resource Manager at {self.management_endpoint}: "
                                  f"{exc}") from None
        if resp.status_code == 404:
            raise FileNotFoundError(
                f"the container app {name!r} does not exist in resource group {self.resource_group!r}: deploy "
                f"the runtime with `cloudpool runtime deploy --backend containerapps {name}`")
        if resp.status_code in (401, 403):
            raise PermissionError(f"Azure Resource Manager refused to {verb} {name!r} (HTTP {resp.status_code}: "
                                  f"{resp.text[:300]}); the caller needs the Contributor role (or "
                                  f"Microsoft.App/containerApps/* rights) on the resource group")
        if resp.status_code >= 400:
            raise RuntimeError(f"could not {verb} the container app {name!r}: HTTP {resp.status_code}: "
                               f"{resp.text[:300]}")
        return resp

    def _wait(self, resp: requests.Response, verb: str, name: str) -> None:
        """Follow a long-running operation to its end (Azure-AsyncOperation first, else Location)."""
        status_url = resp.headers.get("Azure-AsyncOperation")
        location = resp.headers.get("Location")
        if not status_url and not (location and resp.status_code == 202):
            return  # finished synchronously
        deadline = time.monotonic() + _OPERATION_WAIT
        delay = 0.1
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Azure did not finish the operation to {verb} {name!r} within "
                                   f"{_OPERATION_WAIT:g} s")
            wait = resp.headers.get("Retry-After")
            try:
                time.sleep(min(float(wait), 10.0) if wait else delay)
            except ValueError:
                time.sleep(delay)
            delay = min(5.0, delay * 2)
            if status_url:
                resp = self._arm("GET", status_url, verb, name)
                status = (resp.json() or {}).get("status", "")
                if status == "Succeeded":
                    return
                if status in ("Failed", "Canceled"):
                    error = (resp.json().get("error") or {}).get("message", status)
                    raise RuntimeError(f"Azure could not {verb} the container app {name!r}: {error}")
            else:
                resp = self._arm("GET", location, verb, name)
                if resp.status_code != 202:
                    return

    def _get_app(self, name: str) -> Dict[str, Any]:
        return self._arm("GET", f"{self._base()}/{name}", "read", name).json()

    def _app_url(self, name: str) -> str:
        app = self._get_app(name)
        fqdn = (((app.get("properties") or {}).get("configuration") or {}).get("ingress") or {}).get("fqdn")
        if not fqdn:
            raise RuntimeError(f"the container app {name!r} has no HTTP ingress address yet: redeploy it with "
                               f"`cloudpool runtime deploy --backend containerapps {name}`")
        return f"https://{fqdn}"

    def _secret(self, name: str) -> Optional[str]:
        resp = self._arm("POST", f"{self._base()}/{name}/listSecrets", "read the secrets of", name)
        for item in (resp.json() or {}).get("value") or []:
            if item.get("name") == SECRET_NAME:
                return item.get("value")
        return None

    def _app_token(self, name: str) -> str:
        token = self._secret(name)
        if not token:
            raise RuntimeError(f"the container app {name!r} has no secret {SECRET_NAME!r}: redeploy it with "
                               f"`cloudpool runtime deploy --backend containerapps {name}`")
        return token

    # ------------------------------------------------------------------ manager side
    def describe(self) -> Dict[str, Any]:
        if self._missing is not None:
            return {"backend": self.name, "error": str(self._missing)}
        return dict(super().describe(), backend=self.name, app=self.app, auth=self.auth)

    # ------------------------------------------------------------------ runtimes
    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        raise NotImplementedError(
            "the containerapps backend does not build images: build runtime/knative/Dockerfile and push it to a "
            "registry the app can pull from (e.g. `az acr build`), set the containerapps option 'image', then "
            "run `cloudpool runtime deploy --backend containerapps`")

    def app_body(self, name: str, token: str, cpu: float, memory_gi: float,
                 behind_auth: bool = False) -> Dict[str, Any]:
        """The ``Microsoft.App/containerApps`` resource PUT for runtime ``name``.

        ``behind_auth``: Container Apps authentication checks every request's Entra token
        and forwards only authenticated ones (with their Authorization header, which the
        runtime could not match against its shared token), so the runtime checks none.
        """
        concurrency = self._services[0].weight
        args = ["--concurrency", str(concurrency)] + (["--insecure-no-token"] if behind_auth else [])
        return {
            "location": self.region,
            "tags": {RUNTIME_TAG: "true"},
            "properties": {
                "managedEnvironmentId": self.environment_id,
                "configuration": {
                    "activeRevisionsMode": "Single",
                    "ingress": {"external": True, "targetPort": 8080, "transport": "auto", "allowInsecure": False},
                    "secrets": [{"name": SECRET_NAME, "value": token}],
                },
                "template": {
                    "containers": [{
                        "name": "cloudpool",
                        "image": self.image,
                        "args": args,
                        "env": [{"name": "CLOUDPOOL_RUNTIME_TOKEN", "secretRef": SECRET_NAME}],
                        "resources": {"cpu": cpu, "memory": f"{memory_gi:g}Gi"},
                    }],
                    "scale": {"minReplicas": 0, "maxReplicas": self.max_replicas,
                              "rules": [{"name": "http", "http": {"metadata": {
                                  "concurrentRequests": str(concurrency)}}}]},
                },
            },
        }

    def auth_body(self) -> Dict[str, Any]:
        """The app's ``authConfigs/current``: Microsoft Entra tokens for our app registration, else 401."""
        return {"properties": {
            "platform": {"enabled": True},
            "globalValidation": {"unauthenticatedClientAction": "Return401"},
            "identityProviders": {"azureActiveDirectory": {
                "enabled": True,
                "registration": {"clientId": self.client_id,
                                 "openIdIssuer": f"https://sts.windows.net/{self.tenant_id}/v2.0"},
                "validation": {"allowedAudiences": [f"api://{self.client_id}"]},
            }},
        }}

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        self._need("deploy", ("subscription_id", "resource_group", "region", "environment_id", "image"))
        if self.auth == "entra":
            self._need("deploy (auth='entra')", ("client_id", "tenant_id"))
        name = name or self.app
        if not isinstance(name, str) or not _APP_RE.match(name):
            raise _fail("app", "a container app name (2-32 lower-case letters, digits and '-')", name)
        cpu, memory_gi = self.cpu, self.memory_gi
        if memory_mb is not None:
            cpu, memory_gi = check_size(memory_mb / 2048, memory_mb / 1024)
        if timeout is not None and not TIMEOUT_MIN_S <= timeout <= TIMEOUT_MAX_S:
            raise _fail("timeout", f"seconds from {TIMEOUT_MIN_S} to {TIMEOUT_MAX_S}", timeout)
        try:
            # Keep the existing token on an update, so running clients keep working.
            token = self._secret(name) or secrets.token_urlsafe(32)
        except FileNotFoundError:
            token = secrets.token_urlsafe(32)
        resp = self._arm("PUT", f"{self._base()}/{name}", "deploy", name, json=self.app_body(name, token, cpu,
                                                                                                memory_gi))
        self._wait(resp, "deploy", name)
        if self.auth == "entra":
            # Authentication first, and only then a runtime that trusts it: if configuring
            # it fails, the app is left checking its shared token, never open.
            resp = self._arm("PUT", f"{self._base()}/{name}/authConfigs/current", "configure authentication of",
                             name, json=self.auth_body())
            self._wait(resp, "configure authentication of", name)
            resp = self._arm("PUT", f"{self._base()}/{name}", "deploy", name,
                             json=self.app_body(name, token, cpu, memory_gi, behind_auth=True))
            self._wait(resp, "deploy", name)
        app = self._get_app(name)
        fqdn = (((app.get("properties") or {}).get("configuration") or {}).get("ingress") or {}).get("fqdn")
        return {"name": name, "url": f"https://{fqdn}" if fqdn else None, "image": self.image, "cpu": cpu,
                "memory": f"{memory_gi:g}Gi", "resource_group": self.resource_group, "region": self.region}

    def list_runtimes(self) -> List[Dict[str, Any]]:
        self._need("list", ("subscription_id", "resource_group"))
        out: List[Dict[str, Any]] = []
        url: Optional[str] = self._base()
        while url:
            page = self._arm("GET", url, "list", "*").json()
            for app in page.get("value") or []:
                if (app.get("tags") or {}).get(RUNTIME_TAG) != "true":
                    continue
                props = app.get("properties") or {}
                container = ((props.get("template") or {}).get("containers") or [{}])[0]
                fqdn = ((props.get("configuration") or {}).get("ingress") or {}).get("fqdn")
                out.append({"name": app.get("name"), "url": f"https://{fqdn}" if fqdn else None,
                            "image": container.get("image"),
                            "cpu": (container.get("resources") or {}).get("cpu"),
                            "memory": (container.get("resources") or {}).get("memory"),
                            "auth": "entra" if "--insecure-no-token" in (container.get("args") or []) else "token",
                            "state": props.get("provisioningState")})
            url = page.get("nextLink")
        return sorted(out, key=lambda r: r["name"] or "")

    def delete_runtime(self, name: str) -> None:
        self._need("delete", ("subscription_id", "resource_group"))
        app = self._get_app(name)
        if (app.get("tags") or {}).get(RUNTIME_TAG) != "true":
            raise PermissionError(f"the container app {name!r} is not a cloudpool runtime (no {RUNTIME_TAG} tag); "
                                  f"delete it with `az containerapp delete --name {name}`")
        self._wait(self._arm("DELETE", f"{self._base()}/{name}", "delete", name), "delete", name)

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        if self._arm_session is not None:
            self._arm_session.close()
