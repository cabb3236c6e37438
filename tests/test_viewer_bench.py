"""``odie view`` on ``odie bench`` results: the bench route, refreshes, damaged and missing files, compare.

The results come from actually running ``odie bench`` against ``odie mock-server``.
"""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from odie_async.exceptions import ConfigError
from odie_async.viewer.runs import load_runs
from odie_async.viewer.server import serve
from tests.test_batch_cli import Mock

ODIE = [sys.executable, "-m", "odie_async"]
MOCK = ("--latency-ms", "20", "--stream", "--ttft-ms", "10", "--itl-ms", "2")


def bench_against_mock(out: Path, *options: str) -> subprocess.CompletedProcess:
    """``odie bench`` at concurrency 1 and 4 for a second each against a streaming mock (a few seconds)."""
    mock = Mock(*MOCK)
    try:
        return subprocess.run(ODIE + ["bench", "--base-url", mock.url, "--output", str(out), "--concurrency", "1,4",
                                      "--duration", "1s", "--synthetic", "prompt_tokens=8,output_tokens=4", *options],
                              capture_output=True, text=True, timeout=120)
    finally:
        mock.stop()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    done = bench_against_mock(out, "--slo", "latency_p95=2s")
    assert done.returncode == 0, done.stderr
    return out


def _copy(bench_dir: Path, target: Path) -> Path:
    shutil.copytree(bench_dir, target)
    return target


def _get(url: str):
    async def main():
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.read()
    return asyncio.run(main())


class Viewer:
    """``odie view``'s server on loopback, in a thread of its own, for the synchronous tests."""

    def __init__(self, *runs: str) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(serve(load_runs(list(runs)), "127.0.0.1", 0),
                                                                 self.loop).result(30)

    def get(self, path: str):
        status, body = _get(self.url + path)
        return status, (orjson.loads(body) if status == 200 else body.decode())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def viewer():
    started = []

    def start(*runs):
        started.append(Viewer(*map(str, runs)))
        return started[-1]

    yield start
    for v in started:
        v.close()


def test_a_bench_folder_and_its_results_file_are_bench_runs(bench_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "results.json").write_bytes(orjson.dumps({"accuracy": 0.9}))  # not odie bench's: a plain folder
    (plain / "a.jsonl").write_text('{"id": 1}\n')
    runs = load_runs([str(bench_dir), str(bench_dir / "results.json"), str(plain)])
    assert [(r.name, r.kind) for r in runs] == [("b", "bench"), ("b'", "bench"), ("plain", "folder")]
    assert runs[0].describe()["bench"] and not runs[2].describe()["bench"] and runs[0].describe()["files"] == []
    assert runs[1].shown == str(bench_dir)


def test_bench_route_serves_the_results_and_the_settings_and_follows_a_rewrite(bench_dir, tmp_path, viewer):
    folder = _copy(bench_dir, tmp_path / "run")
    written = orjson.loads((folder / "results.json").read_bytes())
    v = viewer(folder)
    assert v.get("api/runs")[1][0]["kind"] == "bench"
    status, got = v.get("api/runs/0/bench")
    assert status == 200 and got["error"] is None and not got["waiting"]
    assert got["results"] == written and [p["load"] for p in got["results"]["points"]] == [1, 4]
    assert got["results"]["slo_ms"] == {"latency_p95": 2000.0} and got["results"]["recommended"]["point"]["label"]
    assert got["recommended"] == (folder / "recommended.yaml").read_text() and "concurrency:" in got["recommended"]
    assert got["folder"] == str(folder)
    assert v.get(f"api/runs/0/bench?since={got['version']}")[1] == {"version": got["version"], "unchanged": True}
    written["workload"] = "rewritten by a second bench"
    written["points"] = written["points"][:1]
    (folder / "results.json").write_bytes(orjson.dumps(written))
    again = v.get(f"api/runs/0/bench?since={got['version']}")[1]
    assert again["version"] != got["version"] and again["results"]["workload"] == "rewritten by a second bench"
    assert len(again["results"]["points"]) == 1


