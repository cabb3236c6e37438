"""One meaning per flag: what each command's options parse to, and what they change."""

import subprocess
import sys

import pytest

from odie_async import __version__
from odie_async.api import _pipeline_config
from odie_async.cli import COMMANDS, command_parser
from odie_async.cli import predict as predict_cli
from odie_async.endpoints.embedded import resolve_model
from odie_async.exceptions import ConfigError


def _parse(name: str, *argv: str):
    return command_parser(name, COMMANDS[name][1]).parse_args(list(argv))


def _required(parser) -> list[str]:
    """The least argv a parser accepts: a value for each required option and positional."""
    argv = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "x"
        if action.required and action.option_strings:
            argv += [action.option_strings[0], value]
        elif not action.option_strings and action.nargs in (None, "+"):
            argv.append(value)
    return argv


def test_every_command_takes_log_json_and_no_progress():
    for name in COMMANDS:
        parser = command_parser(name, COMMANDS[name][1])
        args = parser.parse_args([*_required(parser), "--log-json", "--no-progress"])
        assert args.log_json is True and args.no_progress is True, name
        assert parser.parse_args(_required(parser)).log_json is False, name


def test_help_shows_defaults():
    text = command_parser("batch", COMMANDS["batch"][1]).format_help()
    assert "attempts per record, first included (default: 5)" in " ".join(text.split())
    assert "(default: 120.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    serve = " ".join(command_parser("serve", COMMANDS["serve"][1]).format_help().split())
    assert "(default: embedded)" in serve
    mock = " ".join(command_parser("mock-server", COMMANDS["mock-server"][1]).format_help().split())
    assert "(default: 8100)" in mock


def test_version_prints_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "odie_async", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"odie {__version__}"


def test_serve_and_mock_server_default_to_different_ports():
    assert _parse("serve").port == 8000
    assert _parse("mock-server").port == 8100


def test_generate_output_and_its_hidden_alias():
    assert _parse("generate", "--output", "runs/x").output == "runs/x"
    assert _parse("generate", "--out", "runs/y").output == "runs/y"
    assert "--out " not in command_parser("generate", COMMANDS["generate"][1]).format_help()


def test_generate_endpoint_options_override_the_config():
    args = _parse("generate", "--config", "mock", "--base-url", "http://127.0.0.1:9/v1",
                  "--api-key-env", "MY_KEY", "--model", "served-name")
    endpoint = {"base_url": args.base_url, "api_key_env": args.api_key_env, "model": args.model}
    config = _pipeline_config(args.config, None, None, endpoint)
    assert (config.endpoint.base_url, config.endpoint.api_key_env, config.endpoint.model) == (
        "http://127.0.0.1:9/v1", "MY_KEY", "served-name")
    untouched = _pipeline_config("mock", None, None, {"base_url": None, "api_key_env": None, "model": None})
    assert untouched.endpoint.base_url == _pipeline_config("mock", None, None).endpoint.base_url == "mock"


@pytest.mark.parametrize("flag", ["--model", "--base-model"])
def test_train_and_predict_take_the_weights_as_model(flag):
    assert _parse("train", "--data", "d", "--output", "o", flag, "some/folder").model == "some/folder"
    assert _parse("predict", "--data", "d", "--output", "o", flag, "some/folder").base_model == "some/folder"
    assert _parse("train", "--data", "d", "--output", "o").model == "embedded"


def test_predict_lora_name_path_like_serve(tmp_path):
    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    base = ["--data", "d", "--output", "o"]
    assert _parse("predict", *base, "--lora", f"ie={adapter}").lora == ("ie", str(adapter))
    assert _parse("predict", *base, "--lora", str(adapter)).lora == ("my-adapter", str(adapter))
    assert _parse("serve", "--lora", f"ie={adapter}").lora == [("ie", str(adapter))]
    local = predict_cli.settings_from_args(_parse("predict", *base, "--lora", f"ie={adapter}"))
    assert (local.lora, local.lora_name, local.model_name) == (str(adapter), "ie", None)
    # against a running server the adapter's NAME is the model requested
    remote = predict_cli.settings_from_args(
        _parse("predict", *base, "--lora", f"ie={adapter}", "--base-url", "http://127.0.0.1:9/v1"))
    assert remote.model_name == "ie" and remote.backend == "server"
    named = predict_cli.settings_from_args(
        _parse("predict", *base, "--base-url", "http://127.0.0.1:9/v1", "--served-model-name", "base"))
    assert named.model_name == "base"


