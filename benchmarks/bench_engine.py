"""The engine's own targets, measured in one run against ``odie mock-server`` on loopback.

    python benchmarks/bench_engine.py [--quick] [--json OUT.json]

1. zero latency, concurrency 256, 20,000 requests, checkpointing on, five rotating rounds: ``odie batch``
   vs a bare aiohttp loop (target ≥ 0.9× its throughput, ≤ 80 µs of client CPU per request), and
   ``odie batch`` over a pool of three lanes (three keys, one mock) against one lane (within 5 %);
2. 1 s latency, concurrency 500: throughput vs the bound concurrency ÷ latency (≥ 95 %);
3. ``--rpm 6000`` against a mock enforcing 6,000 RPM: share of the limit achieved (≥ 97 %)
   and share of requests answered 429 (≤ 0.5 %);
4. 1,000,000 input lines: peak RSS of ``odie batch`` (< 250 MB);
5. ``--only memory_slope``: peak RSS after 1,000,000 and after 5,000,000 zero-latency requests
   (``--slope-sizes`` to choose others), target within 50 MB of each other: memory flat with run length.

The mock runs pinned to one core and the client to the other when ``taskset`` exists.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

PY = sys.executable
TASKSET = shutil.which("taskset")


def proc_stats() -> dict[int, list[str]]:
    """The fields of ``/proc/PID/stat`` after the command name, for every live process, by pid
    (index 1: parent, 2: process group, 11-14: utime, stime, cutime, cstime in clock ticks)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
    return stats


def emit(results: dict, path: Path | None) -> None:
    """Print a benchmark's results as indented JSON, and write them to ``path`` when given."""
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def pinned(cmd: list[str], core: int) -> list[str]:
    """Prefix ``cmd`` with a CPU pin when possible (the machine has 2 cores)."""
    return [TASKSET, "-c", str(core), *cmd] if TASKSET and os.cpu_count() and os.cpu_count() > 1 else cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_input(path: Path, n: int) -> Path:
    """``n`` unique short chat requests in Batch API format, written in blocks."""
    with open(path, "wb") as handle:
        block = []
        for i in range(n):
            body = {"model": "mock-model", "messages": [{"role": "user", "content": f"Extract item {i}"}], "max_tokens": 16}
            block.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
            if len(block) == 10_000:
                handle.write(b"\n".join(block) + b"\n")
                block = []
        if block:
            handle.write(b"\n".join(block) + b"\n")
    return path


class MockProcess:
    """``odie mock-server`` in a child process on core 1."""

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        cmd = pinned([PY, "-m", "odie_async", "mock-server", "--port", str(self.port), *options], 1)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert "listening" in self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return orjson.loads(out.strip().splitlines()[-1])


