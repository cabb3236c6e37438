"""Endpoint pools, measured against ``odie mock-server`` processes on loopback.

    python benchmarks/bench_pool.py [--json OUT.json] [--skip-litellm]

1. three endpoints enforcing 600, 1,200 and 2,400 RPM (200 ms latency): records/s against the
   sum of the limits (target ≥ 95 %), share of requests answered 429 (≤ 0.5 %);
2. the same pool, the 2,400-RPM endpoint killed a third of the way in and restarted at two
   thirds: every record exactly once, throughput during the outage against the two survivors'
   limits (≥ 90 %), seconds until the restarted endpoint is back above half its share (≤ 10 s);
3. one endpoint at 1,200 RPM, 300±200 ms, 10 % faults including 30 s stalls, 1,000 records:
   records/s against (RPM/60) × (1 − fault rate) (≥ 0.9×), extra requests from hedging (≤ 2 %);
4. LiteLLM's Router (least-busy and usage-based routing) on the same three endpoints, in its
   own environment: records/s, 429s, records lost.

Prints one JSON document (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import collections
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from bench_engine import PY, MockProcess, emit, free_port, pinned, write_input  # noqa: E402

LIMITS = (600, 1200, 2400)


class Mock(MockProcess):
    """A mock that logs every completion request (time, digest, outcome) and can be restarted."""

    def __init__(self, log: Path, *options: str, port: int | None = None) -> None:
        self.log, self.options = log, options
        self.port = port or free_port()
        cmd = pinned([PY, "-m", "odie_async", "mock-server", "--port", str(self.port), "--log-requests", str(log),
                      *options], 1)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert "listening" in self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "Mock":
        return Mock(self.log, *self.options, port=self.port)


def read_log(path: Path) -> list[tuple[float, str]]:
    """(monotonic time, outcome) of every completion request the mock saw."""
    rows = []
    for line in path.read_text().splitlines():
        t, _digest, outcome = line.split()
        rows.append((float(t), outcome))
    return rows


def pool_config(path: Path, mocks: list[Mock], limits, concurrency: int = 256) -> Path:
    endpoints = [{"base_url": m.url, "rpm": rpm, "name": f"mock-{rpm}rpm"} for m, rpm in zip(mocks, limits)]
    path.write_bytes(orjson.dumps({"endpoints": endpoints, "engine": {"concurrency": concurrency}}))
    return path


def odie(inp: Path, out: Path, *options: str) -> subprocess.Popen:
    cmd = [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--no-progress", *options]
    return subprocess.Popen(pinned(cmd, 0), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=900)
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    return {"exit_code": proc.returncode, "summary": summary, "stderr_tail": err.strip().splitlines()[-3:]}


def exactly_once(out: Path, n: int) -> dict:
    ids = collections.Counter()
    for path in (out, out.with_name(out.stem + ".errors.jsonl")):
        if path.exists():
            ids.update(orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines())
    return {"records": n, "distinct_written": len(ids), "duplicates": sum(c - 1 for c in ids.values()),
            "exactly_once": len(ids) == n and all(c == 1 for c in ids.values())}


def scenario_limits(tmp: Path, n: int) -> dict:
    mocks = [Mock(tmp / f"s1-{rpm}.log", "--rpm", str(rpm), "--latency-ms", "200") for rpm in LIMITS]
    inp = write_input(tmp / "s1.jsonl", n)
    out = tmp / "s1-out.jsonl"
    result = finish(odie(inp, out, "--config", str(pool_config(tmp / "s1.json", mocks, LIMITS))), out)
    stats = [m.stop() for m in mocks]
    wall = result["summary"]["wall_time_s"]
    bound = sum(LIMITS) / 60
    total = sum(s["total"] for s in stats)
    rejected = sum(s.get("429", 0) for s in stats)
    return {"records": n, "records_per_s": result["summary"]["succeeded"] / wall, "bound_per_s": bound,
            "share_of_limits": result["summary"]["succeeded"] / wall / bound,
            "share_429": rejected / max(1, total), "exit_code": result["exit_code"],
            "lanes": result["summary"].get("endpoints")}


def scenario_failover(tmp: Path, n: int) -> dict:
    mocks = [Mock(tmp / f"s2-{rpm}.log", "--rpm", str(rpm), "--latency-ms", "200") for rpm in LIMITS]
    inp = write_input(tmp / "s2.jsonl", n)
    out = tmp / "s2-out.jsonl"
    expected = n / (sum(LIMITS) / 60)
    proc = odie(inp, out, "--config", str(pool_config(tmp / "s2.json", mocks, LIMITS)))
    time.sleep(expected / 3)
    killed_at = time.monotonic()
    mocks[2].kill()
    time.sleep(expected / 3)
    mocks[2] = mocks[2].restart()
    restarted_at = time.monotonic()
    result = finish(proc, out)
    for m in mocks:
        m.stop()
    survivors = [t for m in mocks[:2] for t, o in read_log(m.log) if o == "200" and killed_at + 2 <= t < restarted_at]
    back = [t for t, o in read_log(mocks[2].log) if o == "200" and t >= restarted_at]
    return {"records": n, **exactly_once(out, n), "exit_code": result["exit_code"],
            "outage_s": restarted_at - killed_at,
            "outage_share_of_survivor_limits": len(survivors) / (restarted_at - killed_at - 2) / (sum(LIMITS[:2]) / 60),
            "restarted_back_to_half_share_after_s": _seconds_to_rate(back, restarted_at, LIMITS[2] / 60 / 2),
            "lanes": result["summary"].get("endpoints")}


def _seconds_to_rate(times: list[float], start: float, rate: float) -> float | None:
    """Seconds after ``start`` until a one-second window holds ``rate`` answers."""
    per_second = collections.Counter(int(t - start) for t in times)
    for second in sorted(per_second):
        if per_second[second] >= rate:
            return second + 1.0
    return None


def scenario_stragglers(tmp: Path, n: int) -> dict:
    mock = Mock(tmp / "s3.log", "--rpm", "1200", "--latency-ms", "300", "--latency-jitter-ms", "200",
                "--fault-rate", "0.1", "--stall-s", "30", "--seed", "3")
    inp = write_input(tmp / "s3.jsonl", n)
    out = tmp / "s3-out.jsonl"
    result = finish(odie(inp, out, "--base-url", mock.url, "--rpm", "1200"), out)
    stats = mock.stop()
    summary = result["summary"]
    bound = 1200 / 60 * (1 - 0.1)
    hedges = summary.get("hedges") or {}
    return {"records": n, **exactly_once(out, n), "records_per_s": summary["succeeded"] / summary["wall_time_s"],
            "bound_per_s": bound, "ratio": summary["succeeded"] / summary["wall_time_s"] / bound,
            "hedges_sent": hedges.get("sent"), "hedges_won": hedges.get("won"),
            "extra_requests_share": (hedges.get("sent") or 0) / max(1, summary["attempts"]),
            "mock_requests": stats, "exit_code": result["exit_code"]}


def scenario_litellm(tmp: Path, n: int) -> dict:
    from contenders import CONTENDERS, environment, python_for

    litellm = next(c for c in CONTENDERS if c.name == "LiteLLM")
    python = python_for(litellm)
    results = {}
    for strategy in ("least-busy", "usage-based-routing-v2"):
        mocks = [Mock(tmp / f"s4-{strategy}-{rpm}.log", "--rpm", str(rpm), "--latency-ms", "200") for rpm in LIMITS]
        inp = write_input(tmp / "s4.jsonl", n)
        out = tmp / f"s4-{strategy}.jsonl"
        endpoints = orjson.dumps([{"base_url": m.url, "rpm": rpm} for m, rpm in zip(mocks, LIMITS)]).decode()
        cmd = [str(python), str(Path(__file__).parent / "peers" / "run_litellm_pool.py"), "--input", str(inp),
               "--output", str(out), "--endpoints", endpoints, "--strategy", strategy]
        start = time.perf_counter()
        try:
            done = subprocess.run(pinned(cmd, 0), env=environment(litellm, tmp / "litellm-state"),
                                  capture_output=True, text=True, timeout=300)
            capped = False
        except subprocess.TimeoutExpired:
            capped = True
        wall = time.perf_counter() - start
        stats = [m.stop() for m in mocks]
        written = {orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()} if out.exists() else set()
        total = sum(s["total"] for s in stats)
        results[strategy] = {"records_per_s": len(written) / wall, "records_lost": n - len(written),
                             "share_429": sum(s.get("429", 0) for s in stats) / max(1, total),
                             "capped_at_300_s": capped, "last_words": "" if capped else done.stdout.strip()[-200:]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args()
    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="odie-bench-pool-") as tmp:
        tmp = Path(tmp)
        report["limits"] = scenario_limits(tmp, 3500)
        report["failover"] = scenario_failover(tmp, 4200)
        report["stragglers"] = scenario_stragglers(tmp, 1000)
        if not args.skip_litellm:
            report["litellm_router"] = scenario_litellm(tmp, 3500)
    emit(report, args.json)


if __name__ == "__main__":
    main()
