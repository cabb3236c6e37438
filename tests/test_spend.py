"""The spending cap: a run stops within one request's worst case of ``--max-cost``, and resumes."""

import subprocess
import sys

import orjson
import pytest

from odie_async.engine.spend import HELD, REACHED, WAIT, Prices, SpendCap, parse_price
from odie_async.exceptions import EXIT_SPEND_CAP, ConfigError
from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import mock_factory  # noqa: F401  (a fixture)

ODIE = [sys.executable, "-m", "odie_async"]
PRICE = "1000,1000"  # USD per million tokens: a cent per ten tokens, so a few records reach a cap


def test_a_reservation_is_the_worst_case_and_settles_at_the_real_usage():
    cap = SpendCap(1.0, Prices({}, fixed=(1000.0, 2000.0)))
    charge = cap.charge("any-model", 100)
    assert charge.worst == pytest.approx(0.2)  # 100 tokens at the dearer price
    assert cap.reserve(charge) == HELD and cap.reserved == pytest.approx(0.2)
    cost = cap.settle(charge, {"prompt_tokens": 30, "completion_tokens": 10})
    assert cost == pytest.approx(0.05) and cap.spent == pytest.approx(0.05) and cap.reserved == 0
    assert cap.settle(cap.charge("m", 100), {"input_tokens": 10, "output_tokens": 10}) == pytest.approx(0.03)


def test_with_every_reservation_settled_nothing_is_reserved_exactly():
    # 0.1 + 0.2 - 0.1 - 0.2 leaves 2.8e-17 in a float sum: a worker waiting for "nothing in flight"
    # would then wait for a settlement that never comes (a capped run hung so).
    cap = SpendCap(1.0, Prices({}, fixed=(1000.0, 1000.0)))
    small, large = cap.charge("m", 100), cap.charge("m", 200)  # 0.1 and 0.2
    assert cap.reserve(small) == cap.reserve(large) == HELD
    cap.settle(small, None)
    assert cap.reserved == pytest.approx(0.2)
    cap.settle(large, None)
    assert cap.reserved == 0.0  # not 2.8e-17


def test_nothing_is_admitted_past_the_cap():
    cap = SpendCap(0.5, Prices({}, fixed=(1000.0, 1000.0)))
    charges = [cap.charge("m", 100) for _ in range(6)]  # 0.1 each
    verdicts = [cap.reserve(c) for c in charges]
    assert verdicts == [HELD] * 5 + [WAIT] and cap.spent + cap.reserved <= cap.cap
    assert not cap.capped and cap.reached("run") is None  # what is in flight may still leave room


def test_the_cap_is_reached_only_when_nothing_in_flight_can_make_room():
    cap = SpendCap(0.25, Prices({}, fixed=(1000.0, 1000.0)))
    first, second = cap.charge("m", 100), cap.charge("m", 200)  # 0.1 and 0.2
    assert cap.reserve(first) == HELD and cap.reserve(second) == WAIT
    cap.settle(first, {"prompt_tokens": 60, "completion_tokens": 0})  # 0.06 spent, nothing in flight
    assert cap.reserve(second) == REACHED and cap.capped
    assert cap.reserve(cap.charge("m", 1)) == REACHED  # reached for good, even for what would fit
    error = cap.reached("bench", then="the levels measured so far are written")
    assert str(error) == ("the spending cap of $0.25 stopped the bench with $0.0600 spent; "
                          "the levels measured so far are written")


def test_a_model_without_a_price_refuses_the_cap():
    cap = SpendCap(1.0, Prices.load())
    cap.require_prices(["gpt-4o-mini-2024-07-18"])  # priced by its longest prefix
    with pytest.raises(ConfigError, match="needs a price for mock-model"):
        cap.require_prices(["gpt-4o-mini", "mock-model"])


@pytest.mark.parametrize("text", ["1", "1,2,3", "a,b", "nan,1", "-1,2", "inf,1"])
def test_a_price_is_two_finite_numbers(text):
    with pytest.raises(ConfigError, match="IN,OUT"):
        parse_price(text)


def _batch(tmp_path, url, *extra):
    return subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", url, "--no-progress", *extra], capture_output=True, text=True,
                          timeout=120)


def test_the_cap_stops_a_run_within_one_requests_worst_case_and_a_higher_cap_resumes(tmp_path, mock_factory):  # noqa: F811
    mock = mock_factory()
    write_requests(tmp_path / "in.jsonl", 40)
    first = _batch(tmp_path, mock.url, "--max-cost", "0.2", "--price", PRICE, "--concurrency", "8")
    assert first.returncode == EXIT_SPEND_CAP, first.stderr
    assert "spending cap" in first.stderr
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    spend, ledger = summary["spend"], summary["ledger"]
    worst = max(len(line) / 4 + 8 for line in (tmp_path / "in.jsonl").read_bytes().splitlines()) * 1000 / 1e6
    assert spend["capped"] and 0.2 - worst <= spend["spent_usd"] <= 0.2
    assert 0 < ledger["output"] < 40 and ledger["errors"] == 0
    assert spend["projected_total_usd"] > 0.2
    second = _batch(tmp_path, mock.url, "--max-cost", "5", "--price", PRICE)
    assert second.returncode == 0, second.stderr
    assert ids_in(tmp_path / "out.jsonl") == {f"r{i}": 1 for i in range(40)}


