"""Reliability of ``odie batch`` as a process: signals, exit codes, the output lock, pipes, JSON logs."""

import os
import signal
import subprocess
import time

import orjson

from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import ODIE, _batch, mock_factory  # noqa: F401  (a fixture)


def _started(tmp_path, proc, timeout: float = 30.0) -> None:
    """Wait until the run holds its output's lock: its signal handlers are in place by then."""
    deadline = time.monotonic() + timeout
    while not (tmp_path / "out.jsonl.lock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)


def test_sigint_and_sigterm_mid_run_exit_130_and_143_with_the_resume_command(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 500)
    mock = mock_factory("--latency-ms", "50")
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = _batch(tmp_path, mock.url, "--concurrency", "8")
        _started(tmp_path, proc)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code, stderr[-1000:]
        assert "to resume, rerun: odie batch" in stderr
        summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
        ledger = summary["ledger"]
        assert ledger["read"] == ledger["already_done"] + ledger["output"] + ledger["errors"] + ledger["unfinished"]
    final = _batch(tmp_path, mock.url, "--concurrency", "64")
    final.communicate(timeout=60)
    assert final.returncode == 0
    counts = ids_in(tmp_path / "out.jsonl")
    assert len(counts) == 500 and set(counts.values()) == {1}


def test_one_sigint_with_hanging_requests_stops_within_the_drain_timeout(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 20)  # all queued at once: the producer is done
    mock = mock_factory("--latency-ms", "60000")
    proc = _batch(tmp_path, mock.url, "--drain-timeout", "2")
    _started(tmp_path, proc)
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - start < 6
    assert not ids_in(tmp_path / "out.jsonl")


def test_a_second_run_on_the_same_output_refuses_and_names_the_holder(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 200)
    mock = mock_factory("--latency-ms", "100")
    first = _batch(tmp_path, mock.url, "--concurrency", "4")
    _started(tmp_path, first)
    second = _batch(tmp_path, mock.url)
    _, stderr = second.communicate(timeout=30)
    assert second.returncode == 2 and f"PID {first.pid}" in stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    counts = ids_in(tmp_path / "out.jsonl")
    assert set(counts.values()) <= {1}


def test_ctrl_c_during_the_scan_of_a_large_input_is_acted_on_at_once(tmp_path, mock_factory):
    line = orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "m", "messages": [{"role": "user", "content": "p" * 200}]}})
    with open(tmp_path / "in.jsonl", "wb") as handle:
        for block in range(60):
            handle.write(b"".join(line.replace(b'"x"', f'"r{block}-{i}"'.encode()) + b"\n" for i in range(10_000)))
    mock = mock_factory()
    proc = _batch(tmp_path, mock.url)
    _started(tmp_path, proc)
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - start < 2.0
    assert mock.stop().get("total", 0) == 0


def test_log_json_keeps_stderr_pure_json_and_a_closed_pipe_is_no_traceback(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 30)
    mock = mock_factory("--api-key-env", "MOCK_KEY", env=os.environ | {"MOCK_KEY": "right"})
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.url,
                  "--api-key-env", "MY_KEY", "--log-json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"MY_KEY": "wrong"}, timeout=60)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert lines and all(orjson.loads(x) for x in lines)
    assert any("refused the API key" in x for x in lines)

    read, write = os.pipe()
    os.close(read)  # like `| head` that has already left
    piped = subprocess.run(cmd[:-1] + ["--no-progress"], stdout=write, stderr=subprocess.PIPE, text=True,
                           env=os.environ | {"MY_KEY": "right"}, timeout=60)
    os.close(write)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr and piped.returncode == 0


def test_a_second_run_naming_the_output_through_a_symlink_is_refused(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 200)
    mock = mock_factory("--latency-ms", "100")
    first = _batch(tmp_path, mock.url, "--concurrency", "4")
    _started(tmp_path, first)
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "out.jsonl")
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "link.jsonl"), "--base-url", mock.url,
                  "--no-progress"]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    assert set(ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl").values()) <= {1}
    assert not (tmp_path / "link.errors.jsonl").exists()


def test_sigkill_during_resend_changed_leaves_old_lines_that_the_next_run_drops(tmp_path, mock_factory):
    n = 300
    write_requests(tmp_path / "in.jsonl", n)
    mock = mock_factory("--latency-ms", "20")
    assert _batch(tmp_path, mock.url, "--concurrency", "32").wait(timeout=60) == 0
    resend = ("--model", "other", "--resend-changed", "--concurrency", "2")
    proc = _batch(tmp_path, mock.url, *resend)
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 30
    while out.read_bytes().count(b"\n") < n + 40:
        assert proc.poll() is None and time.monotonic() < deadline, "the resending run wrote too little"
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=10)
    assert out.read_bytes().count(b"\n") > n  # old and new lines of the records re-sent before the kill
    refused = _batch(tmp_path, mock.url, "--model", "other")  # any next run finishes the compaction
    _, stderr = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--resend-changed" in stderr
    assert out.read_bytes().count(b"\n") == n
    done = _batch(tmp_path, mock.url, *resend[:-2], "--concurrency", "32")
    done.communicate(timeout=60)
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert done.returncode == 0 and len(lines) == n
    assert {x["response"]["body"]["model"] for x in lines} == {"other"}
    assert set(ids_in(out, tmp_path / "out.errors.jsonl").values()) == {1}
