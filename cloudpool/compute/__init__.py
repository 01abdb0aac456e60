"""Compute-backend registry: backend name -> ``ComputeBackend`` class, imported on use."""
from __future__ import annotations

from ..registry import Registry
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

__all__ = ["backends", "ComputeBackend", "Capabilities", "InvocationLost", "SegmentDone"]

backends: Registry[ComputeBackend] = Registry("compute backend", "cloudpool.compute")
_D = "cloudpool.compute.declared:"
backends.register("local", "cloudpool.compute.local:LocalBackend", declared=_D + "LOCAL")
backends.register("aws_lambda", "cloudpool.compute.aws_lambda:LambdaBackend", "aws", declared=_D + "AWS_LAMBDA")
backends.register("kubernetes", "cloudpool.compute.kubernetes:KubernetesBackend", "k8s",
                  declared=_D + "KUBERNETES")
backends.register("knative", "cloudpool.compute.knative:KnativeBackend", "http", declared=_D + "KNATIVE")
backends.register("openwhisk", "cloudpool.compute.openwhisk:OpenWhiskBackend", "http", declared=_D + "OPENWHISK")
backends.register("cloudrun", "cloudpool.compute.cloudrun:CloudRunBackend", "gcp", declared=_D + "CLOUDRUN")
backends.register("codeengine", "cloudpool.compute.codeengine:CodeEngineBackend", "k8s",
                  declared=_D + "CODEENGINE")
backends.register("aws_batch", "cloudpool.compute.aws_batch:AwsBatchBackend", "aws", declared=_D + "AWS_BATCH")
backends.register("azure_functions", "cloudpool.compute.azure_functions:AzureFunctionsBackend", "azure",
                  declared=_D + "AZURE_FUNCTIONS")
backends.register("aliyun_fc", "cloudpool.compute.aliyun_fc:AliyunFcBackend", "aliyun", declared=_D + "ALIYUN_FC")
backends.register("containerapps", "cloudpool.compute.containerapps:ContainerAppsBackend", "azure",
                  declared=_D + "CONTAINERAPPS")
