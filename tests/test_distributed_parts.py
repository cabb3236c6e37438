"""The Ray runner's parts without a cluster: sharding, shard files, the fold into the output, the budget."""

import asyncio
import subprocess
import sys
from collections import Counter

import pytest

from odie_async.distributed.budget import Budget, LeasedLimits
import orjson

from odie_async.distributed.shards import RunLayout, shard_of
from odie_async.exceptions import ConfigError
from odie_async.engine.checkpoint import Result, ResultStore
from tests.helpers import ids_in


def test_shard_of_is_stable_across_processes_and_spreads_ids():
    ids = [f"req-{i}" for i in range(4000)]
    here = [shard_of(i, 4) for i in ids]
    code = "import sys; from odie_async.distributed.shards import shard_of; " \
           "print(','.join(str(shard_of(f'req-{i}', 4)) for i in range(4000)))"
    # A fresh interpreter has another hash seed: Python's hash() would differ, the shard must not.
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", **_env()}).stdout.strip().split(",")
    assert here == [int(x) for x in there]
    counts = Counter(here)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 850


def _env():
    import os
    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


def _write(output, errors, ok_ids=(), failed_ids=(), digest=None):
    """Lines as a store writes them (each line's id carries the writing store's token)."""
    store = ResultStore(output, errors)
    store.open()
    for cid in [*ok_ids, *failed_ids]:
        store.expect(cid, digest)
    store.accept([Result(i, True, {"choices": []}, None, 200) for i in ok_ids]
                 + [Result(i, False, None, {"code": "x", "message": "m"}, 500) for i in failed_ids])
    store.close()


def test_the_output_store_folds_the_shards_in_and_keeps_answers_only_the_output_has(tmp_path):
    layout = RunLayout(tmp_path / "out.jsonl")
    _write(layout.output, layout.errors, ["plain", "a"], digest="old")
    assert layout.prepare(3, tmp_path / "in.jsonl") == 3
    _write(layout.shard_output(0), layout.shard_errors(0), ["a", "b"], digest="new")
    _write(layout.shard_output(2), layout.shard_errors(2), ["c"], ["d"], digest="new")
    shard = layout.shard_output(2)
    shard.write_bytes(shard.read_bytes() + b'{"custom_id": "to')  # torn tail
    store = ResultStore(layout.output)
    store.open()
    store.close()
    assert store.folded == {"output_records": 3, "error_records": 1}
    assert ids_in(layout.output) == Counter({"plain": 1, "a": 1, "b": 1, "c": 1})
    assert ids_in(layout.errors) == Counter({"d": 1})
    lines = {r["custom_id"]: r["request_digest"] for r in map(orjson.loads, layout.output.read_bytes().splitlines())}
    assert lines == {"plain": "old", "a": "new", "b": "new", "c": "new"}  # the shard's answer replaced the old one
    assert not layout.folder.exists() and not list(tmp_path.glob("*.compacting"))


def test_a_fold_cut_short_is_finished_by_the_next_store_without_a_line_twice(tmp_path, monkeypatch):
    from odie_async.engine import compaction

    layout = RunLayout(tmp_path / "out.jsonl")
    _write(layout.output, layout.errors, ["a", "b"], digest="old")
    layout.prepare(2, tmp_path / "in.jsonl")
    _write(layout.shard_output(0), layout.shard_errors(0), ["a", "c"], ["e"], digest="new")
    _write(layout.shard_output(1), layout.shard_errors(1), ["d"], digest="new")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a SIGKILL after the lines were appended, before the compaction

    monkeypatch.setattr(compaction, "compact", killed)
    with pytest.raises(KeyboardInterrupt):
        ResultStore(layout.output).open()
    monkeypatch.undo()
    assert ids_in(layout.output)["a"] == 2 and compaction.intent_path(layout.output).exists()
    store = ResultStore(layout.output)
    store.open()
    store.close()
    assert ids_in(layout.output, layout.errors) == Counter({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})


def test_a_shard_being_written_is_not_folded(tmp_path):
    layout = RunLayout(tmp_path / "out.jsonl")
    layout.prepare(2, tmp_path / "in.jsonl")
    _write(layout.shard_output(0), layout.shard_errors(0), ["a"])
    writer = ResultStore(layout.shard_output(0), layout.shard_errors(0), base=(layout.output, layout.errors))
    writer.open()
    try:
        with pytest.raises(ConfigError, match="is being written"):
            ResultStore(layout.output).open()
    finally:
        writer.close()
    assert not layout.output.exists() or not ids_in(layout.output)


