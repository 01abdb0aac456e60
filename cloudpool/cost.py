"""What a job would cost on a pay-per-use platform, estimated from its call records.

This module owns the price sheets of the FaaS-style platforms cloudpool runs on (or can
be pointed at through the ``knative`` backend) and ``estimate_cost``, which
``ExecutorStats.cost()`` calls. It only reads ``ExecutorStats``; it never talks to a
cloud billing API, so the answer is an estimate from list prices, not an invoice.

How an estimate is made:

- One *request* is one invocation: the manager packs calls into batches and each batch
  is one platform invocation (``CallRecord.invocation``), so many calls may share one
  request charge.
- An invocation's billed time is ``max(finished) - min(started)`` over its calls, the
  worker's own measurement of the user code, rounded up to the platform's billing
  granularity (1 ms on Lambda, 100 ms on Cloud Run...) and raised to its minimum. The
  worker's own start-up, payload download and result upload are not in the records,
  so the real bill is somewhat higher: read the figure as a lower bound.
- Compute = billed seconds x memory (GiB, i.e. MiB / 1024, as Lambda counts "GB")
  x price per GB-second, plus billed seconds x vCPUs x price per vCPU-second on the
  platforms that price CPU separately.

Free tiers, savings plans, committed-use discounts, storage, data transfer and
regional price differences are all ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .stats import ExecutorStats

__all__ = ["CostEstimate", "PriceSheet", "PRICES", "estimate_cost"]

#: When the list prices below were read from the pages cited next to each one.
PRICES_TAKEN_ON = "2026-11-25"


@dataclass(frozen=True)
class PriceSheet:
    """A platform's pay-per-use list prices (USD) and how it rounds what it bills."""

    platform: str
    per_gb_second: float
    per_request: float
    per_vcpu_second: float = 0.0
    #: Billed duration of one invocation is rounded up to a multiple of this.
    granularity_ms: int = 1
    #: Shortest duration billed for one invocation.
    minimum_ms: int = 0
    #: Billed memory is rounded up to a multiple of this (0: billed as configured).
    memory_step_mb: int = 0
    #: Where the prices come from and for which region / tier.
    source: str = ""

    @property
    def prices_cpu(self) -> bool:
        return self.per_vcpu_second > 0


PRICES: Dict[str, PriceSheet] = {
    # AWS Lambda, x86, US East (N. Virginia), first pricing tier. The whitepaper "How
    # AWS Pricing Works" (docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/
    # lambda.html) and aws.amazon.com/lambda/pricing: $0.20 per 1M requests, duration
    # "rounded up to the nearest 1 ms", $0.0000166667 per GB-second.
    "aws_lambda": PriceSheet(
        "aws_lambda", per_gb_second=0.0000166667, per_request=0.20 / 1_000_000, granularity_ms=1,
        source=f"AWS Lambda list price, x86, us-east-1, first tier (aws.amazon.com/lambda/pricing, "
               f"read {PRICES_TAKEN_ON})"),
    # Same page, Arm (Graviton2): $0.0000133334 per GB-second, same request price.
    "aws_lambda_arm64": PriceSheet(
        "aws_lambda_arm64", per_gb_second=0.0000133334, per_request=0.20 / 1_000_000, granularity_ms=1,
        source=f"AWS Lambda list price, arm64, us-east-1, first tier (aws.amazon.com/lambda/pricing, "
               f"read {PRICES_TAKEN_ON})"),
    # Google Cloud Run, request-based billing ("CPU only allocated during request
    # processing"), Tier 1 regions: cloud.google.com/run/pricing lists $0.00002400 per
    # vCPU-second, $0.00000250 per GiB-second, $0.40 per million requests, and says usage
    # is "rounded up to the nearest 100 millisecond".
    "cloud_run": PriceSheet(
        "cloud_run", per_gb_second=0.0000025, per_vcpu_second=0.000024, per_request=0.40 / 1_000_000,
        granularity_ms=100,
        source=f"Google Cloud Run list price, request-based billing, Tier 1 regions "
               f"(cloud.google.com/run/pricing, read {PRICES_TAKEN_ON})"),
    # IBM Cloud Code Engine: the IBM Cloud docs cost scenario for a Code Engine app
    # (cloud.ibm.com/docs/billing-usage?topic=billing-usage-sample, last updated
    # 2024-08-14) bills $0.00003431 per vCPU-second, $0.00000356 per GB-second and $0.538
    # per million HTTP requests; it states no rounding, so none beyond 1 ms is applied.
    "code_engine": PriceSheet(
        "code_engine", per_gb_second=0.00000356, per_vcpu_second=0.00003431, per_request=0.538 / 1_000_000,
        granularity_ms=1,
        source=f"IBM Cloud Code Engine rates from IBM's cost scenario "
               f"(cloud.ibm.com/docs/billing-usage?topic=billing-usage-sample, updated 2024-08-14, "
               f"read {PRICES_TAKEN_ON})"),
    # Azure Container Apps, Consumption plan, active usage: learn.microsoft.com/azure/
    # container-apps/billing says resources are billed "on a per-second basis" in
    # vCPU-seconds and GiB-seconds plus HTTP requests; the pricing page renders its figures
    # client-side, so the rates ($0.000024 per vCPU-second, $0.000003 per GiB-second,
    # $0.40 per million requests, East US) were taken from several public write-ups that
    # agree with each other. Idle-rate billing is not modelled.
    "container_apps": PriceSheet(
        "container_apps", per_gb_second=0.000003, per_vcpu_second=0.000024, per_request=0.40 / 1_000_000,
        granularity_ms=1000,
        source=f"Azure Container Apps Consumption plan, active rate, East US "
               f"(azure.microsoft.com/pricing/details/container-apps, read {PRICES_TAKEN_ON})"),
    # Azure Functions, Consumption plan: azure.microsoft.com/pricing/details/functions says
    # memory is "rounded up to the nearest 128 MB", execution time "rounded up to the
    # nearest 1 ms", and "the minimum execution time and memory for a single function
    # execution is 100 ms and 128 mb"; $0.000016 per GB-second and $0.20 per million
    # executions (East US).
    "azure_functions": PriceSheet(
        "azure_functions", per_gb_second=0.000016, per_request=0.20 / 1_000_000, granularity_ms=1,
        minimum_ms=100, memory_step_mb=128,
        source=f"Azure Functions Consumption plan list price, East US "
               f"(azure.microsoft.com/pricing/details/functions, read {PRICES_TAKEN_ON})"),
}

