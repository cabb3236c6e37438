"""``odie bench`` beside GuideLLM on the same ``odie mock-server``: how fast each can drive, at what CPU, how truthfully.

    python benchmarks/bench_vs_guidellm.py [--seconds 20] [--out benchmarks/results/bench]

GuideLLM runs from its own throwaway venv under ``benchmarks/results/tmp/`` (made
on the first run from ``benchmarks/peers/requirements-guidellm.txt``), offline,
with the embedded model's tokenizer for its synthetic prompts. Each tool runs as a
child process pinned to core 0 (its worker processes too) against a fresh mock
pinned to core 1 that logs every request. Two scenarios, both streamed:

1. ``max_rate``: zero latency, 256 requests in flight, 32 prompt / 16 output tokens:
   the request rate each tool drives (the middle 80 % of the answers in the mock's
   log over their time span) and its client CPU per request over the same span
   (its process group's CPU, sampled from /proc every 0.1 s);
2. ``truth``: the mock streams its first token after 50 ms and one every 10 ms, 64
   output tokens, at a constant 150 requests/s: the TTFT and ITL each tool reports
   against the mock's settings.

Writes ``vs_guidellm.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import bisect
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

from bench_engine import proc_stats  # noqa: E402
from bench_peers import Mock  # noqa: E402
from contenders import Child, Contender, python_for  # noqa: E402
from harness import read_log  # noqa: E402

from odie_async.endpoints.embedded import embedded_model_dir  # noqa: E402

GUIDELLM = Contender("GuideLLM", "", "guidellm", "json", "guidellm run", packages=("guidellm",))
VENV = HERE / "results" / "tmp" / "guidellm-venv"
SCENARIOS = {
    "max_rate": {"mock": ["--stream"], "prompt": 32, "output": 16, "concurrency": 256},
    "truth": {"mock": ["--stream", "--ttft-ms", "50", "--itl-ms", "10"], "prompt": 32, "output": 64, "rate": 150},
}


class GroupCpu:
    """Samples the CPU seconds of a process group (live members plus reaped children) every 0.1 s."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _cpu(self) -> float:
        total = sum(sum(int(x) for x in fields[11:15])  # utime stime cutime cstime of the group
                    for fields in proc_stats().values() if int(fields[2]) == self.pgid)
        return total / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._cpu()))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float:
        """CPU seconds used by time ``t`` (the last sample before it)."""
        i = bisect.bisect_right([s[0] for s in self.samples], t) - 1
        return self.samples[max(i, 0)][1]


def odie_command(spec: dict, url: str, out: Path, seconds: int) -> list[str]:
    load = ["--concurrency", str(spec["concurrency"])] if "concurrency" in spec else ["--rate", str(spec["rate"])]
    return [sys.executable, "-m", "odie_async", "bench", "--base-url", url, *load, "--duration", f"{seconds}s",
            "--synthetic", f"prompt_tokens={spec['prompt']},output_tokens={spec['output']}", "--output", str(out)]


def guidellm_command(spec: dict, url: str, out: Path, seconds: int) -> list[str]:
    profile = (f"kind=throughput,max_concurrency={spec['concurrency']}" if "concurrency" in spec
               else f"kind=constant,rate={spec['rate']}")
    guidellm = python_for(GUIDELLM, VENV).parent / "guidellm"
    return [str(guidellm), "run", "--backend", f"kind=openai_http,target={url.removesuffix('/v1')}",
            "--profile", profile, "--constraint", f"kind=max_duration,seconds={seconds}",
            "--data", f"kind=synthetic_text,prompt_tokens={spec['prompt']},output_tokens={spec['output']}",
            "--tokenizer", f"kind=huggingface_auto,model={embedded_model_dir()}",
            "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-progress"]