def test_a_shard_store_counts_the_outputs_records_as_done(tmp_path):
    layout = RunLayout(tmp_path / "out.jsonl")
    _write(layout.output, layout.errors, ["a"], ["b"], digest="d1")
    layout.prepare(2, tmp_path / "in.jsonl")
    shard = ResultStore(layout.shard_output(0), layout.shard_errors(0), base=(layout.output, layout.errors))
    shard.open()
    assert shard.done("a") and shard.failed_before("b") and shard.changed("a", "d2") and not shard.done("c")
    assert (shard.resumed_ok, shard.resumed_failed) == (1, 1)
    shard.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_queues_leases_in_debt_so_the_cluster_keeps_its_rate():
    clock = FakeClock()
    budget = Budget(rpm=600, clock=clock)  # 10/s, buckets hold 0.5 s: 5
    assert budget.lease(0, 5, 0)["wait_s"] == 0  # the bucket starts full
    assert budget.lease(1, 5, 0)["wait_s"] == pytest.approx(0.5)
    assert budget.lease(0, 5, 0)["wait_s"] == pytest.approx(1.0)  # first come, first served
    clock.now += 1.0
    assert budget.lease(1, 5, 0)["wait_s"] == pytest.approx(0.5)
    budget.lease(1, 0, 0, returned_requests=5)  # an unspent lease comes back
    assert budget.lease(0, 5, 0)["wait_s"] == pytest.approx(0.5)


def test_budget_settles_tokens_and_spreads_a_pause():
    clock = FakeClock()
    budget = Budget(tpm=6000, clock=clock)  # 100 tokens/s, bucket 50
    assert budget.lease(0, 0, 50)["wait_s"] == 0
    # Real usage came out 40 tokens under the estimate: the next lease gets them.
    assert budget.lease(0, 0, 40, settle=-40)["wait_s"] == 0
    budget.pause(3.0)
    clock.now += 1.0
    grant = budget.lease(1, 0, 1)
    assert grant["pause_s"] == pytest.approx(2.0) and grant["wait_s"] >= 2.0
    assert budget.status(1)["pause_s"] == pytest.approx(2.0)


def test_budget_status_reports_the_driver_silence():
    clock = FakeClock()
    budget = Budget(clock=clock)
    clock.now += 4
    assert budget.status(0)["driver_silent_s"] == pytest.approx(4)
    budget.beat()
    assert budget.status(0)["driver_silent_s"] == 0
    assert budget.figures() == {"status": 2, "beat": 1}


async def _spend(limits: LeasedLimits, until: float, sent: list) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await limits.acquire(10)
        sent.append(loop.time())


def test_two_workers_share_one_budget_with_about_one_lease_per_second_each():
    budget = Budget(rpm=1200)  # 20/s shared

    async def lease(*args):
        await asyncio.sleep(0.001)  # a remote call
        return budget.lease(*args)

    async def main():
        workers = [LeasedLimits(lease, budget.pause, i, 1200, 0, workers=2) for i in range(2)]
        until = asyncio.get_running_loop().time() + 3.0
        sent: list[list] = [[], []]
        await asyncio.gather(*(_spend(w, until, s) for w, s in zip(workers, sent) for _ in range(8)))
        return workers, sent

    workers, sent = asyncio.run(main())
    total = len(sent[0]) + len(sent[1])
    # 3 s at 20/s plus the half-second bucket that starts full, plus at most one lease of 10 in hand.
    assert 55 <= total <= 80, total
    assert abs(len(sent[0]) - len(sent[1])) <= 12
    assert all(w.lease_calls <= 5 for w in workers), [w.lease_calls for w in workers]


def test_a_pause_one_worker_sees_reaches_the_cluster():
    budget = Budget(rpm=6000)

    async def lease(*args):
        return budget.lease(*args)

    async def main():
        a = LeasedLimits(lease, budget.pause, 0, 6000, 0, workers=2)
        b = LeasedLimits(lease, budget.pause, 1, 6000, 0, workers=2)
        a.pause_for(0.6)  # a got Retry-After
        start = asyncio.get_running_loop().time()
        await b.acquire()  # b's first lease carries the cluster's pause
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(main()) >= 0.55


def test_settled_tokens_travel_with_the_next_lease():
    calls = []

    async def lease(*args):
        calls.append(args)
        return {"requests": args[1], "tokens": args[2], "wait_s": 0.0, "pause_s": 0.0}

    async def main():
        limits = LeasedLimits(lease, lambda s: None, 0, 0, 60_000, workers=1, lease_s=0.01)
        await limits.acquire(8)  # lease 10 tokens
        limits.settle_tokens(8, 3)
        await limits.acquire(8)  # 2 left: lease again, reporting -5
        return limits

    limits = asyncio.run(main())
    assert [c[3] for c in calls] == [0.0, -5]
    assert limits.active and limits.tpm == 60_000 and not limits.rpm


