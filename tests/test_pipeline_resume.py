"""Killing ``odie generate`` mid-way and running it again sends no request twice.

The mock server runs in this process and logs every request body; the pipeline
runs as a subprocess. After SIGKILL only the requests in flight at the kill can
be sent again (at most the concurrency); after SIGINT the in-flight requests are
drained into the checkpoint first, so nothing is sent again. Either way the
resumed run ends with the same exports as an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from odie_async.pipeline.config import load_config
from odie_async.pipeline.run import generate

from .pipeline_support import ThreadedMock, write_config

CONCURRENCY = 6
RECORDS = 40


def _command(config, out):
    return [sys.executable, "-m", "odie_async", "generate", "--config", str(config), "--output", str(out), "--no-progress"]


def _interrupt_after(mock: ThreadedMock, config, out, sig: int, after: int) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(_command(config, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(mock.bodies) < after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(sig)
    _out, err = process.communicate(timeout=90)
    return process.returncode


def _finish(config, out) -> subprocess.CompletedProcess:
    return subprocess.run(_command(config, out), capture_output=True, text=True, timeout=120)


def _reference(tmp_path, base_url: str):
    config_path = write_config(tmp_path / "ref", base_url=base_url, structured="off", records=RECORDS)
    asyncio.run(generate(load_config(config_path), tmp_path / "ref" / "out", show_progress=False, handle_signals=False))
    return {name: (tmp_path / "ref" / "out" / name).read_bytes() for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl")}


@pytest.mark.parametrize("sig, allowed", [(signal.SIGKILL, CONCURRENCY), (signal.SIGINT, 0), (signal.SIGTERM, 0)])
def test_interrupted_run_resumes_without_resending(tmp_path, sig, allowed):
    with ThreadedMock(latency_ms=40) as mock:
        config = write_config(tmp_path, base_url=mock.server.base_url, structured="off", records=RECORDS,
                              engine={"concurrency": CONCURRENCY})
        code = _interrupt_after(mock, config, tmp_path / "out", sig, after=60)
        first_run = len(mock.bodies)
        finished = _finish(config, tmp_path / "out")
        bodies = mock.bodies
        reference_count = len(bodies)
        reference = _reference(tmp_path, mock.server.base_url)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert 60 <= first_run < reference_count
    repeats = sum(n - 1 for n in Counter(bodies[:reference_count]).values())
    assert repeats <= allowed
    out = tmp_path / "out"
    assert {name: (out / name).read_bytes() for name in reference} == reference
