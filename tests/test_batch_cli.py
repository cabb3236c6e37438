"""``odie batch`` as users run it: subprocesses against ``odie mock-server`` on loopback."""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest

from tests.helpers import ids_in, write_requests

ODIE = [sys.executable, "-m", "odie_async"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mock:
    def __init__(self, *options: str, env=None) -> None:
        self.port = _free_port()
        cmd = ODIE + ["mock-server", "--port", str(self.port), *options]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert "listening" in self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return orjson.loads(out.strip().splitlines()[-1])


@pytest.fixture
def mock_factory():
    mocks = []

    def make(*options, env=None):
        mocks.append(Mock(*options, env=env))
        return mocks[-1]

    yield make
    for mock in mocks:
        if mock.proc.poll() is None:
            mock.proc.kill()


def _batch(tmp_path, url, *extra, env=None, **popen):
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                  "--base-url", url, "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def _wait_for_progress(proc, output, timeout: float = 120.0) -> None:
    """Until the run has written an answer beyond those it found (or ended): a loaded machine can
    take seconds to import, so a fixed sleep may land before the run has started."""
    start_size = output.stat().st_size if output.exists() else 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if output.exists() and output.stat().st_size > start_size:
            return
        time.sleep(0.05)


def test_repeated_kill_9_then_rerun_leaves_every_record_exactly_once(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 1500)
    mock = mock_factory("--latency-ms", "20", "--latency-jitter-ms", "10", "--fault-rate", "0.2",
                        "--stall-s", "1", "--seed", "3")
    rng = random.Random(11)
    options = ("--concurrency", "32", "--timeout", "0.5", "--max-attempts", "3", "--drain-timeout", "1")
    for _ in range(4):
        proc = _batch(tmp_path, mock.url, *options)
        _wait_for_progress(proc, tmp_path / "out.jsonl")  # a kill before the first write proves little
        time.sleep(rng.uniform(0, 0.8))
        proc.kill()
        proc.wait()
    final = _batch(tmp_path, mock.url, *options)
    stdout, stderr = final.communicate(timeout=120)
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == 1500, stderr[-2000:]
    assert set(counts.values()) == {1}
    assert "already done" in stdout
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["skipped_already_done"] > 0


def test_sigint_drains_and_a_rerun_sends_nothing_twice(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 3000)
    mock = mock_factory("--latency-ms", "100")
    proc = _batch(tmp_path, mock.url, "--concurrency", "16")
    _wait_for_progress(proc, tmp_path / "out.jsonl")  # past the imports: the run's own handlers are in place
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr[-2000:]
    first = len(ids_in(tmp_path / "out.jsonl"))
    assert 0 < first < 3000
    assert "a second Ctrl-C cancels them" in stderr
    # the records never read from the input are among those not started
    sentence = re.search(r"stopped by SIGINT: ([\d,]+) done, ([\d,]+) in flight were finished, ([\d,]+) not started; "
                         r"rerun the same command to resume", stdout)
    assert sentence, stdout
    done, finished, not_started = (int(n.replace(",", "")) for n in sentence.groups())
    assert done == first and 0 < finished <= 16 and not_started == 3000 - first
    rerun = _batch(tmp_path, mock.url, "--concurrency", "16")
    rerun.communicate(timeout=120)
    counts = ids_in(tmp_path / "out.jsonl")
    assert len(counts) == 3000 and set(counts.values()) == {1}
    assert mock.stop()["total"] == 3000  # not one request sent twice
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    runs = summary["runs"]
    assert [run["succeeded"] for run in runs] == [first, 3000 - first]
    assert runs[0]["stopped_by"] == "SIGINT" and runs[1]["skipped_already_done"] == first
    assert summary["succeeded"] == 3000 - first and summary["exit_code"] == 0  # the latest run on top
    assert runs[0]["started_at"] < runs[1]["started_at"] and runs[1]["ended_at"] >= runs[1]["started_at"]
    assert summary["settings"]["concurrency"] == 16 and summary["models"] == ["mock-model"]


def test_batch_reads_standard_input_and_counts_retries_by_reason(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 300)
    mock = mock_factory("--fault-rate", "0.1", "--faults", "500,503", "--seed", "5")
    cmd = ODIE + ["batch", "-", "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.url, "--no-progress",
                  "--max-attempts", "10"]
    for _ in range(2):  # the second run, the same input piped again, resumes and sends nothing
        with open(tmp_path / "in.jsonl", "rb") as stdin:
            proc = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    counts = ids_in(tmp_path / "out.jsonl")
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert mock.stop()["total"] == 300 + sum(summary_retries(tmp_path).values())
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["skipped_already_done"] == 300 and summary["total"] == 300
    assert [run["succeeded"] for run in summary["runs"]] == [300, 0]
    assert not list(tmp_path.glob(".odie-stdin-*"))  # the spooled copy is gone


def summary_retries(tmp_path) -> dict:
    first = orjson.loads((tmp_path / "out.summary.json").read_bytes())["runs"][0]
    assert first["retries"] > 0 and sum(first["retries_by_reason"].values()) == first["retries"]
    assert set(first["retries_by_reason"]) == {"server_error"}, first["retries_by_reason"]  # 500 and 503
    assert first["error_codes"] == {}
    return first["retries_by_reason"]


def test_bad_input_line_stops_with_its_location_before_anything_is_sent(tmp_path, mock_factory):
    path = write_requests(tmp_path / "in.jsonl", 50)
    path.write_bytes(path.read_bytes() + b'{"custom_id": "broken"\n')
    mock = mock_factory()
    proc = _batch(tmp_path, mock.url)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"{path}:51: not valid JSON" in stderr
    assert not ids_in(tmp_path / "out.jsonl")
    assert mock.stop().get("total", 0) == 0


def test_wrong_key_fails_fast_and_never_leaks(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 300)
    mock = mock_factory("--api-key-env", "MOCK_KEY", env=os.environ | {"MOCK_KEY": "right-key"})
    secret = "sk-live-abcdef0123456789"
    env = os.environ | {"MY_KEY": secret}
    proc = _batch(tmp_path, mock.url, "--api-key-env", "MY_KEY", "--log-json", env=env)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "refused the API key" in stderr
    everything = stdout + stderr + "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix == ".json" or p.name.startswith("out"))
    assert secret not in everything


def test_ray_takes_dry_run_and_sends_nothing(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 40)
    mock = mock_factory()
    proc = _batch(tmp_path, mock.url, "--ray", "--workers", "2", "--dry-run")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "40" in stdout and mock.stop().get("total", 0) == 0
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.shards").exists()


def test_ray_needs_an_endpoint_but_not_base_url(tmp_path):
    write_requests(tmp_path / "in.jsonl", 5)
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--ray", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--ray needs an endpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_a_ray_run_is_refused_while_a_plain_run_holds_the_output(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 200)
    mock = mock_factory("--latency-ms", "100")
    plain = _batch(tmp_path, mock.url, "--concurrency", "4")
    deadline = time.monotonic() + 30
    while not (tmp_path / "out.jsonl.lock").exists():
        assert plain.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    ray_run = _batch(tmp_path, mock.url, "--ray", "--workers", "2")
    _, stderr = ray_run.communicate(timeout=60)
    assert ray_run.returncode == 2 and f"PID {plain.pid}" in stderr, stderr[-2000:]
    plain.send_signal(signal.SIGTERM)
    plain.communicate(timeout=30)
    assert not (tmp_path / "out.shards").exists()