def test_exit_codes_of_a_cluster_run():
    from odie_async.distributed.ray_batch import exit_code

    base = {"shutdown": None, "worker_errors": None, "failed": 0,
            "ledger": {"read": 5, "already_done": 1, "output": 4, "errors": 0, "unfinished": 0}}
    assert exit_code(base) == 0
    assert exit_code(base | {"failed": 2}) == 1
    assert exit_code(base | {"worker_errors": [{"type": "WorkerDied", "message": "m", "aborted": True}]}) == 3
    assert exit_code(base | {"worker_errors": [{"type": "OutputError", "message": "m", "exit_code": 4}]}) == 4
    assert exit_code(base | {"shutdown": {"signals": [15]}}) == 143
    assert exit_code(base | {"ledger": base["ledger"] | {"output": 3, "unfinished": 1}}) == 4  # nothing said why


class _FakeActorMethod:
    """``actor.method.remote(...)`` of a plain object, awaitable like an ObjectRef."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class _FakeBudgetActor:
    def __init__(self, budget: Budget) -> None:
        for name in ("lease", "pause", "status"):
            setattr(self, name, _FakeActorMethod(getattr(budget, name)))


def _shard_job(tmp_path, url, n, shards=2, index=0, **settings):
    from odie_async.distributed.worker import ShardJob
    from odie_async.engine.core import EngineSettings
    from tests.helpers import write_requests

    write_requests(tmp_path / "in.jsonl", n)
    layout = RunLayout(tmp_path / "out.jsonl")
    layout.prepare(shards, tmp_path / "in.jsonl")
    return ShardJob(index, shards, str(tmp_path / "in.jsonl"), str(layout.output), None,
                    EngineSettings(url, **settings)), layout


def test_a_shard_run_sends_only_its_shard_under_the_shared_budget(tmp_path):
    from odie_async.distributed.worker import ShardRun
    from odie_async.endpoints.mock_server import MockServer

    async def main():
        async with MockServer() as server:
            job, layout = _shard_job(tmp_path, server.base_url, 300, concurrency=8, rpm=60_000)
            summary = await ShardRun(job, _FakeBudgetActor(Budget(rpm=60_000))).run()
            return summary, layout

    summary, layout = asyncio.run(main())
    mine = {f"r{i}" for i in range(300) if shard_of(f"r{i}", 2) == 0}
    assert set(ids_in(layout.shard_output(0))) == mine
    assert summary["succeeded"] == len(mine) and summary["lease_calls"] >= 1 and "error" not in summary


def test_a_shard_run_stops_when_the_driver_goes_silent(tmp_path, monkeypatch):
    from odie_async.distributed import worker
    from odie_async.endpoints.mock_server import MockServer, MockSettings

    monkeypatch.setattr(worker, "STATUS_INTERVAL_S", 0.1)
    clock = FakeClock()
    budget = Budget(clock=clock)

    async def main():
        async with MockServer(settings=MockSettings(latency_ms=50)) as server:
            job, layout = _shard_job(tmp_path, server.base_url, 2000, concurrency=4)
            run = worker.ShardRun(job, _FakeBudgetActor(budget))
            task = asyncio.create_task(run.run())
            await asyncio.sleep(0.5)
            clock.now += worker.DRIVER_SILENCE_S + 1  # the driver stopped beating
            summary = await asyncio.wait_for(task, 10)
            written = _lines(layout.shard_output(0))
            await asyncio.sleep(0.3)
            return summary, written, _lines(layout.shard_output(0))

    summary, written, later = asyncio.run(main())
    assert summary["shutdown"] is not None and 0 < summary["succeeded"] < 1000
    assert written == later == summary["succeeded"]  # nothing writes after the run returned


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_shard_run_skips_what_the_output_holds_and_refuses_changed_requests(tmp_path):
    from dataclasses import replace

    from odie_async.distributed.worker import ShardRun
    from odie_async.endpoints.mock_server import MockServer

    async def main(job, layout):
        async with MockServer() as server:
            job = replace(job, settings=replace(job.settings, base_url=server.base_url))
            summary = await ShardRun(job, _FakeBudgetActor(Budget())).run()
            return summary, server.request_count

    job, layout = _shard_job(tmp_path, "http://unused.invalid/v1", 60, concurrency=4)
    mine = sorted(f"r{i}" for i in range(60) if shard_of(f"r{i}", 2) == 0)
    first, sent = asyncio.run(main(job, layout))
    assert first["exit_code"] == 0 and sent == len(mine)
    store = ResultStore(layout.output)
    store.open()  # the run's end: the shard is folded into the output
    store.close()
    again, sent = asyncio.run(main(job, layout))
    assert again["exit_code"] == 0 and sent == 0 and again["skipped_already_done"] == len(mine)
    changed, sent = asyncio.run(main(replace(job, model="other"), layout))
    assert changed["exit_code"] == 2 and sent == 0 and "--resend-changed" in changed["error"]["message"]
    resent, sent = asyncio.run(main(replace(job, model="other", resend_changed=True), layout))
    assert resent["exit_code"] == 0 and sent == len(mine)
    assert sorted(ids_in(layout.shard_output(0))) == mine