#: The platform each backend bills on, when cloudpool knows it from the backend alone.
_BACKEND_PLATFORM = {"aws_lambda": "aws_lambda", "cloudrun": "cloud_run", "codeengine": "code_engine"}
# AWS Batch adds no charge of its own; on Fargate a job pays Fargate's Linux/x86 rates,
# us-east-1: $0.04048 per vCPU-hour and $0.004445 per GB-hour, billed per second with a
# one-minute minimum (aws.amazon.com/fargate/pricing; figures as quoted by
# vantage.sh/blog/fargate-pricing and wring.co's 2026-03-10 guide, read 2026-12-04).
# Each batch is one job (array child), so a batch is one billed "invocation" here.
PRICES["aws_batch_fargate"] = PriceSheet(
    "aws_batch_fargate", per_gb_second=0.004445 / 3600, per_vcpu_second=0.04048 / 3600, per_request=0.0,
    granularity_ms=1000, minimum_ms=60_000,
    source="AWS Fargate (what AWS Batch on Fargate bills), Linux/x86, us-east-1 (aws.amazon.com/fargate/pricing, "
           "read 2026-12-04)")
_BACKEND_PLATFORM["aws_batch"] = "aws_batch_fargate"
_BACKEND_PLATFORM["azure_functions"] = "azure_functions"
# Alibaba Function Compute 3.0 bills compute units (CU), tier 1 (first 100 million CU a
# month) USD 0.000020 per CU, where 1 active vCPU-second = 1 CU, 1 GB-second of memory =
# 0.15 CU and 10,000 invocations = 75 CU (alibabacloud.com/help/en/functioncompute/fc-3-0/
# product-overview/pay-as-you-go-billing-method-1, updated 2024-08-27; the 20% discount
# ended 2025-08-27). The page states no rounding of durations: 1 ms is assumed.
PRICES["aliyun_fc"] = PriceSheet(
    "aliyun_fc", per_gb_second=0.15 * 0.000020, per_vcpu_second=0.000020, per_request=75 / 10_000 * 0.000020,
    granularity_ms=1,
    source="Alibaba Function Compute 3.0 pay-as-you-go, CU tier 1 (alibabacloud.com/help/en/functioncompute/"
           "fc-3-0/product-overview/pay-as-you-go-billing-method-1, updated 2024-08-27, read 2026-12-04)")
_BACKEND_PLATFORM["aliyun_fc"] = "aliyun_fc"
# The containerapps backend bills on the Container Apps sheet above. Its rates could not be
# re-checked on 2026-12-04: the billing page (learn.microsoft.com/azure/container-apps/billing)
# names the meters (vCPU-seconds, GiB-seconds, requests; 180,000 vCPU-s, 360,000 GiB-s and
# 2 million requests free a month) but no prices, and the pricing page was not readable.
_BACKEND_PLATFORM["containerapps"] = "container_apps"
#: Backends whose calls run on this machine: nothing to pay a platform for.
_FREE_BACKENDS = {"local"}


