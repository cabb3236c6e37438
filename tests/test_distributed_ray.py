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
from tests.ray_cluster import cluster, driver  # noqa: F401  (a fixture)
from tests.test_batch_cli import Mock

ray = pytest.importorskip("ray")

from odie_async.distributed.cluster import NAMESPACE, run_key, worker_name  # noqa: E402
from odie_async.engine.lockfile import LockBusy, take_lock  # noqa: E402

pytestmark = pytest.mark.slow
ODIE = [sys.executable, "-m", "odie_async"]


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


_driver = driver


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
    shards = _shard_files(tmp_path)
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


def _shard_files(tmp_path) -> list[Path]:
    """The shards' output and errors files (not their metrics logs)."""
    return [tmp_path / "out.shards" / f"shard-{i:03d}{kind}.jsonl" for i in range(2) for kind in ("", ".errors")]


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


def _kill_driver(cluster, tmp_path, proc):
    """SIGKILL the driver; wait until no worker writes a shard any more."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed = time.monotonic()
    key = run_key(tmp_path / "out.jsonl")
    while any(_alive(worker_name(key, i)) for i in range(2)) or not _locks_free(tmp_path):
        assert time.monotonic() - killed < 30, "workers outlived their driver"
        time.sleep(0.2)


def test_a_ray_rerun_with_changed_requests_exits_2_unless_resend_changed(cluster, tmp_path, mock):
    n = 200
    write_requests(tmp_path / "in.jsonl", n)
    server = mock()
    assert _finish(_driver(cluster, tmp_path, server.url, "--no-progress"))[0] == 0
    rc, _, err = _finish(_driver(cluster, tmp_path, server.url, "--no-progress", "--model", "other"))
    assert rc == 2 and "--resend-changed" in err
    rc, _, err = _finish(_driver(cluster, tmp_path, server.url, "--no-progress", "--model", "other",
                                 "--resend-changed"))
    assert rc == 0, err[-3000:]
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(lines) == n and {x["response"]["body"]["model"] for x in lines} == {"other"}
    _expect_exactly_once(tmp_path, n)
    assert server.stop()["total"] == 2 * n  # the refused rerun sent nothing


def test_ray_and_plain_runs_share_one_output_and_merge_only_names_what_is_missing(cluster, tmp_path, mock):
    n = 3000
    proc, server = _start_mid_run(cluster, tmp_path, mock, n)
    plain = _finish(_driver(cluster, tmp_path, server.url, "--no-progress", ray=False), timeout=60)
    assert plain[0] == 2 and "in use by another run" in plain[2]  # a plain run waits for the Ray run's end
    _kill_driver(cluster, tmp_path, proc)
    rc, out, err = _finish(_driver(cluster, tmp_path, None, "--merge-only"))
    assert rc == 1 and "have no line yet (first: 'r" in err, err[-2000:]
    done_before = _lines(tmp_path / "out.jsonl")
    assert 0 < done_before < n and not (tmp_path / "out.shards" / "shard-000.jsonl").exists()
    rc, out, err = _finish(_driver(cluster, tmp_path, server.url, "--no-progress", ray=False))
    assert rc == 0, err[-3000:]
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["skipped_already_done"] == done_before  # the plain run resent nothing the Ray run wrote
    rc, out, err = _finish(_driver(cluster, tmp_path, server.url, "--no-progress"))
    assert rc == 0, err[-3000:]
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["ledger"]["already_done"] == n and summary["ledger"]["output"] == 0
    assert _finish(_driver(cluster, tmp_path, None, "--merge-only"))[0] == 0
    _expect_exactly_once(tmp_path, n)  # nothing only the output held was deleted
    assert server.stop()["total"] <= n + 8  # only requests in flight at the kill went twice


def test_ray_takes_a_config_with_a_pool_of_two_endpoints(cluster, tmp_path, mock):
    n = 400
    write_requests(tmp_path / "in.jsonl", n)
    first, second = mock("--latency-ms", "5"), mock("--latency-ms", "5")
    config = tmp_path / "pool.yaml"
    config.write_text(f"endpoints:\n  - base_url: {first.url}\n  - base_url: {second.url}\n")
    rc, out, err = _finish(_driver(cluster, tmp_path, None, "--no-progress", "--config", str(config)))
    assert rc == 0, err[-3000:]
    _expect_exactly_once(tmp_path, n)
    served = [first.stop().get("total", 0), second.stop().get("total", 0)]
    assert sum(served) == n and min(served) > 0, served
