import errno
import socket

import pytest

from odie_async.cli import COMMANDS, exit_code, main
from odie_async.exceptions import (ConfigError, EndpointStopped, EngineCrashed, EvalError, InputError, OutputError,
                                   RunAborted, ServerError, TrainError)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"odie {command}" in capsys.readouterr().out


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = main(["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1"])
    assert code == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


# -- the edge: every command ends a usage mistake in one line and the documented exit code -------------

def _odie(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def _one_line(err: str) -> bool:
    return len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder holding a file (``afile``), a folder (``adir``) and one valid record of each input kind."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
                                       '"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\n')
    (tmp_path / "pred.json").write_text('[{"instruction": "i", "text": "t", "gold": "g", "output": "o"}]')
    return tmp_path


IMPOSSIBLE_OUTPUTS = {
    "batch": ["batch", "in.jsonl", "-o", "afile/out.jsonl", "--base-url", "http://127.0.0.1:9/v1"],
    "generate": ["generate", "--output", "afile/run"],
    "filter --kept": ["filter", "in.jsonl", "--kept", "afile/k.jsonl", "--dropped", "d.jsonl"],
    "filter --dropped": ["filter", "in.jsonl", "--kept", "k.jsonl", "--dropped", "adir"],
    "export --parquet DIR": ["export", "adir", "--parquet", "adir"],
    "export --save-to-disk": ["export", "adir", "--save-to-disk", "afile/x"],
    "config-schema -o DIR": ["config-schema", "generate", "-o", "adir"],
    "config-schema -o under a file": ["config-schema", "generate", "-o", "afile/schema.json"],
    "eval --json": ["eval", "pred.json", "--json", "afile/scores.json"],
    "eval --plot": ["eval", "pred.json", "--plot", "afile/plots"],
    "train": ["train", "--data", "in.jsonl", "--output", "afile/adapter"],
    "predict": ["predict", "--data", "pred.json", "--output", "adir"],
    "bench": ["bench", "--base-url", "http://127.0.0.1:9/v1", "--output", "afile/bench"],
    "mock-server": ["mock-server", "--port", "0", "--log-requests", "adir"],
    "serve": ["serve", "--log-file", "adir"],
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE_OUTPUTS))
def test_an_output_that_cannot_be_created_is_one_line_and_exit_2(case, place, capsys):
    code, err = _odie(IMPOSSIBLE_OUTPUTS[case], capsys)
    assert code == 2 and _one_line(err), err
    assert ("afile" in err or "adir" in err) and not (place / "afile").is_dir()


MALFORMED_NUMBERS = {
    "batch --concurrency nan": ["batch", "in.jsonl", "-o", "o.jsonl", "--concurrency", "nan"],
    "batch --timeout 0": ["batch", "in.jsonl", "-o", "o.jsonl", "--timeout", "0"],
    "bench --duration=-1s": ["bench", "--duration=-1s"],
    "bench --duration 1e3s": ["bench", "--duration", "1e3s"],
    "bench --duration 1m30": ["bench", "--duration", "1m30"],
    "bench --duration 2x3s": ["bench", "--duration", "2x3s"],
    "bench --slo ttft_p95=-2s": ["bench", "--slo", "ttft_p95=-2s"],
    "bench --rate nan": ["bench", "--rate", "nan"],
    "bench --rate inf": ["bench", "--rate", "inf"],
    "bench --concurrency 1e8": ["bench", "--concurrency", "1e8"],
    "bench --concurrency 100000000": ["bench", "--concurrency", "100000000"],
    "bench --timeout 0": ["bench", "--timeout", "0"],
    "generate --limit abc": ["generate", "--limit", "abc"],
    "filter --batch-size x": ["filter", "in.jsonl", "--kept", "k.jsonl", "--dropped", "d.jsonl", "--batch-size", "x"],
    "eval --batch-size 0": ["eval", "pred.json", "--batch-size", "0"],
    "train --max-steps 0": ["train", "--data", "in.jsonl", "--output", "o", "--max-steps", "0"],
    "predict --temperature nan": ["predict", "--data", "pred.json", "--output", "p.json", "--temperature", "nan"],
    "view --port 99999": ["view", "adir", "--port", "99999"],
    "mock-server --latency-ms inf": ["mock-server", "--latency-ms", "inf"],
    "mock-server --fault-rate 2": ["mock-server", "--fault-rate", "2"],
    "serve --kv-cache-gib inf": ["serve", "--kv-cache-gib", "inf"],
}


@pytest.mark.parametrize("case", sorted(MALFORMED_NUMBERS))
def test_a_malformed_number_is_one_line_and_exit_2(case, place, capsys):
    code, err = _odie(MALFORMED_NUMBERS[case], capsys)
    assert code == 2 and _one_line(err), err
    assert "--" in err  # the option is named


@pytest.mark.parametrize("argv", [["mock-server"], ["view", "out.jsonl"]], ids=["mock-server", "view"])
def test_a_busy_port_is_one_line_and_exit_2(argv, place, capsys):
    (place / "out.jsonl").write_text('{"custom_id": "a", "response": {"status_code": 200, "body": {}}}\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _odie([*argv, "--port", str(port)], capsys)
    assert code == 2 and _one_line(err) and f"127.0.0.1:{port}" in err, err


@pytest.mark.parametrize("argv, says", [
    (["eval", "nope.json"], "nope.json does not exist"),
    (["eval", "adir"], "adir is a folder"),
    (["train", "--data", "nope.jsonl", "--output", "o"], "nope.jsonl does not exist"),
    (["batch", "adir", "-o", "o.jsonl", "--base-url", "http://127.0.0.1:9/v1"], "adir is a folder"),
])
def test_a_missing_or_folder_input_is_named_as_such_with_exit_2(argv, says, place, capsys):
    code, err = _odie(argv, capsys)
    assert code == 2 and _one_line(err) and says in err, err


def test_an_internal_crash_is_one_line_and_exit_4(monkeypatch, capsys):
    import odie_async.cli.config_schema as config_schema

    def crash(kind):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(config_schema, "schema_for", crash)
    code, err = _odie(["config-schema", "generate"], capsys)
    assert code == 4 and _one_line(err) and "ZeroDivisionError: boom" in err


@pytest.mark.parametrize("error, code", [
    (None, 0), (ConfigError("x"), 2), (InputError("f", 1, "x"), 2), (EvalError("x"), 2), (TrainError("x"), 2),
    (EndpointStopped("x"), 3), (EngineCrashed("x"), 4), (OutputError("f", OSError(28, "No space left on device")), 4),
    (RunAborted("x"), 4), (OSError(28, "No space left on device"), 4), (RuntimeError("x"), 4),
    (KeyboardInterrupt(), 130), (ServerError("x"), 1),
])
def test_the_one_exit_code_map(error, code):
    assert exit_code(error) == code


def test_a_full_disk_is_one_line_and_exit_4(place, monkeypatch, capsys):
    import odie_async.cli.config_schema as config_schema

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(config_schema, "write_atomic", full)
    code, err = _odie(["config-schema", "generate", "-o", "schema.json"], capsys)
    assert code == 4 and _one_line(err) and "schema.json: No space left on device" in err, err
