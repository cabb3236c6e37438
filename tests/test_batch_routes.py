"""Every route of OpenAI's Batch API through ``odie batch``: responses, embeddings, moderations beside chat."""

import subprocess
import sys

import orjson
import pytest

from tests.test_batch_cli import mock_factory  # noqa: F401  (a fixture)

ODIE = [sys.executable, "-m", "odie_async"]
BODIES = {
    "/v1/responses": {"model": "mock-model", "input": "Name three rivers.", "max_output_tokens": 16},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": ["a river", "a planet"]},
    "/v1/moderations": {"model": "omni-moderation-latest", "input": "a calm sentence"},
    "/v1/chat/completions": {"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
}


def _lines(path):
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def _run(tmp_path, url):
    lines = [{"custom_id": f"{url_.rsplit('/', 1)[1]}-{i}", "method": "POST", "url": url_, "body": body}
             for url_, body in BODIES.items() for i in range(2)]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", url, "--no-progress"], capture_output=True, text=True, timeout=60)


def test_every_batch_route_round_trips_with_the_answer_shaped_as_openai_writes_it(tmp_path, mock_factory):  # noqa: F811
    proc = _run(tmp_path, mock_factory().url)
    assert proc.returncode == 0, proc.stderr
    out = {line["custom_id"]: line for line in _lines(tmp_path / "out.jsonl")}
    errors = tmp_path / "out.errors.jsonl"
    assert len(out) == 8 and (not errors.exists() or errors.read_bytes() == b"")
    for line in out.values():
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["id"].startswith("batch_req_") and line["request_digest"]
    response = out["responses-0"]["response"]["body"]
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["type"] == "output_text"
    assert response["usage"]["input_tokens"] > 0 and response["usage"]["output_tokens"] > 0
    embeddings = out["embeddings-0"]["response"]["body"]
    assert [d["index"] for d in embeddings["data"]] == [0, 1]
    assert abs(sum(v * v for v in embeddings["data"][0]["embedding"]) - 1) < 1e-3
    assert embeddings["data"][0]["embedding"] != embeddings["data"][1]["embedding"]
    moderation = out["moderations-0"]["response"]["body"]
    assert len(moderation["results"]) == 1 and moderation["results"][0]["flagged"] is False


def test_each_route_counts_its_own_usage_in_the_summary(tmp_path, mock_factory):  # noqa: F811
    assert _run(tmp_path, mock_factory().url).returncode == 0
    out = _lines(tmp_path / "out.jsonl")
    usages = [line["response"]["body"].get("usage") or {} for line in out]
    prompt = sum(u.get("prompt_tokens") or u.get("input_tokens") or 0 for u in usages)
    completion = sum(u.get("completion_tokens") or u.get("output_tokens") or 0 for u in usages)
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["tokens"]["prompt"] == prompt and summary["tokens"]["completion"] == completion
    assert completion > 0  # the Responses API's output_tokens are counted, not dropped


@pytest.mark.parametrize("url, body, missing", [
    ("/v1/responses", {"object": "response"}, "output"),
    ("/v1/embeddings", {"object": "list"}, "data"),
    ("/v1/moderations", {"id": "x"}, "results"),
])
def test_an_answer_without_its_routes_list_is_malformed(url, body, missing):
    from odie_async.engine.routes import check_shape
    from odie_async.exceptions import MalformedResponseError

    with pytest.raises(MalformedResponseError, match=missing):
        check_shape(url, body)


def test_every_route_round_trips_through_openais_batch_api(tmp_path, mock_factory):  # noqa: F811
    mock = mock_factory("--batch-processing-s", "0.3")
    lines = [{"custom_id": f"{url.rsplit('/', 1)[1]}-{i}", "method": "POST", "url": url, "body": body}
             for url, body in BODIES.items() for i in range(2)]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    proc = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", mock.url, "--mode", "provider-batch", "--provider", "openai",
                                  "--poll-interval", "0.05", "--poll-max", "0.2", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = {line["custom_id"]: line["response"]["body"] for line in _lines(tmp_path / "out.jsonl")}
    assert len(out) == 8
    assert out["responses-1"]["object"] == "response" and out["responses-1"]["output"]
    assert len(out["embeddings-1"]["data"]) == 2
    assert out["moderations-1"]["results"][0]["flagged"] is False
    assert out["completions-1"]["choices"][0]["message"]["role"] == "assistant"
