"""Prometheus metrics of one server, in a registry of its own (two apps in one process do not collide).

Counted by the app: requests by endpoint and status, latency, input and generated tokens, lines withdrawn from the
engine (timeouts, disconnects, overload). Read from the engine at scrape time: queue depth, active and total slots,
slot occupancy.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nllb_neuronx.engine_api import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nllb_requests", "HTTP translation requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("nllb_request_latency_seconds", "Time from request to answer, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.lines = Counter("nllb_lines", "Lines (engine requests) translated", registry=r)
        self.input_tokens = Counter("nllb_input_tokens", "Source tokens of translated lines", registry=r)
        self.output_tokens = Counter("nllb_generated_tokens", "Tokens generated after the language token",
                                     registry=r)
        self.cancelled = Counter("nllb_lines_cancelled", "Lines withdrawn from the engine before they finished, or "
                                 "refused: reason timeout, disconnect or overload", ["reason"], registry=r)
        self.queue_depth = Gauge("nllb_queue_depth", "Lines waiting for a batch slot", registry=r)
        self.active_slots = Gauge("nllb_active_slots", "Batch slots decoding now", registry=r)
        self.slots = Gauge("nllb_slots", "Batch slots (the compiled batch size)", registry=r)
        self.occupancy = Gauge("nllb_slot_occupancy", "Useful slot-steps / all slot-steps since start", registry=r)
        self.ready = Gauge("nllb_ready", "1 once the model is loaded and compiled", registry=r)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self, stats: Callable[[], EngineStats] | None) -> bytes:
        if stats is not None:
            s = stats()
            self.queue_depth.set(s.queue_depth)
            self.active_slots.set(s.active_slots)
            self.slots.set(s.slots)
            self.occupancy.set(s.occupancy)
        return generate_latest(self.registry)
