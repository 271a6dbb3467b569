"""modellane's metrics, through Ray's own metrics pipeline.

Defined with ``ray.serve.metrics`` and exported by Ray in Prometheus format next to Ray
Serve's built-in metrics (the head's metrics export port, 8080 under scripts/up.sh). Ray
prefixes every name with ``ray_``: ``modellane_requests_total`` is scraped as
``ray_modellane_requests_total``. Labels are few and fixed: ``model``, ``version``, ``role``
(plus ``status_class`` on errors, ``feature`` on drift, ``device`` on GPUs).

Each process creates its metrics lazily, once (:func:`gateway_metrics` and friends).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

from app.quality.stats import LATENCY_BOUNDS_S
from app.serving.generating import GenerationRecord

logger = logging.getLogger("ray.serve")


def _keys(*names: str) -> Any:
    # Ray annotates tag_keys as Tuple[str] (one element); any length works.
    return names


MVR = _keys("model", "version", "role")
MV = _keys("model", "version")
_BOUNDS = list(LATENCY_BOUNDS_S)


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Counter
    errors: Counter
    latency: Histogram
    weight: Gauge
    shadow_agreement: Gauge
    shadow_latency_ratio: Gauge
    shadow_dropped: Gauge
    shadow_errors: Gauge


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    return GatewayMetrics(
        requests=Counter(
            "modellane_requests_total", "Requests answered by the gateway.", tag_keys=MVR
        ),
        errors=Counter(
            "modellane_errors_total",
            "Error answers by status class (4xx, 5xx).",
            tag_keys=_keys(*MVR, "status_class"),
        ),
        latency=Histogram(
            "modellane_request_latency_seconds",
            "Gateway request latency.",
            boundaries=_BOUNDS,
            tag_keys=MVR,
        ),
        weight=Gauge(
            "modellane_traffic_weight_percent",
            "Share of requests each role's version gets (shadow: mirrored share).",
            tag_keys=MVR,
        ),
        shadow_agreement=Gauge(
            "modellane_shadow_agreement",
            "Agreement (labels) or cosine similarity (embeddings) with the primary's answers.",
            tag_keys=MVR,
        ),
        shadow_latency_ratio=Gauge(
            "modellane_shadow_latency_ratio", "Mirrored call latency / primary's.", tag_keys=MVR
        ),
        shadow_dropped=Gauge(
            "modellane_shadow_dropped", "Mirrored calls dropped (cap reached).", tag_keys=MVR
        ),
        shadow_errors=Gauge(
            "modellane_shadow_errors",
            "Mirrored calls that failed or timed out.",
            tag_keys=MVR,
        ),
    )


@dataclass(frozen=True)
class ModelMetrics:
    latency: Histogram
    load_seconds: Gauge
    warmup_seconds: Gauge
    batch_size: Histogram
    drift_psi: Gauge
    drift_kl: Gauge


@functools.cache
def model_metrics() -> ModelMetrics:
    return ModelMetrics(
        latency=Histogram(
            "modellane_model_latency_seconds",
            "Model predict latency inside the model server.",
            boundaries=_BOUNDS,
            tag_keys=MV,
        ),
        load_seconds=Gauge("modellane_model_load_seconds", "Model load time.", tag_keys=MV),
        warmup_seconds=Gauge(
            "modellane_model_warmup_seconds", "Warm-up (validation) time.", tag_keys=MV
        ),
        batch_size=Histogram(
            "modellane_batch_size",
            "Rows per predict call.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
            tag_keys=MV,
        ),
        drift_psi=Gauge(
            "modellane_drift_psi",
            "Population Stability Index of live inputs vs the training baseline.",
            tag_keys=_keys(*MV, "feature"),
        ),
        drift_kl=Gauge(
            "modellane_drift_kl",
            "KL divergence of live inputs vs the training baseline.",
            tag_keys=_keys(*MV, "feature"),
        ),
    )


@dataclass(frozen=True)
class WatcherMetrics:
    switches: Counter
    rollbacks: Counter
    failed_loads: Counter
    rollout_step: Gauge
    control_errors: Counter
    quality: Gauge
    labels: Counter
    log_lost: Counter
    alerts_sent: Counter
    alert_failures: Counter
    audit_pending: Gauge
    audit_dropped: Gauge


@functools.cache
def watcher_metrics() -> WatcherMetrics:
    return WatcherMetrics(
        switches=Counter("modellane_switches_total", "Role switches.", tag_keys=MVR),
        rollbacks=Counter(
            "modellane_rollbacks_total", "Rollbacks (admin, by hand, rollout).", tag_keys=MV
        ),
        failed_loads=Counter(
            "modellane_failed_loads_total", "Versions that failed to load or validate.", tag_keys=MV
        ),
        rollout_step=Gauge(
            "modellane_rollout_step", "Step of the rollout in progress (-1: none).", tag_keys=MV
        ),
        control_errors=Counter(
            "modellane_control_errors_total",
            "Control-plane calls that failed and were noted (registry reads and writes, "
            "Serve calls); each is also an event of kind 'error'.",
            tag_keys=_keys("model", "operation"),
        ),
        quality=Gauge(
            "modellane_quality",
            "Live quality of a version over its most recent labelled predictions "
            "(metric: accuracy, mae or rmse).",
            tag_keys=_keys(*MVR, "metric"),
        ),
        labels=Counter(
            "modellane_labels_total",
            "Labels joined with a version's logged predictions.",
            tag_keys=MV,
        ),
        log_lost=Counter(
            "modellane_log_records_lost_total",
            "Inference-log records a gateway replica held unwritten when it ended without "
            "a flush (a crash), as of its last report.",
        ),
        alerts_sent=Counter(
            "modellane_alerts_sent_total",
            "Alerts delivered, by sink (webhook, email) and kind.",
            tag_keys=_keys("sink", "kind"),
        ),
        alert_failures=Counter(
            "modellane_alert_failures_total",
            "Failed alert deliveries, by sink and kind: every failed attempt (retried with "
            "back-off, or given up) and every alert dropped because too many were in flight.",
            tag_keys=_keys("sink", "kind"),
        ),
        audit_pending=Gauge(
            "modellane_audit_events_pending",
            "Audit events waiting in memory to be written (the audit store is unreachable).",
        ),
        audit_dropped=Gauge(
            "modellane_audit_events_dropped",
            "Audit events dropped since the watcher started (more waited than "
            "audit.max_pending); the trail says how many once it is written again.",
        ),
    )


@functools.cache
def log_metrics() -> tuple[Counter, Counter]:
    """The inference log's written and dropped records, counted by each gateway replica."""
    return (
        Counter(
            "modellane_log_records_written_total",
            "Prediction records written to the inference log.",
        ),
        Counter(
            "modellane_log_records_dropped_total",
            "Prediction records dropped because a gateway replica's log buffer was full "
            "(the answer never waits for the log).",
        ),
    )


