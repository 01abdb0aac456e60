"""Lithops configuration for ``cloudpool.compat.lithops``: reading it and translating it.

This module owns two things:

- Lithops' own config entry points, as Lithops programs and test suites call them:
  ``load_yaml_config``, ``load_config`` (``LITHOPS_CONFIG_FILE``, ``./.lithops_config``,
  ``~/.lithops/config``, in Lithops' order), ``default_config`` (fills in the defaults
  Lithops fills in for localhost) and ``extract_storage_config``.
- ``translate``: a Lithops config dict -> the cloudpool config, the cloudpool backend
  name, and the storage it names. Every key of Lithops' documented config is accepted:
  keys with a cloudpool meaning are mapped (``execution_timeout`` -> ``timeout``,
  ``<backend>.max_workers`` -> ``max_workers``, ``<storage>.storage_bucket`` -> the
  executor's storage, ``endpoint``/credentials -> storage options, ...), keys with none
  are logged at debug level and otherwise ignored, and only settings whose effect
  cloudpool cannot give (so a program would run differently) raise
  ``LithopsCompatError`` naming the key and what to use instead.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple

logger = logging.getLogger("cloudpool.compat.lithops")


class LithopsCompatError(ValueError):
    """A Lithops argument or setting cloudpool cannot honour; the message says what to use."""


def unsupported(name: str, instead: str) -> LithopsCompatError:
    return LithopsCompatError(f"cloudpool.compat.lithops does not support {name}: {instead}")


#: Lithops compute backend names -> cloudpool's (others are passed on as they are).
BACKENDS = {"localhost": "local", "k8s": "kubernetes", "aws_lambda": "aws_lambda",
            "knative": "knative"}
#: Lithops standalone (VM) backends: cloudpool runs no VMs of its own.
STANDALONE = ("ibm_vpc", "aws_ec2", "azure_vms", "gcp_compute_engine", "vm")
#: Lithops storage backend names -> cloudpool URL schemes.
STORAGES = {"localhost": "file", "aws_s3": "s3", "minio": "s3", "ceph": "s3",
            "ibm_cos": "cos", "gcp_storage": "gs", "azure_storage": "az"}
#: Storage section keys -> cloudpool storage option names (S3-compatible sections).
_S3_OPTIONS = {"endpoint": "endpoint_url", "region": "region", "region_name": "region",
               "access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key",
               "session_token": "aws_session_token"}
#: Keys of the ``lithops`` section cloudpool has nothing to do with (logged at debug).
_LITHOPS_IGNORED = {
    "monitoring_interval": "cloudpool polls status adaptively (poll_interval..poll_interval_max)",
    "chunksize": "cloudpool sizes invocation batches from measured call times",
    "data_limit": "cloudpool has no argument size limit (large batches go through storage)",
    "include_modules": "functions are pickled with cloudpickle; imported modules must be installed",
    "exclude_modules": "functions are pickled with cloudpickle; imported modules must be installed",
    "log_format": "cloudpool logs through the logging module; configure it there",
    "log_stream": "cloudpool logs through the logging module; configure it there",
    "log_filename": "cloudpool logs through the logging module; configure it there",
    "customized_runtime": "cloudpool ships functions at call time",
    "retries": "read by RetryingFunctionExecutor",
    "storage_bucket": None,  # handled below
}
#: Keys Lithops documents for its compute backend sections (others are logged as unknown).
_COMPUTE_KEYS = frozenset({
    "max_workers", "runtime", "worker_processes", "runtime_memory", "runtime_timeout", "region",
    "version", "invoke_pool_threads", "remote_invoker", "architecture", "ephemeral_storage",
    "user_tags", "env_vars", "namespace", "runtime_include_function", "execution_role",
    "storage_bucket", "user_agent"})


def _count(name: str, value: Any) -> int:
    """A positive int setting, or a ValueError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LithopsCompatError(f"Lithops config {name} must be a positive integer, not {value!r}")
    return value


def load_yaml_config(config_filename: str) -> Dict[str, Any]:
    """A Lithops YAML config file as a dict (an empty file gives ``{}``)."""
    import yaml  # cloudpool's config files are YAML too: PyYAML is a dependency

    with open(config_filename) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LithopsCompatError(f"{config_filename}: a Lithops config must be a mapping of "
                                 f"sections, not {type(data).__name__}")
    return data


def config_file_path(config_file: Optional[str] = None) -> Optional[str]:
    """The config file Lithops would read: the argument, ``LITHOPS_CONFIG_FILE``,
    ``./.lithops_config`` or ``~/.lithops/config`` (the first that is given/exists)."""
    if config_file:
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"Lithops config file {config_file} does not exist")
        return config_file
    env = os.environ.get("LITHOPS_CONFIG_FILE")
    if env:
        if not os.path.exists(env):
            raise FileNotFoundError(f"LITHOPS_CONFIG_FILE names {env}, which does not exist")
        return env
    for path in (".lithops_config", os.path.expanduser(os.path.join("~", ".lithops", "config"))):
        if os.path.exists(path):
            return path
    return None


