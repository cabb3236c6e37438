"""``odie batch --ray`` against the single-process ``odie batch``, on a local Ray cluster and loopback mocks.

    python benchmarks/bench_ray.py [--quick] [--json OUT.json]

1. 200 ms latency, concurrency 500 in total, 20,000 records, 2 workers: throughput of the Ray
   path vs the single-process path in the same run (target ≥ 0.8×);
2. ``--rpm 3000`` shared by 2 workers against a mock enforcing 3,000 RPM: share of the limit
   achieved (≥ 95 %) and share of requests answered 429 (≤ 0.5 %);
3. zero latency: client CPU µs per request, Ray path (driver + workers + Ray's own processes)
   vs the single-process path; three rotating rounds, medians.

This process starts the cluster (``ray.init(address="local", num_cpus=2)``, stopped at the end)
and every contender runs as the user runs it, in a child process; the driver connects to the
cluster by address, so the cluster's start-up is outside the figures and the workers' start is
inside the end-to-end ones. Throughput is what the mock saw: completion requests over the time
from its first request to its last (its ``--log-requests`` file). Nothing is pinned to a core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import emit, free_port, proc_stats, write_input  # noqa: E402

PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


class Mock:
    """``odie mock-server`` in a child process, logging every completion request."""

    def __init__(self, log: Path, *options: str) -> None:
        self.log = log
        port = free_port()
        cmd = [PY, "-m", "odie_async", "mock-server", "--port", str(port), "--log-requests", str(log), *options]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert "listening" in self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> dict:
        """Stop the mock; return its counts and the window of its 200 answers."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        counts = orjson.loads(out.strip().splitlines()[-1])
        times = [float(line.split()[0]) for line in self.log.read_text().splitlines() if line.endswith(" 200")]
        counts["window_s"] = times[-1] - times[0] if len(times) > 1 else 0.0
        counts["ok_per_s"] = (len(times) - 1) / counts["window_s"] if counts["window_s"] else 0.0
        return counts


