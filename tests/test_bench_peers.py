"""The peer comparison's pure parts: the mock's request log, output reading, accounting, the table.

No peer is installed or run here; the one network test uses the in-process mock.
"""

import sys
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from odie_async.endpoints.mock_server import MockServer, MockSettings
from tests.helpers import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))

from harness import (  # noqa: E402
    Hit, account, digest, limit_share, prompt_of, rate, read_log, read_output, render_table, resent, series, window,
    write_input,
)


def test_mock_request_log_matches_harness_digests_and_outcomes(tmp_path):
    log = tmp_path / "requests.log"
    inputs = write_input(tmp_path / "in.jsonl", 3)
    bodies = [orjson.loads(line)["body"] for line in (tmp_path / "in.jsonl").read_bytes().splitlines()]

    async def go():
        settings = MockSettings(rpm=120)  # a burst of 2, then 429s
        async with MockServer(settings=settings, log_requests=str(log)) as server, aiohttp.ClientSession() as session:
            for body in bodies + [bodies[0]]:
                async with session.post(server.base_url + "/chat/completions", json=body) as resp:
                    await resp.read()

    run(go())
    hits = read_log(log)
    assert [h.digest for h in hits] == [digest(prompt_of(i)) for i in (0, 1, 2, 0)]
    assert [h.outcome for h in hits] == ["200", "200", "429", "429"]
    assert hits == sorted(hits, key=lambda h: h.t)
    figures = account(hits, inputs, Counter())
    assert figures["answered_200"] == 2 and figures["answered_429"] == 2 and figures["lost"] == 3


def test_read_output_counts_answered_rows_in_each_format(tmp_path):
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "x"}}]}}}
    failed = {"custom_id": "b", "response": {"status_code": 500, "body": {}}}
    batch = tmp_path / "out.batch"
    batch.write_bytes(orjson.dumps(ok) + b"\n" + orjson.dumps(failed) + b"\n" + orjson.dumps(ok) + b"\n{\"custom_")
    assert read_output(batch, "batch") == Counter({"a": 2})
    rows = [{"custom_id": "a", "content": "x"}, {"custom_id": "b", "content": None}, {"custom_id": "c", "content": "y"}]
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert read_output(jsonl, "jsonl") == Counter({"a": 1, "c": 1})
    whole = tmp_path / "out.json"
    whole.write_bytes(orjson.dumps(rows))
    assert read_output(whole, "json") == Counter({"a": 1, "c": 1})
    whole.write_text("")  # truncated by a rewrite that was cut off
    assert read_output(whole, "json") == Counter()
    assert read_output(tmp_path / "missing.json", "json") == Counter()


def _hits(*rows):
    return [Hit(t, digest(prompt_of(i)) if i is not None else "foreign", outcome) for t, i, outcome in rows]


def test_account_counts_lost_duplicated_and_paid_twice():
    inputs = {digest(prompt_of(i)): f"rec-{i}" for i in range(4)}
    hits = _hits((0.0, None, "200"), (0.1, 0, "fault_500"), (0.2, 0, "200"), (0.3, 1, "200"), (0.4, 1, "200"),
                 (0.5, 2, "429"), (0.6, 2, "200"))
    output = Counter({"rec-0": 1, "rec-1": 2, "rec-2": 1})
    figures = account(hits, inputs, output)
    assert figures == {"requests": 6, "foreign_requests": 1, "answered_200": 4, "answered_429": 1, "faults": 1,
                       "records_answered": 3, "answered_twice": 1, "lost": 1, "duplicate_rows": 1}


def test_resent_counts_rerun_requests_for_records_answered_before():
    inputs = {digest(prompt_of(i)): f"rec-{i}" for i in range(4)}
    first = _hits((0.0, 0, "200"), (0.1, 1, "200"), (0.2, 2, "fault_reset"))
    second = _hits((1.0, 1, "200"), (1.1, 1, "200"), (1.2, 2, "200"), (1.3, 3, "200"), (1.4, None, "200"))
    assert resent(first, second, inputs) == {"answered_before": 2, "rerun_requests": 4,
                                             "rerun_requests_for_answered": 2, "rerun_records_resent": 1}


