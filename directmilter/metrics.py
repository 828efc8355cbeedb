"""Prometheus metrics for the running milter, on an endpoint that is off unless ``[milter] metrics`` is set.

Counts and timings only: directions, outcomes, cache hit and miss counts, the tracking backlog. Never an
address, a Message-ID or anything from a message, so the endpoint carries no health data.

The cache and backlog figures are read when Prometheus scrapes (:class:`_StateCollector`), from whatever agent
and store the milter uses at that moment, so a configuration reload does not need to re-register anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from directmilter.log import get_logger

log = get_logger("directmilter.metrics")

class _StateCollector(Collector):
    def __init__(self, state: Callable[[], tuple[Any, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        agent, store = self._state()
        lookups = CounterMetricFamily("directmilter_cache_lookups", "Cache lookups by cache and result",
                                      labels=["cache", "result"])
        for name, hits, misses in _cache_counts(agent):
            lookups.add_metric([name, "hit"], hits)
            lookups.add_metric([name, "miss"], misses)
        yield lookups
        backlog = GaugeMetricFamily("directmilter_tracking_backlog",
                                    "Recipients of outgoing messages still waiting for their MDN")
        try:
            backlog.add_metric([], store.backlog() if store is not None else 0)
        except Exception as exc:  # a scrape must not fail because the database is busy; say so in the log
            log.warning("metrics_backlog_unavailable", error=type(exc).__name__)
            return
        yield backlog


def _cache_counts(agent: Any) -> Iterator[tuple[str, int, int]]:
    if agent is None:
        return
    validator = agent.context.validator
    yield "validation", validator.cache_hits, validator.cache_misses
    for source in agent.context.source.sources:
        cache = getattr(source, "cache", None)
        if cache is not None and hasattr(cache, "hits"):
            yield type(source).__name__.removesuffix("Certificates").lower() or "discovery", cache.hits, cache.misses


class Metrics:
    """The counters the milter updates; :meth:`serve` exposes them (with the cache and backlog figures)."""

    def __init__(self, state: Callable[[], tuple[Any, Any]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter("directmilter_messages", "Messages by direction and outcome",
                                ["direction", "outcome"], registry=self.registry)
        self.seconds = Histogram("directmilter_processing_seconds", "Time from end of message to the decision",
                                 ["direction"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        if state is not None:
            self.registry.register(_StateCollector(state))

    def observe(self, direction: str, outcome: str, seconds: float) -> None:
        """A decision at end of message, with the time it took."""
        self.count(direction, outcome)
        self.seconds.labels(direction).observe(seconds)

    def count(self, direction: str, outcome: str) -> None:
        """A refusal at any stage (rejected or tempfail), counted without a timing."""
        self.messages.labels(direction, outcome).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics_listening", address=f"{host}:{port}")
