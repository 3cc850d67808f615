"""Prometheus metrics of the inference path, on a registry of their own (never the global one), so
two apps in one process (tests) do not collide."""

from __future__ import annotations

from typing import Any

from berth.errors import MissingExtraError

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class Metrics:
    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise MissingExtraError("prometheus_client", "server", "serving metrics") from exc
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.requests = prom.Counter(
            "berth_requests",
            "Prediction requests answered.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.rows = prom.Counter(
            "berth_predictions", "Rows predicted.", labels, registry=self.registry
        )
        self.latency = prom.Histogram(
            "berth_request_latency_seconds",
            "Time from decoded request to outputs.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = prom.Histogram(
            "berth_batch_size",
            "Rows per call to a predictor.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = prom.Gauge(
            "berth_queue_depth", "Requests waiting for a batch.", labels, registry=self.registry
        )
        self.load_seconds = prom.Gauge(
            "berth_model_load_seconds", "Time to load a version.", labels, registry=self.registry
        )
        self.records_dropped = prom.Counter(
            "berth_records_dropped",
            "Prediction records dropped: the writer's queue was full.",
            registry=self.registry,
        )
        self.records_queue = prom.Gauge(
            "berth_records_queue_depth",
            "Record batches waiting to be written.",
            registry=self.registry,
        )
        self.http = prom.Counter(
            "berth_http_requests",
            "HTTP requests by route and status.",
            ("route", "status"),
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        import prometheus_client as prom

        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def labels(self, model: str, version: int) -> dict[str, Any]:
        return {"model": model, "version": str(version)}
