"""``odie batch`` against the tools people would pick instead, side by side, on one mock server.

    python benchmarks/bench_peers.py [--quick] [--only SCENARIO ...] [--contender NAME ...] [--out DIR]

Contenders: ``odie batch``, bespokelabs-curator, distilabel, LiteLLM and the original
project's approach (one request at a time, the whole output file rewritten after
each record). Each peer runs from its own throwaway venv (created on the first run
under the odie cache, see ``benchmarks/peers/contenders.py``), as a child process
pinned to core 0, against a fresh ``odie mock-server`` pinned to core 1 that logs
every completion request. Scenarios (same input, same settings for all):

1. ``overhead``: zero latency, concurrency 256, 10,000 records: requests/s, client CPU µs/request;
2. ``latency``: 500 ms latency, concurrency 500, 5,000 records: requests/s (bound: 1,000/s);
3. ``ratelimit``: the mock enforces 3,000 RPM / 120,000 TPM and every tool is told the
   same: share of the limit achieved, share of requests answered 429, answers over time;
4. ``faults``: 20 % injected faults (500/503, resets, 10 s stalls, malformed JSON),
   2,000 records, 5 attempts: records lost, duplicated, paid twice;
5. ``interrupt``: 100 ms latency; SIGINT to the process group (Ctrl-C) once half of
   4,000 records are answered (or at the cap), then the same command again: requests
   the rerun sends for records already answered, records lost, duplicate rows.

Every run is capped in time (SIGINT at the cap, SIGKILL 15 s later) and marked when
capped. Writes ``results.json``, ``table.md``, ``README-section.md`` and PNG plots to
``benchmarks/results/peers/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from contenders import CONTENDERS, TASKSET, Child, Contender, command, environment, pinned, versions  # noqa: E402
from harness import (  # noqa: E402
    account, answered_count, limit_share, rate, read_log, read_output, resent, series, window, write_input,
)
from report import write_report  # noqa: E402

PY = sys.executable
OUT = Path(__file__).resolve().parent / "results" / "peers"
SCENARIOS = {
    "overhead": {"n": 10_000, "concurrency": 256, "mock": [], "cap_s": 90},
    "latency": {"n": 5_000, "concurrency": 500, "mock": ["--latency-ms", "500"], "cap_s": 60, "latency_s": 0.5},
    "ratelimit": {"n": 2_000, "concurrency": 256, "mock": ["--rpm", "3000", "--tpm", "120000"], "cap_s": 75,
                  "rpm": 3000, "tpm": 120_000},
    "faults": {"n": 2_000, "concurrency": 256, "mock": ["--fault-rate", "0.2", "--stall-s", "10", "--seed", "7"],
               "cap_s": 120},
    "interrupt": {"n": 4_000, "concurrency": 256, "mock": ["--latency-ms", "100"], "cap_s": 45},
}
QUICK = {"overhead": 2_000, "latency": 1_000, "ratelimit": 400, "faults": 400, "interrupt": 1_000}


class Mock:
    """A fresh ``odie mock-server`` on core 1 that logs every completion request."""

    def __init__(self, options: list[str], log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = log
        cmd = [PY, "-m", "odie_async", "mock-server", "--port", str(self.port), "--log-requests", str(log), *options]
        self.proc = subprocess.Popen(pinned(cmd, 1), stdout=subprocess.PIPE, text=True)
        if "listening" not in self.proc.stdout.readline():
            raise RuntimeError("odie mock-server did not start")
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> dict:
        """Stop it; return its request counters."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return orjson.loads(out.strip().splitlines()[-1])


def runner_args(spec: dict, contender: Contender, inp: Path, out: Path, state: Path, url: str) -> dict:
    """The same settings for every contender (the original approach ignores concurrency: it is sequential)."""
    return {"input": inp, "output": out, "state_dir": state, "base_url": url, "concurrency": spec["concurrency"],
            "rpm": spec.get("rpm", 0), "tpm": spec.get("tpm", 0), "max_attempts": 5, "timeout": 30}


