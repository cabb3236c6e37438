"""``odie batch`` as users run it: subprocesses against ``odie mock-server`` on loopback."""

import os
import random
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


def test_repeated_kill_9_then_rerun_leaves_every_record_exactly_once(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 1500)
    mock = mock_factory("--latency-ms", "20", "--latency-jitter-ms", "10", "--fault-rate", "0.2",
                        "--stall-s", "1", "--seed", "3")
    rng = random.Random(11)
    options = ("--concurrency", "32", "--timeout", "0.5", "--max-attempts", "3", "--drain-timeout", "1")
    for _ in range(4):
        proc = _batch(tmp_path, mock.url, *options)
        time.sleep(rng.uniform(0.4, 1.5))
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
    write_requests(tmp_path / "in.jsonl", 600)
    mock = mock_factory("--latency-ms", "100")
    proc = _batch(tmp_path, mock.url, "--concurrency", "16")
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    first = len(ids_in(tmp_path / "out.jsonl"))
    assert 0 < first < 600
    assert "stopped early" in stdout
    rerun = _batch(tmp_path, mock.url, "--concurrency", "16")
    rerun.communicate(timeout=60)
    counts = ids_in(tmp_path / "out.jsonl")
    assert len(counts) == 600 and set(counts.values()) == {1}
    assert mock.stop()["total"] == 600  # not one request sent twice


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
