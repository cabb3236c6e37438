"""--dry-run counts: tiktoken on known strings, the byte estimate elsewhere, time and cost."""

import orjson
import pytest

from odie_async.engine.estimate import Estimate, encoding_for, prompt_tokens

PRICES = {"as_of": "2025-06-01", "models": {"gpt-4": {"online": [30.0, 60.0], "batch": [15.0, 30.0]},
                                             "gpt-4-turbo": {"online": [10.0, 30.0], "batch": [5.0, 15.0]}}}


@pytest.mark.parametrize("model,encoding", [("gpt-4", "cl100k_base"), ("gpt-4-turbo-2024-04-09", "cl100k_base"),
                                            ("gpt-3.5-turbo", "cl100k_base"), ("gpt-4o-mini", None),
                                            ("gpt-4.1", None), ("o3-mini", None), ("llama-3", None), (None, None)])
def test_encoding_by_model(model, encoding):
    assert encoding_for(model) == encoding


def test_chat_prompt_tokens_follow_openais_accounting():
    # cl100k_base: "hello world" is 2 tokens, "You are terse." is 4; 3 per message, 3 to prime the reply
    body = {"model": "gpt-4", "messages": [{"role": "system", "content": "You are terse."},
                                           {"role": "user", "content": "hello world"}]}
    assert prompt_tokens(body, 0) == (3 + (3 + 4) + (3 + 2), True)


def test_unknown_encodings_fall_back_to_bytes_and_say_so():
    body = {"model": "llama-3", "messages": [{"role": "user", "content": "x" * 400}]}
    size = len(orjson.dumps(body))
    assert prompt_tokens(body, size) == (round(size / 4), False)
    estimate = Estimate()
    estimate.add(body)
    assert estimate.report(prices=PRICES)["prompt_tokens_counted_with"].startswith("bytes / 4")


def test_report_totals_time_and_cost():
    estimate = Estimate()
    for _ in range(10):
        estimate.add({"model": "gpt-4", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 100})
    report = estimate.report(rpm=5, tpm=0, prices=PRICES)
    assert report["requests"] == 10
    assert report["prompt_tokens"] == 10 * (3 + 3 + 2)
    assert report["output_tokens_at_most"] == 1000
    assert report["minutes_at_limits"] == 2.0
    assert report["cost_usd"]["online"] == pytest.approx((80 * 30 + 1000 * 60) / 1e6)
    assert report["cost_usd"]["batch"] == pytest.approx(report["cost_usd"]["online"] / 2)


def test_longest_price_prefix_wins_and_unknown_models_have_no_cost():
    estimate = Estimate()
    estimate.add({"model": "gpt-4-turbo-2024-04-09", "prompt": "hello world", "max_tokens": 0})
    assert estimate.report(prices=PRICES)["cost_usd"]["online"] == pytest.approx(2 * 10 / 1e6 + 256 * 30 / 1e6)
    other = Estimate()
    other.add({"model": "my-finetune", "messages": []})
    assert other.report(prices=PRICES)["cost_usd"] == {"online": None, "batch": None}


def test_shipped_price_table_loads():
    from odie_async.engine.estimate import load_prices

    prices = load_prices()
    assert prices["as_of"] and prices["models"]["gpt-4o-mini"]["batch"] == [0.075, 0.30]