def test_a_cap_without_a_known_price_is_refused_before_anything_is_sent(tmp_path, mock_factory):  # noqa: F811
    mock = mock_factory()
    write_requests(tmp_path / "in.jsonl", 5)  # model "mock-model": not in the price table
    proc = _batch(tmp_path, mock.url, "--max-cost", "1")
    assert proc.returncode == 2 and "needs a price for mock-model" in proc.stderr
    assert mock.stop().get("total", 0) == 0  # the mock counted no request


def test_two_runs_into_different_outputs_share_one_cache_and_the_second_sends_nothing(tmp_path, mock_factory):  # noqa: F811
    mock = mock_factory()
    write_requests(tmp_path / "in.jsonl", 30)
    cache = tmp_path / "cache"
    first = _batch(tmp_path, mock.url, "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    sent = mock.stop().get("total", 0)
    assert sent == 30
    mock = mock_factory()
    second = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "other.jsonl"),
                                    "--base-url", mock.url, "--no-progress", "--cache", str(cache)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert mock.stop().get("total", 0) == 0  # every answer came from the cache
    answers = [{line["custom_id"]: line["response"]["body"] for line in map(orjson.loads, path.read_bytes().splitlines())}
               for path in (tmp_path / "out.jsonl", tmp_path / "other.jsonl")]
    assert answers[0] == answers[1] and len(answers[0]) == 30
    summary = orjson.loads((tmp_path / "other.summary.json").read_bytes())
    assert summary["cache"]["hits"] == 30 and summary["ledger"]["output"] == 30


def test_the_same_request_asked_twice_gets_two_samples_and_a_seed_sweep_none_shared(tmp_path):
    from odie_async.engine.answer_cache import AnswerCache

    cache = AnswerCache(tmp_path)
    first, second = cache.key("d1"), cache.key("d1")
    assert first != second  # the k-th identical request has a sample index of its own
    cache.put(first, b'{"a": 1}')
    cache.put(second, b'{"a": 2}')
    again = AnswerCache(tmp_path)  # another run: the same order gives the same answers
    assert again.get(again.key("d1")) == b'{"a": 1}' and again.get(again.key("d1")) == b'{"a": 2}'
    assert again.get(again.key("d2")) is None


def test_concurrent_writers_on_one_cache_lose_no_entry(tmp_path):
    code = ("import sys; from odie_async.engine.answer_cache import AnswerCache; c = AnswerCache(sys.argv[1]); "
            "[c.put(f'{sys.argv[2]}-{i}:0', b'x' * 100) for i in range(300)]; c.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"w{n}"]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    from odie_async.engine.answer_cache import AnswerCache

    assert AnswerCache(tmp_path).stats()["entries"] == 1200


def test_odie_cache_stats_and_prune(tmp_path):
    from odie_async.engine.answer_cache import AnswerCache

    cache = AnswerCache(tmp_path)
    cache.put("k:0", b"{}")
    cache.close()
    stats = subprocess.run(ODIE + ["cache", "stats", "--cache", str(tmp_path)], capture_output=True, text=True)
    assert stats.returncode == 0 and orjson.loads(stats.stdout)["entries"] == 1
    refused = subprocess.run(ODIE + ["cache", "prune", "--cache", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2
    pruned = subprocess.run(ODIE + ["cache", "prune", "--older-than", "1ms", "--cache", str(tmp_path)],
                            capture_output=True, text=True)
    assert pruned.returncode == 0 and orjson.loads(pruned.stdout)["deleted"] == 1


def test_generate_stops_at_its_cap_with_exit_5_and_a_rerun_without_it_completes(tmp_path):
    out = tmp_path / "run"
    capped = subprocess.run(ODIE + ["generate", "--config", "mock", "--limit", "4", "--output", str(out),
                                    "--no-progress", "--max-cost", "2", "--price", "300,300"],
                            capture_output=True, text=True, timeout=300)
    assert capped.returncode == EXIT_SPEND_CAP, capped.stderr[-2000:]
    assert "spending cap" in capped.stderr
    sent_before = len((out / "requests.jsonl").read_bytes().splitlines())
    assert sent_before > 0
    rerun = subprocess.run(ODIE + ["generate", "--config", "mock", "--limit", "4", "--output", str(out),
                                   "--no-progress"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert ids_in(out / "requests.jsonl") and max(ids_in(out / "requests.jsonl").values()) == 1