def load_config(config_file: Optional[str] = None) -> Dict[str, Any]:
    """The user's Lithops config from its file (``{}`` when there is none)."""
    path = config_file_path(config_file)
    return load_yaml_config(path) if path else {}


def default_config(config_file: Optional[str] = None, config_data: Optional[Mapping[str, Any]] = None,
                   config_overwrite: Optional[Mapping[str, Any]] = None,
                   load_storage_config: bool = True) -> Dict[str, Any]:
    """A complete Lithops config dict, with the defaults Lithops fills in.

    Without backend or mode, Lithops' default here is localhost compute and storage
    (what Lithops itself picks without a config file).
    """
    data: Dict[str, Any] = copy.deepcopy(dict(config_data)) if config_data else load_config(config_file)
    overwrite = config_overwrite or {}
    lith = data.setdefault("lithops", {}) or {}
    data["lithops"] = lith
    lith.update(overwrite.get("lithops") or {})
    backend, mode = lith.get("backend"), lith.get("mode")
    if not backend:
        # Lithops: the mode's section may name the backend, else the mode's default backend.
        defaults = {None: "localhost", "localhost": "localhost", "serverless": "aws_lambda",
                    "standalone": "aws_ec2"}
        backend = lith["backend"] = (data.get(mode) or {}).get("backend") or defaults.get(mode, mode)
    lith.setdefault("mode", "localhost" if backend == "localhost" else
                    "standalone" if backend in STANDALONE else "serverless")
    section = data.get(backend) or {}
    data[backend] = section
    section.update(overwrite.get("backend") or {})
    if backend == "localhost":
        section.setdefault("runtime", "python")
        section.setdefault("worker_processes", os.cpu_count() or 1)
        section.setdefault("max_workers", 1)
    lith.setdefault("chunksize", section.get("worker_processes", 1))
    if load_storage_config:
        lith.setdefault("storage", "localhost" if backend == "localhost" else "aws_s3")
        storage = lith["storage"]
        data[storage] = data.get(storage) or {}
        if storage == "localhost":
            data[storage].setdefault("storage_bucket", "storage")
    for key, value in (("monitoring", "storage"), ("monitoring_interval", 2), ("execution_timeout", 1800)):
        lith.setdefault(key, value)
    return data


def _storage_section(config: Mapping[str, Any], storage: str) -> Dict[str, Any]:
    """A storage section, with the defaults Lithops takes from its provider section
    (``aws``, ``ibm``, ``gcp``: region, credentials, project)."""
    section = dict(config.get(storage) or {})
    provider = {"aws_s3": "aws", "ibm_cos": "ibm", "gcp_storage": "gcp"}.get(storage)
    if provider and isinstance(config.get(provider), Mapping):
        for key, value in config[provider].items():
            if key in ("region", "access_key_id", "secret_access_key", "session_token",
                       "iam_api_key", "project_id") and value is not None:
                section.setdefault(key, value)
    return section


