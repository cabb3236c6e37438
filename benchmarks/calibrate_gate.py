"""Choose the gate's score thresholds on one split of the calibration set; measure them on the other.

    python benchmarks/calibrate_gate.py [--data benchmarks/calibration/calibration.jsonl] [--config FILE]

Scores every record once (offline scorer: the packaged all-MiniLM-L6-v2 encoder),
searches the threshold grid of ``odie_async.quality.calibration`` on the ``fit``
split alone (most gold kept at the widest margin over the targets), and prints
the chosen thresholds with the shares, precision and recall on the fit split and
on the ``held_out`` split the choice never saw. The thresholds go into
configs/filter-default.yaml by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from odie_async.quality import Gate, load_gate_config
from odie_async.quality.calibration import SCORE_LIMITS, choose, dropped, precision_recall, shares
from odie_async.quality.gate import is_fixed

HERE = Path(__file__).resolve().parent
TARGETS = {"gold": 0.93, "repeat_cell": 0.95, "foreign_table": 0.95, "swapped_instruction": 0.95, "refusal": 0.95,
           "values_not_in_text": 0.95, "header_only": 0.95}


def scored_rows(records: list[dict], config: str | None) -> list[dict]:
    """Each record's label, split, model-free reasons and scores (every score threshold at zero)."""
    zero = {section: {key: 0.0} for section, key in SCORE_LIMITS.values()}
    zero["consistency"] = {"min_fixed": 0.0, "min_open": 0.0}
    gate = Gate(load_gate_config(config, zero))
    rows = []
    for k in range(0, len(records), 64):
        batch = records[k : k + 64]
        for record, verdict in zip(batch, gate.evaluate(batch)):
            rows.append({"label": record["label"], "split": record["split"], "expected": record["expected"],
                         "reasons": [r for r in verdict.reasons if not r.endswith(".low")],
                         "scores": verdict.scores, "fixed": is_fixed(record.get("category"))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "calibration" / "calibration.jsonl")
    parser.add_argument("--config", default=None, help="filter config for the checks that need no model")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    started = time.monotonic()
    rows = scored_rows(records, args.config)
    fit = [r for r in rows if r["split"] == "fit"]
    held = [r for r in rows if r["split"] == "held_out"]
    limits = choose(fit, TARGETS)
    print(f"{len(rows)} records scored and searched in {time.monotonic() - started:.1f} s "
          f"({len(fit)} fit, {len(held)} held out)")
    print("chosen on the fit split: " + ", ".join(f"{k} {v:g}" for k, v in limits.items()))
    for name, part in (("fit", fit), ("held_out", held)):
        got = shares(part, limits)
        pr = precision_recall((dropped(r, limits), r["expected"] == "drop") for r in part)
        print(f"{name:>9}: drop precision {pr['precision']:.3f}, recall {pr['recall']:.3f}; "
              + ", ".join(f"{label} {'kept' if label == 'gold' else 'dropped'} {share:.1%}" for label, share in got.items()))


if __name__ == "__main__":
    main()
