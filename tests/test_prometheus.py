"""``--metrics-port``: Prometheus text a scraper parses during a run, its counters matching the summary."""

import asyncio
import socket
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from odie_async.engine.batch import run_engine_batch
from odie_async.engine.core import Engine
from odie_async.engine.prometheus import EngineCollector, histogram_buckets
from odie_async.engine.settings import EngineSettings
from odie_async.engine.stats import LogHistogram
from odie_async.endpoints.mock_server import MockServer, MockSettings
from tests.helpers import write_requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _samples(families) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_scrape_during_a_run_parses_and_the_counters_match_the_summary(tmp_path):
    write_requests(tmp_path / "in.jsonl", 60)
    port, scrapes, done = _free_port(), [], threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    scrapes.append(response.read().decode())
            except OSError:
                pass
            time.sleep(0.05)

    async def main():
        async with MockServer(settings=MockSettings(latency_ms=100)) as mock:
            settings = EngineSettings(base_url=mock.base_url, concurrency=4, metrics_port=port)
            engine = Engine(settings, tmp_path / "out.jsonl", keep_bodies=False)
            report = await run_engine_batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl", settings, engine=engine,
                                     progress=False, handle_signals=False)
            return engine, report

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        engine, report = asyncio.run(main())
    finally:
        done.set()
        thread.join()
    assert scrapes, "nothing answered on the metrics port during the run"
    during = _samples(text_string_to_metric_families(scrapes[-1]))
    assert ("odie_records_total", (("fate", "output"),)) in during
    assert any(name == "odie_request_latency_seconds_bucket" for name, _ in during)
    final = _samples(EngineCollector(engine).collect())
    summary = report.summary
    assert final[("odie_records_total", (("fate", "output"),))] == summary["ledger"]["output"] == 60
    assert final[("odie_records_total", (("fate", "errors"),))] == summary["ledger"]["errors"]
    assert final[("odie_attempts_total", ())] == summary["attempts"]
    assert final[("odie_tokens_total", (("kind", "completion"),))] == summary["tokens"]["completion"]
    lane = engine.pool.lanes[0].label
    assert final[("odie_request_latency_seconds_count", (("endpoint", lane),))] == 60


def test_histogram_buckets_are_cumulative_and_exact_to_a_bucket():
    histogram = LogHistogram()
    for value in (0.003, 0.02, 0.02, 0.4, 7.0):
        histogram.add(value)
    buckets, total = histogram_buckets(histogram)
    by_bound = dict(buckets)
    assert by_bound["0.005"] == 1 and by_bound["0.025"] == 3 and by_bound["0.5"] == 4 and by_bound["10.0"] == 5
    assert by_bound["+Inf"] == 5 and abs(total - 7.443) / 7.443 < 0.02
