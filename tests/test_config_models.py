"""The pydantic config models of generate and train, and ``odie config-schema``."""

from __future__ import annotations

import json

import jsonschema
import pytest

from odie_async.cli import main
from odie_async.exceptions import ConfigError
from odie_async.files import load_yaml
from odie_async.model import train_config
from odie_async.paths import config_dir, find_config
from odie_async.pipeline import registry
from odie_async.pipeline.config import from_dict, load_config


def test_every_mistake_is_reported_at_once_with_its_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("engine:\n  concurency: 3\n  rpm: fast\nrun:\n  open_share: 0.7\n  variants: [plain, fancy]\n"
                    "stages:\n  tables:\n    shots: two\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 problems:")
    for expected in ("engine: unknown key 'concurency' (known: concurrency, rpm,", "engine.rpm: expected a number",
                     "run.open_share:", "run.variants.1:", "stages.tables.shots: expected a number, got 'two'"):
        assert expected in message


def test_yaml_exponents_are_floats_and_strings_are_not_numbers(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("training:\n  learning_rate: 3e-4\n  warmup_ratio: 5e-2\n", encoding="utf-8")
    config = train_config.load_config(path)
    assert config.learning_rate == pytest.approx(3e-4) and isinstance(config.learning_rate, float)
    assert config.warmup_ratio == pytest.approx(0.05)
    assert from_dict({"run": {"open_share": 5e-1}}).run.open_share == 0.5
    path.write_text("training:\n  learning_rate: '3e-4'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="training.learning_rate: expected a number, got '3e-4'"):
        train_config.load_config(path)


def test_train_files_check_types_that_used_to_fail_inside_transformers(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lora:\n  r: 0\ntraining:\n  micro_batch_size: 2.5\n  gradient_checkpointing: yes please\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        train_config.load_config(path)
    assert "3 problems" in str(info.value) and "lora.r:" in str(info.value)
    assert "training.gradient_checkpointing: expected true or false" in str(info.value)


def test_presets_are_found_by_name_in_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: no top-level configs here
    assert find_config("mock", prefix="generate-") == config_dir() / "generate-mock.yaml"
    assert find_config("configs/generate-openai.yaml") == config_dir() / "generate-openai.yaml"
    assert load_config("mock").endpoint.base_url == "mock"
    assert train_config.load_config("paper").cutoff_len == 2048


def test_assignment_is_checked_too():
    config = from_dict({})
    with pytest.raises(ValueError):
        config.run.records = "many"


@pytest.mark.parametrize("kind", ["generate", "train"])
def test_config_schema_describes_every_shipped_file(kind, capsys, tmp_path):
    assert main(["config-schema", kind]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    if kind == "generate":
        assert set(schema["$defs"]["StagesConfig"]["properties"]) == set(registry.NAMES)
    shipped = sorted(config_dir().glob(f"{kind}-*.yaml"))
    assert shipped
    for path in shipped:
        jsonschema.validate(load_yaml(path), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"no_such_key": 1}, schema)
    assert main(["config-schema", kind, "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_a_generate_config_may_name_a_pool():
    from odie_async.endpoints.resolve import Endpoint
    from odie_async.pipeline.config import PipelineConfig
    from odie_async.pipeline.run import engine_settings

    config = PipelineConfig.model_validate({"endpoints": [
        {"base_url": "http://127.0.0.1:9001/v1", "rpm": 600, "model": "a"},
        {"base_url": "http://127.0.0.1:9002/v1", "weight": 2, "model": "b"}]})
    assert config.endpoint.base_url == "http://127.0.0.1:9001/v1" and config.endpoint.model == "a"
    settings = engine_settings(config, Endpoint(config.endpoint.base_url, "a"))
    assert [(e.base_url, e.rpm, e.weight, e.model) for e in settings.endpoints] == [
        ("http://127.0.0.1:9001/v1", 600, 1.0, "a"), ("http://127.0.0.1:9002/v1", 0, 2.0, "b")]


def test_a_pool_endpoint_is_the_lanes_endpoint_its_key_from_the_environment_never_the_file(monkeypatch):
    from odie_async.endpoints.resolve import Endpoint
    from odie_async.engine.pool import build_lanes
    from odie_async.engine.stats import RunStats
    from odie_async.pipeline.config import PipelineConfig
    from odie_async.pipeline.run import engine_settings

    with pytest.raises(ConfigError, match="unknown key 'api_key'"):
        from_dict({"endpoints": [{"base_url": "http://127.0.0.1:9001/v1", "api_key": "written-down"}]})
    monkeypatch.setenv("POOL_KEY", "from-env")
    config = PipelineConfig.model_validate({"endpoints": [
        {"base_url": "http://127.0.0.1:9001/v1", "api_key_env": "POOL_KEY", "name": "first"},
        {"base_url": "http://127.0.0.1:9002/v1"}]})
    lanes = build_lanes(engine_settings(config, Endpoint(config.endpoint.base_url, None)), RunStats())
    assert [(lane.label, lane.spec.api_key, lane.client._headers.get("Authorization")) for lane in lanes] == [
        ("first", "from-env", "Bearer from-env"), ("http://127.0.0.1:9002/v1", None, None)]
    assert "from-env" not in repr(lanes[0].spec)
