"""The options each built-in compute backend declares, importable without its SDK.

Like ``cloudpool.storage.declared``: the configuration checks every option of a
backend's section when it is loaded, for every backend named in it, without importing
boto3 or the Kubernetes client; each backend class takes its ``option_names`` from here.
"""
from __future__ import annotations

from ..registry import Declared

LOCAL = Declared(frozenset({"start_method", "mp_context", "max_tasks_per_child", "notices",
                              "pipe_args"}))

KNATIVE = Declared(frozenset({"url", "urls", "token", "concurrency", "request_timeout",
                              "retry_seconds", "notices"}))

AWS_LAMBDA = Declared(frozenset({
    "function_name", "region", "role", "memory_mb", "timeout", "endpoint_url", "package_type",
    "image_uri", "invoke_concurrency", "retry_seconds", "architecture", "runtime",
}))

KUBERNETES = Declared(frozenset({
    "namespace", "image", "runtime", "image_pull_secrets", "image_pull_policy", "service_account",
    "cpu", "memory", "cpu_limit", "memory_limit", "env_from_secrets", "labels",
    "kubeconfig", "context", "in_cluster", "ttl_seconds_after_finished", "backoff_limit",
    "backoff_limit_per_index", "collect_window", "status_interval", "pod_start_timeout",
    "api_timeout",
}))

OPENWHISK = Declared(frozenset({"api_host", "namespace", "api_key", "action", "memory_mb", "timeout",
                                "image", "retry_seconds", "activation_grace", "insecure"}),
                     secrets=frozenset({"api_key"}))

CLOUDRUN = Declared(frozenset({"url", "urls", "audience", "credentials", "concurrency", "request_timeout",
                               "retry_seconds", "notices", "project", "region", "service", "image",
                               "memory_mb", "timeout", "admin_endpoint", "admin_credentials"}),
                    secrets=frozenset({"credentials", "admin_credentials"}))

CODEENGINE = Declared(frozenset({"url", "urls", "token", "concurrency", "request_timeout", "retry_seconds",
                                 "notices", "region", "api_key", "iam_endpoint", "api_server", "namespace",
                                 "app", "image", "memory_mb", "timeout"}),
                      secrets=frozenset({"api_key", "token"}))

AWS_BATCH = Declared(frozenset({
    "job_definition", "runtime", "job_queue", "compute_environment", "region", "endpoint_url", "image",
    "memory_mb", "vcpus", "timeout", "max_vcpus", "job_role", "service_role", "execution_role", "subnets",
    "security_groups", "retry_seconds", "collect_window", "status_interval", "array_jobs",
}))

AZURE_FUNCTIONS = Declared(frozenset({
    "app_name", "runtime", "url", "scm_url", "management_url", "auth", "function_key", "entra_scope",
    "credential", "timeout", "memory_mb", "concurrency", "retry_seconds", "subscription_id", "resource_group",
}), secrets=frozenset({"function_key", "credential"}))

ALIYUN_FC = Declared(frozenset({
    "function_name", "runtime", "region", "account_id", "endpoint", "protocol", "memory_mb", "timeout",
    "concurrency", "retry_seconds", "role", "runtime_version", "access_key_id", "access_key_secret",
    "security_token",
}), secrets=frozenset({"access_key_secret", "security_token"}))

CONTAINERAPPS = Declared(frozenset({
    "url", "urls", "token", "concurrency", "request_timeout", "retry_seconds", "notices", "auth", "client_id",
    "tenant_id", "entra_scope", "credential", "management_token", "management_endpoint", "subscription_id", "resource_group",
    "app", "region", "environment_id", "image", "cpu", "memory_gi", "timeout", "max_replicas",
}), secrets=frozenset({"token", "credential", "management_token"}))
