"""What a crash mid-submission costs: ``odie batch --mode provider-batch`` vs a naive submit-then-record client.

    python benchmarks/bench_batch_crash.py [--records 2000] [--json OUT.json] [--plot DIR]   # about a minute

Each scenario runs each client against a fresh ``odie mock-server`` (OpenAI
batch API, 0.3 s processing), 2,000 records in chunks of 500: a SIGKILL at a
named moment (``ODIE_BATCH_KILL_AT``) and a rerun, or a create whose answer
the mock drops after creating the batch. Read off the mock's own log: batches
created, records billed more than once; and off the output: records missing
or written twice.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import orjson

from bench_engine import MockProcess, write_input

PY = sys.executable
HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "killed after create returned, before recording it": ("created:2", ()),
    "create's answer lost (connection dropped after the batch was made)": (None, ("--batch-drop-after-create", "1")),
    "killed while polling": ("poll:3", ()),
    "killed while writing results": ("write:2", ()),
}


def client_cmd(tool: str, inp: Path, out: Path, url: str) -> list[str]:
    """The command line of one client."""
    if tool == "naive":
        return [PY, str(HERE / "naive_batch.py"), str(inp), str(out), url, "--chunk", "500"]
    return [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--base-url", url, "--mode", "provider-batch",
            "--batch-max-requests", "500", "--poll-interval", "0.05", "--poll-max", "0.2",
            "--reconcile-grace", "0.2", "--no-progress"]


def run_scenario(tool: str, kill_at: str | None, mock_options: tuple, n: int, tmp: Path) -> dict:
    """One client through one scenario; the counts read off the mock's log and the output."""
    inp = write_input(tmp / "in.jsonl", n)
    log = tmp / "mock.jsonl"
    mock = MockProcess("--batch-processing-s", "0.3", "--batch-log", str(log), *mock_options)
    out = tmp / "out.jsonl"
    runs = []
    try:
        if kill_at:
            env = os.environ | {"ODIE_BATCH_KILL_AT": kill_at}
            runs.append(subprocess.run(client_cmd(tool, inp, out, mock.url), env=env, capture_output=True,
                                       timeout=300).returncode)
        runs.append(subprocess.run(client_cmd(tool, inp, out, mock.url), capture_output=True, timeout=300).returncode)
    finally:
        mock.stop()
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    created = [e for e in events if e["event"] == "batch_created"]
    billed = Counter(cid for e in created for cid in e["custom_ids"])
    written = Counter(orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()) if out.exists() else Counter()
    return {"exit_codes": runs, "batches_created": len(created), "records_billed_twice": sum(1 for v in billed.values() if v > 1),
            "records_missing": n - len(written), "records_written_twice": sum(1 for v in written.values() if v > 1)}


def plot(results: dict, folder: Path) -> None:
    """A bar chart of records billed twice, per scenario and client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for offset, tool in ((-0.2, "odie"), (0.2, "naive")):
        ax.bar([i + offset for i in range(len(names))], [results[s][tool]["records_billed_twice"] for s in names],
               width=0.4, label="odie batch --mode provider-batch" if tool == "odie" else "naive submit-then-record")
    ax.set_xticks(range(len(names)), [s.split(" (")[0].replace(", ", ",\n") for s in names], fontsize=8)
    ax.set_ylabel("records billed twice")
    ax.legend()
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "crash.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    results = {}
    for scenario, (kill_at, mock_options) in SCENARIOS.items():
        results[scenario] = {}
        for tool in ("odie", "naive"):
            with tempfile.TemporaryDirectory() as tmp:
                results[scenario][tool] = run_scenario(tool, kill_at, mock_options, args.records, Path(tmp))
    print(f"{args.records} records in chunks of 500; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print("| scenario | client | batches created (of 4) | records billed twice | missing | written twice | exit codes |")
    print("|---|---|---|---|---|---|---|")
    for scenario, tools in results.items():
        for tool, r in tools.items():
            print(f"| {scenario} | {tool} | {r['batches_created']} | {r['records_billed_twice']:,} | "
                  f"{r['records_missing']:,} | {r['records_written_twice']:,} | {r['exit_codes']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({"records": args.records, "results": results}, option=orjson.OPT_INDENT_2))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
