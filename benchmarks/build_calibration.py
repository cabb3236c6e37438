"""Build the quality gate's calibration set from the InstructIE test set's gold records.

    python benchmarks/build_calibration.py [--per-corruption 0] [--out benchmarks/calibration/calibration.jsonl]

Writes every gold record (expected: keep) and, per corruption kind, corruptions of
a seeded sample of records (expected: drop); see ``odie_async.quality.calibration``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from odie_async.paths import shared_dir
from odie_async.quality.calibration import build

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--test-data", type=Path, default=shared_dir() / "instructie" / "test_data.json")
    parser.add_argument("--per-corruption", type=int, default=0, help="records corrupted per kind (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "calibration" / "calibration.jsonl")
    args = parser.parse_args()
    items = json.loads(args.test_data.read_text(encoding="utf-8"))
    records = build(items, args.per_corruption or None, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records)} records -> {args.out}: {dict(Counter(r['label'] for r in records))}")


if __name__ == "__main__":
    main()
