"""Prometheus metrics of one service (own registry: several apps may share a process)."""

from __future__ import annotations

import prometheus_client as prom

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Requests by status, queue size, batch sizes and tokens, durations, device seconds."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("albert_requests", "Inference requests by model and status",
                                     ["model", "status"], registry=r)
        self.queue_size = prom.Gauge("albert_queue_size", "Rows waiting for a batch",
                                     ["model"], registry=r)
        self.batch_size = prom.Histogram("albert_batch_size", "Rows per engine batch", ["model"],
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_tokens = prom.Histogram(
            "albert_batch_tokens", "Tokens per engine batch (without padding)", ["model"],
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768), registry=r)
        self.queue_seconds = prom.Histogram("albert_queue_seconds",
                                            "Time a row waited for its batch", ["model"],
                                            buckets=_LATENCY, registry=r)
        self.inference_seconds = prom.Histogram("albert_inference_seconds",
                                                "Device time of an engine batch", ["model"],
                                                buckets=_LATENCY, registry=r)
        self.request_seconds = prom.Histogram("albert_request_seconds",
                                              "Total time of an inference request", ["model"],
                                              buckets=_LATENCY, registry=r)
        self.device_seconds = prom.Counter("albert_device_seconds",
                                           "Device time of all batches", ["model"], registry=r)
        self.ledger_commit_seconds = prom.Histogram(
            "albert_ledger_commit_seconds", "Time of one usage-ledger transaction (a group "
            "of rows)", buckets=_LATENCY, registry=r)
        self.ledger_dropped = prom.Counter(
            "albert_ledger_dropped", "Failed requests' audit rows dropped while the database "
            "was unavailable (answered requests' rows are never dropped)", registry=r)

    def render(self) -> bytes:
        return prom.generate_latest(self.registry)

    content_type = prom.CONTENT_TYPE_LATEST
