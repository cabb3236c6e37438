"""Structured outputs on vs off: parsed answers and surviving records of one ``odie generate`` run each.

Usage: python benchmarks/bench_structured.py [--config configs/generate-default.yaml] [--limit 10]
                                             [--out runs/bench_structured] [--seeds PATH]

Serves the config's endpoint once (the embedded SmolLM2-135M on vLLM when the
config names none), then runs the pipeline twice into fresh folders, with
``structured: on`` and ``structured: off``, and prints one JSON object: per mode,
the share of structured-stage answers that parsed (overall and per stage), the
records that survived the filter per variant, the filter reasons, requests,
tokens and wall time. The scorer is the one the config resolves to without a
served endpoint (offline for the embedded model).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

from odie_async.logs import configure_logging
from odie_async.pipeline.config import load_config
from odie_async.pipeline.registry import STRUCTURED as STRUCTURED_STAGES
from odie_async.pipeline.run import endpoint_scope, generate
from odie_async.pipeline.prompts import Prompts
from odie_async.pipeline.scorers import scorer_kind
from odie_async.runtime import run_async


def figures(summary: dict) -> dict:
    """The benchmark's numbers out of one run summary."""
    stages = summary["stages"]
    structured = [s for s in stages if s in STRUCTURED_STAGES]
    parsed = sum(stages[s].get("parsed", 0) for s in structured)
    judged = parsed + sum(stages[s].get("unparsable", 0) for s in structured)
    return {
        "structured_stage_answers_parsed": parsed,
        "structured_stage_answers": judged,
        "parse_share": round(parsed / judged, 4) if judged else None,
        "parse_share_by_stage": {s: stages[s]["parse_share"] for s in stages},
        "survived": {v: r["kept"] for v, r in summary["filter"].items()},
        "records": {v: r["records"] for v, r in summary["filter"].items()},
        "reasons": {v: r["reasons"] for v, r in summary["filter"].items()},
        "requests": summary["engine"]["succeeded"] + summary["engine"]["failed"],
        "completion_tokens": summary["engine"]["tokens"]["completion"],
        "wall_time_s": summary["wall_time_s"],
        "modes": summary["structured"]["stages"],
    }


async def bench(args) -> dict:
    base = load_config(args.config, args.limit)
    if args.seeds:
        base.seeds = str(Path(args.seeds).resolve())
    base.scorer.kind = scorer_kind(base)
    results = {"config": base.source, "limit": args.limit}
    async with endpoint_scope(base, Prompts(base.path(base.prompts))) as endpoint:
        results["endpoint"] = "embedded" if not base.endpoint.base_url else endpoint.base_url
        results["model"] = endpoint.model
        for mode in ("on", "off"):
            config = copy.deepcopy(base)
            config.endpoint.base_url, config.endpoint.model = endpoint.base_url, endpoint.model
            config.endpoint.structured = mode
            out = Path(args.out) / f"structured-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            summary = await generate(config, out, show_progress=not args.quiet, handle_signals=False)
            results[mode] = figures(summary)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--out", default="runs/bench_structured")
    parser.add_argument("--seeds", default=None, help="seed tasks file (default: the config's)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args()
    configure_logging(level="warning")
    print(json.dumps(run_async(bench(args)), indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
