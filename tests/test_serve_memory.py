"""The embedded vLLM server's sizing: cache from the memory free, context and sequences from the cache."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odie_async.endpoints import serve, startup
from odie_async.endpoints.serve import ServeSettings, VLLMServer
from odie_async.endpoints.sizing import GIB, MARGIN, ModelShape, model_shape, plan
from odie_async.exceptions import ServeError

SMOLLM2_135M = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                "hidden_size": 576, "max_position_embeddings": 8192}
SHAPE = ModelShape(kv_bytes_per_token=46080, weight_bytes=538_090_408, max_context=8192)


def _model(tmp_path, config=SMOLLM2_135M):
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    return tmp_path


def test_the_shape_is_read_from_the_model_config(tmp_path):
    shape = model_shape(_model(tmp_path), 4)
    assert shape == ModelShape(kv_bytes_per_token=2 * 30 * 3 * 64 * 4, weight_bytes=1000, max_context=8192)


def test_a_roomy_machine_gets_the_capped_cache_a_bulk_context_and_many_sequences():
    sizing = plan(SHAPE, 19 * GIB)
    assert sizing.kv_cache_bytes == 4 * GIB
    assert sizing.max_model_len == 4096  # not the model's 8,192
    assert sizing.cache_tokens == 4 * GIB // 46080
    assert sizing.max_num_seqs == min(sizing.cache_tokens // 512, 64) == 64  # not a fixed 16
    assert "64 sequences" in sizing.describe() and "19.0 GiB free" in sizing.describe()


def test_a_small_machine_gets_the_floor_and_fewer_sequences():
    sizing = plan(SHAPE, 3 * GIB)
    assert sizing.kv_cache_bytes == GIB
    assert sizing.max_num_seqs == GIB // 46080 // 512 == 45


def test_explicit_settings_win():
    sizing = plan(SHAPE, 19 * GIB, kv_cache_gib=0.5, max_model_len=1024, max_num_seqs=8)
    assert (sizing.kv_cache_bytes, sizing.max_model_len, sizing.max_num_seqs) == (GIB // 2, 1024, 8)


@settings(max_examples=200, deadline=None)
@given(available=st.integers(0, 64 * GIB), explicit=st.one_of(st.none(), st.floats(0.1, 32)))
def test_sizing_never_asks_for_more_memory_than_is_free(available, explicit):
    try:
        sizing = plan(SHAPE, available, kv_cache_gib=explicit)
    except ServeError as exc:
        assert "free" in str(exc) or "KV cache" in str(exc)
        return
    assert sizing.kv_cache_bytes + SHAPE.weight_bytes + MARGIN <= available
    assert sizing.cache_tokens >= sizing.max_model_len


def test_too_little_memory_is_one_clear_error_before_vllm_starts():
    with pytest.raises(ServeError, match=r"not enough free memory to serve: 1\.00 GiB free"):
        plan(SHAPE, GIB)
    with pytest.raises(ServeError, match="lower --kv-cache-gib"):
        plan(SHAPE, 8 * GIB, kv_cache_gib=16)


def _cpu_server(tmp_path, monkeypatch, **settings_) -> VLLMServer:
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    monkeypatch.setattr(serve, "available_memory", lambda: 19 * GIB)
    monkeypatch.setenv("ODIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return VLLMServer(ServeSettings(model=str(_model(tmp_path)), **settings_))


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_cpu_command_carries_the_plan_and_the_setting_overrides_it(tmp_path, monkeypatch):
    argv = _cpu_server(tmp_path, monkeypatch).command()
    assert _flag(argv, "--kv-cache-memory-bytes") == str(4 * GIB)
    assert _flag(argv, "--max-num-seqs") == "64"
    assert _flag(argv, "--max-model-len") == "4096"
    argv = _cpu_server(tmp_path, monkeypatch, kv_cache_gib=0.5).command()
    assert _flag(argv, "--kv-cache-memory-bytes") == str(1 << 29)
    env = _cpu_server(tmp_path, monkeypatch).child_env()
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "vllm")  # compiled graphs kept for the next start
    assert env["VLLM_USE_AOT_COMPILE"] == "0"  # the cache that loads on a CPU (the AOT artefact does not)
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert _cpu_server(tmp_path, monkeypatch).child_env()["VLLM_USE_AOT_COMPILE"] == "1"  # the user's choice wins


def test_a_memory_error_becomes_one_clear_message(tmp_path, monkeypatch):
    server = _cpu_server(tmp_path, monkeypatch)
    server.log_path = tmp_path / "vllm.log"
    server.log_path.write_text(
        "Traceback (most recent call last):\n"
        "ValueError: Available memory on node 0 (1.20/23.4 GiB) on kv cache allocation is less than requested"
        " memory for kv (4.00 GiB). Decrease --kv-cache-memory-bytes\n")
    message = server._failure("vLLM exited with code 1 before it was ready")
    assert message.startswith("vLLM could not get the memory it needs (4.00 GiB of KV cache")
    assert "--kv-cache-gib" in message


def test_a_short_job_starts_eager_until_a_compiled_start_is_cached(tmp_path, monkeypatch):
    short = _cpu_server(tmp_path, monkeypatch, expected_output_tokens=6000)
    assert "--enforce-eager" in short.command()
    assert "--enforce-eager" not in _cpu_server(tmp_path, monkeypatch, expected_output_tokens=10**6).command()
    assert "--enforce-eager" not in _cpu_server(tmp_path, monkeypatch).command()  # a server of unknown use
    startup.remember_compiled(short._compile_key())
    (tmp_path / "cache" / "vllm" / "torch_compile_cache").mkdir(parents=True)
    assert "--enforce-eager" not in _cpu_server(tmp_path, monkeypatch, expected_output_tokens=6000).command()
    assert "--enforce-eager" in _cpu_server(tmp_path, monkeypatch, enforce_eager=True).command()


def test_eager_is_chosen_by_the_measured_figures():
    crossover = (startup.COMPILED_START_S - startup.EAGER_START_S) / (
        1 / startup.EAGER_TOK_S - 1 / startup.COMPILED_TOK_S)
    assert startup.eager_is_sooner(int(crossover * 0.9))
    assert not startup.eager_is_sooner(int(crossover * 1.1))
    assert not startup.eager_is_sooner(None)


def test_the_start_line_names_what_vllm_is_doing(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("")
    watch = startup.StartWatch(log)
    assert watch.phase() == "starting" and not watch.changed
    with log.open("a") as f:
        f.write("(EngineCore pid=1) INFO [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config\n")
        f.write("(EngineCore pid=1) INFO [default_loader.py:1] Loading weights took 0.51 seconds\n")
    assert watch.phase() == "loading the model" and watch.changed
    with log.open("a") as f:
        f.write("(Worker pid=1) INFO [cpu_model_runner.py:87] Warming up model for the compilation...\n(Engi")
    assert watch.phase() == "compiling"
    assert watch.phase() == "compiling" and not watch.changed
    with log.open("a") as f:
        f.write("neCore pid=1) INFO [cpu_worker.py:1] Warming up the model\n")
    assert watch.phase() == "warming up"
