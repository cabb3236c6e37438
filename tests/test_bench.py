"""``odie bench`` against ``odie mock-server``, whose knee, TTFT and ITL are known truths."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml

from odie_async.bench.load import Load, drive
from odie_async.bench.results import recommended_config
from odie_async.bench.measure import BenchSettings, run_bench
from odie_async.bench.sweep import parse_slo, recommend
from odie_async.bench.workload import parse_synthetic, synthetic
from odie_async.exceptions import ConfigError
from odie_async.pipeline.config import load_config
from odie_async.runtime import run_async
from tests.helpers import write_requests
from tests.test_batch_cli import Mock

ODIE = [sys.executable, "-m", "odie_async"]


def _bench(out: Path, url: str, *options: str) -> tuple[int, dict | None, str]:
    cmd = ODIE + ["bench", "--base-url", url, "--output", str(out), *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    results = out / "results.json"
    return proc.returncode, orjson.loads(results.read_bytes()) if results.exists() else None, proc.stderr


@pytest.fixture(scope="module")
def knee_mock():
    mock = Mock("--max-concurrency", "32", "--latency-ms", "200")
    yield mock
    mock.stop()


@pytest.fixture(scope="module")
def sweep(knee_mock, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    code, results, err = _bench(out, knee_mock.url, "--sweep", "--duration", "1.5s",
                                "--synthetic", "prompt_tokens=16,output_tokens=8")
    assert code == 0, err
    return out, results


def test_sweep_finds_the_mock_knee(sweep):
    out, results = sweep
    best = max(p["requests_per_s"] for p in results["points"])
    assert 144 <= best <= 176  # 32 slots / 0.2 s = 160 req/s
    assert 28 <= results["recommended"]["concurrency"] <= 40
    assert results["stop_reason"].startswith("plateau")
    loads = [p["load"] for p in results["points"]]
    assert {1, 2, 4, 8, 16, 32, 64} <= set(loads) and 128 not in loads  # doubled up to the plateau, no further
    assert results["warnings"] == []  # the client had a core to itself
    assert all(p["client"]["cpu_us_per_request"] > 0 for p in results["points"])
    assert (out / "bench.png").stat().st_size > 10_000


def test_recommended_file_loads_as_a_config(sweep):
    out, results = sweep
    config = load_config(out / "recommended.yaml")
    assert config.engine.concurrency == results["recommended"]["concurrency"]
    assert config.endpoint.base_url == results["base_url"] and config.endpoint.model == "mock-model"
    assert config.engine.rpm == 0 and config.engine.tpm == 0  # no 429s: the concurrency sets the pace


def test_rate_limits_seen_become_rpm_and_tpm(tmp_path):
    point = {"rate_limited_429": 0, "requests_per_s": 10.0, "mean_prompt_tokens": 20.0, "mean_output_tokens": 10.0}
    limited = point | {"rate_limited_429": 7, "requests_per_s": 12.0}
    results = {"base_url": "http://x/v1", "model": "m", "api_key_env": "KEY", "points": [point, limited],
               "recommended": {"concurrency": 4}}
    config = recommended_config(results)
    assert config["engine"] == {"concurrency": 4, "rpm": 570, "tpm": 17100}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).endpoint.api_key_env == "KEY"
    embedded = recommended_config(results | {"embedded": True})["endpoint"]
    assert embedded["base_url"] is None  # the one-off server is gone: the run serves the model again


def test_ttft_and_itl_match_the_mock_at_low_load(tmp_path):
    mock = Mock("--stream", "--ttft-ms", "50", "--itl-ms", "10")
    try:
        code, results, err = _bench(tmp_path, mock.url, "--concurrency", "1,4", "--duration", "2s",
                                    "--synthetic", "prompt_tokens=32,output_tokens=64")
    finally:
        mock.stop()
    assert code == 0, err
    for point in results["points"]:
        assert point["mean_output_tokens"] == 64
        assert 42.5 <= point["ttft_ms"]["p50"] <= 57.5
        assert 8.5 <= point["itl_ms"]["p50"] <= 11.5
        assert point["latency_ms"]["p50"] >= 50 + 63 * 10


def test_slo_stops_the_sweep(tmp_path):
    mock = Mock("--max-concurrency", "4", "--latency-ms", "100")
    try:
        code, results, err = _bench(tmp_path, mock.url, "--sweep", "--duration", "1s", "--slo", "latency_p95=150ms",
                                    "--synthetic", "prompt_tokens=8,output_tokens=4")
    finally:
        mock.stop()
    assert code == 0, err
    assert results["stop_reason"].startswith("slo: latency_p95")
    doubled = [p["load"] for p in results["points"] if p["load"] in (1, 2, 4, 8, 16)]
    assert doubled == [1, 2, 4, 8]  # 8 queues half its requests: p95 200 ms
    assert results["recommended"]["concurrency"] == 4
    assert results["recommended"]["point"]["latency_ms"]["p95"] <= 150


def test_rates_constant_and_poisson(tmp_path):
    mock = Mock("--latency-ms", "20")
    try:
        code, results, err = _bench(tmp_path, mock.url, "--rate", "40", "--duration", "2s",
                                    "--synthetic", "prompt_tokens=8,output_tokens=4")
        assert code == 0, err
        assert 36 <= results["points"][0]["requests_per_s"] <= 44
        code, poisson, err = _bench(tmp_path / "p", mock.url, "--rate", "40", "--rate-type", "poisson",
                                    "--duration", "2s", "--synthetic", "prompt_tokens=8,output_tokens=4")
    finally:
        mock.stop()
    assert code == 0, err
    assert poisson["points"][0]["kind"] == "poisson" and 25 <= poisson["points"][0]["requests_per_s"] <= 60
    assert results["recommended"]["concurrency"] >= 1


def test_client_starved_of_cpu_is_flagged(tmp_path, monkeypatch):
    """Threads spinning on the GIL while the load runs starve the client's event loop: the result must say so."""
    import odie_async.bench.measure as bench_run

    mock = Mock("--latency-ms", "5")
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    async def starved_drive(*args, **kwargs):
        hogs = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
        for hog in hogs:
            hog.start()
        try:
            return await drive(*args, **kwargs)
        finally:
            stop.set()
            for hog in hogs:
                hog.join()

    monkeypatch.setattr(bench_run, "drive", starved_drive)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.03)
    settings = BenchSettings(base_url=mock.url, workload=synthetic(parse_synthetic("prompt_tokens=8,output_tokens=4")),
                             output=tmp_path, loads=[Load("concurrency", 8)], duration_s=2.0)
    try:
        results = run_async(run_bench(settings))
    finally:
        stop.set()
        sys.setswitchinterval(switch)
        mock.stop()
    point = results["points"][0]
    assert point["client"]["loop_lag_p95_ms"] >= 20
    assert point["client_bound"] and "late" in point["client_bound"]
    assert any("the client, not the endpoint" in w for w in results["warnings"])


