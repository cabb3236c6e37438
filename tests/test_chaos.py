"""Property-based chaos: whatever the endpoint answers and whatever stops a run, nothing is lost.

A scripted upstream (a fake transport under the real ``ChatClient``, so every
answer goes through the real translation and checks) draws each answer from a
palette of valid answers, malformed JSON, wrong field types, missing fields,
4xx, 5xx, 429 with random ``Retry-After`` (now and then beyond the cap),
resets and stalls. Runs are disrupted by SIGINT, SIGTERM, a double SIGINT and
a full disk, then rerun until they finish. The invariant: every record exactly
once across output and errors, and every run's exit code and ledger agree with
what its files gained. One more property kills real ``odie batch`` processes
with SIGKILL against a real loopback server, and a slow one does the same to
``odie batch --ray`` drivers on a local Ray cluster, deletes lines of the
output and the shards, and reruns on Ray or plainly, then ``--merge-only``.

Profiles: ``ci`` (default; seconds) and ``long`` (``ODIE_CHAOS_PROFILE=long``,
400 + 20 examples; about 6 minutes on 2 cores, going by the ci profile's pace).
"""

import asyncio
import errno
import os
import random
import signal
import subprocess
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odie_async.engine.batch import run_engine_batch
from odie_async.engine.client import ChatClient
from odie_async.engine.core import Engine, EngineSettings
from odie_async.exceptions import EndpointStopped, OutputError, TransportError
from tests.helpers import ids_in, write_requests
from tests.ray_cluster import cluster, driver  # noqa: F401  (a fixture)
from tests.test_batch_cli import ODIE, Mock

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = settings.get_profile(os.environ.get("ODIE_CHAOS_PROFILE", "ci"))

OK = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
ANSWERS = ("ok", "ok", "malformed_json", "usage_type", "usage_string", "no_choices", "400", "404", "500",
           "503", "429", "429_long", "reset", "stall")
TIMEOUT_S = 0.05


class ScriptedTransport(ChatClient):
    """The real client with the network replaced by random answers drawn from ``palette``."""

    def __init__(self, palette, seed: int, long_waits: bool = True) -> None:
        super().__init__("http://scripted.invalid/v1", "sk-chaos-secret", 64, TIMEOUT_S)
        self.palette = palette if long_waits else [a for a in palette if a != "429_long"] or ["ok"]
        self.rng = random.Random(seed)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def _exchange(self, path, payload):
        await asyncio.sleep(self.rng.random() * 0.002)
        kind = self.rng.choice(self.palette)
        if kind == "reset":
            raise TransportError("ClientOSError: connection reset by peer")
        if kind == "stall":
            await asyncio.sleep(TIMEOUT_S)
            raise TransportError("no answer within the timeout")
        if kind in ("429", "429_long"):
            wait = self.rng.choice(["0", "0.01", "0.02"]) if kind == "429" else "86400"
            return 429, {"retry-after": wait}, b'{"error": {"message": "slow down"}}'
        if kind.isdigit():
            return int(kind), {}, b'{"error": {"message": "scripted"}}'
        body = dict(OK)
        if kind == "malformed_json":
            return 200, {}, b'{"choices": [{"mess'
        if kind == "usage_type":
            body["usage"] = "n/a"
        elif kind == "usage_string":
            body["usage"] = {"prompt_tokens": "3", "completion_tokens": "1"}
        elif kind == "no_choices":
            body = {"usage": OK["usage"]}
        return 200, {}, orjson.dumps(body)


def _full_disk(budget: int):
    left = {"n": budget}

    def write(fd, data):
        room = left["n"]
        if room < len(data):
            os.write(fd, data[:max(room, 0)])
            left["n"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)
        left["n"] -= len(data)
    return write


