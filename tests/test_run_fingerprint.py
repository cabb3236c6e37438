"""A run folder belongs to one run (issue 28): another teacher, config or prompts stop before anything is sent,
`--update` re-sends only what changed, a copied config uses its own prompts, and the card's commands run."""

from __future__ import annotations

import shlex
import shutil

import orjson
import pytest
import yaml

import odie_async
from odie_async.cli import main as odie
from odie_async.exceptions import ConfigError
from odie_async.paths import config_dir
from odie_async.pipeline.config import load_config
from odie_async.pipeline.fingerprint import FINGERPRINT, fingerprint

from .pipeline_support import ThreadedMock, config_data

SMOL = "smollm2-135m-instruct"  # the default preset's teacher, stood for by the in-process mock under its name
NO_ENCODER = {name: {"enabled": False} for name in ("faithfulness", "consistency", "relevance")}
UPSTREAM = ("instructions", "texts", "open_instructions", "paraphrase")


def write(folder, model="mock-model", base_url="mock", records=4, **data):
    """A small config file in ``folder`` whose gate needs no encoder (the runs take a second or two)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = config_data(folder, base_url=base_url, records=records, filter=NO_ENCODER) | data
    settings["endpoint"]["model"] = model
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def generate_cmd(config, out, *more) -> int:
    return odie(["generate", "--config", str(config), "--output", str(out), "--no-progress", *more])


def test_the_default_presets_teacher_is_in_its_fingerprint():
    config = load_config("default")
    teacher = fingerprint(config, config.path(config.prompts), config.path(config.seeds))["teacher"]
    assert teacher == {"endpoint": "embedded", "model": SMOL}  # known without starting the model


def test_another_teacher_into_the_same_folder_stops_before_anything_is_sent(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    assert generate_cmd(write(tmp_path / "smol", model=SMOL), out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert generate_cmd("mock", out) == 2
    err = capsys.readouterr().err
    assert f"teacher {SMOL} → mock-model" in err and "--update" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == before
    # the packaged default preset is refused the same way, before its model is started
    mock_made = tmp_path / "runs" / "mock-made"
    assert generate_cmd(write(tmp_path / "mock"), mock_made) == 0
    before = snapshot(mock_made)
    capsys.readouterr()
    assert odie(["generate", "--output", str(mock_made), "--no-progress"]) == 2
    assert f"teacher mock-model → {SMOL}" in capsys.readouterr().err
    assert snapshot(mock_made) == before


def test_the_same_rule_holds_in_the_python_api(tmp_path):
    out = tmp_path / "demo"
    smol = config_data(tmp_path, records=4, filter=NO_ENCODER)
    smol["endpoint"]["model"] = SMOL
    odie_async.generate(smol, out, progress=False)
    before = snapshot(out)
    with pytest.raises(ConfigError, match=f"teacher {SMOL} → mock-model"):
        odie_async.generate("mock", out, limit=10, progress=False)
    assert snapshot(out) == before


def test_the_same_fingerprint_resumes_and_a_larger_limit_extends(tmp_path):
    config, out = write(tmp_path / "c"), tmp_path / "out"
    assert generate_cmd(config, out) == 0
    again = odie_async.generate(str(config), out, progress=False)
    assert all(stage.get("sent", 0) == 0 for stage in again["stages"].values())
    more = odie_async.generate(str(config), out, limit=8, progress=False)
    assert more["records"]["planned"] == 8 and more["stages"]["tables"]["sent"] > 0
    assert orjson.loads((out / FINGERPRINT).read_bytes())["teacher"]["model"] == "mock-model"


def copy_configs(folder):
    folder.mkdir(parents=True)
    shutil.copytree(config_dir() / "prompts", folder / "prompts")
    data = config_data(folder, records=4, filter=NO_ENCODER)
    data.pop("seeds")  # left at its default: not in the copy, so the packaged seeds are used
    data["prompts"] = "prompts"  # relative: the copy's folder first
    (folder / "generate-copy.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "generate-copy.yaml"


def edit_tables_prompt(prompts, marker: str) -> None:
    path = prompts / "tables.yaml"
    path.write_text(path.read_text().replace("Answer with the markdown table only.",
                                             f"Answer with the markdown table only. {marker}"))


def test_update_after_a_changed_prompt_resends_only_that_stages_requests(tmp_path, capsys):
    config, out = copy_configs(tmp_path / "mycopy"), tmp_path / "out"
    assert generate_cmd(config, out) == 0
    edit_tables_prompt(tmp_path / "mycopy" / "prompts", "Keep it short.")
    before = snapshot(out)
    capsys.readouterr()
    assert generate_cmd(config, out) == 2
    assert "prompts/tables.yaml changed" in capsys.readouterr().err and snapshot(out) == before
    summary = odie_async.generate(str(config), out, update=True, progress=False)
    assert all(summary["stages"][stage].get("sent", 0) == 0 and summary["stages"][stage]["cached"] > 0
               for stage in UPSTREAM)
    assert summary["stages"]["tables"]["sent"] == summary["stages"]["tables"]["answered"] > 0
    assert summary["stages"]["tables_cot"].get("sent", 0) == 0  # its prompt did not change
    assert [entry["changes"] for entry in summary["history"]] == [["started"], ["prompts/tables.yaml changed"]]
    assert "prompts/tables.yaml changed" in (out / "README.md").read_text()
    assert generate_cmd(config, out) == 0  # the new fingerprint is the folder's now


def test_a_copied_config_with_relative_prompts_uses_the_copys_prompts(tmp_path):
    config = copy_configs(tmp_path / "mycopy")
    edit_tables_prompt(tmp_path / "mycopy" / "prompts", "MARKER-OF-THE-COPY")
    data = yaml.safe_load(config.read_text())
    with ThreadedMock() as mock:
        data["endpoint"]["base_url"] = mock.server.base_url
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        summary = odie_async.generate(str(config), tmp_path / "out", progress=False)
        bodies = mock.bodies
    assert any(b"MARKER-OF-THE-COPY" in body for body in bodies)
    assert summary["inputs"]["prompts"] == str(tmp_path / "mycopy" / "prompts")
    assert summary["inputs"]["seeds"] == str(config_dir() / "seeds" / "seed_tasks.jsonl")
    assert str(tmp_path / "mycopy" / "prompts") in (tmp_path / "out" / "README.md").read_text()


def test_the_cards_export_command_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert generate_cmd(write(tmp_path / "c"), "runs/demo") == 0
    card = (tmp_path / "runs" / "demo" / "README.md").read_text()
    command = next(part for part in card.split("`") if part.startswith("odie export "))
    assert command == "odie export runs/demo --parquet"
    assert odie(shlex.split(command)[1:]) == 0
    assert (tmp_path / "runs" / "demo" / "dataset.parquet").stat().st_size > 0


def test_a_second_run_on_a_folder_in_use_is_refused_before_it_reads_or_writes_the_fingerprint(tmp_path, capsys):
    from odie_async.engine.lockfile import held
    from odie_async.pipeline.fingerprint import LOCK

    out = tmp_path / "out"
    assert generate_cmd(write(tmp_path / "c"), out) == 0
    before = snapshot(out)
    capsys.readouterr()
    with held(out / LOCK, "the first run"):  # as a run in progress holds it
        assert odie_async_update(write(tmp_path / "other", model=SMOL), out) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert {k: v for k, v in snapshot(out).items() if k != LOCK} == before


def odie_async_update(config, out) -> int:
    return generate_cmd(config, out, "--update")
