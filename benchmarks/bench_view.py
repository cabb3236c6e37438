"""``odie view``: does watching a run slow it, and how fast does a million-line file open?

    python benchmarks/bench_view.py [--quick] [--json OUT.json] [--plot OUT.png]

1. ``odie batch`` at zero latency, concurrency 256, against ``odie mock-server`` (client
   pinned to core 0, mock to core 1), in rotating rounds under three conditions: no viewer
   ("closed"), ``odie view`` serving the run with no page ("server"), and the live page
   open in headless Chromium, polling and redrawing every second ("open"). Medians of
   requests/s from each run's summary.
2. A 1,000,000-line ``dropped.jsonl``: the time from opening the Read view in Chromium to
   the first page of rows, without an index in the cache (built on the way) and with
   it; the next page; the first filter (the filters' index is built once); a search.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench_engine import PY, MockProcess, run_child, write_input

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CONDITIONS = ("closed", "server", "open")
REASONS = ("too_many_na", "low_faithfulness", "low_consistency", "no_table", "too_small")


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
    return int(rest[1]), name, (int(rest[11]) + int(rest[12])) / TICK


def cpu_of(pids: set[int] | None = None, name_part: str = "") -> float:
    """CPU seconds of the given processes, or of this script's descendants whose name holds ``name_part``."""
    if pids is not None:
        return sum(s[2] for s in map(_stat, pids) if s)
    stats = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    stats = {pid: s for pid, s in stats.items() if s}
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, s in stats.items() if s[0] in frontier} - mine
        mine |= frontier
    return sum(stats[pid][2] for pid in mine if name_part in stats[pid][1])


