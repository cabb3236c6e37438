"""The spending cap beyond ``odie batch``'s online path: provider batches at batch prices, ``odie filter``
with an LLM judge and ``odie bench`` each stop at ``--max-cost`` with exit 5, and show what they spent."""

import subprocess
import sys
from collections import Counter

import orjson
import pytest

from odie_async.engine.spend import Prices
from odie_async.exceptions import EXIT_SPEND_CAP
from tests.helpers import ids_in
from tests.test_batch_cli import mock_factory  # noqa: F401  (a fixture)

ODIE = [sys.executable, "-m", "odie_async"]
PRICE_PER_M = "1000,1000"  # USD per million tokens: a judge request costs about $0.25
PROVIDER = ("--mode", "provider-batch", "--poll-interval", "0.05", "--poll-max", "0.2", "--reconcile-grace", "0.1",
            "--no-progress", "--batch-max-requests", "10")


def _priced_requests(path, n: int, model: str = "gpt-4o-mini") -> None:
    """``n`` requests of about 300 prompt tokens and a 400-token budget each, to a model with a price."""
    with open(path, "wb") as out:
        for i in range(n):
            body = {"model": model, "messages": [{"role": "user", "content": f"prompt r{i} " + "word " * 200}],
                    "max_tokens": 400}
            out.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": body}) + b"\n")


def _billed_at(path, rates) -> float:
    """What the answers in ``path`` cost at ``(input, output)`` USD per million tokens."""
    usage = [orjson.loads(raw)["response"]["body"]["usage"] for raw in path.read_bytes().splitlines()]
    return sum(u["prompt_tokens"] * rates[0] + u["completion_tokens"] * rates[1] for u in usage) / 1e6


def _provider_batch(tmp_path, url, *extra):
    return subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", url, *PROVIDER, *extra], capture_output=True, text=True, timeout=120)


def test_provider_batches_stop_at_the_cap_at_batch_prices_and_a_higher_cap_finishes_none_twice(tmp_path, mock_factory):  # noqa: F811
    log = tmp_path / "mock.jsonl"
    mock = mock_factory("--batch-log", str(log), "--batch-processing-s", "0.2")
    _priced_requests(tmp_path / "in.jsonl", 60)  # six chunks of ten, each a worst case of about $0.0021
    first = _provider_batch(tmp_path, mock.url, "--max-cost", "0.003")
    assert first.returncode == EXIT_SPEND_CAP, first.stderr[-2000:]
    assert "spending cap of $0.003" in first.stderr
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    spend, done = summary["spend"], ids_in(tmp_path / "out.jsonl")
    assert spend["capped"] and 0 < len(done) < 60 and summary["unfinished"] == 60 - len(done)
    batch, online = Prices.load(mode="batch").rates("gpt-4o-mini"), Prices.load().rates("gpt-4o-mini")
    assert batch == (online[0] / 2, online[1] / 2)  # the packaged table: batches bill at half price
    assert spend["spent_usd"] == pytest.approx(_billed_at(tmp_path / "out.jsonl", batch), abs=1e-6)
    assert spend["spent_usd"] < 0.003 and spend["projected_total_usd"] > spend["spent_usd"]
    assert "spend: $" in first.stdout and "cap $0.003 (reached)" in first.stdout
    created = [orjson.loads(raw) for raw in log.read_bytes().splitlines()]
    sent_first = Counter(cid for e in created if e["event"] == "batch_created" for cid in e["custom_ids"])
    assert set(sent_first) == set(done)  # nothing was submitted that the cap did not let through

    second = _provider_batch(tmp_path, mock.url, "--max-cost", "1")
    assert second.returncode == 0, second.stderr[-2000:]
    assert ids_in(tmp_path / "out.jsonl") == {f"r{i}": 1 for i in range(60)}
    created = [orjson.loads(raw) for raw in log.read_bytes().splitlines()]
    billed = Counter(cid for e in created if e["event"] == "batch_created" for cid in e["custom_ids"])
    assert len(billed) == 60 and set(billed.values()) == {1}  # no batch submitted twice