def run_child(cmd: list[str]) -> tuple[str, float, float, int]:
    """Run ``cmd`` on core 0; return (stdout, wall s, CPU s, peak RSS bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(pinned(cmd, 0), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return out.decode(), time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def odie_batch(inp: Path, url: str | None, *options: str) -> dict:
    """Run ``odie batch`` once on a fresh output; return its summary plus process figures."""
    out = inp.with_name(f"out-{time.monotonic_ns()}.jsonl")
    cmd = [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--no-progress", *options]
    if url is not None:
        cmd += ["--base-url", url]
    _stdout, wall, cpu, rss = run_child(cmd)
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    for path in out.parent.glob(out.stem + "*"):
        path.unlink()
    return {"summary": summary, "process_wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss / 2**20}


def bare_loop(inp: Path, url: str, concurrency: int, loop: str) -> dict:
    stdout, wall, cpu, _ = run_child([PY, str(Path(__file__).with_name("bare_aiohttp.py")), str(inp), url, str(concurrency), loop])
    result = orjson.loads(stdout)
    return result | {"requests_per_s": result["ok"] / result["wall_s"], "cpu_us_per_request": 1e6 * cpu / max(1, result["ok"])}


ROUNDS = 5  # the overhead scenario's rounds; one run of each is too noisy on a shared 2-core machine


def scenario_overhead(tmp: Path, n: int) -> dict:
    """Odie (one lane and a pool of three) and both bare loops in rotating order, ``ROUNDS`` times;
    medians decide."""
    inp = write_input(tmp / "overhead.jsonl", n)
    runs: dict[str, list[dict]] = {"asyncio": [], "uvloop": [], "odie": [], "odie_pool3": []}
    mock = MockProcess()
    config = _pool_config(tmp / "pool3.yaml", mock.url)
    try:
        for r in range(ROUNDS):
            order = list(runs)[r % 4:] + list(runs)[:r % 4]
            for kind in order:
                runs[kind].append(_overhead_run(kind, inp, mock.url, config))
    finally:
        mock.stop()
    med = {kind: statistics.median(x["requests_per_s"] for x in rs) for kind, rs in runs.items()}
    cpu = {kind: statistics.median(x["cpu_us_per_request"] for x in rs) for kind, rs in runs.items()}
    ratios = [o["requests_per_s"] / max(a["requests_per_s"], u["requests_per_s"])
              for o, a, u in zip(runs["odie"], runs["asyncio"], runs["uvloop"])]
    return {
        "requests": n, "concurrency": 256, "rounds": ROUNDS,
        "odie_requests_per_s": med["odie"], "odie_cpu_us_per_request": cpu["odie"],
        "pool3_requests_per_s": med["odie_pool3"], "pool3_cpu_us_per_request": cpu["odie_pool3"],
        "bare_aiohttp": {k: {"requests_per_s": med[k], "cpu_us_per_request": cpu[k]} for k in ("asyncio", "uvloop")},
        # The bare loop's own CPU is aiohttp's floor on this machine; what the engine adds is above it.
        "odie_cpu_us_over_bare_uvloop": cpu["odie"] - cpu["uvloop"],
        "ratio_vs_best_bare": med["odie"] / max(med["asyncio"], med["uvloop"]),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "pool3_vs_one_lane": med["odie_pool3"] / med["odie"],
        "targets": {"ratio_vs_best_bare": 0.9, "odie_cpu_us_per_request": 80, "pool3_vs_one_lane": 0.95},
    }


POOL_KEYS = ("ODIE_BENCH_KEY_A", "ODIE_BENCH_KEY_B", "ODIE_BENCH_KEY_C")


def _pool_config(path: Path, url: str) -> Path:
    """Three lanes to one mock: three keys make three endpoints (the same URL and key would be one)."""
    lines = ["endpoints:"] + [f"  - {{base_url: '{url}', api_key_env: {key}}}" for key in POOL_KEYS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _overhead_run(kind: str, inp: Path, url: str, pool_config: Path) -> dict:
    if kind in ("asyncio", "uvloop"):
        return bare_loop(inp, url, 256, kind)
    if kind == "odie_pool3":
        for i, key in enumerate(POOL_KEYS):
            os.environ[key] = f"bench-key-{i}"
        odie = odie_batch(inp, None, "--concurrency", "256", "--config", str(pool_config))
    else:
        odie = odie_batch(inp, url, "--concurrency", "256")
    n = odie["summary"]["succeeded"]
    return {"requests_per_s": odie["summary"]["requests_per_s"], "cpu_us_per_request": 1e6 * odie["cpu_s"] / max(1, n)}


def scenario_latency(tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "latency.jsonl", n)
    mock = MockProcess("--latency-ms", "1000")
    try:
        odie = odie_batch(inp, mock.url, "--concurrency", "500")
    finally:
        mock.stop()
    rate = odie["summary"]["requests_per_s"]
    return {"requests": n, "concurrency": 500, "latency_ms": 1000, "requests_per_s": rate,
            "bound": 500.0, "share_of_bound": rate / 500.0, "target": 0.95}


def scenario_rpm(tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "rpm.jsonl", n)
    mock = MockProcess("--rpm", "6000")
    try:
        odie = odie_batch(inp, mock.url, "--concurrency", "64", "--rpm", "6000")
    finally:
        counts = mock.stop()
    s = odie["summary"]
    sent = counts.get("total", 0)
    return {"requests": n, "limit_rpm": 6000, "achieved_rpm": 60 * s["succeeded"] / s["wall_time_s"],
            "share_of_limit": s["succeeded"] / s["wall_time_s"] / 100.0, "answered_429": counts.get("429", 0),
            "share_429": counts.get("429", 0) / max(1, sent), "targets": {"share_of_limit": 0.97, "share_429": 0.005}}


def scenario_memory(tmp: Path, n: int) -> dict:
    inp = write_input(tmp / "million.jsonl", n)
    mock = MockProcess()
    try:
        odie = odie_batch(inp, mock.url, "--concurrency", "256")
    finally:
        mock.stop()
    return {"input_lines": n, "input_mb": inp.stat().st_size / 2**20, "peak_rss_mb": odie["peak_rss_mb"],
            "requests_per_s": odie["summary"]["requests_per_s"], "target_mb": 250}


def scenario_memory_slope(tmp: Path, sizes: list[int]) -> dict:
    """Peak RSS of ``odie batch`` after each of ``sizes`` zero-latency requests: flat, or growing?"""
    points = []
    mock = MockProcess()
    try:
        for n in sizes:
            inp = write_input(tmp / f"slope-{n}.jsonl", n)
            odie = odie_batch(inp, mock.url, "--concurrency", "256")
            inp.unlink()
            points.append({"requests": n, "peak_rss_mb": round(odie["peak_rss_mb"], 1),
                           "requests_per_s": odie["summary"]["requests_per_s"]})
            print(orjson.dumps({"memory_slope_point": points[-1]}).decode(), file=sys.stderr, flush=True)
    finally:
        mock.stop()
    first, last = points[0], points[-1]
    growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    return {"points": points, "growth_mb": round(growth, 1),
            "mb_per_million": round(growth / max(1e-9, (last["requests"] - first["requests"]) / 1e6), 1),
            "target": "within 50 MB from 1,000,000 to 5,000,000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the targets)")
    parser.add_argument("--only", choices=["overhead", "latency", "rpm", "memory", "memory_slope"], action="append")
    parser.add_argument("--slope-sizes", default="1000000,5000000",
                        help="request counts of the memory_slope scenario (default: 1,000,000 and 5,000,000)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = {"overhead": 20_000, "latency": 5_000, "rpm": 3_000, "memory": 1_000_000}
    if args.quick:
        sizes = {"overhead": 4_000, "latency": 1_000, "rpm": 600, "memory": 50_000}
    sizes["memory_slope"] = [int(x) for x in args.slope_sizes.split(",")]
    runners = {"overhead": scenario_overhead, "latency": scenario_latency, "rpm": scenario_rpm, "memory": scenario_memory,
               "memory_slope": scenario_memory_slope}
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                           "pinned": bool(TASKSET)}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or [name for name in runners if name != "memory_slope"]:
            results[name] = runners[name](Path(tmp), sizes[name])
            print(orjson.dumps({name: results[name]}).decode(), file=sys.stderr, flush=True)
    emit(results, args.json)


if __name__ == "__main__":
    main()