class Viewer:
    """``odie view`` on some runs, in a child process (not pinned: it shares the machine)."""

    def __init__(self, *runs: Path) -> None:
        cmd = [PY, "-m", "odie_async", "view", *map(str, runs), "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdout.readline()
        self.url = self.proc.stdout.readline().split("open ", 1)[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)


def one_batch(browser, tmp: Path, inp: Path, mock_url: str, condition: str, tag: str) -> dict:
    """One ``odie batch`` run under ``condition``; its requests/s and what the page saw."""
    out = tmp / f"out-{tag}.jsonl"
    viewer = Viewer(out) if condition != "closed" else None
    page = None
    if condition == "open":
        page = browser.new_page()
        page.goto(viewer.url + "#live")
        page.wait_for_timeout(1500)  # the page's own start is not the run's cost
    cmd = [PY, "-m", "odie_async", "batch", str(inp), "-o", str(out), "--base-url", mock_url,
           "--concurrency", "256", "--no-progress"]
    before = (cpu_of({viewer.proc.pid}) if viewer else 0.0, cpu_of(name_part="chrom"))
    _stdout, wall, cpu, _rss = run_child(cmd)
    after = (cpu_of({viewer.proc.pid}) if viewer else 0.0, cpu_of(name_part="chrom"))
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    seen = draw_ms = None
    if page is not None:
        page.wait_for_timeout(1500)
        seen = int(page.get_attribute("#chart-records svg", "data-points") or 0)
        draw_ms = float(page.get_attribute("body", "data-draw-ms") or 0)
        page.close()
    if viewer:
        viewer.stop()
    for path in tmp.glob(f"out-{tag}*"):
        path.unlink()
    return {"condition": condition, "requests_per_s": summary["requests_per_s"], "succeeded": summary["succeeded"],
            "client_cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "points_on_page": seen,
            "viewer_cpu_ms_per_s": round(1000 * (after[0] - before[0]) / wall, 1),
            "browser_cpu_ms_per_s": round(1000 * (after[1] - before[1]) / wall, 1) if page is not None else None,
            "page_draw_ms_total": draw_ms}


def scenario_overhead(browser, tmp: Path, n: int, rounds: int) -> dict:
    inp = write_input(tmp / "in.jsonl", n)
    mock = MockProcess()
    runs = []
    try:
        for r in range(rounds):
            order = CONDITIONS[r % 3:] + CONDITIONS[:r % 3]
            for condition in order:
                runs.append(one_batch(browser, tmp, inp, mock.url, condition, f"{r}-{condition}") | {"round": r})
                x = runs[-1]
                print(f"  round {r} {condition:<6} {x['requests_per_s']:>9.1f} req/s, client CPU {x['client_cpu_s']} s, "
                      f"viewer {x['viewer_cpu_ms_per_s']} ms/s, browser {x['browser_cpu_ms_per_s']} ms/s, "
                      f"charts {x['page_draw_ms_total']} ms", flush=True)
    finally:
        mock.stop()
    def median(key):
        return {c: statistics.median(x[key] for x in runs if x["condition"] == c) for c in CONDITIONS}

    medians = median("requests_per_s")
    return {"requests": n, "concurrency": 256, "rounds": rounds, "runs": runs, "median_requests_per_s": medians,
            "median_client_cpu_s": median("client_cpu_s"), "median_viewer_cpu_ms_per_s": median("viewer_cpu_ms_per_s"),
            "median_browser_cpu_ms_per_s": statistics.median(x["browser_cpu_ms_per_s"] for x in runs if x["condition"] == "open"),
            "open_vs_closed": round(medians["open"] / medians["closed"], 3),
            "server_vs_closed": round(medians["server"] / medians["closed"], 3)}


def big_record(i: int) -> bytes:
    """Line ``i`` of the big file: a dropped record as ``odie generate`` writes them."""
    return orjson.dumps({
        "id": f"r{i:07d}", "variant": "plain", "category": ("fixed header", "open header")[i % 2],
        "reason": REASONS[i % 5], "stage": "tables", "domain": f"domain {i % 37}",
        "instruction": f"List every team the report names, with status and duration ({i})",
        "text": "The team Juniper has status active, duration 17 months and location Porto.",
        "table": "| Team | Status | Duration |\n| --- | --- | --- |\n| Juniper | active | 17 months |",
        "scores": {"consistency": 0.5, "faithfulness": 0.4}}) + b"\n"


def write_big(path: Path, n: int) -> Path:
    with open(path, "wb", buffering=1 << 22) as handle:
        handle.writelines(big_record(i) for i in range(n))
    return path


def _timed(page, action, ready: str) -> float:
    start = time.perf_counter()
    action()
    page.wait_for_function(ready, timeout=120_000)
    return round(time.perf_counter() - start, 3)


def scenario_big(browser, tmp: Path, n: int) -> dict:
    run = tmp / "big"
    run.mkdir()
    big = write_big(run / "dropped.jsonl", n)
    out = {"lines": n, "megabytes": round(big.stat().st_size / 1e6, 1)}
    first_rows = "() => document.querySelectorAll('#read-table tbody tr').length === 50"
    for label in ("open_without_index_s", "open_with_index_s"):
        viewer = Viewer(run)
        page = browser.new_page()
        out[label] = _timed(page, lambda: page.goto(viewer.url + "#read"), first_rows)
        if label == "open_with_index_s":
            out["next_page_s"] = _timed(page, lambda: page.click("#read-next"),
                                        "() => document.querySelector('#read-range').textContent.startsWith('51')")
            start = time.perf_counter()
            page.wait_for_selector("#filter-reason", timeout=300_000)
            out["filters_ready_s"] = round(time.perf_counter() - start + out["next_page_s"], 3)
            out["first_filter_s"] = _timed(page, lambda: page.select_option("#filter-reason", "no_table"),
                                           f"() => document.querySelector('#read-range').textContent.includes('of {n // 5}')")
            page.select_option("#filter-reason", "")
            page.fill("#read-q", f"r{n - 1:07d}")
            out["search_s"] = _timed(page, lambda: page.press("#read-q", "Enter"),
                                     "() => document.querySelector('#read-range').textContent.includes('of 1 ')")
        page.close()
        viewer.stop()
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overhead = results["overhead"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, c in enumerate(CONDITIONS):
        values = [x["requests_per_s"] for x in overhead["runs"] if x["condition"] == c]
        ax.bar(i, overhead["median_requests_per_s"][c], color=("#8a93a5", "#3b6fd8", "#d8573b")[i], alpha=0.8)
        ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
    ax.set_xticks(range(3), ["no viewer", "odie view, no page", "live page open"])
    ax.set_ylabel("odie batch requests/s")
    ax.set_title(f"{overhead['requests']:,} requests, zero latency, concurrency 256 (median of {overhead['rounds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, rounds and lines")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the throughput chart here")
    parser.add_argument("--big-only", action="store_true", help="only the big file; keep the JSON's other results")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    n, rounds, lines = (5_000, 2, 100_000) if args.quick else (40_000, 5, 1_000_000)
    results = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # the viewers' indexes, gone with the run
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            if args.big_only and args.json and args.json.exists():
                results = orjson.loads(args.json.read_bytes())
            else:
                print("engine throughput with the live page closed and open:", flush=True)
                results["overhead"] = scenario_overhead(browser, Path(tmp), n, rounds)
            print(f"  medians {results['overhead']['median_requests_per_s']} "
                  f"(open/closed {results['overhead']['open_vs_closed']})", flush=True)
            print(f"a {lines:,}-line file in the Read view:", flush=True)
            results["big_file"] = scenario_big(browser, Path(tmp), lines)
            print("  " + ", ".join(f"{k} {v}" for k, v in results["big_file"].items()), flush=True)
        finally:
            browser.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
