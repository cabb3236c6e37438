"""``odie view`` in a real headless Chromium (the system's package), driven by Playwright.

Screenshots land in the test's temporary folder; with ``ODIE_VIEW_SCREENSHOTS=DIR``
(``docs/img`` for the README) one of each view is copied there too.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import write_requests

ODIE = [sys.executable, "-m", "odie_async"]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/bootstrap.sh as root (apt-get install chromium)",
                allow_module_level=True)

XSS = ['<script>window.__pwned = "script"</script>', '<img src=x onerror="window.__pwned = \'img\'">',
       '"><svg onload="window.__pwned = \'svg\'">']


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    yield page
    context.close()


class Proc:
    """A command started for a test, stopped (and waited for) at its end."""

    def __init__(self, *args: str, ready: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(ODIE + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        first = self.proc.stdout.readline()
        while ready not in first:
            assert first, f"{args[0]} ended: {self.proc.stderr.read()}"
            first = self.proc.stdout.readline()
        self.line = first if ready != "open " else self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)


@pytest.fixture
def procs():
    started = []

    def start(*args, ready, cwd=None):
        started.append(Proc(*args, ready=ready, cwd=cwd))
        return started[-1]

    yield start
    for proc in reversed(started):
        proc.stop()


def view(procs, *runs, cwd: Path | None = None) -> str:
    """Start ``odie view`` on ``runs``; its URL."""
    started = procs("view", *map(str, runs), "--port", "0", ready="odie view: serving", cwd=cwd)
    line = started.proc.stdout.readline()
    return line.split("open ", 1)[1].strip()


def shot(page, tmp_path, name: str, publish: bool = True, full_page: bool = False) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    target = os.environ.get("ODIE_VIEW_SCREENSHOTS")
    if target and publish:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / f"view-{name}.png")
    return path


def points(page) -> int:
    return int(page.get_attribute("#chart-records svg", "data-points") or 0)


def test_live_chart_grows_while_a_batch_runs(tmp_path, page, procs):
    mock = procs("mock-server", "--port", "0", "--latency-ms", "150", "--latency-jitter-ms", "100",
                 "--fault-rate", "0.03", "--stall-s", "0.5", "--seed", "3", ready="listening")
    base_url = mock.line.split("listening on ", 1)[1].strip()
    n = 900
    write_requests(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    url = view(procs, out)  # before the run: the page waits for its files
    page.goto(url + "#live")
    batch = subprocess.Popen(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", base_url,
                                     "--concurrency", "24", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        page.wait_for_function("() => Number(document.querySelector('#chart-records svg')?.dataset.points) >= 2",
                               timeout=20000)
        first = points(page)
        assert batch.poll() is None, "the batch ended before the chart could be watched"
        page.wait_for_function(f"() => Number(document.querySelector('#chart-records svg').dataset.points) >= {first + 2}",
                               timeout=20000)
        assert points(page) >= first + 2
        assert batch.wait(timeout=60) in (0, 1)
    finally:
        if batch.poll() is None:
            batch.kill()
    page.wait_for_selector(".stat .state.finished", timeout=15000)
    lines = [orjson.loads(raw) for raw in out.with_suffix(".metrics.jsonl").read_bytes().splitlines()]
    assert lines[-1]["final"] and lines[-1]["done"] == n
    assert points(page) == len(lines)  # every sample reached the chart
    assert page.locator("#live-head").inner_text().count(f"{n} of {n}") == 1
    assert shot(page, tmp_path, "live").stat().st_size > 10_000


def _filter_run(tmp_path) -> Path:
    run = tmp_path / "filtered"
    run.mkdir()
    reasons = ["low_faithfulness", "too_many_na", "no_table"]
    kept = [{"id": f"k{i}", "category": "fixed header", "domain": "jazz festivals", "instruction": f"List the festivals {i}",
             "text": "The festival Iris has capacity 26 people, location Cork and year 2004.",
             "table": "| Festival | Capacity | Location |\n| --- | --- | --- |\n| Iris | 26 | Cork |",
             "explanation": "Iris is the only festival named; its capacity and location are stated.",
             "scores": {"consistency": 0.9, "faithfulness": 0.95}, "reasons": []} for i in range(40)]
    dropped = [{"id": f"d{i}", "category": "open header", "domain": "mountain rescue", "instruction": f"Teams and status {i}",
                "text": "The team Juniper has status active and location Porto.",
                "table": "| Team | Status |\n| --- | --- |\n| Juniper | N/A |",
                "scores": {"consistency": 0.4, "faithfulness": 0.2}, "reasons": [reasons[i % 3]]} for i in range(60)]
    attack = {"id": "x0", "category": XSS[1], "domain": XSS[2], "instruction": XSS[0], "text": "a " + XSS[1] + " b " + XSS[0],
              "table": f"| Name {XSS[0]} | Note |\n| --- | --- |\n| {XSS[1]} | {XSS[2]} |", "explanation": XSS[2],
              "scores": {"consistency": 0.1, XSS[0]: 1}, "reasons": ["no_table", XSS[1]]}
    (run / "kept.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))
    (run / "dropped.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [attack] + dropped))
    return run


def _open_read(page, url, file):
    page.goto(url + "#read")
    page.wait_for_selector("#read-table tbody tr")
    page.select_option("#read-file", file)
    page.wait_for_selector("#filter-reason")


def test_filter_by_drop_reason_shows_only_those_records(tmp_path, page, procs):
    url = view(procs, _filter_run(tmp_path))
    _open_read(page, url, "dropped.jsonl")
    page.select_option("#filter-reason", "too_many_na")
    page.wait_for_function("() => document.querySelector('#read-range').textContent.includes('of 20')")
    reasons = page.locator("#read-table tbody td.reason").all_inner_texts()
    assert len(reasons) == 20 and set(reasons) == {"too_many_na"}
    page.locator("#read-table tbody tr").first.click()
    page.wait_for_selector("#read-detail mark")
    assert page.locator("#read-detail .reason").inner_text() == "reason: too_many_na"
    assert page.locator("#read-detail mark").all_inner_texts() == ["Juniper"]  # N/A is not highlighted
    page.select_option("#filter-reason", "")
    page.fill("#read-q", "status 7")
    page.press("#read-q", "Enter")
    page.wait_for_function("() => document.querySelector('#read-range').textContent.includes('of 1')")
    assert page.locator("#read-table tbody td.preview").all_inner_texts() == ["Teams and status 7"]


def test_xss_payloads_stay_inert(tmp_path, page, procs):
    run = _filter_run(tmp_path)
    evals = tmp_path / "eval.json"
    evals.write_bytes(orjson.dumps([{"file": XSS[0], "n": 1, "header": {"overall": 50.0, "category": {XSS[1]: 40.0}},
                                     "content": {"overall": 20.0, "category": {XSS[2]: 10.0}}}]))
    url = view(procs, run, evals)
    _open_read(page, url, "dropped.jsonl")
    page.locator("#read-table tbody tr").first.click()
    page.wait_for_selector("#read-detail table")
    detail = page.locator("#read-detail")
    assert detail.locator(".instruction").inner_text() == XSS[0]
    assert XSS[1] in detail.locator(".source").inner_text() and XSS[1] in detail.locator("table").inner_text()
    assert XSS[1] in page.locator("#filter-category").inner_text()
    page.goto(url + "#compare")
    page.wait_for_selector("#compare-header svg")
    assert XSS[1] in page.locator("#compare-header").text_content()
    page.goto(url + "#read")
    page.wait_for_selector("#read-table tbody tr")
    for where in ("#read", "#compare"):
        page.goto(url + where)
        page.wait_for_timeout(500)
        assert page.evaluate("() => window.__pwned") is None
        assert page.evaluate("() => document.querySelectorAll('img, [onerror], [onload], main script').length") == 0
        assert page.evaluate("() => document.scripts.length") == 3  # the page's own three


def test_screenshots_of_read_and_compare(tmp_path, page, procs):
    gen = tmp_path / "gen"
    done = subprocess.run(ODIE + ["generate", "--config", str(ROOT / "configs/generate-mock.yaml"), "--limit", "60",
                                  "--output", str(gen), "--no-progress"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    evals = ROOT / "benchmarks/results/loop/scores.json"
    url = view(procs, gen, _filter_run(tmp_path), evals)
    page.goto(url + "#read")
    page.wait_for_selector("#read-table tbody tr")
    page.select_option("#read-file", "train_cot.jsonl")
    page.wait_for_selector("#filter-category")
    page.locator("#read-table tbody tr").nth(2).click()
    page.wait_for_selector("#read-detail mark")
    assert page.locator("#read-detail .explanation").inner_text()
    assert shot(page, tmp_path, "read").stat().st_size > 10_000
    page.goto(url + "#live")
    page.wait_for_selector("#chart-filter svg")
    assert int(page.get_attribute("#chart-stages svg", "data-bars")) == 7  # six stages and the scoring
    shot(page, tmp_path, "live-generate", publish=False)  # a mock run lasts a second: one sample
    page.goto(url + "#compare")
    page.wait_for_selector("#compare-reasons svg")
    assert int(page.get_attribute("#compare-header svg", "data-bars")) >= 2 * 8
    assert shot(page, tmp_path, "compare").stat().st_size > 10_000


# -- odie bench results -----------------------------------------------------------------------------

BENCH_CHARTS = ("rps", "tps", "latency", "ttft", "itl")


def _chart(page, chart: str) -> dict:
    return page.evaluate("""(id) => { const svg = document.querySelector(`#${id} svg`); return {
        points: Number(svg.dataset.points), dots: svg.querySelectorAll("circle.dot").length,
        marks: [...svg.querySelectorAll("line.mark")].map((l) => Number(l.dataset.x)),
        limits: [...svg.querySelectorAll("line.limit")].map((l) => Number(l.dataset.y)),
        series: document.querySelectorAll(`#${id} .legend span`).length }; }""", chart)


def _hostile_bench(tmp_path) -> tuple[Path, dict]:
    """A copy of a real bench result whose endpoint, model, workload and warnings are markup, with an SLO."""
    folder = tmp_path / "hostile"
    shutil.copytree(ROOT / "benchmarks/results/bench/mock", folder)
    results = orjson.loads((folder / "results.json").read_bytes())
    results.update(base_url="http://127.0.0.1:1/" + XSS[0], model=XSS[1], workload=XSS[2], warnings=[XSS[1]],
                   slo_ms={"latency_p95": 300.0}, stop_reason=XSS[0])
    (folder / "results.json").write_bytes(orjson.dumps(results))
    with open(folder / "recommended.yaml", "a", encoding="utf-8") as handle:
        handle.write(f"# {XSS[1]}\n")
    return folder, results


def test_bench_page_charts_each_load_level_marks_the_knee_and_keeps_markup_inert(tmp_path, page, procs):
    hostile, results = _hostile_bench(tmp_path)
    embedded = ROOT / "benchmarks/results/bench/embedded"
    other = orjson.loads((embedded / "results.json").read_bytes())
    other_levels, other_knee = len(other["points"]), other["recommended"]["point"]["load"]
    url = view(procs, hostile, embedded)
    page.goto(url)  # bench runs only: the page opens on them
    page.wait_for_selector("#bench-charts svg")
    assert page.evaluate("() => location.hash") == "#bench"
    levels, knee = len(results["points"]), results["recommended"]["point"]["load"]
    for chart in BENCH_CHARTS:
        drawn = _chart(page, f"bench-{chart}")
        assert drawn["points"] == levels and drawn["dots"] == levels * drawn["series"], chart
        assert drawn["marks"] == [knee], chart
    assert _chart(page, "bench-latency")["limits"] == [300.0] and _chart(page, "bench-rps")["limits"] == []
    assert _chart(page, "bench-latency")["series"] == 3  # p50, p95, p99
    rows = page.locator("#bench-points tbody tr")
    assert rows.count() == levels
    assert page.locator("#bench-points tr.knee").get_attribute("data-load") == f"{knee:g}"
    head = page.locator("#bench-head").inner_text()
    for text in XSS:
        assert text in head
    assert XSS[1] in page.locator("#bench-yaml").inner_text()
    assert f"--config {hostile}/recommended.yaml" in page.locator("#bench-command").inner_text()
    page.select_option("#bench-run", "1")
    page.wait_for_function("() => document.querySelector('#bench-head h3').textContent.endsWith('embedded')")
    assert _chart(page, "bench-rps")["points"] == other_levels
    page.goto(url + "#compare")
    page.wait_for_selector("#compare-bench-rps svg")
    overlay = _chart(page, "compare-bench-rps")
    assert overlay["series"] == 2 and overlay["dots"] == levels + other_levels
    assert sorted(overlay["marks"]) == sorted([knee, other_knee])
    assert XSS[0] in page.locator("#compare-bench-table").inner_text()
    for where in ("#bench", "#compare"):
        page.goto(url + where)
        page.wait_for_timeout(500)
        assert page.evaluate("() => window.__pwned") is None
        assert page.evaluate("() => document.querySelectorAll('img, [onerror], [onload], main script').length") == 0
        assert page.evaluate("() => document.scripts.length") == 3


def test_screenshot_of_the_embedded_bench(tmp_path, page, procs):
    url = view(procs, "benchmarks/results/bench/embedded", cwd=ROOT)  # as a user in a checkout types it
    page.goto(url)
    page.wait_for_selector("#bench-charts svg")
    assert page.locator("#bench-run").is_hidden()  # one bench run: nothing to pick
    assert "--config benchmarks/results/bench/embedded/recommended.yaml" in page.locator("#bench-command").inner_text()
    assert shot(page, tmp_path, "bench", full_page=True).stat().st_size > 10_000


def test_bench_page_waits_for_a_running_bench_then_draws_it(tmp_path, page, procs):
    from tests.test_viewer_bench import bench_against_mock

    out = tmp_path / "bench"
    url = view(procs, out / "results.json")
    page.goto(url)
    page.wait_for_selector("#bench-waiting")
    page.evaluate("() => { window.__same_page = true; }")
    done = bench_against_mock(out)
    assert done.returncode == 0, done.stderr
    page.wait_for_selector("#bench-charts svg", timeout=15000)
    assert page.evaluate("() => window.__same_page") is True  # refreshed by the page's own timer, not reloaded
    results = orjson.loads((out / "results.json").read_bytes())
    for chart in BENCH_CHARTS:  # the mock streams: TTFT and ITL are charted too
        drawn = _chart(page, f"bench-{chart}")
        assert drawn["points"] == 2 and drawn["marks"] == [results["recommended"]["point"]["load"]], chart
    (out / "results.json").write_text("{ torn")
    page.wait_for_selector("#bench-error", timeout=15000)
    assert page.locator("#bench-error").inner_text().startswith(f"{out / 'results.json'}: not JSON")


def test_v7_a_25_hour_run_draws_and_its_rate_is_over_the_whole_run(tmp_path, page, procs):
    """90,000 one-second samples chart in the real browser; a last sample 0.19 s after the one before sets no rate."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    start, n = time.time() - 100_000, 90_000
    samples = [{"t": start + i, "elapsed": i, "total": n + 1, "done": i, "failed": 0, "tokens": 150 * i, "rps": 1.0,
                "tps": 150.0, "p50_ms": 900, "p95_ms": 1500, "in_flight": 4, "concurrency_limit": 8,
                "rate_limited": i // 900, "retries": i // 600, "errors": {"http_500": i // 1000, "timeout": i // 3000}}
               for i in range(n)]
    last = dict(samples[-1], t=samples[-1]["t"] + 0.19, elapsed=n - 1 + 0.19, done=n, tokens=150 * n + 1172,
                rps=5.16, tps=6167.0, final=True)
    out.with_suffix(".metrics.jsonl").write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in [*samples, last]))
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(view(procs, out) + "#live")
    page.wait_for_function(f"() => Number(document.querySelector('#chart-records svg')?.dataset.points) === {n + 1}",
                           timeout=60000)
    page.wait_for_function("() => document.querySelector('#chart-errors svg path')", timeout=30000)
    assert errors == []
    head = page.locator("#live-head").inner_text()
    assert "1 req/s over the run" in head and "5.16" not in head
    assert "6167" not in page.locator("#chart-tps").inner_text()  # the chart's rate is over 10 s, not 0.19 s
    assert int(page.get_attribute("#chart-errors svg", "data-drawn")) <= 601  # thinned before drawing