def own_figures(tool: str, out: Path) -> dict:
    """What the tool itself reported: request rate, TTFT and ITL p50/p95 (ms)."""
    if tool == "odie bench":
        point = orjson.loads((out / "results.json").read_bytes())["points"][0]
        return {"reported_rps": point["requests_per_s"], "ttft_p50": point["ttft_ms"]["p50"],
                "ttft_p95": point["ttft_ms"]["p95"], "itl_p50": point["itl_ms"]["p50"],
                "client_cpu_us_self_reported": point["client"]["process_cpu_us_per_request"]}
    metrics = orjson.loads((out / "guidellm.json").read_bytes())["benchmarks"][0]["metrics"]
    ttft = metrics["time_to_first_token_ms"]["successful"]
    itl = metrics["inter_token_latency_ms"]["successful"]
    return {"reported_rps": metrics["requests_per_second"]["successful"]["mean"], "ttft_p50": ttft["median"],
            "ttft_p95": ttft["percentiles"]["p95"], "itl_p50": itl["median"]}


def run_one(tool: str, spec: dict, work: Path, seconds: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # the mock appends to its log: start from none
    work.mkdir(parents=True)
    mock = Mock(spec["mock"], work / "requests.log")
    build = odie_command if tool == "odie bench" else guidellm_command
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf"), DO_NOT_TRACK="1",
               OPENAI_API_KEY="sk-mock", PYTHONUNBUFFERED="1")
    try:
        child = Child(build(spec, mock.url, work, seconds), env, work / "run")
        cpu = GroupCpu(child.proc.pid)
        outcome = child.wait(seconds + 180)
        cpu.stop()
    finally:
        counters = mock.stop()
    ok = sorted(h.t for h in read_log(mock.log) if h.outcome == "200")
    # the middle 80 % of requests: a probe before the load, or a ramp and a tail, weigh on neither figure
    n = len(ok) * 9 // 10 - len(ok) // 10
    first, last = (ok[len(ok) // 10], ok[len(ok) * 9 // 10]) if n > 0 else (0.0, 0.0)
    span = last - first
    result = {"exit_code": outcome.exit_code, "wall_s": round(outcome.wall_s, 1), "mock": counters,
              "answered": len(ok), "requests_per_s": round(n / span, 1) if span > 0 else None,
              "cpu_us_per_request": round((cpu.at(last) - cpu.at(first)) / n * 1e6, 1) if span > 0 else None,
              "cpu_s_whole_run": round(outcome.cpu_s, 2), "stderr_tail": outcome.stderr_tail}
    if outcome.exit_code == 0:
        result |= own_figures(tool, work)
    return result


def table(results: dict) -> str:
    rows = ["| tool | max rate: req/s (mock's log) | client CPU µs/req | truth: TTFT p50 / p95 ms (50) | ITL p50 ms (10) | rate reached (150/s) |",
            "|---|---|---|---|---|---|"]
    for tool, runs in results["tools"].items():
        fast, truth = runs["max_rate"], runs["truth"]
        rows.append(f"| {tool} | {fast['requests_per_s']:,} | {fast['cpu_us_per_request']:,} | "
                    f"{truth.get('ttft_p50', float('nan')):.1f} / {truth.get('ttft_p95', float('nan')):.1f} | "
                    f"{truth.get('itl_p50', float('nan')):.2f} | {truth['requests_per_s']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench")
    args = parser.parse_args()
    work = HERE / "results" / "tmp" / "vs-guidellm"
    results = {"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}",
               "load_average_at_start": os.getloadavg()[0], "seconds": args.seconds, "scenarios": SCENARIOS, "tools": {}}
    python_for(GUIDELLM, VENV)
    for tool in ("odie bench", "GuideLLM"):
        for name, spec in SCENARIOS.items():
            print(f"{tool}: {name} ...", file=sys.stderr, flush=True)
            result = run_one(tool, spec, work / tool.split()[0].lower() / name, args.seconds)
            results["tools"].setdefault(tool, {})[name] = result
            print(orjson.dumps(result).decode(), file=sys.stderr, flush=True)
    results["versions"] = {"guidellm": (VENV / ".odie-requirements").read_text().strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_guidellm.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(results))


if __name__ == "__main__":
    main()
