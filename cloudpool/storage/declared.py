"""The options each built-in storage declares, importable without its cloud SDK.

The configuration (``cloudpool.config``) checks every option of an ``s3:``/``gs:``/...
section when it is loaded, for every scheme named in it, long before (and whether or
not) that scheme's SDK is imported. So the names live here, in a module that imports
nothing, and each storage class takes its ``option_names``/``secret_option_names`` from
the entry below: one declaration, two readers. The registry finds an entry through the
``declared=`` path given when the storage is registered (``cloudpool.storage``); a
third-party storage without one is imported to read its class attributes.
"""
from __future__ import annotations

from ..registry import Declared


LOCAL = Declared(frozenset())

S3 = Declared(
    frozenset({"endpoint_url", "region", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "max_attempts", "retry_mode", "addressing_style",
               "payload_signing"}),
    frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}),
)

# The instance id only names the COS instance (it is needed to create buckets);
# it grants nothing without a key, so it may travel.
COS = Declared(
    frozenset({"endpoint_url", "region", "access_key_id", "secret_access_key", "api_key",
               "service_instance_id", "auth_endpoint", "max_attempts", "retry_mode"}),
    frozenset({"access_key_id", "secret_access_key", "api_key"}),
)

GCS = Declared(frozenset({"project", "endpoint_url", "retry_timeout"}))

AZURE = Declared(
    frozenset({"connection_string", "account_url", "credential", "max_attempts"}),
    frozenset({"connection_string", "credential"}),
)

#: Headers may carry an Authorization token.
HTTP = Declared(frozenset({"timeout", "headers", "max_attempts"}), frozenset({"headers"}))

REDIS = Declared(frozenset({"username", "password", "max_attempts", "socket_timeout"}),
                 frozenset({"password"}))

SWIFT = Declared(
    frozenset({"auth_url", "user", "key", "project_name", "user_domain_name", "project_domain_name",
               "region_name", "storage_url", "auth_token", "auth_version", "max_attempts", "timeout"}),
    frozenset({"key", "auth_token"}),
)

OSS = Declared(
    frozenset({"endpoint", "access_key_id", "access_key_secret", "security_token", "max_attempts",
               "timeout"}),
    frozenset({"access_key_id", "access_key_secret", "security_token"}),
)

INFINISPAN = Declared(frozenset({"username", "password", "auth", "tls", "max_attempts", "timeout"}),
                      frozenset({"password"}))
