"""A self-hosted vLLM server kept full, not flooded: more requests in flight than it runs at once
(``--concurrency 256`` against 32 running slots), and none times out or is sent twice."""

import subprocess
import sys

import orjson
import pytest

from odie_async.endpoints.serve import ServeSettings, VLLMServer

pytestmark = pytest.mark.slow


def test_more_requests_than_slots_complete_without_timeouts_or_retries(tmp_path):
    with VLLMServer(ServeSettings(max_num_seqs=32, max_model_len=1024)) as server:
        lines = [orjson.dumps({"custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": server.model_name, "max_tokens": 64, "ignore_eos": True, "temperature": 0.8,
            "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}]}})
            for i in range(128)]
        (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        out = tmp_path / "out.jsonl"
        done = subprocess.run([sys.executable, "-m", "odie_async", "batch", str(tmp_path / "in.jsonl"), "-o", str(out),
                               "--base-url", server.base_url, "--concurrency", "256", "--timeout", "60",
                               "--no-progress"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    assert summary["succeeded"] == 128 and summary["retries"] == 0, summary
    assert summary["attempts"] == 128, "no request was sent twice"
    assert summary["concurrency_final"] <= 32 + 8, "in flight settled near the server's 32 slots"
