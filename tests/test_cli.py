import pytest

from odie_async.cli import COMMANDS, main


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
