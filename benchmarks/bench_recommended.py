"""Does ``odie bench``'s recommendation pay off? A sweep of the embedded server, then generate runs.

One embedded vLLM server (SmolLM2-135M on the CPU) is started for the whole script. Against it:

1. ``odie bench --sweep`` (timed, the server's start not included), writing ``recommended.yaml``;
2. ``odie generate --limit N`` with today's default config and with the same config at the
   recommended concurrency, alternated ``--rounds`` times so that a busy machine weighs on both.

It prints and saves each run's pipeline wall time, completion tokens/s, requests/s and latency,
and the recommended runs' throughput relative to the defaults'. Reproduce with

    python benchmarks/bench_recommended.py --json benchmarks/results/bench/embedded/generate_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from odie_async.bench import results as report  # noqa: E402
from odie_async.endpoints.resolve import resolve_endpoint  # noqa: E402

KEY_ENV = "ODIE_BENCH_ENDPOINT_KEY"
ODIE = [sys.executable, "-m", "odie_async"]


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def sweep(base_url: str, model: str, out: Path, duration: str) -> dict:
    start = time.perf_counter()
    subprocess.run(ODIE + ["bench", "--base-url", base_url, "--model", model, "--api-key-env", KEY_ENV,
                           "--sweep", "--duration", duration, "--synthetic",
                           "prompt_tokens=128,output_tokens=64", "--output", str(out)], check=True)
    results = json.loads((out / "results.json").read_text())
    # The server was the embedded model, started by this script: say so, so that recommended.yaml
    # names no one-off URL (null serves the model again for the run), as `odie bench` alone writes it.
    results.update(embedded=True, api_key_env=None)
    report.write(results, out)
    return {"wall_s": round(time.perf_counter() - start, 1), "stop_reason": results["stop_reason"],
            "recommended_concurrency": results["recommended"]["concurrency"],
            "points": [(p["load"], p["requests_per_s"], p["output_tokens_per_s"]) for p in results["points"]]}


def config_with(concurrency: int, folder: Path) -> Path:
    """The default generate config with ``engine.concurrency`` set (prompts and seeds found beside it)."""
    default = ROOT / "configs" / "generate-default.yaml"
    config = yaml.safe_load(default.read_text())
    config["engine"]["concurrency"] = concurrency
    config["seeds"] = str(default.parent / config["seeds"])
    config["prompts"] = str(default.parent / config["prompts"])
    config["filter"]["config"] = str(default.parent / config["filter"]["config"])
    path = folder / f"generate-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def generate(base_url: str, model: str, config: Path, out: Path, limit: int) -> dict:
    load_before = load_average()
    start = time.perf_counter()
    subprocess.run(ODIE + ["generate", "--config", str(config), "--base-url", base_url, "--model", model,
                           "--api-key-env", KEY_ENV, "--limit", str(limit), "--output", str(out),
                           "--no-progress"], check=True)
    wall = time.perf_counter() - start
    engine = json.loads((out / "summary.json").read_text())["engine"]
    completion = engine["tokens"]["completion"]
    return {"pipeline_wall_s": round(wall, 1), "requests": engine["succeeded"], "failed": engine["failed"],
            "engine_wall_s": engine["wall_time_s"], "completion_tokens": completion,
            "completion_tokens_per_s": round(completion / engine["wall_time_s"], 1),
            "requests_per_s": engine["requests_per_s"], "latency_ms": engine["latency_ms"],
            "load_average": [load_before, load_average()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", default="15s", help="odie bench's time per load level")
    parser.add_argument("--default-concurrency", type=int, default=16, help="configs/generate-default.yaml's")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="odie-recommended-"))
    with resolve_endpoint() as endpoint:
        os.environ[KEY_ENV] = endpoint.api_key or "none"
        url, model = endpoint.base_url, endpoint.model
        found = sweep(url, model, work / "bench", args.duration)
        print(f"sweep: {found['wall_s']} s, {found['stop_reason']}; recommended {found['recommended_concurrency']}")
        configs = {"default": config_with(args.default_concurrency, work),
                   "recommended": config_with(found["recommended_concurrency"], work)}
        runs = {name: [] for name in configs}
        for round_no in range(args.rounds):
            for name, config in configs.items():
                run = generate(url, model, config, work / f"{name}-{round_no}", args.limit)
                runs[name].append(run)
                print(f"{name} round {round_no + 1}: {run}")
    medians = {name: {key: statistics.median(r[key] for r in rs)
                      for key in ("pipeline_wall_s", "completion_tokens_per_s", "requests_per_s")}
               for name, rs in runs.items()}
    ratio = medians["recommended"]["completion_tokens_per_s"] / medians["default"]["completion_tokens_per_s"]
    report = {"command": f"python benchmarks/bench_recommended.py --limit {args.limit} --rounds {args.rounds}",
              "machine": "2-core AMD EPYC, 24 GiB, no GPU, Python 3.11", "sweep": found,
              "concurrency": {"default": args.default_concurrency, "recommended": found["recommended_concurrency"]},
              "runs": runs, "medians": medians, "recommended_vs_default_tokens_per_s": round(ratio, 3)}
    print(json.dumps({"medians": medians, "ratio": report["recommended_vs_default_tokens_per_s"]}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