def test_a_provider_batch_cap_on_a_model_without_a_price_is_refused_until_one_is_given(tmp_path, mock_factory):  # noqa: F811
    log = tmp_path / "mock.jsonl"
    mock = mock_factory("--batch-log", str(log), "--batch-processing-s", "0.1")
    _priced_requests(tmp_path / "in.jsonl", 5, model="mock-model")
    refused = _provider_batch(tmp_path, mock.url, "--max-cost", "1")
    assert refused.returncode == 2 and "needs a price for mock-model" in refused.stderr
    assert not log.exists() or b"batch_created" not in log.read_bytes()
    priced = _provider_batch(tmp_path, mock.url, "--max-cost", "1", "--price", "1,2")
    assert priced.returncode == 0, priced.stderr[-2000:]
    spend = orjson.loads((tmp_path / "out.summary.json").read_bytes())["spend"]
    assert spend["spent_usd"] > 0
    assert spend["spent_usd"] == pytest.approx(_billed_at(tmp_path / "out.jsonl", (1, 2)), abs=1e-6)


def _filter(tmp_path, *extra):
    args = ["filter", str(tmp_path / "in.jsonl"), "--kept", str(tmp_path / "k.jsonl"), "--dropped",
            str(tmp_path / "d.jsonl"), "--config", str(tmp_path / "gate.yaml"), "--scorer", "llm",
            "--pipeline-config", "generate-mock.yaml", "--batch-size", "2", *extra]
    return subprocess.run(ODIE + args, capture_output=True, text=True, timeout=300)


def _records(tmp_path) -> Counter:
    return Counter(orjson.loads(raw)["id"] for name in ("k.jsonl", "d.jsonl") if (tmp_path / name).exists()
                   for raw in (tmp_path / name).read_bytes().splitlines())


def test_filter_with_an_llm_judge_stops_at_the_cap_and_a_higher_cap_judges_the_rest_once(tmp_path):
    from tests.test_quality import GOOD

    (tmp_path / "gate.yaml").write_text("relevance: {enabled: false}\n")  # every check the judge's or cheap
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(GOOD | {"id": f"g{i}", "text": f"{GOOD['text']} {i}."})
                                                 + b"\n" for i in range(12)))
    refused = _filter(tmp_path, "--max-cost", "1")  # the mock teacher's model has no price
    assert refused.returncode == 2 and "needs a price for mock-model" in refused.stderr
    capped = _filter(tmp_path, "--max-cost", "1", "--price", PRICE_PER_M)
    assert capped.returncode == EXIT_SPEND_CAP, capped.stderr[-2000:]
    assert "spending cap of $1" in capped.stderr
    final = [line for line in capped.stderr.splitlines() if line.startswith("[filter]")][-1]
    assert " spent, $" in final and " projected, cap $1 (reached)" in final
    assert len(_records(tmp_path)) < 12
    rest = _filter(tmp_path, "--max-cost", "100", "--price", PRICE_PER_M)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert "the judge's spend: $" in rest.stdout and "cap $100" in rest.stdout
    assert _records(tmp_path) == {f"g{i}": 1 for i in range(12)}
    judged = Counter(cid for cid in ids_in(tmp_path / "k.jsonl.judge.jsonl") if cid.startswith("judge:"))
    assert len(judged) == 12 and set(ids_in(tmp_path / "k.jsonl.judge.jsonl").values()) == {1}


def test_bench_stops_its_load_at_the_cap_with_exit_5_and_keeps_what_it_measured(tmp_path):
    from tests.test_batch_cli import Mock

    mock = Mock("--latency-ms", "20", "--log-requests", str(tmp_path / "requests.log"))
    try:
        proc = subprocess.run(ODIE + ["bench", "--base-url", mock.url, "--output", str(tmp_path / "b"),
                                      "--concurrency", "1,2,4", "--duration", "1s", "--synthetic",
                                      "prompt_tokens=16,output_tokens=8", "--max-cost", "0.5", "--price", PRICE_PER_M],
                              capture_output=True, text=True, timeout=120)
    finally:
        mock.stop()
    assert proc.returncode == EXIT_SPEND_CAP, proc.stderr[-2000:]
    results = orjson.loads((tmp_path / "b" / "results.json").read_bytes())
    assert results["spend"]["capped"] and 0 < results["spend"]["spent_usd"] <= 0.5
    assert "spending cap of $0.5" in results["stop_reason"] and len(results["points"]) == 1
    sent = len((tmp_path / "requests.log").read_bytes().splitlines())
    assert sent == results["points"][0]["requests"] + 1  # the levels' requests and the first probe, no more


