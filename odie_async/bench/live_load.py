"""What a bench has sent so far, across its load levels: the spending cap and the metrics it serves.

``LiveLoad`` sees every request of every level: it reserves a request's worst case under the
spending cap before it is sent (``--max-cost``, at the prices of ``configs/prices.yaml``), bills the
answer at its usage, and counts requests, errors, tokens and latencies for ``--metrics-port``
(``LoadCollector``, served by the engine's exporter). Once a request does not fit with nothing in
flight, the cap is reached: no level sends another request, and the bench ends with exit 5.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..engine.core import EngineSettings, estimate_tokens
from ..engine.prometheus import histogram_buckets
from ..engine.spend import HELD, WAIT, Charge, SpendCap
from ..engine.stats import LogHistogram
from ..exceptions import SpendCapReached

WAIT_S = 0.01  # how often a request that fits only after others settle looks again


class LiveLoad:
    """Counts and caps what a bench sends, whatever its load level."""

    def __init__(self, cap: SpendCap | None = None) -> None:
        self.cap = cap
        self.requests = self.in_flight = self.prompt_tokens = self.completion_tokens = 0
        self.errors: Counter[str] = Counter()
        self.latencies = LogHistogram()

    @property
    def capped(self) -> bool:
        """Whether the spending cap stopped the bench."""
        return self.cap is not None and self.cap.capped

    async def admit(self, body: dict) -> Charge | None | bool:
        """Reserve the request's worst case (waiting for those in flight if need be); False once the cap
        is reached, else its charge (None without a cap)."""
        if self.cap is None:
            return None
        charge = self.cap.charge(body.get("model"), estimate_tokens(body, len(orjson.dumps(body)),
                                                                    EngineSettings.default_max_tokens))
        while (verdict := self.cap.reserve(charge)) == WAIT:
            await asyncio.sleep(WAIT_S)
        return charge if verdict == HELD else False

    def sent(self) -> None:
        """A request left."""
        self.requests += 1
        self.in_flight += 1

    def answered(self, charge: Charge | None, sample) -> None:
        """A request ended (``load.Sample``): its usage billed, its figures counted."""
        self.in_flight -= 1
        usage = None
        if sample.error is not None:
            self.errors[sample.error] += 1
        else:
            self.latencies.add(sample.end - sample.start)
            self.prompt_tokens += sample.prompt_tokens or 0
            self.completion_tokens += sample.output_tokens
            usage = {"prompt_tokens": sample.prompt_tokens or 0, "completion_tokens": sample.output_tokens}
        if charge is not None:
            self.cap.settle(charge, usage)

    def error(self) -> SpendCapReached | None:
        """Why the bench stopped early, when the spending cap stopped it."""
        return self.cap.reached("bench", then="the levels measured so far are written") if self.cap else None


class LoadCollector:
    """``LiveLoad``'s figures at every scrape of ``--metrics-port``."""

    def __init__(self, live: LiveLoad) -> None:
        self.live = live

    def collect(self):
        """The metric families of one scrape."""
        live = self.live
        yield CounterMetricFamily("odie_bench_requests", "requests sent", value=live.requests)
        errors = CounterMetricFamily("odie_bench_errors", "requests that failed, by error code", labels=["code"])
        for code, count in sorted(live.errors.items()):
            errors.add_metric([str(code)], count)
        yield errors
        tokens = CounterMetricFamily("odie_tokens", "tokens answered, by kind", labels=["kind"])
        tokens.add_metric(["prompt"], live.prompt_tokens)
        tokens.add_metric(["completion"], live.completion_tokens)
        yield tokens
        yield GaugeMetricFamily("odie_in_flight", "requests in flight", value=live.in_flight)
        if live.cap is not None:
            yield GaugeMetricFamily("odie_spend_usd", "money spent so far (answered usage at the bench's prices)",
                                    value=live.cap.spent)
        latency = HistogramMetricFamily("odie_request_latency_seconds", "successful requests' latency")
        buckets, total = histogram_buckets(live.latencies)
        latency.add_metric([], buckets, total)
        yield latency