def test_a_bench_still_running_is_waited_for(bench_dir, tmp_path, viewer):
    later = tmp_path / "later"
    v = viewer(later / "results.json")  # odie bench writes its folder only when it ends
    first = v.get("api/runs/0/bench")[1]
    assert first["waiting"] and first["results"] is None and first["version"] == ""
    assert v.get("api/runs/0/bench?since=")[1]["unchanged"]
    _copy(bench_dir, later)
    got = v.get("api/runs/0/bench?since=")[1]
    assert not got["waiting"] and len(got["results"]["points"]) == 2 and got["recommended"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: b'{"points": [', "not JSON"),
    (lambda r: orjson.dumps([r]), "expected a JSON object, found list"),
    (lambda r: orjson.dumps({k: v for k, v in r.items() if k != "points"}), "missing key 'points'"),
    (lambda r: orjson.dumps(r | {"points": [{k: v for k, v in p.items() if k != "label"} for p in r["points"]]}),
     "points[0]: missing key 'label'"),
    (lambda r: orjson.dumps(r | {"points": [r["points"][0] | {"latency_ms": "fast"}]}), "'latency_ms' is neither"),
    (lambda r: orjson.dumps(r | {"recommended": 4}), "'recommended' is neither"),
])
def test_a_damaged_bench_is_a_config_error_naming_the_file(bench_dir, tmp_path, damage, message):
    folder = _copy(bench_dir, tmp_path / "bad")
    results = orjson.loads((folder / "results.json").read_bytes())
    (folder / "results.json").write_bytes(damage(results))
    for given in (folder, folder / "results.json"):
        with pytest.raises(ConfigError) as caught:
            load_runs([str(given)])
        assert str(folder / "results.json") in str(caught.value) and message in str(caught.value)


def test_odie_view_refuses_a_damaged_bench_with_exit_2_and_no_traceback(bench_dir, tmp_path):
    folder = _copy(bench_dir, tmp_path / "bad")
    (folder / "results.json").write_text("<html>not a bench</html>")
    done = subprocess.run(ODIE + ["view", str(folder), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{folder / 'results.json'}: not JSON" in done.stderr and "Traceback" not in done.stderr


def test_damage_after_the_start_is_a_message_and_the_repair_is_seen(bench_dir, tmp_path, viewer):
    folder = _copy(bench_dir, tmp_path / "run")
    good = (folder / "results.json").read_bytes()
    v = viewer(folder)
    version = v.get("api/runs/0/bench")[1]["version"]
    (folder / "results.json").write_bytes(good[: len(good) // 2])  # a torn write
    status, got = v.get(f"api/runs/0/bench?since={version}")
    assert status == 200 and got["results"] is None
    assert got["error"].startswith(f"{folder / 'results.json'}: not JSON") and "Traceback" not in got["error"]
    assert v.get("api/compare")[1][0]["bench"]["error"] == got["error"]
    (folder / "results.json").write_bytes(good)
    assert v.get(f"api/runs/0/bench?since={got['version']}")[1]["results"] == orjson.loads(good)


def test_compare_holds_every_bench_run_and_the_route_is_only_for_benches(bench_dir, tmp_path, viewer):
    before = _copy(bench_dir, tmp_path / "before")
    after = _copy(bench_dir, tmp_path / "after")
    changed = orjson.loads((after / "results.json").read_bytes())
    changed["base_url"] = "http://127.0.0.1:9/v1"
    (after / "results.json").write_bytes(orjson.dumps(changed))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "kept.jsonl").write_text('{"id": 1, "reasons": []}\n')
    v = viewer(before, after, plain)
    compared = v.get("api/compare")[1]
    assert [c["kind"] for c in compared] == ["bench", "bench", "folder"]
    assert compared[1]["bench"]["results"]["base_url"] == "http://127.0.0.1:9/v1"
    assert len(compared[0]["bench"]["results"]["points"]) == 2 and compared[2]["bench"] is None
    assert v.get("api/runs/2/bench")[0] == 404 and v.get("api/runs/3/bench")[0] == 404
