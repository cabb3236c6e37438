"""The Python API: sync and async forms, the sync form inside a running event loop (a notebook cell)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import select
import socket
import threading

import numpy as np
import pytest

import odie_async
from odie_async.evaluation import evaluate as evaluate_module
from odie_async.exceptions import ConfigError, InputError
from odie_async.runtime import called_from_loop, run_sync

from .pipeline_support import config_data

RECORD = {"instruction": "List the venues.", "text": "Harbor Hall opened in 1998.",
          "gold": "| Name | Year |\n| --- | --- |\n| Harbor Hall | 1998 |",
          "output": "| Name | Year |\n| --- | --- |\n| Harbor Hall | 1998 |",
          "category": "fixed header", "difficulty": "easy", "source_type": "retrieve", "domain": "news"}


class HashEncoder:
    """A stand-in for the sentence encoder: equal texts give equal unit vectors."""

    def encode(self, texts):
        rows = [np.frombuffer(hashlib.sha256(t.lower().encode()).digest(), dtype=np.uint8).astype(np.float32) - 127.5
                for t in texts]
        rows = np.array(rows, dtype=np.float32).reshape(len(texts), 32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def fake_encoder(monkeypatch):
    monkeypatch.setattr(evaluate_module, "get_embedder", lambda **_kw: HashEncoder())


def test_public_names():
    for name in ("generate", "agenerate", "evaluate", "aevaluate", "OdieError", "__version__"):
        assert name in odie_async.__all__ and hasattr(odie_async, name)


def test_run_sync_inside_a_running_loop_uses_a_worker_thread():
    async def inner():
        return threading.current_thread().name, called_from_loop()

    async def cell():
        return run_sync(inner())

    assert run_sync(inner()) == (threading.current_thread().name, False)
    name, flagged = asyncio.run(cell())
    assert name == "odie-run-sync" and flagged


def test_run_sync_raises_the_coroutines_error_in_the_caller():
    async def broken():
        raise odie_async.OdieError("from the worker")

    async def cell():
        run_sync(broken())

    with pytest.raises(odie_async.OdieError, match="from the worker"):
        asyncio.run(cell())


def test_sync_generate_inside_a_running_loop_runs_the_pipeline_with_a_notebook_bar(tmp_path, capsys):
    data = config_data(tmp_path, base_url="mock", structured="off", records=6)

    async def notebook_cell():
        return odie_async.generate(data, tmp_path / "out", progress=True)

    summary = asyncio.run(notebook_cell())
    assert summary["records"]["planned"] == 6 and not summary["interrupted"]
    assert summary["engine"]["failed"] == 0 and summary["engine"]["succeeded"] > 0
    exported = sum(1 for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl")
                   for _ in (tmp_path / "out" / name).open())
    assert exported == 12  # every record has one fate per variant
    err = capsys.readouterr().err
    assert "generate:" in err and "[generate]" not in err  # tqdm's bar, not the terminal line
    again = asyncio.run(odie_async.agenerate(data, tmp_path / "out", progress=False))
    assert again["engine"]["attempts"] == 0  # the rerun is answered from the checkpoint


def test_sync_evaluate_inside_a_running_loop_scores_files_and_records(tmp_path, fake_encoder):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([RECORD, {**RECORD, "output": "no table here"}]))

    async def notebook_cell():
        return odie_async.evaluate(path, json_out=tmp_path / "scores.json", progress=True)

    report = asyncio.run(notebook_cell())
    assert report["n"] == 2 and report["file"] == str(path)
    # 2 of 2 predicted header cells match, 2 of 4 gold ones are found: F1 of 1 and 1/2
    assert report["header"]["overall"] == pytest.approx(100 * 2 / 3)
    assert json.loads((tmp_path / "scores.json").read_text())["n"] == 2
    from_records = odie_async.evaluate([RECORD])
    assert from_records["header"]["overall"] == pytest.approx(100.0)
    both = asyncio.run(odie_async.aevaluate([path, path], progress=False))
    assert [r["n"] for r in both] == [2, 2]


def test_evaluate_names_a_bad_record(fake_encoder):
    with pytest.raises(odie_async.OdieError, match="records: item 1: missing field 'output'"):
        odie_async.evaluate([RECORD, {k: v for k, v in RECORD.items() if k != "output"}])


def test_run_batch_returns_results_in_input_order_even_inside_a_running_loop():
    from odie_async.endpoints.mock_server import MockServer

    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 8} for i in range(30)]
    ready, done = threading.Event(), threading.Event()
    server = {}

    async def serve():  # the endpoint lives on its own loop, as a real server would
        async with MockServer() as mock:
            server["mock"] = mock
            ready.set()
            await asyncio.to_thread(done.wait)

    thread = threading.Thread(target=lambda: asyncio.run(serve()))
    thread.start()
    ready.wait(10)

    async def notebook_cell():  # the sync form, called with an event loop running, as in a notebook
        return odie_async.run_batch(bodies, base_url=server["mock"].base_url, progress=False)

    try:
        results = asyncio.run(notebook_cell())
    finally:
        done.set()
        thread.join(10)
    assert [r["custom_id"] for r in results] == [str(i) for i in range(30)]
    assert all(r["response"]["status_code"] == 200 for r in results) and server["mock"].request_count == 30


def test_run_batch_and_arun_batch_are_one_pair_returning_the_same_thing(tmp_path):
    from odie_async.endpoints.mock_server import MockServer

    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 8} for i in range(5)]

    async def both():
        async with MockServer() as mock:
            lines = await odie_async.arun_batch(bodies, base_url=mock.base_url, progress=False)
            summary = await odie_async.arun_batch(bodies, tmp_path / "a.jsonl", base_url=mock.base_url, progress=False)
            return lines, summary, mock.base_url

    async_lines, async_summary, _ = asyncio.run(both())
    assert [line["custom_id"] for line in async_lines] == [str(i) for i in range(5)]
    assert isinstance(async_summary, dict) and async_summary["succeeded"] == 5

    async def sync_inside_a_loop():
        async with MockServer() as mock:
            return (await asyncio.to_thread(odie_async.run_batch, bodies, base_url=mock.base_url, progress=False),
                    await asyncio.to_thread(odie_async.run_batch, bodies, tmp_path / "s.jsonl",
                                            base_url=mock.base_url, progress=False))

    sync_lines, sync_summary = asyncio.run(sync_inside_a_loop())
    assert [line["custom_id"] for line in sync_lines] == [line["custom_id"] for line in async_lines]
    assert type(sync_summary) is type(async_summary) and set(sync_summary) == set(async_summary)
    assert sync_summary["succeeded"] == 5 and not hasattr(odie_async.engine.batch, "run_batch")


def test_run_batch_writes_files_and_resumes(tmp_path):
    from odie_async.endpoints.mock_server import MockServer

    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m", "messages": [{"role": "user", "content": f"x{i}"}]}} for i in range(10)]

    async def go():
        async with MockServer() as server:
            first = await odie_async.arun_batch(lines[:6], tmp_path / "out.jsonl", base_url=server.base_url,
                                                progress=False)
            second = await odie_async.arun_batch(lines, tmp_path / "out.jsonl", base_url=server.base_url,
                                                 progress=False)
            return first, second, server.request_count

    first, second, sent = asyncio.run(go())
    assert first["succeeded"] == 6 and second["succeeded"] == 4 and sent == 10, "the rerun sent only the rest"
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 10


# -- malformed input: an OdieError subclass every time, nothing sent ----------------------------------

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

BAD_BATCHES = {
    "a non-dict record": (([BODY, 5],), {}, InputError),
    "a line missing fields": (([BODY, {"custom_id": "x", "body": BODY}],), {}, InputError),
    "no records": (([],), {}, ConfigError),
    "not an iterable": ((5,), {}, ConfigError),
    "concurrency 0": (([BODY],), {"concurrency": 0}, ConfigError),
    "concurrency 1e8": (([BODY],), {"concurrency": 10 ** 8}, ConfigError),
    "timeout 0": (([BODY],), {"timeout": 0}, ConfigError),
    "timeout 1m30": (([BODY],), {"timeout": "1m30"}, ConfigError),
    "rpm nan": (([BODY],), {"rpm": float("nan")}, ConfigError),
    "tpm inf": (([BODY],), {"tpm": float("inf")}, ConfigError),
    "max_attempts 0": (([BODY],), {"max_attempts": 0}, ConfigError),
    "a base_url that is no URL": (([BODY],), {"base_url": 5}, ConfigError),
    "no endpoint": (([BODY],), {"base_url": None}, ConfigError),
    "endpoints as a string": (([BODY],), {"endpoints": "http://127.0.0.1:9/v1"}, ConfigError),
    "an endpoint that is a number": (([BODY],), {"endpoints": [5]}, ConfigError),
    "a missing input file": (("no-such-input.jsonl",), {}, ConfigError),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_run_batch_refuses_malformed_input_with_an_odie_error_before_sending(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, options, expected = BAD_BATCHES[case]
    with socket.socket() as endpoint:  # listening, never accepting: a request would leave a connection queued
        endpoint.bind(("127.0.0.1", 0))
        endpoint.listen()
        options = {"base_url": f"http://127.0.0.1:{endpoint.getsockname()[1]}/v1", "progress": False, **options}
        with pytest.raises(expected):
            odie_async.run_batch(*args, **options)
        assert select.select([endpoint], [], [], 0)[0] == []  # nothing connected


@pytest.mark.parametrize("predictions, options", [
    ([], {}), (5, {}), ([5], {}), ([{"instruction": "i"}], {}), ("no-such-predictions.json", {}),
    ([RECORD], {"batch_size": 0}), ([RECORD], {"threads": -1}),
], ids=["empty list", "a number", "a list of numbers", "a record missing fields", "a missing file",
        "batch_size 0", "threads -1"])
def test_evaluate_refuses_malformed_input_with_an_odie_error(predictions, options, fake_encoder, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(odie_async.OdieError):
        odie_async.evaluate(predictions, progress=False, **options)
