"""Prometheus metrics of a running engine, for dashboards: ``--metrics-port PORT`` on 127.0.0.1.

A collector reads the run's own figures at each scrape (nothing is counted twice): records by
fate, attempts and final errors by code, 429s, retries by reason, tokens, spend, answer-cache hits,
and per endpoint (lane) the requests in flight, the concurrency limit and a latency histogram
converted from the lane's log histogram (its buckets are 1 % wide, so the conversion is exact to
within a bucket). Served by ``prometheus_client``'s own HTTP server in a thread.
"""

from __future__ import annotations

import math

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from ..exceptions import ConfigError
from .stats import _K, _LOW, _RATIO, LogHistogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def histogram_buckets(histogram: LogHistogram) -> tuple[list[tuple[str, int]], float]:
    """Cumulative ``(le, count)`` pairs at ``LATENCY_BUCKETS`` and +Inf, and the sum of the values
    (each counted at its bucket's lower edge)."""
    counts = histogram.counts
    pairs, seen, start = [], 0, 0
    for bound in LATENCY_BUCKETS:
        end = max(0, min(len(counts), int(math.log(bound / _LOW) * _K)))
        seen += sum(counts[start:end])
        start = max(start, end)
        pairs.append((repr(bound), seen))
    pairs.append(("+Inf", histogram.total))
    total = sum(count * _LOW * _RATIO ** index for index, count in enumerate(counts) if count)
    return pairs, total


class EngineCollector:
    """Reads an ``Engine`` (its stats and its pool's lanes) at every scrape."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        """The metric families of one scrape."""
        engine, stats = self.engine, self.engine.stats
        records = CounterMetricFamily("odie_records", "records by fate", labels=["fate"])
        for fate, value in (("output", engine.written_ok), ("errors", engine.written_failed),
                            ("already_done", stats.resumed), ("invalid_skipped", stats.invalid)):
            records.add_metric([fate], value)
        yield records
        yield _counter("odie_attempts", "requests sent, retries included", stats.attempts)
        yield _labelled("odie_final_errors", "records that failed for good, by error code", "code",
                        stats.error_codes)
        yield _counter("odie_rate_limited", "answers of HTTP 429", stats.rate_limited)
        yield _labelled("odie_retries", "retries by reason", "reason", stats.retries_by_reason)
        tokens = CounterMetricFamily("odie_tokens", "tokens answered, by kind", labels=["kind"])
        tokens.add_metric(["prompt"], stats.prompt_tokens)
        tokens.add_metric(["completion"], stats.completion_tokens)
        yield tokens
        yield _counter("odie_cache_hits", "records answered from the shared answer cache", stats.cache_hits)
        spend = stats.spend if stats.spend is not None else stats.meter
        if spend is not None and stats.spend_report() is not None:
            yield GaugeMetricFamily("odie_spend_usd", "money spent so far (answered usage at the run's prices)",
                                    value=spend.spent)
        yield from self._lanes()

    def _lanes(self):
        lanes = self.engine.pool.lanes
        in_flight = GaugeMetricFamily("odie_in_flight", "requests in flight per endpoint", labels=["endpoint"])
        limit = GaugeMetricFamily("odie_concurrency_limit", "the concurrency gate per endpoint", labels=["endpoint"])
        latency = HistogramMetricFamily("odie_request_latency_seconds", "successful requests' latency per endpoint",
                                        labels=["endpoint"])
        for lane in lanes:
            in_flight.add_metric([lane.label], lane.outstanding)
            limit.add_metric([lane.label], lane.gate.limit)
            buckets, total = histogram_buckets(lane.latencies)
            latency.add_metric([lane.label], buckets, total)
        yield from (in_flight, limit, latency)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(name: str, documentation: str, label: str, counts) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([str(key)], value)
    return family


class MetricsServer:
    """``/metrics`` in Prometheus text format on ``host:port`` while the run lasts (a context manager).

    ``source`` is an ``Engine`` (read by ``EngineCollector``) or any collector with ``collect()``
    (``odie bench`` serves its load's figures through one)."""

    def __init__(self, source, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(source if hasattr(source, "collect") else EngineCollector(source))
        self.port, self.host, self._server = port, host, None

    def __enter__(self) -> "MetricsServer":
        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {self.port}: cannot listen on {self.host}: {exc.strerror}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