def test_bench_serves_its_load_on_the_metrics_port(tmp_path):
    import socket
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_batch_cli import Mock

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mock = Mock("--latency-ms", "20")
    proc = subprocess.Popen(ODIE + ["bench", "--base-url", mock.url, "--output", str(tmp_path / "b"),
                                    "--concurrency", "1,2", "--duration", "2s", "--synthetic",
                                    "prompt_tokens=16,output_tokens=8", "--metrics-port", str(port),
                                    "--max-cost", "100", "--price", "1,1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        families, deadline = {}, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.1)
                continue
            families = {f.name: f for f in text_string_to_metric_families(text)}
            if families["odie_bench_requests"].samples[0].value > 5:
                break
            time.sleep(0.1)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    finally:
        proc.kill()
        mock.stop()
    assert families["odie_bench_requests"].samples[0].value > 5
    assert families["odie_spend_usd"].samples[0].value > 0
    assert {s.labels["kind"] for s in families["odie_tokens"].samples} == {"prompt", "completion"}
    assert any(s.name == "odie_request_latency_seconds_count" and s.value > 0
               for s in families["odie_request_latency_seconds"].samples)


def test_the_progress_line_summary_and_live_metrics_show_spend_and_the_projected_total(tmp_path, mock_factory):  # noqa: F811
    from tests.helpers import write_requests

    mock = mock_factory()
    write_requests(tmp_path / "in.jsonl", 40)
    proc = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", mock.url, "--max-cost", "0.2", "--price", "1000,1000",
                                  "--concurrency", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_SPEND_CAP, proc.stderr[-2000:]
    spend = orjson.loads((tmp_path / "out.summary.json").read_bytes())["spend"]
    done = len(ids_in(tmp_path / "out.jsonl"))
    assert spend["projected_total_usd"] == pytest.approx(spend["spent_usd"] * 40 / done, rel=1e-3)
    final = [line for line in proc.stderr.splitlines() if line.startswith("[batch]")][-1]
    assert f"${spend['spent_usd']:,.4f} spent, ${spend['projected_total_usd']:,.4f} projected, cap $0.2 (reached)" in final
    assert f"spend: ${spend['spent_usd']:,.4f} spent" in proc.stdout
    last = orjson.loads((tmp_path / "out.metrics.jsonl").read_bytes().splitlines()[-1])
    assert last["spend"] == spend  # the viewer's Live tab reads it from here


def test_without_a_cap_spend_is_shown_where_prices_are_known_and_never_as_a_free_zero(tmp_path, mock_factory):  # noqa: F811
    mock = mock_factory("--batch-processing-s", "0.1")
    _priced_requests(tmp_path / "in.jsonl", 20)
    online = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                    "--base-url", mock.url], capture_output=True, text=True, timeout=120)
    assert online.returncode == 0, online.stderr[-2000:]
    spend = orjson.loads((tmp_path / "out.summary.json").read_bytes())["spend"]
    assert spend["cap_usd"] is None and not spend["capped"]
    assert spend["spent_usd"] == pytest.approx(_billed_at(tmp_path / "out.jsonl", Prices.load().rates("gpt-4o-mini")),
                                               abs=1e-6)
    assert spend["projected_total_usd"] == pytest.approx(spend["spent_usd"], abs=1e-4)  # every record done
    final = [line for line in online.stderr.splitlines() if line.startswith("[batch]")][-1]
    assert f"${spend['spent_usd']:,.4f} spent, $" in final and "cap $" not in final

    batch_dir = tmp_path / "provider"
    batch_dir.mkdir()
    (batch_dir / "in.jsonl").write_bytes((tmp_path / "in.jsonl").read_bytes())
    provider = _provider_batch(batch_dir, mock.url)
    assert provider.returncode == 0, provider.stderr[-2000:]
    spend = orjson.loads((batch_dir / "out.summary.json").read_bytes())["spend"]
    assert spend["spent_usd"] == pytest.approx(_billed_at(batch_dir / "out.jsonl", Prices.load(mode="batch").rates(
        "gpt-4o-mini")), abs=1e-6)

    unpriced = tmp_path / "unpriced"
    unpriced.mkdir()
    from tests.helpers import write_requests

    write_requests(unpriced / "in.jsonl", 5)  # mock-model: no price
    plain = _provider_batch(unpriced, mock.url)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "spend" not in orjson.loads((unpriced / "out.summary.json").read_bytes())
