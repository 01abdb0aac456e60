"""Compute-backend registry: backend name -> ``ComputeBackend`` class, imported on use."""
from __future__ import annotations

from ..registry import Registry
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

__all__ = ["backends", "ComputeBackend", "Capabilities", "InvocationLost", "SegmentDone"]

backends: Registry[ComputeBackend] = Registry("compute backend", "cloudpool.compute")
backends.register("local", "cloudpool.compute.local:LocalBackend")
backends.register("aws_lambda", "cloudpool.compute.aws_lambda:LambdaBackend", "aws")
backends.register("kubernetes", "cloudpool.compute.kubernetes:KubernetesBackend", "k8s")
backends.register("knative", "cloudpool.compute.knative:KnativeBackend", "http")
