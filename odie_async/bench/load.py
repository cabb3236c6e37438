"""Driving a workload at one load level and timing every answer.

Three kinds of load: ``concurrency`` (a closed loop: N requests in flight, the
next sent as one returns; ``concurrency`` 1 is the synchronous mode), and
``constant`` or ``poisson`` request rates (an open loop: requests leave on a
schedule whatever the answers do, capped at ``max_in_flight``). Requests are
not retried: a failure is a measurement, counted by its error code.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from ..engine.streaming import StreamingClient
from ..exceptions import AuthenticationError, EndpointStopped, RequestError, RunAborted
from .client_cost import ClientMeter
from .live_load import LiveLoad
from .workload import Workload

KINDS = ("concurrency", "constant", "poisson")


@dataclass(frozen=True)
class Load:
    """One load level: ``kind`` and its value (requests in flight, or requests per second)."""

    kind: str
    value: float

    @property
    def label(self) -> str:
        """``concurrency 32`` or ``poisson 12.5/s``."""
        return f"concurrency {self.value:g}" if self.kind == "concurrency" else f"{self.kind} {self.value:g}/s"


@dataclass(slots=True)
class Sample:
    """One request: when it was sent and ended (perf_counter seconds) and what came back."""

    start: float
    end: float
    ttft: float | None = None
    itl: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None  # the exception's code; None on success


@dataclass
class LoadRun:
    """Everything measured at one load level."""

    load: Load
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    not_sent: int = 0  # open loop: due while max_in_flight requests were outstanding
    client: dict = field(default_factory=dict)


async def _one(client: StreamingClient, workload: Workload, live: LiveLoad) -> Sample | None:
    """Send the workload's next request and time it; None when the spending cap keeps it unsent."""
    path, body = workload.next()
    charge = await live.admit(body)
    if charge is False:
        return None
    live.sent()
    start = time.perf_counter()
    sample = Sample(start, start, error="cancelled")
    try:
        reply = await client.stream(path, body)
        sample = Sample(start, start + reply.latency, reply.ttft, reply.itl, reply.output_tokens, reply.prompt_tokens)
    except AuthenticationError as exc:
        sample.error = exc.code
        raise EndpointStopped(f"the endpoint refused the key: {exc.message}") from exc
    except RequestError as exc:
        sample = Sample(start, time.perf_counter(), error=exc.code)
    finally:
        live.answered(charge, sample)
    return sample


async def _closed(client, workload, run: LoadRun, deadline: float, live: LiveLoad) -> None:
    async def worker() -> None:
        while time.perf_counter() < deadline and not live.capped:
            sample = await _one(client, workload, live)
            if sample is not None:
                run.samples.append(sample)

    async with asyncio.TaskGroup() as group:
        for _ in range(int(run.load.value)):
            group.create_task(worker())


async def _open(client, workload, run: LoadRun, deadline: float, max_in_flight: int, seed: int,
                live: LiveLoad) -> None:
    rng = random.Random(seed)
    rate = run.load.value
    in_flight = 0

    async def send() -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            sample = await _one(client, workload, live)
            if sample is not None:
                run.samples.append(sample)
        finally:
            in_flight -= 1

    async with asyncio.TaskGroup() as group:
        due = time.perf_counter()
        while True:
            due += rng.expovariate(rate) if run.load.kind == "poisson" else 1.0 / rate
            if due >= deadline or live.capped:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if in_flight >= max_in_flight:
                run.not_sent += 1
                continue
            group.create_task(send())


async def drive(client: StreamingClient, workload: Workload, load: Load, duration_s: float,
                max_in_flight: int = 1024, seed: int = 0, live: LiveLoad | None = None) -> LoadRun:
    """Run ``load`` for ``duration_s`` (requests sent by then are awaited) and measure it; under a
    spending cap (``live``) the level ends early when the cap is reached."""
    live = live if live is not None else LiveLoad()
    if load.kind not in KINDS or load.value <= 0:
        raise ValueError(f"bad load {load}")
    run = LoadRun(load, duration_s)
    async with ClientMeter() as meter:
        deadline = time.perf_counter() + duration_s
        try:
            if load.kind == "concurrency":
                await _closed(client, workload, run, deadline, live)
            else:
                await _open(client, workload, run, deadline, max_in_flight, seed, live)
        except* RunAborted as group:
            raise group.exceptions[0] from None
    run.client = meter.figures(len(run.samples))
    return run