def test_rate_and_series_use_the_contenders_own_requests():
    inputs = {digest(prompt_of(i)): f"rec-{i}" for i in range(6)}
    hits = _hits((9.0, None, "200"), (10.0, 0, "429"), (10.5, 0, "200"), (11.2, 1, "200"), (12.0, 2, "200"),
                 (12.9, 3, "200"))
    assert rate(hits, inputs) == pytest.approx(4 / 2.9)
    assert rate(hits, inputs, latency_s=1.1) == pytest.approx(4 / 4.0)
    assert series(hits, inputs) == [1, 1, 2]
    assert rate(_hits((1.0, 0, "200")), inputs) == 0.0
    assert window(hits, inputs) == pytest.approx(2.9)


def test_limit_share_allows_the_mocks_one_second_burst():
    assert limit_share(answered=550, window_s=10.0, rpm=3000) == pytest.approx(1.0)
    assert limit_share(answered=275, window_s=10.0, rpm=3000) == pytest.approx(0.5)
    assert limit_share(answered=5, window_s=0.0, rpm=3000) == 0.0


def _scenario(**figures):
    base = {"outcome": {"capped": False}, "requests": 100, "answered_429": 0, "records_answered": 100,
            "requests_per_s": 1000.0, "end_to_end_per_s": 800.0, "cpu_us_per_request": 250.0, "lost": 0,
            "duplicate_rows": 0, "answered_twice": 0}
    return base | figures


def test_render_table_marks_caps_missing_resume_and_unrun_scenarios():
    scenarios = {"overhead": {"n": 100, "concurrency": 256, "cap_s": 90},
                 "latency": {"n": 100, "concurrency": 500, "latency_s": 0.5, "cap_s": 60},
                 "ratelimit": {"n": 100, "rpm": 3000, "cap_s": 75}, "faults": {"n": 100, "cap_s": 120},
                 "interrupt": {"n": 100, "cap_s": 90}}
    interrupt = {"first": {"killed": False}, "second": {"capped": False}, "answered_before": 50,
                 "rerun_records_resent": 50, "lost": 0, "duplicate_rows": 3}
    results = {"scenarios": scenarios, "contenders": {
        "fast": {"overhead": _scenario(), "latency": _scenario(requests_per_s=950.0),
                 "ratelimit": _scenario(requests_per_s=49.0, answered_429=5, limit_share=0.98),
                 "faults": _scenario(lost=2, duplicate_rows=1, answered_twice=4), "interrupt": interrupt},
        "slow": {"overhead": _scenario(requests_per_s=12.0, records_answered=40, outcome={"capped": True})},
        "flaky": {"ratelimit": _scenario(limit_share=0.97, lost=60, outcome={"capped": False, "exit_code": 0}),
                  "faults": _scenario(lost=86, outcome={"capped": False, "exit_code": 1, "stderr_tail":
                                                        "odie batch: error: the endpoint keeps failing"}),
                  "interrupt": interrupt | {"answered_before": 100, "rerun_records_resent": 0}},
    }}
    table = render_table(results).splitlines()
    assert len(table) == 5 and table[0].count("|") == table[2].count("|") == table[3].count("|")
    fast = [c.strip() for c in table[2].split("|")[1:-1]]
    assert fast == ["fast", "1,000 (e2e 800)", "250", "950 (95.0 % of bound)", "98.0 %", "5.0 %",
                    "2 lost, 1 duplicated, 4 paid twice", "50 of 50 (no resume); then 0 lost, 3 duplicated"]
    slow = [c.strip() for c in table[3].split("|")[1:-1]]
    assert slow[1] == "12 (e2e 800) (capped at 90 s: 40 of 100)"
    assert slow[3:] == ["–"] * 5
    flaky = [c.strip() for c in table[4].split("|")[1:-1]]
    assert flaky[4] == "97.0 %, 40 of 100 in its output"
    assert flaky[6] == "86 lost, 0 duplicated, 0 paid twice (stopped itself early)"
    assert flaky[7] == "Ctrl-C did not stop it: all 100 answered before it exited"
