"""A pool of two real ``odie mock-server`` processes: one is killed mid-run, and every record
still lands exactly once; the survivor carries the rest."""

import subprocess
import time

import orjson
import pytest

from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import ODIE, mock_factory  # noqa: F401  (the fixture)


@pytest.mark.slow
def test_an_endpoint_killed_mid_run_loses_nothing(tmp_path, mock_factory):  # noqa: F811
    write_requests(tmp_path / "in.jsonl", 1000)
    steady, doomed = mock_factory("--latency-ms", "50"), mock_factory("--latency-ms", "50")
    out = tmp_path / "out.jsonl"
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(out), "--endpoint", steady.url,
                  "--endpoint", doomed.url, "--concurrency", "32", "--rpm", "3000", "--no-progress"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 60_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    doomed.proc.kill()  # mid-run: its in-flight requests never get an answer
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err[-2000:]
    written = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(written) == {f"r{i}" for i in range(1000)} and set(written.values()) == {1}, "exactly once"
    assert not (tmp_path / "out.errors.jsonl").read_text()
    summary = orjson.loads(out.with_suffix(".summary.json").read_bytes())
    lanes = {lane["endpoint"]: lane for lane in summary["endpoints"]}
    assert lanes[steady.url]["counts"]["ok"] > lanes[doomed.url]["counts"].get("ok", 0)
    assert any(state.startswith("open") for state in lanes[doomed.url]["breaker"]), "the dead lane was opened"