@dataclass(frozen=True)
class CostEstimate:
    """The estimated platform cost of a set of calls (USD; free tiers ignored)."""

    platform: str
    backend: str
    region: Optional[str]
    #: Calls and invocations (= billed requests) priced.
    calls: int
    requests: int
    #: Invocations whose calls reported no start/finish time (e.g. a lost worker):
    #: charged a request and the platform minimum, no duration.
    untimed_requests: int
    memory_mb: Optional[float]
    vcpus: Optional[float]
    #: Sum of the invocations' billed durations, after rounding.
    billed_seconds: float
    gb_seconds: float
    vcpu_seconds: float
    compute_usd: float
    request_usd: float
    total_usd: float
    price_per_gb_second: float
    price_per_vcpu_second: float
    price_per_request: float
    granularity_ms: int
    #: Where the prices came from (and when), or why the estimate is zero.
    source: str

    @property
    def usd_per_call(self) -> float:
        return self.total_usd / self.calls if self.calls else 0.0

    def __str__(self) -> str:
        if self.platform == "local":
            return f"$0 for {self.calls} calls: {self.source}"
        cpu = f" + {self.vcpu_seconds:.3f} vCPU-s" if self.price_per_vcpu_second else ""
        return (f"${self.total_usd:.6f} for {self.calls} calls in {self.requests} requests on "
                f"{self.platform} ({self.gb_seconds:.3f} GB-s{cpu} = ${self.compute_usd:.6f}, requests "
                f"${self.request_usd:.6f}); prices: {self.source}")


def _check_positive(name: str, value: Optional[float], *, allow_zero: bool = True) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _billed_ms(seconds: float, sheet: PriceSheet) -> int:
    # Epoch-second floats carry ~0.2 us of noise (0.1 s can come out as 100.00024 ms), so
    # durations are taken to the microsecond before rounding up: noise must not add a
    # whole billing unit.
    milliseconds = round(seconds * 1000.0, 3)
    units = math.ceil(milliseconds / sheet.granularity_ms)
    return max(units * sheet.granularity_ms, sheet.minimum_ms)


def _invocation_seconds(stats: "ExecutorStats") -> Tuple[List[float], int]:
    """Per invocation: max(finished) - min(started) over its timed calls; and how many had none."""
    spans: Dict[Tuple[str, int], List[float]] = {}
    for c in stats.calls:
        span = spans.setdefault((c.job, c.batch), [math.inf, -math.inf])
        if c.started is not None and c.finished is not None:
            span[0] = min(span[0], c.started)
            span[1] = max(span[1], c.finished)
    seconds = []
    untimed = 0
    for lo, hi in spans.values():
        if lo == math.inf:
            untimed += 1
            seconds.append(0.0)
        else:
            seconds.append(max(0.0, hi - lo))  # worker clocks never step backwards within a batch
    return seconds, untimed