def test_bad_input_stops_before_sending(tmp_path):
    bad = tmp_path / "in.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
    bad.write_bytes(orjson.dumps(good) + b"\n{not json\n")
    mock = Mock()
    try:
        code, results, err = _bench(tmp_path / "out", mock.url, "--input", str(bad))
    finally:
        counts = mock.stop()
    assert code == 2 and f"{bad}:2:" in err
    assert counts.get("total", 0) == 0 and results is None


def test_unreachable_endpoint_exits_3(tmp_path):
    code, results, err = _bench(tmp_path, "http://127.0.0.1:9/v1", "--synchronous", "--duration", "1s")
    assert code == 3 and "did not answer" in err


def test_slo_and_synthetic_parsing():
    assert parse_slo("ttft_p95=2s,latency_p99=500ms") == {"ttft_p95": 2000.0, "latency_p99": 500.0}
    for bad in ("ttft=2s", "speed_p95=1s", "ttft_p95=soon"):
        with pytest.raises(ConfigError):
            parse_slo(bad)
    assert parse_synthetic("output_tokens=64") == {"prompt_tokens": 256, "output_tokens": 64, "count": 1000}
    with pytest.raises(ConfigError):
        parse_synthetic("output_tokens=-1")
    assert recommend([], {}) is None
    path, body = synthetic(parse_synthetic("prompt_tokens=3,count=1"), "m", "/v1/completions").requests[0]
    assert path == "/v1/completions" and body == {"prompt": "r0 alpha bravo", "max_tokens": 128, "model": "m"}