def _lines(path):
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _check_run(report, disruption, before, out, err, n):
    """The exit code and the ledger agree with what the files gained."""
    ledger = report.ledger
    assert _lines(out) - before[0] == ledger["output"], (ledger, disruption)
    assert _lines(err) - before[1] == ledger["errors"], (ledger, disruption)
    assert ledger["read"] == ledger["already_done"] + ledger["output"] + ledger["errors"] + ledger["unfinished"]
    assert ledger["read"] + ledger["not_read"] == n or report.exit_code in (130, 143)  # a signal in the scan
    code = report.exit_code
    if code in (0, 1):  # finished: 1 exactly when some record of the input lies in the errors file
        assert ledger["unfinished"] == 0 and ledger["not_read"] == 0 and report.error is None
        assert code == (1 if _lines(err) else 0), (code, ledger)
    elif code == 3:
        assert isinstance(report.error, EndpointStopped)
    elif code == 4:
        assert isinstance(report.error, OutputError), report.error
    else:
        assert code in (130, 143) and report.signal, (code, report.error)
    for path in (out, err):
        assert not path.exists() or path.read_bytes().endswith(b"\n") or not path.read_bytes()


async def _one_run(tmp_path, cfg, disruption, seed, final):
    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    engine_settings = EngineSettings(base_url="http://scripted.invalid/v1", concurrency=cfg["concurrency"],
                                     max_attempts=cfg["attempts"], timeout_s=TIMEOUT_S, backoff_base_s=0.001,
                                     backoff_max_s=0.01, max_retry_wait_s=1, drain_timeout_s=0.05,
                                     learn_limits=False)
    client = ScriptedTransport(cfg["palette"], seed, long_waits=not final)
    engine = Engine(engine_settings, out, keep_bodies=False, client=client)
    kind, amount = disruption
    if kind == "disk_full":
        engine.store.write = _full_disk(amount)
    before = (_lines(out), _lines(err))
    loop = asyncio.get_running_loop()
    timers = []
    if kind in ("SIGINT", "SIGTERM", "double"):
        sig = signal.SIGTERM if kind == "SIGTERM" else signal.SIGINT
        timers.append(loop.call_later(amount / 1000, os.kill, os.getpid(), sig))
        if kind == "double":
            timers.append(loop.call_later(amount / 1000 + 0.005, os.kill, os.getpid(), sig))

    async def guarded():
        try:
            return await run_engine_batch(tmp_path / "in.jsonl", out, engine_settings, progress=False, engine=engine)
        finally:
            for timer in timers:  # no signal may outlive the run's handlers
                timer.cancel()

    report = await asyncio.wait_for(guarded(), 30)
    _check_run(report, disruption, before, out, err, cfg["n"])
    return report


DISRUPTIONS = st.one_of(
    st.tuples(st.sampled_from(["SIGINT", "SIGTERM", "double"]), st.integers(0, 80)),
    st.tuples(st.just("disk_full"), st.integers(0, 4000)),
    st.tuples(st.just("none"), st.just(0)),
)


@PROFILE
@given(n=st.integers(5, 60), palette=st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=12),
       concurrency=st.integers(1, 16), attempts=st.integers(1, 4), seed=st.integers(0, 2**32),
       disruptions=st.lists(DISRUPTIONS, max_size=4))
def test_every_record_exactly_once_whatever_happens(tmp_path_factory, n, palette, concurrency, attempts, seed,
                                                    disruptions):
    tmp_path = tmp_path_factory.mktemp("chaos")
    write_requests(tmp_path / "in.jsonl", n)
    palette = palette + ["ok"] * len(palette)  # at least half the answers valid, so reruns converge
    cfg = {"palette": palette, "concurrency": concurrency, "attempts": attempts, "n": n}

    async def go():
        for i, disruption in enumerate(disruptions):
            await _one_run(tmp_path, cfg, disruption, seed + i, final=False)
        for i in range(40):  # reruns until one finishes; each one writes what it got
            report = await _one_run(tmp_path, cfg, ("none", 0), seed + 100 + i, final=True)
            if report.exit_code in (0, 1):
                return report
        raise AssertionError("the reruns never finished")

    report = asyncio.run(go())
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == n and set(counts.values()) == {1}
    assert report.exit_code == (1 if _lines(tmp_path / "out.errors.jsonl") else 0)
    assert "sk-chaos-secret" not in (tmp_path / "out.errors.jsonl").read_text() if counts else True


