"""The embedded vLLM server's KV-cache memory: sized from the model and concurrency, errors made plain."""

import json

from odie_async.endpoints import serve
from odie_async.endpoints.serve import ServeSettings, VLLMServer, kv_cache_bytes

SMOLLM2_135M = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                "hidden_size": 576, "max_position_embeddings": 8192}


def _model(tmp_path, config=SMOLLM2_135M):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_cache_is_sized_from_the_model_and_the_sequences(tmp_path):
    folder = _model(tmp_path)
    size = kv_cache_bytes(folder, None, 16, 4)
    assert size == 1472 << 20  # 16 sequences x 2,048 tokens x 46,080 bytes, up to a 64 MiB step
    assert kv_cache_bytes(folder, None, 64, 4) == 5760 << 20
    assert kv_cache_bytes(folder, 1024, 16, 4) == 768 << 20


def test_the_cpu_command_reserves_the_sized_cache_and_the_setting_overrides_it(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    argv = VLLMServer(ServeSettings(model=str(_model(tmp_path)))).command()
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(1472 << 20)
    assert argv[argv.index("--max-num-seqs") + 1] == "16"
    argv = VLLMServer(ServeSettings(model=str(tmp_path), kv_cache_gib=0.5)).command()
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(1 << 29)
    assert "VLLM_CPU_KVCACHE_SPACE" not in VLLMServer(ServeSettings(model=str(tmp_path))).child_env()


def test_a_memory_error_becomes_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    server = VLLMServer(ServeSettings(model=str(_model(tmp_path))))
    server.log_path = tmp_path / "vllm.log"
    server.log_path.write_text(
        "Traceback (most recent call last):\n"
        "ValueError: Available memory on node 0 (1.20/23.4 GiB) on kv cache allocation is less than requested"
        " memory for kv (1.50 GiB). Decrease --kv-cache-memory-bytes\n")
    message = server._failure("vLLM exited with code 1 before it was ready")
    assert message.startswith("vLLM could not get the memory it needs (1.44 GiB of KV cache")
    assert "--kv-cache-gib" in message
