"""``odie eval`` speed: wall time to score one 150-item file, model load included.

Runs ``odie eval FILE`` as a fresh process ``--repeats`` times (interpreter start,
imports, encoder load, scoring, exit: what a user waits for), then times the steps
in-process: encoder load, batched header metric, ROUGE. With ``--baseline`` it also
times the header metric computed like the original script: the encoder called per
item, once for the overall score and again for every group (the model loaded once
here; the original reloaded it per group). Prints JSON on stdout.

Run: ``.venv/bin/python benchmarks/bench_eval.py [--file F] [--repeats 3] [--baseline]``.
Timings on a shared machine are noisy; compare medians of several runs.
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

from odie_async.logs import configure_logging
from odie_async.paths import shared_dir


def cli_wall_times(path: Path, repeats: int, compat: bool) -> list[float]:
    """Seconds of wall time of ``odie eval PATH`` in a fresh process, ``repeats`` times."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "odie_async", "eval", str(path), "--json", f"{tmp}/s.json"]
        for i in range(repeats):
            started = time.perf_counter()
            subprocess.run(command + (["--compat"] if compat else []), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
            print(f"cli run {i + 1}/{repeats}: {times[-1]:.2f} s", file=sys.stderr)
    return times


def in_process_steps(path: Path, compat: bool) -> dict:
    """Seconds per step of one in-process scoring, and the distinct cells encoded."""
    steps = {}
    started = time.perf_counter()
    from odie_async.evaluation import metrics
    from odie_async.evaluation.embedder import get_embedder
    from odie_async.evaluation.evaluate import load_predictions

    records = load_predictions(path)
    steps["imports_and_read_s"] = time.perf_counter() - started
    started = time.perf_counter()
    embedder = get_embedder()
    steps["encoder_load_s"] = time.perf_counter() - started
    preds = [metrics.header_cells(r["output"]) for r in records]
    golds = [metrics.header_cells(r["gold"]) for r in records]
    started = time.perf_counter()
    counts = metrics.header_counts(preds, golds, embedder.encode, compat)
    steps["header_batched_s"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics.content_scores([r["output"] for r in records], [r["gold"] for r in records])
    steps["rouge_s"] = time.perf_counter() - started
    cells = {t for side in preds + golds if side for t in side}
    total = counts[0]
    for item in counts[1:]:
        total = total + item
    return {"steps": steps, "distinct_cells": len(cells), "header_f1": total.f1,
            "records": records, "preds": preds, "golds": golds, "model": embedder.model}


def per_item_baseline(records, preds, golds, model) -> dict:
    """The header metric the original way (compat): one encoder call per item and side,
    repeated for the overall score and for every group. Returns seconds and overall F."""
    import torch
    from sentence_transformers import util

    from odie_async.evaluation.embedder import DEFAULT_THREADS
    from odie_async.evaluation.metrics import GROUP_FIELDS, HeaderCounts

    def pooled_f1(indices) -> float:
        total = HeaderCounts()
        for i in indices:
            # The original passes "" (a string, one vector) for a missing table.
            pred = preds[i] if preds[i] is not None else ""
            gold = golds[i] if golds[i] is not None else ""
            sims = util.cos_sim(model.encode(gold, convert_to_tensor=True), model.encode(pred, convert_to_tensor=True))
            total = total + HeaderCounts(float(sims.max(dim=0).values.sum()), float(sims.max(dim=1).values.sum()),
                                         len(pred), len(gold))
        return total.f1

    torch.set_num_threads(DEFAULT_THREADS)  # same thread count as ours, so only batching differs
    started = time.perf_counter()
    overall = pooled_f1(range(len(records)))
    for field in GROUP_FIELDS:
        for key in dict.fromkeys(r[field] for r in records):
            pooled_f1([i for i, r in enumerate(records) if r[field] == key])
    return {"seconds": time.perf_counter() - started, "header_f1": overall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=shared_dir() / "instructie" / "outputs" / "gpt4.json")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of odie eval")
    parser.add_argument("--compat", action="store_true", help="time --compat mode")
    parser.add_argument("--baseline", action="store_true", help="also time the per-item encoding loop")
    args = parser.parse_args()
    configure_logging()  # logs to stderr, so stdout holds only the JSON

    times = cli_wall_times(args.file, args.repeats, args.compat)
    detail = in_process_steps(args.file, args.compat)
    result = {
        "file": str(args.file),
        "items": len(detail["records"]),
        "mode": "compat" if args.compat else "default",
        "cpu_cores": os.cpu_count(),
        "cli_wall_s": [round(t, 2) for t in times],
        "cli_wall_s_median": round(statistics.median(times), 2),
        "cli_wall_s_min": round(min(times), 2),
        "in_process": {k: round(v, 3) for k, v in detail["steps"].items()},
        "distinct_header_cells": detail["distinct_cells"],
        "header_f1": round(detail["header_f1"], 4),
    }
    if args.baseline:
        print("timing the per-item baseline...", file=sys.stderr)
        base = per_item_baseline(detail["records"], detail["preds"], detail["golds"], detail["model"])
        result["baseline_per_item_header_s"] = round(base["seconds"], 2)
        result["baseline_header_f1"] = round(base["header_f1"], 4)
        result["header_speedup_vs_baseline"] = round(base["seconds"] / detail["steps"]["header_batched_s"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