def estimate_cost(stats: "ExecutorStats", *, memory_mb: Optional[float] = None,
                  price_per_gb_second: Optional[float] = None, price_per_request: Optional[float] = None,
                  region: Optional[str] = None, platform: Optional[str] = None,
                  vcpus: Optional[float] = None,
                  price_per_vcpu_second: Optional[float] = None) -> CostEstimate:
    """Estimate what the calls in ``stats`` cost on their platform, in USD.

    Estimates use published list prices (see ``PRICES``; each sheet's ``source`` names
    the page and the date it was read) and **ignore free tiers**, discounts, storage and
    data transfer. The platform is ``platform`` if given (any key of ``PRICES``, so calls
    run locally can be priced as if on ``"aws_lambda"``), else the one the backend bills
    on: ``aws_lambda`` prices as Lambda x86; ``local`` costs nothing; ``knative`` and
    ``kubernetes`` run on a service you deploy, so they need ``platform=`` or your own
    ``price_per_gb_second`` / ``price_per_vcpu_second`` / ``price_per_request``.

    ``memory_mb`` defaults to ``stats.memory_mb``; ``vcpus`` is needed for platforms
    that price CPU separately (Cloud Run, Code Engine, Container Apps); any ``price_*``
    argument replaces that part of the sheet. ``region`` is recorded in the estimate
    (default ``stats.region``); list prices are those of the region named in ``source``.
    """
    from .stats import ExecutorStats

    if not isinstance(stats, ExecutorStats):
        raise TypeError(f"estimate_cost() takes an ExecutorStats (executor.stats()), not {type(stats).__name__}")
    memory_mb = _check_positive("memory_mb", memory_mb, allow_zero=False)
    vcpus = _check_positive("vcpus", vcpus, allow_zero=False)
    price_per_gb_second = _check_positive("price_per_gb_second", price_per_gb_second)
    price_per_request = _check_positive("price_per_request", price_per_request)
    price_per_vcpu_second = _check_positive("price_per_vcpu_second", price_per_vcpu_second)
    if platform is not None and platform not in PRICES:
        raise ValueError(f"unknown platform {platform!r}; priced platforms: {', '.join(sorted(PRICES))} "
                         f"(or pass price_per_gb_second= and price_per_request= for any other)")
    region = region if region is not None else stats.region
    overrides = {name: value for name, value in (("price_per_gb_second", price_per_gb_second),
                                                 ("price_per_vcpu_second", price_per_vcpu_second),
                                                 ("price_per_request", price_per_request))
                 if value is not None}
    invocation_seconds, untimed = _invocation_seconds(stats)
    requests = len(invocation_seconds)

    if platform is None and not overrides and stats.backend in _FREE_BACKENDS:
        return CostEstimate(
            platform="local", backend=stats.backend, region=region, calls=len(stats.calls),
            requests=requests, untimed_requests=untimed, memory_mb=memory_mb or stats.memory_mb, vcpus=vcpus,
            billed_seconds=0.0, gb_seconds=0.0, vcpu_seconds=0.0, compute_usd=0.0, request_usd=0.0,
            total_usd=0.0, price_per_gb_second=0.0, price_per_vcpu_second=0.0, price_per_request=0.0,
            granularity_ms=1,
            source=(f"the {stats.backend!r} backend ran these calls on this machine's own processes: no "
                    f"platform charge (pass platform='aws_lambda' and memory_mb= to price them as if on Lambda)"))

    name = platform or _BACKEND_PLATFORM.get(stats.backend)
    if name is not None:
        sheet = PRICES[name]
    elif "price_per_gb_second" in overrides or "price_per_vcpu_second" in overrides:
        sheet = PriceSheet("custom", per_gb_second=0.0, per_request=0.0, source="")
    else:
        raise ValueError(
            f"cloudpool has no price for the {stats.backend!r} backend: its calls run on a service you "
            f"deploy yourself, so the platform is not known. Pass platform= (one of "
            f"{', '.join(sorted(PRICES))}), or your own price_per_gb_second= (and price_per_vcpu_second=, "
            f"price_per_request=, in USD)")

    if memory_mb is None:
        memory_mb = stats.memory_mb
    if memory_mb is None:
        raise ValueError(f"the memory per worker is not known for the {stats.backend!r} backend, and "
                         f"compute is priced per GB-second: pass memory_mb= (e.g. memory_mb=1024)")
    per_gb = overrides.get("price_per_gb_second", sheet.per_gb_second)
    per_vcpu = overrides.get("price_per_vcpu_second", sheet.per_vcpu_second)
    per_request = overrides.get("price_per_request", sheet.per_request)
    if per_vcpu and vcpus is None:
        raise ValueError(f"{sheet.platform if sheet.platform != 'custom' else 'this price'} charges per "
                         f"vCPU-second: pass vcpus= (the vCPUs given to each instance, e.g. vcpus=1)")

    billed_memory_mb = memory_mb
    if sheet.memory_step_mb:
        billed_memory_mb = max(sheet.memory_step_mb,
                               math.ceil(round(memory_mb / sheet.memory_step_mb, 6)) * sheet.memory_step_mb)
    billed_ms = sum(_billed_ms(s, sheet) for s in invocation_seconds)
    billed_seconds = billed_ms / 1000.0
    gb_seconds = billed_seconds * billed_memory_mb / 1024.0
    vcpu_seconds = billed_seconds * vcpus if (per_vcpu and vcpus) else 0.0
    compute_usd = gb_seconds * per_gb + vcpu_seconds * per_vcpu
    request_usd = requests * per_request

    if not overrides:
        source = sheet.source
    else:
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        rest = (f"; other prices and rounding from {sheet.source}" if sheet.platform != "custom"
                else ("; no request price given, so requests count $0" if "price_per_request" not in overrides
                      else ""))
        source = f"prices given by the caller ({given}){rest}"
    return CostEstimate(
        platform=sheet.platform, backend=stats.backend, region=region, calls=len(stats.calls),
        requests=requests, untimed_requests=untimed, memory_mb=billed_memory_mb,
        vcpus=vcpus if per_vcpu else None, billed_seconds=billed_seconds, gb_seconds=gb_seconds,
        vcpu_seconds=vcpu_seconds, compute_usd=compute_usd, request_usd=request_usd,
        total_usd=compute_usd + request_usd, price_per_gb_second=per_gb, price_per_vcpu_second=per_vcpu,
        price_per_request=per_request, granularity_ms=sheet.granularity_ms, source=source)
