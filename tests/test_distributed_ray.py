"""``odie batch --ray`` on a real local Ray cluster (two CPUs) against ``odie mock-server``.

One cluster for the module, started by this process and stopped at the end;
each test runs the driver as users do, a separate ``odie batch --ray ADDRESS``
process, and reaches the run's actors by name.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import Mock

ray = pytest.importorskip("ray")

from odie_async.distributed.cluster import NAMESPACE, run_key, worker_name  # noqa: E402
from odie_async.engine.lockfile import LockBusy, take_lock  # noqa: E402

pytestmark = pytest.mark.slow
ODIE = [sys.executable, "-m", "odie_async"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE,
             configure_logging=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def mock():
    mocks = []

    def make(*options):
        mocks.append(Mock(*options))
        return mocks[-1]

    yield make
    for m in mocks:
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()


def _driver(address, tmp_path, url, *extra):
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", url,
                  "--ray", address, "--workers", "2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_for_lines(tmp_path, n, proc, timeout=90):
    shards = [tmp_path / "out.shards" / f"shard-{i:03d}.jsonl" for i in range(2)]
    deadline = time.monotonic() + timeout
    while sum(map(_lines, shards)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run wrote too little"
        time.sleep(0.1)


def _start_mid_run(cluster, tmp_path, mock, n):
    """A driver sending ``n`` records at 20 ms each, 8 at a time, once 400 are written."""
    write_requests(tmp_path / "in.jsonl", n)
    server = mock("--latency-ms", "20")
    proc = _driver(cluster, tmp_path, server.url, "--concurrency", "8", "--no-progress")
    _wait_for_lines(tmp_path, 400, proc)
    return proc, server


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _expect_exactly_once(tmp_path, n):
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"r{i}" for i in range(n)}
    assert max(counts.values()) == 1


def test_a_worker_killed_mid_run_is_restarted_and_every_record_lands_once(cluster, tmp_path, mock):
    n = 3000
    proc, server = _start_mid_run(cluster, tmp_path, mock, n)
    victim = ray.get_actor(worker_name(run_key(tmp_path / "out.jsonl"), 0), namespace=NAMESPACE)
    ray.kill(victim, no_restart=False)  # the process dies; Ray restarts the actor
    rc, out, err = _finish(proc)
    assert rc == 0, err[-3000:]
    _expect_exactly_once(tmp_path, n)
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert [w["restarts"] for w in summary["workers"]] == [1, 0]
    assert summary["workers"][0]["skipped_already_done"] > 0  # the restarted worker resumed its shard
    assert summary["merged"] == {"output_records": n, "error_records": 0}
    # The restarted worker's finds (its predecessor's lines) count as this run's records, not as resumed.
    assert summary["succeeded"] == n and summary["skipped_already_done"] == 0
    assert "shard worker died" in err


def test_a_driver_killed_with_sigkill_leaves_no_writer_and_the_rerun_finishes_once(cluster, tmp_path, mock):
    n = 3000
    proc, server = _start_mid_run(cluster, tmp_path, mock, n)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed = time.monotonic()
    key = run_key(tmp_path / "out.jsonl")
    while any(_alive(worker_name(key, i)) for i in range(2)) or not _locks_free(tmp_path):
        # A worker holds its shard's lock as long as it can write: free locks mean no writer left.
        assert time.monotonic() - killed < 20, "workers outlived their driver"
        time.sleep(0.2)
    print(f"writers gone {time.monotonic() - killed:.1f} s after the driver was killed")
    shards = sorted((tmp_path / "out.shards").glob("shard-*.jsonl"))
    sizes = [p.stat().st_size for p in shards]
    time.sleep(2.0)
    assert [p.stat().st_size for p in shards] == sizes, "something still writes the shards"
    done_before = sum(map(_lines, shards))  # output and errors files of both shards
    assert 0 < done_before < n
    rc, out, err = _finish(_driver(cluster, tmp_path, server.url, "--concurrency", "8", "--no-progress"))
    assert rc == 0, err[-3000:]
    _expect_exactly_once(tmp_path, n)
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["skipped_already_done"] == done_before  # nothing written was sent again
    assert summary["succeeded"] == n - done_before


def _locks_free(tmp_path) -> bool:
    try:
        for i in range(2):
            os.close(take_lock(tmp_path / "out.shards" / f"shard-{i:03d}.jsonl.lock", "test"))
    except LockBusy:
        return False
    return True


def _alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def test_two_workers_hold_one_shared_rpm_budget_against_the_mock(cluster, tmp_path, mock):
    n, rpm = 600, 1800  # 30 requests/s for the whole cluster: about 20 s
    write_requests(tmp_path / "in.jsonl", n)
    log = tmp_path / "mock.log"
    server = mock("--rpm", str(rpm), "--log-requests", str(log))
    proc = _driver(cluster, tmp_path, server.url, "--concurrency", "32", "--rpm", str(rpm))
    rc, out, err = _finish(proc)
    counts = server.stop()
    assert rc == 0, err[-3000:]
    _expect_exactly_once(tmp_path, n)
    times = [float(line.split()[0]) for line in log.read_text().splitlines() if line.endswith(" 200")]
    window = times[-1] - times[0]
    allowed = rpm / 60 * window + rpm / 60  # the mock's bucket holds one second and starts full
    assert len(times) / allowed >= 0.9, (len(times), window)
    assert counts.get("429", 0) <= 0.005 * counts["total"], counts
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    workers = summary["workers"]
    assert all(w["succeeded"] > n / 4 for w in workers)  # both shards sent, each under the shared budget
    # About one lease per second per worker, not one call per request.
    assert all(0 < w["lease_calls"] <= 2 * window for w in workers), workers
    assert summary["ray"]["budget_calls"]["lease"] == sum(w["lease_calls"] for w in workers)
    final = [line for line in err.splitlines() if line.startswith("[ray]")][-1]
    assert f"{n:,}/{n:,}" in final and "w0:" in final and "w1:" in final