def test_interrupt_writes_the_points_so_far(tmp_path):
    mock = Mock("--latency-ms", "20")
    cmd = ODIE + ["bench", "--base-url", mock.url, "--output", str(tmp_path), "--concurrency", "1,2,4",
                  "--duration", "1.5s", "--synthetic", "prompt_tokens=8,output_tokens=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not proc.stderr.readline().startswith("[bench] concurrency 1:"):
            pass
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        mock.stop()
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    assert code == 143 and results["interrupted"]
    assert [p["load"] for p in results["points"]][:1] == [1]


def test_key_is_used_and_never_written(tmp_path):
    secret = "sk-bench-secret-4242"
    env = dict(os.environ, BENCH_KEY=secret)
    mock = Mock("--api-key-env", "BENCH_KEY", "--latency-ms", "5", env=env)
    try:
        refused, _, err = _bench(tmp_path / "no", mock.url, "--synchronous", "--duration", "0.5s")
        cmd = ODIE + ["bench", "--base-url", mock.url, "--output", str(tmp_path / "yes"), "--api-key-env", "BENCH_KEY",
                      "--synchronous", "--duration", "0.5s", "--synthetic", "prompt_tokens=8,output_tokens=4"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    finally:
        mock.stop()
    assert refused == 3 and "refused the key" in err
    assert proc.returncode == 0, proc.stderr
    assert load_config(tmp_path / "yes" / "recommended.yaml").endpoint.api_key_env == "BENCH_KEY"
    written = [p.read_bytes() for p in (tmp_path / "yes").iterdir() if p.suffix != ".png"]
    assert all(secret.encode() not in blob for blob in written) and secret not in proc.stdout + proc.stderr


def test_recommended_file_drives_odie_batch(sweep, tmp_path):
    import argparse

    from odie_async.cli.batch import add_arguments
    from odie_async.options import apply_config, settings_from_args

    out, results = sweep
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["in.jsonl", "-o", str(tmp_path / "o.jsonl"), "--config", str(out / "recommended.yaml")])
    apply_config(args, args.option_defaults)
    settings = settings_from_args(args, args.base_url)
    assert settings.base_url == results["base_url"]
    assert settings.concurrency == results["recommended"]["concurrency"] and settings.initial_concurrency is None


def test_results_are_written_after_every_load_level(tmp_path, monkeypatch):
    """A viewer (or a person) reading results.json mid-bench sees each level as it is measured."""
    import odie_async.bench.results as bench_report

    seen: list[dict] = []
    write_results = bench_report.write_results

    def snapshot(results, out_dir):
        path = write_results(results, out_dir)
        seen.append(orjson.loads(path.read_bytes()))
        return path

    monkeypatch.setattr(bench_report, "write_results", snapshot)
    mock = Mock("--latency-ms", "5")
    settings = BenchSettings(base_url=mock.url, workload=synthetic(parse_synthetic("prompt_tokens=8,output_tokens=4")),
                             output=tmp_path, loads=[Load("concurrency", 1), Load("concurrency", 4)], duration_s=0.5)
    try:
        final = run_async(run_bench(settings))
    finally:
        mock.stop()
    running = [s for s in seen if s["running"]]
    assert [len(s["points"]) for s in running] == [1, 2]
    assert all(s["recommended"] is None and s["stop_reason"].startswith("running") for s in running)
    assert seen[-1]["running"] is False and seen[-1]["recommended"] == final["recommended"] is not None
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file and a rename"


def test_a_pool_is_benched_endpoint_by_endpoint_into_one_config(tmp_path):
    """Two endpoints of different capacity: each gets its own knee, and odie batch --config runs both at theirs."""
    from odie_async.options import BatchConfig
    from odie_async.config_models import load

    small, large = Mock("--max-concurrency", "4", "--latency-ms", "100"), Mock("--max-concurrency", "16", "--latency-ms", "100")
    try:
        cmd = ODIE + ["bench", "--endpoint", small.url, "--endpoint", large.url, "--concurrency", "2,4,8,16,32",
                      "--duration", "1s", "--synthetic", "prompt_tokens=8,output_tokens=4", "--output", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
        assert len(names) == 2 and all((tmp_path / n / "results.json").is_file() for n in names)
        config = load(BatchConfig, tmp_path / "recommended.yaml", "batch config")
        by_url = {e.base_url: e for e in config.endpoints}
        assert by_url[small.url].max_concurrency == 4 and by_url[large.url].max_concurrency in (16, 32)
        assert config.engine.concurrency == 4 + by_url[large.url].max_concurrency
        write_requests(tmp_path / "in.jsonl", 60)
        run = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                     "--config", str(tmp_path / "recommended.yaml"), "--no-progress"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    finally:
        sent = {small.url: small.stop().get("total", 0), large.url: large.stop().get("total", 0)}
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len({orjson.loads(line)["custom_id"] for line in lines}) == len(lines) == 60
    assert sent[large.url] > sent[small.url] > 0


def test_a_full_disk_stops_the_bench_naming_the_file_with_exit_4(tmp_path, monkeypatch, capsys):
    """The second level's results.json cannot be written: exit 4 naming it, the first level's file kept whole."""
    import errno

    import odie_async.bench.results as bench_report
    from odie_async.cli import main
    from odie_async.files import write_atomic

    writes = []

    def full_after_one(path, data):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_atomic(path, data)

    monkeypatch.setattr(bench_report, "write_atomic", full_after_one)
    mock = Mock("--latency-ms", "5")
    try:
        code = main(["bench", "--base-url", mock.url, "--concurrency", "1,4", "--duration", "0.5s", "--synthetic",
                     "prompt_tokens=8,output_tokens=4", "--output", str(tmp_path)])
    finally:
        mock.stop()
    assert code == 4
    assert f"cannot write {tmp_path / 'results.json'}: No space left on device" in capsys.readouterr().err
    kept = orjson.loads((tmp_path / "results.json").read_bytes())
    assert kept["running"] and len(kept["points"]) == 1


def test_write_atomic_leaves_the_old_file_and_no_temporary_when_it_fails(tmp_path):
    from odie_async.files import write_atomic

    target = tmp_path / "results.json"
    write_atomic(target, b"old")
    (tmp_path / "in-the-way").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "in-the-way", b"new")  # the rename onto a folder fails after the temporary is written
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["in-the-way", "results.json"]
