"""The library API of ``odie bench``: measure, find the knee, write the results.

``run_bench(settings)`` is what the command calls; tests and scripts call it
too. It checks the workload before sending anything, probes the endpoint with
one request, measures every load level, and writes the report even when it is
interrupted part-way (``interrupted`` in ``results.json`` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from ..engine.prometheus import MetricsServer
from ..engine.settings import DEFAULTS
from ..engine.spend import SpendCap
from ..engine.streaming import StreamingClient
from ..exceptions import AuthenticationError, EndpointStopped, RequestError, SpendCapReached
from . import results as report
from .live_load import LiveLoad, LoadCollector
from .load import Load, Sample, drive
from .points import render, summarise
from .sweep import MAX_SWEEP_CONCURRENCY, knee_sweep, recommend
from .workload import Workload

log = structlog.get_logger(__name__)


@dataclass
class BenchSettings:
    """Where to send, what, at which loads, for how long, and where the report goes."""

    base_url: str
    workload: Workload
    output: Path
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    model: str | None = None
    loads: list[Load] = field(default_factory=list)  # empty: the knee sweep
    slo: dict[str, float] = field(default_factory=dict)
    duration_s: float = 30.0
    timeout_s: float = DEFAULTS["batch"]["timeout_s"]
    max_in_flight: int = 1024
    seed: int = 0
    embedded: bool = False  # the endpoint is the embedded model, served for this bench only
    name: str | None = None  # the endpoint's name in a pool's results
    cap: SpendCap | None = None  # --max-cost: no request is sent whose worst case could pass it
    metrics_port: int | None = None  # serve the load's figures to Prometheus on 127.0.0.1 while it runs
    # Where progress lines go (the command prints them on stderr; the library says nothing itself).
    say: Callable[[str], None] = field(default=lambda _text: None, repr=False, compare=False)


async def _prepare(client: StreamingClient, settings: BenchSettings, live: LiveLoad) -> str | None:
    """Find the model when no body names one, and send one request to see that the endpoint answers
    (under the spending cap too: a model without a price is refused before it)."""
    model = settings.model or next(iter(sorted(settings.workload.models)), None)
    try:
        if model is None:
            served = await client.models()
            model = served[0] if served else None
            settings.workload.with_model(model)
        if live.cap is not None:
            live.cap.require_prices(settings.workload.models or {model})
        path, body = settings.workload.next()
        charge = await live.admit(body)
        if charge is False:
            raise live.error()
        live.sent()
        reply = None
        try:
            reply = await client.stream(path, body)
        finally:
            live.answered(charge, _probe_sample(reply))
    except AuthenticationError as exc:
        raise EndpointStopped(f"the endpoint refused the key: {exc.message}") from exc
    except RequestError as exc:
        raise EndpointStopped(f"the endpoint at {settings.base_url} did not answer a first request: {exc.message}") from exc
    return model


def _probe_sample(reply) -> Sample:
    if reply is None:
        return Sample(0.0, 0.0, error="probe_failed")
    return Sample(0.0, reply.latency, reply.ttft, reply.itl, reply.output_tokens, reply.prompt_tokens)


async def _measure_all(client: StreamingClient, settings: BenchSettings, points: list[dict],
                       measured: Callable[[], object], live: LiveLoad) -> str:
    started = time.monotonic()

    async def measure(load: Load) -> dict:
        left = len(settings.loads) - len(points)
        eta = f", about {left * settings.duration_s:.0f} s left" if settings.loads else ""
        settings.say(f"[bench] measuring {load.label} for {settings.duration_s:g} s (point {len(points) + 1}{eta})")
        point = summarise(await drive(client, settings.workload, load, settings.duration_s,
                                      settings.max_in_flight, settings.seed + len(points), live))
        point["at_s"] = round(time.monotonic() - started, 1)
        points.append(point)
        settings.say(render(point))
        measured()
        if live.capped:
            raise live.error()
        return point

    try:
        if not settings.loads:
            measured, reason = await knee_sweep(measure, settings.slo)
            points[:] = measured
            return reason
        for load in settings.loads:
            await measure(load)
    except SpendCapReached as exc:
        return str(exc)
    return "every listed load measured"


def _warnings(points: list[dict], knee: dict | None) -> list[str]:
    warnings = [f"at {p['label']} the client, not the endpoint, set the pace: {p['client_bound']}; "
                "its figures understate the endpoint (give the client a free core)"
                for p in points if p["client_bound"]]
    if knee is None:
        warnings.append("no load level met the SLO without errors; recommended.yaml holds concurrency 1")
    return warnings


async def run_bench(settings: BenchSettings) -> dict:
    """Measure, recommend, write ``results.json``/``bench.png``/``recommended.yaml``; return the results.

    ``results.json`` is rewritten after every load level (``"running": true``, no knee yet), so a
    viewer shows the points as they come and an interrupted bench keeps what it measured.
    """
    points: list[dict] = []
    stop, interrupted = "", False
    machine = {"cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2)}
    in_flight = [int(l.value) for l in settings.loads if l.kind == "concurrency"] if settings.loads else [MAX_SWEEP_CONCURRENCY]
    connections = max(in_flight + [settings.max_in_flight])
    live = LiveLoad(settings.cap)
    exporter = MetricsServer(LoadCollector(live), settings.metrics_port) if settings.metrics_port else contextlib.nullcontext()
    with exporter:
        async with StreamingClient(settings.base_url, settings.api_key, max_connections=connections,
                                   timeout_s=settings.timeout_s) as client:
            model = await _prepare(client, settings, live)
            try:
                stop = await _measure_all(client, settings, points, lambda: report.write_results(
                    _results(settings, model, points, machine, live=live), settings.output), live)
            except asyncio.CancelledError:
                interrupted, stop = True, "interrupted"
    results = _results(settings, model, points, machine, stop, interrupted, live)
    results["files"] = {k: str(v) for k, v in report.write(results, settings.output).items()}
    for warning in results["warnings"]:
        log.warning(warning)
    if interrupted:
        raise asyncio.CancelledError
    if live.capped:
        raise live.error()
    return results


def _results(settings: BenchSettings, model: str | None, points: list[dict], machine: dict,
             stop: str | None = None, interrupted: bool = False, live: LiveLoad | None = None) -> dict:
    """``results.json``'s content: a finished bench when ``stop`` says why it ended, else one running."""
    finished = stop is not None
    knee = recommend(points, settings.slo) if finished else None
    return {
        "base_url": settings.base_url, "name": settings.name, "model": model, "api_key_env": settings.api_key_env,
        "embedded": settings.embedded,
        "workload": settings.workload.description, "source": settings.workload.source,
        "mode": "sweep" if not settings.loads else settings.loads[0].kind,
        "duration_s": settings.duration_s, "slo_ms": settings.slo, "running": not finished,
        "stop_reason": stop if finished else f"running: {len(points)} load level(s) measured",
        "interrupted": interrupted,
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if finished else None,
        "points": sorted(points, key=lambda p: (p["kind"], p["load"])), "recommended": knee,
        "warnings": _warnings(points, knee) if finished else [],
        "client_machine": machine | {"load_average_at_end": round(os.getloadavg()[0], 2)},
        **({"spend": live.cap.report(live.requests, None)} if live is not None and live.cap is not None else {}),
    }


async def run_pool_bench(endpoints: list[BenchSettings], output: Path) -> list[dict]:
    """Bench each endpoint of a pool in turn (each into its own folder), then write one ``recommended.yaml``
    whose ``endpoints:`` list runs every endpoint at its own knee."""
    benches = []
    for settings in endpoints:
        settings.say(f"[bench] endpoint {settings.name}: {settings.base_url}")
        benches.append(await run_bench(settings))
    path = report.write_pool(benches, output)
    if endpoints:
        endpoints[0].say(f"[bench] pool settings: {path}")
    return benches


def endpoint_names(urls: list[str]) -> list[str]:
    """A folder-safe, unique name per endpoint URL: ``host-port``."""
    names: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{parts.hostname or 'endpoint'}-{parts.port or ''}").strip("-.")
        name, n = base or "endpoint", 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names