@settings(PROFILE, max_examples=max(2, PROFILE.max_examples // 20))  # processes: seconds per example
@given(fault_rate=st.sampled_from([0.1, 0.3, 0.5]), kill_after=st.floats(0.3, 1.2), seed=st.integers(0, 99))
def test_sigkill_against_a_real_loopback_server_then_reruns(tmp_path_factory, fault_rate, kill_after, seed):
    tmp_path = tmp_path_factory.mktemp("kill9")
    write_requests(tmp_path / "in.jsonl", 300)
    mock = Mock("--latency-ms", "5", "--fault-rate", str(fault_rate), "--seed", str(seed), "--stall-s", "0.5")
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.url,
                  "--no-progress", "--timeout", "0.3", "--max-attempts", "3", "--concurrency", "16"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_after)
        proc.kill()
        proc.wait()
        for _ in range(5):
            final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if final.returncode in (0, 1):
                break
        assert final.returncode in (0, 1), final.stderr[-1000:]
    finally:
        mock.proc.kill()
        mock.proc.wait()
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert final.returncode == (1 if _lines(tmp_path / "out.errors.jsonl") else 0)


# -- Ray shards and the fold into the output ---------------------------------------------------------

def _shard_writers_gone(tmp_path, timeout=40.0):
    """Wait until no worker of a killed driver holds a shard's lock (they stop when the driver is silent)."""
    from odie_async.engine.lockfile import LockBusy, take_lock

    folder = tmp_path / "out.shards"
    deadline = time.monotonic() + timeout
    while folder.is_dir():
        try:
            for lock in [folder / f"{p.name}.lock" for p in folder.glob("shard-[0-9][0-9][0-9].jsonl")]:
                os.close(take_lock(lock, "chaos"))
            return
        except LockBusy:
            assert time.monotonic() < deadline, "shard workers outlived their driver"
            time.sleep(0.2)


def _delete_lines(paths, count, rng):
    """Delete ``count`` random whole lines across ``paths`` (a user editing results by hand)."""
    for _ in range(count):
        path = rng.choice([p for p in paths if p.exists()] or [None])
        if path is None or not path.read_bytes():
            return
        lines = path.read_bytes().splitlines(keepends=True)
        del lines[rng.randrange(len(lines))]
        path.write_bytes(b"".join(lines))


def _ledger_holds(tmp_path):
    ledger = orjson.loads((tmp_path / "out.summary.json").read_bytes())["ledger"]
    assert ledger["read"] == ledger["already_done"] + ledger["output"] + ledger["errors"] + ledger["unfinished"]


@pytest.mark.slow
@settings(PROFILE, max_examples=max(2, PROFILE.max_examples // 40))  # a Ray driver takes seconds to start
@given(kill_after=st.floats(3.0, 12.0), deleted=st.integers(0, 30), rerun_on_ray=st.booleans(),
       fault_rate=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 99))
def test_ray_shards_and_the_fold_keep_every_record_once_through_sigkill_and_deleted_lines(
        cluster, tmp_path_factory, kill_after, deleted, rerun_on_ray, fault_rate, seed):
    tmp_path = tmp_path_factory.mktemp("raychaos")
    n = 600
    write_requests(tmp_path / "in.jsonl", n)
    mock = Mock("--latency-ms", "5", "--fault-rate", str(fault_rate), "--seed", str(seed), "--stall-s", "0.5")
    options = ("--no-progress", "--max-attempts", "2", "--concurrency", "8", "--timeout", "0.3")
    try:
        proc = driver(cluster, tmp_path, mock.url, *options)
        time.sleep(kill_after)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        _shard_writers_gone(tmp_path)
        shards = [p for p in (tmp_path / "out.shards").glob("shard-*.jsonl") if "metrics" not in p.name]
        _delete_lines([tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl", *shards], deleted, random.Random(seed))
        for _ in range(4):
            run = driver(cluster, tmp_path, mock.url, *options, ray=rerun_on_ray)
            out, err = run.communicate(timeout=240)
            if (tmp_path / "out.summary.json").exists():
                _ledger_holds(tmp_path)
            if run.returncode in (0, 1):
                break
        assert run.returncode in (0, 1), err[-2000:]
        merged = driver(cluster, tmp_path, None, "--merge-only")
        merged.communicate(timeout=120)
    finally:
        mock.proc.kill()
        mock.proc.wait()
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == n and set(counts.values()) == {1}
    failed = _lines(tmp_path / "out.errors.jsonl")
    assert run.returncode == merged.returncode == (1 if failed else 0)
