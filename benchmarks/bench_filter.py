"""The quality gate on its calibration set: the share of gold records kept and of each corruption dropped.

    python benchmarks/bench_filter.py [--config configs/filter-default.yaml] [--out benchmarks/results/filter]

Runs ``odie filter``'s code (offline scorer) over benchmarks/calibration/calibration.jsonl
from scratch (kept/dropped files in a temporary folder), writes the report
(report.png, summary.json) into --out, and prints each figure next to its target.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from odie_async.quality import Gate, load_gate_config
from odie_async.quality.drop_report import write_report
from odie_async.quality.filtering import filter_file
from odie_async.runtime import run_async

HERE = Path(__file__).resolve().parent
# label -> (what is measured, target share)
TARGETS = {
    "gold": ("kept", 0.90),
    "repeat_cell": ("dropped", 0.95),
    "foreign_table": ("dropped", 0.95),
    "refusal": ("dropped", 0.95),
    "header_only": ("dropped", 0.95),
    "values_not_in_text": ("dropped", 0.90),
    "swapped_instruction": ("dropped", 0.80),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "calibration" / "calibration.jsonl")
    parser.add_argument("--config", default=None, help="filter config (default: configs/filter-default.yaml)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "filter")
    args = parser.parse_args()
    gate = Gate(load_gate_config(args.config))
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        kept, dropped = Path(tmp) / "kept.jsonl", Path(tmp) / "dropped.jsonl"
        started = time.monotonic()
        stats = run_async(filter_file(args.data, kept, dropped, gate, progress=False))
        wall = time.monotonic() - started
        write_report(args.out, kept, dropped, gate.cfg)
    summary = json.loads((args.out / "summary.json").read_text())
    shares = summary["labels"]["dropped_share_by_label"]
    print(f"{stats.done} records in {wall:.1f} s ({stats.done / wall:.1f} records/s) on {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; config {gate.cfg.source}")
    print(f"{'label':<22}{'records':>8}  {'measured':>16}  {'target':>8}  met")
    met_all = True
    for label, (what, target) in TARGETS.items():
        row = shares[label]
        share = 1 - row["share"] if what == "kept" else row["share"]
        met = share >= target
        met_all &= met
        print(f"{label:<22}{row['records']:>8}  {what:>7} {share:>7.1%}  {'≥' + format(target, '.0%'):>8}  {'yes' if met else 'NO'}")
    labels = summary["labels"]
    print(f"drops: precision {labels['drop_precision']:.3f}, recall {labels['drop_recall']:.3f}; all targets met: {met_all}")
    print("reasons: " + ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()))


if __name__ == "__main__":
    main()