def extract_storage_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The storage part of a Lithops config: ``{"backend": name, name: {...}}``."""
    lith = config.get("lithops") or {}
    backend = lith.get("storage") or "localhost"
    section = _storage_section(config, backend)
    if lith.get("storage_bucket") and not section.get("storage_bucket"):
        section["storage_bucket"] = lith["storage_bucket"]
    if backend == "localhost":
        section.setdefault("storage_bucket", "storage")
    return {"backend": backend, backend: section}


#: IBM COS section keys -> cloudpool cos options.
_COS_OPTIONS = {"endpoint": "endpoint_url", "region": "region", "api_key": "api_key",
                "iam_api_key": "api_key", "access_key_id": "access_key_id",
                "secret_access_key": "secret_access_key", "service_instance_id": "service_instance_id"}
#: GCP section keys -> cloudpool gs options.
_GS_OPTIONS = {"project_id": "project", "project": "project"}


def storage_options(name: str, section: Mapping[str, Any]) -> Dict[str, Any]:
    """cloudpool storage options from a Lithops storage section (unknown keys logged)."""
    out: Dict[str, Any] = {}
    scheme = STORAGES.get(name)
    table = {"s3": _S3_OPTIONS, "cos": _COS_OPTIONS, "gs": _GS_OPTIONS}.get(scheme or "", {})
    if scheme == "az" and section.get("storage_account_name"):
        account = section["storage_account_name"]
        out["account_url"] = f"https://{account}.blob.core.windows.net"
        if section.get("storage_account_key"):
            out["credential"] = section["storage_account_key"]
    for key, value in section.items():
        if key in table:
            if value is not None:
                out[table[key]] = value
        elif scheme == "az" and key in ("storage_account_name", "storage_account_key"):
            continue
        elif key.startswith("_cloudpool_"):
            out[key[len("_cloudpool_"):]] = value  # already a cloudpool option (see FunctionExecutor.storage)
        elif key == "storage_bucket":
            continue
        else:
            logger.debug("Lithops config %s.%s has no cloudpool meaning; ignored", name, key)
    return out


def translate(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A Lithops config -> (cloudpool config, settings).

    ``settings`` holds ``backend`` (Lithops' name), ``storage`` (Lithops' storage name),
    ``bucket`` (the storage section's ``storage_bucket``), ``storage_options`` and
    ``max_workers``.
    """
    lith = config.get("lithops") or {}
    if not isinstance(lith, Mapping):
        raise LithopsCompatError(f"config['lithops'] must be a mapping, not {type(lith).__name__}")
    out: Dict[str, Any] = {}
    settings: Dict[str, Any] = {}
    mode = lith.get("mode")
    backend = lith.get("backend") or ("localhost" if mode in (None, "localhost") else None)
    if mode == "standalone" or backend in STANDALONE:
        raise unsupported(f"lithops.mode='standalone' / backend={backend!r} (virtual machines)",
                          "use a serverless backend (backend: aws_lambda, k8s, knative) or localhost")
    if lith.get("monitoring") not in (None, "storage"):
        logger.debug("Lithops config lithops.monitoring=%r: cloudpool watches calls through their "
                     "status objects in storage; ignored", lith["monitoring"])
    for key, value in lith.items():
        if key in ("backend", "storage", "mode", "monitoring"):
            continue
        if key == "execution_timeout":
            if value is not None:
                out["timeout"] = value
        elif key == "data_cleaner":
            out["keep_data"] = not value
        elif key == "log_level":
            level = logging.getLevelName(str(value).upper()) if value else None
            if isinstance(level, int):
                logging.getLogger("cloudpool").setLevel(level)
        elif key in _LITHOPS_IGNORED:
            if _LITHOPS_IGNORED[key]:
                logger.debug("Lithops config lithops.%s: %s; ignored", key, _LITHOPS_IGNORED[key])
        else:
            logger.debug("Lithops config lithops.%s is not a documented Lithops key; ignored", key)
    settings["backend"] = backend
    storage = lith.get("storage")
    settings["storage"] = storage
    settings["bucket"] = lith.get("storage_bucket")
    if backend is not None:
        section = config.get(backend) or {}
        if not isinstance(section, Mapping):
            raise LithopsCompatError(f"config[{backend!r}] must be a mapping, not {type(section).__name__}")
        cp_backend = BACKENDS.get(backend, backend)
        backend_opts: Dict[str, Any] = {}
        for key, value in section.items():
            if key == "max_workers" and value is not None:
                # Lithops localhost runs worker_processes per worker: its parallelism is the product.
                procs = section.get("worker_processes") if backend == "localhost" else None
                settings["max_workers"] = _count(f"{backend}.max_workers", value) * (
                    _count(f"{backend}.worker_processes", procs) if procs is not None else 1)
            elif key == "runtime" and backend != "localhost" and value:
                out["runtime"] = value
            elif key == "runtime_memory" and cp_backend == "aws_lambda" and value:
                backend_opts["memory_mb"] = _count(f"{backend}.runtime_memory", value)
            elif key == "execution_role" and cp_backend == "aws_lambda" and value:
                backend_opts["role"] = value
            elif key == "region" and cp_backend == "aws_lambda" and value:
                backend_opts["region"] = value
            elif key in ("storage_bucket", "user_agent"):
                continue  # the localhost section doubles as the storage section
            else:
                logger.debug("Lithops config %s.%s%s has no cloudpool meaning; ignored", backend, key,
                             "" if key in _COMPUTE_KEYS else " (not a documented Lithops key)")
        aws = config.get("aws") if isinstance(config.get("aws"), Mapping) else {}
        if cp_backend == "aws_lambda" and aws.get("region") and "region" not in backend_opts:
            backend_opts["region"] = aws["region"]  # Lithops: the aws section's region by default
        if backend == "localhost" and "max_workers" not in section and section.get("worker_processes"):
            settings["max_workers"] = _count(f"{backend}.worker_processes", section["worker_processes"])
        if backend_opts:
            out[cp_backend] = backend_opts
    if storage is not None and storage not in STORAGES:
        raise unsupported(f"lithops.storage={storage!r}",
                          f"use one of {', '.join(sorted(STORAGES))}, or pass storage= a cloudpool "
                          f"storage URL (s3://bucket/prefix, gs://..., az://..., a local path)")
    if storage is not None:
        section = _storage_section(config, storage)
        settings["storage_options"] = storage_options(storage, section)
        if section.get("storage_bucket"):
            settings["bucket"] = section["storage_bucket"]
    for name in config:
        if name not in ("lithops", backend, storage, "aws"):
            logger.debug("Lithops config section %r is not the configured backend or storage; ignored", name)
    return out, settings