def run_batch(inp: Path, url: str, *options: str) -> dict:
    """Run ``odie batch`` once on a fresh output; return its summary plus wall and CPU of its process."""
    out = inp.with_name(f"out-{time.monotonic_ns()}.jsonl")
    cmd = [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--base-url", url, "--no-progress", *options]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"odie batch {options} failed: {err.decode()[-2000:]}")
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    return {"summary": summary, "process_wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def _descendants_cpu(exclude: int) -> dict[int, float]:
    """CPU seconds of every live process below this one but ``exclude`` (the mock), by pid."""
    stats = proc_stats()
    parents = {pid: int(fields[1]) for pid, fields in stats.items()}
    cpu = {pid: (int(fields[11]) + int(fields[12])) / TICKS for pid, fields in stats.items()}
    mine, me = {}, os.getpid()
    for pid in cpu:
        p = pid
        while p in parents and p not in (0, 1, me):
            p = parents[p]
        if p == me and pid != exclude:
            mine[pid] = cpu[pid]
    return mine


def ray_run(address: str, inp: Path, mock: Mock, *options: str) -> dict:
    """``odie batch --ray``, with the CPU of the cluster's own processes over the run."""
    before = _descendants_cpu(mock.proc.pid)
    result = run_batch(inp, mock.url, "--ray", address, "--workers", "2", *options)
    after = _descendants_cpu(mock.proc.pid)
    workers_cpu = sum(w["cpu_s"] for w in result["summary"]["workers"])
    # Processes alive after the run that are not the workers (those are killed at its end):
    # the raylet, the GCS, the budget actor's process, idle pooled workers.
    ray_system = sum(c - before.get(pid, 0.0) for pid, c in after.items())
    result |= {"workers_cpu_s": workers_cpu, "ray_system_cpu_s": ray_system}
    return result


def scenario_latency(address: str, tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "latency.jsonl", n)
    figures = {}
    for kind in ("single", "ray"):
        mock = Mock(tmp / f"latency-{kind}.log", "--latency-ms", "200")
        try:
            run = run_batch(inp, mock.url, "--concurrency", "500") if kind == "single" else \
                ray_run(address, inp, mock, "--concurrency", "500")
        finally:
            seen = mock.stop()
        figures[kind] = {"requests_per_s": seen["ok_per_s"], "end_to_end_per_s": n / run["process_wall_s"],
                         "process_wall_s": run["process_wall_s"]}
    return {"requests": n, "concurrency": 500, "latency_ms": 200, "workers": 2, "bound_per_s": 2500, **figures,
            "ratio": figures["ray"]["requests_per_s"] / figures["single"]["requests_per_s"], "target": 0.8}


def scenario_rpm(address: str, tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "rpm.jsonl", n)
    mock = Mock(tmp / "rpm.log", "--rpm", "3000")
    try:
        run = ray_run(address, inp, mock, "--concurrency", "64", "--rpm", "3000")
    finally:
        seen = mock.stop()
    ok, window = seen.get("200", 0), seen["window_s"]
    allowed = 50.0 * window + 50.0  # the mock's bucket holds one second of budget and starts full
    s = run["summary"]
    return {"requests": n, "limit_rpm": 3000, "workers": 2, "achieved_rpm": 60 * (ok - 1) / window,
            "share_of_limit": ok / allowed, "answered_429": seen.get("429", 0),
            "share_429": seen.get("429", 0) / max(1, seen.get("total", 0)),
            "lease_calls_per_worker_per_s": [round(w["lease_calls"] / w["wall_time_s"], 2) for w in s["workers"]],
            "budget_calls_per_s": s["ray"]["budget_calls_per_s"], "budget_calls": s["ray"]["budget_calls"],
            "targets": {"share_of_limit": 0.95, "share_429": 0.005}}


ROUNDS = 3


def scenario_overhead(address: str, tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "overhead.jsonl", n)
    rounds: dict[str, list[dict]] = {"single": [], "ray": []}
    mock = Mock(tmp / "overhead.log")
    try:
        for r in range(ROUNDS):
            for kind in (["single", "ray"] if r % 2 == 0 else ["ray", "single"]):
                if kind == "single":
                    run = run_batch(inp, mock.url, "--concurrency", "256")
                    rounds[kind].append({"cpu_us_per_request": 1e6 * run["cpu_s"] / n,
                                         "requests_per_s": run["summary"]["requests_per_s"]})
                else:
                    run = ray_run(address, inp, mock, "--concurrency", "256")
                    rounds[kind].append({
                        "cpu_us_per_request": 1e6 * (run["cpu_s"] + run["workers_cpu_s"] + run["ray_system_cpu_s"]) / n,
                        "workers_us_per_request": 1e6 * run["workers_cpu_s"] / n,
                        "driver_us_per_request": 1e6 * run["cpu_s"] / n,
                        "ray_system_us_per_request": 1e6 * run["ray_system_cpu_s"] / n,
                        "requests_per_s": n / max(w["wall_time_s"] for w in run["summary"]["workers"])})
    finally:
        mock.stop()
    med = {kind: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for kind, rs in rounds.items()}
    return {"requests": n, "concurrency": 256, "rounds": ROUNDS, **med,
            "ratio_cpu": med["ray"]["cpu_us_per_request"] / med["single"]["cpu_us_per_request"],
            "per_round": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the targets)")
    parser.add_argument("--only", choices=["latency", "rpm", "overhead"], action="append")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = {"latency": 20_000, "rpm": 3_000, "overhead": 20_000}
    if args.quick:
        sizes = {"latency": 3_000, "rpm": 400, "overhead": 3_000}
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "ray": ray.__version__}}
    runners = {"latency": scenario_latency, "rpm": scenario_rpm, "overhead": scenario_overhead}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only or list(runners):
                results[name] = runners[name](address, Path(tmp), sizes[name])
                print(orjson.dumps({name: results[name]}).decode(), file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    emit(results, args.json)


if __name__ == "__main__":
    main()