def run_once(spec: dict, contender: Contender, work: Path, name: str) -> dict:
    """One contender through one scenario (interrupt: two runs) on its own mock; the figures."""
    work.mkdir(parents=True, exist_ok=True)
    inputs = write_input(work / "input.jsonl", spec["n"])
    mock = Mock(spec["mock"], work / "requests.log")
    out = work / f"output.{contender.fmt}"
    cmd = command(contender, runner_args(spec, contender, work / "input.jsonl", out, work / "state", mock.url))
    env = environment(contender, work / "state")
    try:
        if name == "interrupt":
            return interrupted_runs(spec, contender, cmd, env, work, inputs, mock)
        outcome = Child(cmd, env, work / "run").wait(spec["cap_s"])
    finally:
        counters = mock.stop()
    hits = read_log(mock.log)
    figures = account(hits, inputs, read_output(out, contender.fmt))
    result = {"outcome": vars(outcome), "mock": counters, **figures,
              "requests_per_s": rate(hits, inputs, spec.get("latency_s", 0.0)),
              "end_to_end_per_s": figures["records_answered"] / outcome.wall_s}
    result["cpu_us_per_request"] = cpu_per_request(outcome, figures["answered_200"])
    if name == "ratelimit":
        result["answers_per_s"] = series(hits, inputs)
        result["limit_share"] = limit_share(figures["answered_200"], window(hits, inputs), spec["rpm"])
    return result


def cpu_per_request(outcome, answered: int) -> float | None:
    """Client CPU per answered request in the working phase (whole process when the runner was cut off)."""
    if not answered:
        return None
    cpu = outcome.bench["work_cpu_s"] if outcome.bench else outcome.cpu_s
    return 1e6 * cpu / answered


def interrupted_runs(spec, contender, cmd, env, work: Path, inputs: dict, mock: Mock) -> dict:
    """Ctrl-C once half the records are answered, then the same command to the end."""
    first = Child(cmd, env, work / "run1")
    while first.poll() is None and answered_count(mock.log, inputs) < spec["n"] // 2:
        if time.perf_counter() - first.start > spec["cap_s"]:
            break
        time.sleep(0.02)
    at_half = answered_count(mock.log, inputs) >= spec["n"] // 2
    first.interrupt()
    one = first.wait(spec["cap_s"] + 30)
    time.sleep(0.3)  # the mock flushes its log every 0.1 s
    boundary = time.monotonic()
    two = Child(cmd, env, work / "run2").wait(spec["cap_s"])
    time.sleep(0.3)
    hits = read_log(mock.log)
    before, after = [h for h in hits if h.t < boundary], [h for h in hits if h.t >= boundary]
    out = work / f"output.{contender.fmt}"
    return {"first": vars(one) | {"at_half": at_half}, "second": vars(two), **resent(before, after, inputs),
            **account(hits, inputs, read_output(out, contender.fmt))}


def machine() -> dict:
    """What the comparison ran on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform(),
            "pinned": bool(TASKSET), "load_avg_at_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not the published figures")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    parser.add_argument("--contender", action="append", choices=[c.name for c in CONTENDERS])
    parser.add_argument("--out", type=Path, default=OUT, help=f"results folder (default {OUT})")
    parser.add_argument("--keep", type=Path, help="keep the work files (inputs, outputs, logs) here")
    parser.add_argument("--render", action="store_true", help="only rewrite table, plots and README section from results.json")
    args = parser.parse_args()
    if args.render:
        write_report(orjson.loads((args.out / "results.json").read_bytes()), args.out)
        return
    contenders = [c for c in CONTENDERS if not args.contender or c.name in args.contender]
    scenarios = {k: dict(v, n=QUICK[k], cap_s=30) if args.quick else v for k, v in SCENARIOS.items()
                 if not args.only or k in args.only}
    results = {"machine": machine(), "quick": args.quick, "scenarios": scenarios,
               "contenders": {c.name: {"setup": c.setup, "versions": versions(c), "sequential": c.sequential}
                              for c in contenders}}
    # memory-backed when possible: the shared machine's disk stalls are not what is measured
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(args.keep or tempfile.mkdtemp(prefix="odie-bench-peers-", dir=scratch))
    started = time.perf_counter()
    try:
        for name, spec in scenarios.items():
            for contender in contenders:
                print(f"[{time.perf_counter() - started:6.0f} s] {name}: {contender.name} ...", file=sys.stderr, flush=True)
                figures = run_once(spec, contender, work / name / contender.slug, name)
                results["contenders"][contender.name][name] = figures
                print("    " + orjson.dumps(_brief(figures)).decode(), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    write_report(results, args.out)
    print(f"wrote {args.out}/results.json, table.md, README-section.md and plots in {results['total_s']:.0f} s",
          file=sys.stderr)


def _brief(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}


if __name__ == "__main__":
    main()
