"""IBM Cloud Object Storage (``cos://bucket/key``) through ``ibm_boto3`` (ibm-cos-sdk).

COS speaks the S3 API, so all the object logic is ``S3CompatibleStorage`` from
``s3.py``; this module only plugs in IBM's fork of the SDK and its two ways to
authenticate:

- HMAC keys (``access_key_id`` + ``secret_access_key``), signed like S3;
- an IAM API key (``api_key``, with ``service_instance_id`` to create buckets), for
  which ``ibm_boto3`` fetches and refreshes bearer tokens ("oauth" signing).

With neither, ``ibm_boto3``'s own chain applies (``IBM_API_KEY_ID``/
``IBM_SERVICE_INSTANCE_ID`` or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the
environment, ``~/.bluemix/cos_credentials``). The endpoint is ``endpoint_url``, else
``AWS_ENDPOINT_URL``, else IBM's public endpoint for ``region``. Retries of transient
failures (``max_attempts``, ``retry_mode``) work as for ``s3://``.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Dict, FrozenSet, Optional

import ibm_boto3
import ibm_boto3.s3.transfer
import ibm_botocore.config
import ibm_botocore.exceptions
import ibm_botocore.utils

from . import declared
from .s3 import S3CompatibleStorage, _SDK

__all__ = ["COSStorage"]

IBM_BOTO3 = _SDK(
    session_factory=ibm_boto3.session.Session,
    config_cls=ibm_botocore.config.Config,
    transfer_config_cls=ibm_boto3.s3.transfer.TransferConfig,
    client_error=ibm_botocore.exceptions.ClientError,
    core_error=ibm_botocore.exceptions.BotoCoreError,
    no_credentials_errors=(ibm_botocore.exceptions.NoCredentialsError,
                           ibm_botocore.exceptions.PartialCredentialsError),
    content_length=ibm_botocore.utils.determine_content_length,
)


def public_endpoint(region: str) -> str:
    """IBM's public COS endpoint for a regional bucket location, e.g. ``us-south``."""
    return f"https://s3.{region}.cloud-object-storage.appdomain.cloud"


class COSStorage(S3CompatibleStorage):
    """``cos://`` on IBM Cloud Object Storage (or any S3 server, through ``ibm_boto3``)."""

    scheme = "cos"
    sdk = IBM_BOTO3
    option_names: ClassVar[FrozenSet[str]] = declared.COS.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.COS.secrets

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        if options.get("api_key") and (options.get("access_key_id") or options.get("secret_access_key")):
            raise ValueError(
                "cos:// storage takes either HMAC keys (access_key_id, secret_access_key) "
                "or an IAM api_key, not both"
            )

    def _client_kwargs(self) -> Dict[str, Any]:
        o = self.options
        endpoint = o.get("endpoint_url")
        if not endpoint and o.get("region") and not (
                os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
            endpoint = public_endpoint(o["region"])
        kwargs: Dict[str, Any] = {"endpoint_url": endpoint, "region_name": o.get("region")}
        if o.get("api_key"):
            kwargs["ibm_api_key_id"] = o["api_key"]
            kwargs["ibm_service_instance_id"] = o.get("service_instance_id")
            if o.get("auth_endpoint"):
                kwargs["ibm_auth_endpoint"] = o["auth_endpoint"]
        else:
            kwargs["aws_access_key_id"] = o.get("access_key_id")
            kwargs["aws_secret_access_key"] = o.get("secret_access_key")
        return kwargs

    def _config_kwargs(self) -> Dict[str, Any]:
        kwargs = super()._config_kwargs()
        if self.options.get("api_key"):
            # IAM API keys authenticate with bearer tokens, not request signatures.
            kwargs["signature_version"] = "oauth"
        return kwargs

    def _error(self, exc: BaseException, key: Optional[str], action: str) -> OSError:
        err = super()._error(exc, key, action)
        if isinstance(err, PermissionError) and isinstance(exc, self.sdk.no_credentials_errors):
            # Name IBM's variables rather than only AWS's.
            return PermissionError(
                f"{self.url(key or '')}: {action} failed: no usable credentials; set "
                f"IBM_API_KEY_ID (IAM) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (HMAC), "
                f"or the storage options api_key / access_key_id + secret_access_key"
            )
        return err