@functools.cache
def serving_errors() -> Counter:
    """Failures the data plane survived and logged, by operation (it has no event log)."""
    return Counter(
        "modellane_serving_errors_total",
        "Failures the gateway or a model server survived and logged: the watcher's "
        "long-poll and stats reports, gauges, the request observer, rate limiter leases; "
        "a model's predict, token count, fast-predict probe, drift baseline parse.",
        tag_keys=_keys("model", "operation"),
    )


@dataclass(frozen=True)
class GpuMetrics:
    memory_used: Gauge
    utilization: Gauge


@functools.cache
def gpu_metrics() -> GpuMetrics:
    return GpuMetrics(
        memory_used=Gauge(
            "modellane_gpu_memory_used_bytes", "GPU memory in use.", tag_keys=_keys("device")
        ),
        utilization=Gauge(
            "modellane_gpu_utilization_percent", "GPU utilization.", tag_keys=_keys("device")
        ),
    )


@functools.cache
def _nvml() -> Any:
    """pynvml, initialised; None where there is no NVIDIA GPU (then no GPU metrics exist)."""
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py is a dependency: only a broken install lands here
        logger.warning("pynvml cannot be imported: no GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver, no device: a CPU node
        logger.info("no NVIDIA GPU here (%s): no GPU metrics", exc)
        return None
    return pynvml


def set_gpu_gauges() -> None:
    """GPU memory and utilization per device of this node; nothing without a GPU."""
    nvml = _nvml()
    if nvml is None:
        return
    metrics = gpu_metrics()
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        tags = {"device": str(index)}
        metrics.memory_used.set(float(nvml.nvmlDeviceGetMemoryInfo(handle).used), tags=tags)
        metrics.utilization.set(float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), tags=tags)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass(frozen=True)
class GenerationMetrics:
    time_to_first_token: Histogram
    tokens_per_second: Histogram
    generated_tokens: Counter


#: Seconds to a first token, and tokens a second of one answer (a tiny model on CPU: 1000s).
_TTFT_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_RATE_BOUNDS = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]


@functools.cache
def generation_metrics() -> GenerationMetrics:
    """Text generation at the gateway, per version and role (``/v1/completions``,
    ``/v1/chat/completions``; streamed or not)."""
    return GenerationMetrics(
        time_to_first_token=Histogram(
            "modellane_time_to_first_token_seconds",
            "From routing to the first generated text reaching the gateway.",
            boundaries=_TTFT_BOUNDS,
            tag_keys=MVR,
        ),
        tokens_per_second=Histogram(
            "modellane_generation_tokens_per_second",
            "Tokens a second of one answer, after its first token.",
            boundaries=_RATE_BOUNDS,
            tag_keys=MVR,
        ),
        generated_tokens=Counter(
            "modellane_generated_tokens_total",
            "Tokens generated (a stream the client left counts what it got).",
            tag_keys=MVR,
        ),
    )


def observe_generation(record: GenerationRecord) -> None:
    """A generation's figures into the metrics (the gateway's observer of them)."""
    metrics = generation_metrics()
    tags = {"model": record.model, "version": record.version, "role": record.role}
    if record.time_to_first_token_s is not None:
        metrics.time_to_first_token.observe(record.time_to_first_token_s, tags=tags)
    if record.tokens_per_s is not None:
        metrics.tokens_per_second.observe(record.tokens_per_s, tags=tags)
    if record.tokens > 0:
        metrics.generated_tokens.inc(record.tokens, tags=tags)