def test_a_hugging_face_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--some-org--tiny-model"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert resolve_model("some-org/tiny-model") == str(snapshot)
    with pytest.raises(ConfigError) as absent:
        resolve_model("some-org/not-here")
    assert "some-org/not-here" in str(absent.value) and str(tmp_path) in str(absent.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_the_progress_line_shows_in_flight_and_concurrency():
    from odie_async.engine.progress import render
    from odie_async.engine.stats import RunStats

    stats = RunStats()
    stats.total, stats.succeeded = 100, 10
    assert "in flight" not in render(stats)
    stats.gauges = lambda: (12, 64)
    assert "| in flight 12/64 |" in render(stats)


def test_the_stop_sentence_names_cancelled_requests_and_a_cluster_signal():
    from odie_async.engine.progress import interrupt_sentence

    one = {"succeeded": 200, "failed": 3, "stopped_by": "SIGINT",
           "shutdown": {"not_started": 277, "in_flight_at_stop": 16, "cancelled_in_flight": 4}}
    assert interrupt_sentence(one) == ("stopped by SIGINT: 203 done, 12 in flight were finished, 4 in flight were "
                                       "cancelled, 277 not started; rerun the same command to resume")
    cluster = {"succeeded": 5, "failed": 0, "shutdown": {"signals": [15]}}
    assert interrupt_sentence(cluster) == "stopped by SIGTERM: 5 done; rerun the same command to resume"


def test_filter_takes_the_judges_endpoint_like_generate():
    args = _parse("filter", "in.jsonl", "--kept", "k", "--dropped", "d", "--scorer", "llm",
                  "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "JUDGE_KEY", "--model", "judge")
    assert (args.base_url, args.api_key_env, args.model) == ("http://127.0.0.1:9/v1", "JUDGE_KEY", "judge")


def test_a_summary_written_before_runs_were_kept_becomes_the_first_run(tmp_path):
    import orjson

    from odie_async.engine.batch import _history

    path = tmp_path / "out.summary.json"
    assert _history(path, resumed=True) == []
    path.write_bytes(orjson.dumps({"succeeded": 7}))
    assert _history(path, resumed=False) == []  # a fresh output starts a fresh history
    assert _history(path, resumed=True) == [{"succeeded": 7}]
    path.write_bytes(orjson.dumps({"succeeded": 2, "runs": [{"succeeded": 7}, {"succeeded": 2}]}))
    assert _history(path, resumed=True) == [{"succeeded": 7}, {"succeeded": 2}]


def test_the_console_summary_names_model_endpoint_concurrency_and_retry_reasons():
    from odie_async.engine.progress import format_summary

    text = format_summary({"attempts": 90, "retries": 10, "retries_by_reason": {"server_error": 7, "timeout": 3},
                           "settings": {"base_url": "http://127.0.0.1:9/v1"}, "models": ["m"],
                           "endpoints": [{"endpoint": "http://127.0.0.1:9/v1"}], "concurrency_final": 48})
    assert "10 retries (server_error 7, timeout 3)" in text
    assert "model m at http://127.0.0.1:9/v1; concurrency ended at 48" in text


def test_batch_options_the_api_and_the_factory_share_one_table_of_defaults(monkeypatch, tmp_path):
    import dataclasses

    import odie_async
    from odie_async.engine import batch as engine_batch
    from odie_async.engine.settings import DEFAULTS, build_settings
    from odie_async.options import settings_from_args

    monkeypatch.chdir(tmp_path)
    args = _parse("batch", "in.jsonl", "--output", "out.jsonl", "--base-url", "http://127.0.0.1:9/v1")
    built = {}

    async def capture(source, target, settings, *rest, **options):
        built["api"] = settings
        raise ConfigError("captured")

    monkeypatch.setattr(engine_batch, "run_engine_batch", capture)
    with pytest.raises(ConfigError, match="captured"):
        odie_async.run_batch([{"model": "m", "messages": []}], "out.jsonl", base_url="http://127.0.0.1:9/v1")

    def shown(settings) -> dict:
        return {k: v for k, v in dataclasses.asdict(settings).items() if k in DEFAULTS["batch"]}

    factory = shown(build_settings("http://127.0.0.1:9/v1", concurrency=DEFAULTS["batch"]["concurrency"]))
    assert factory == DEFAULTS["batch"]
    command = shown(settings_from_args(args, args.base_url))
    api = shown(built["api"])
    # no --concurrency / concurrency=: the adaptive start, the same in both
    assert command.pop("concurrency") == api.pop("concurrency")
    assert command == api == {k: v for k, v in DEFAULTS["batch"].items() if k != "concurrency"}
