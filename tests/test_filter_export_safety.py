"""`odie filter` and `odie export` never write over their input, and one output has one writer (issue 25, F1-F4),
and a misspelled top-level config key is refused by every config reader."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from odie_async.cli import main as odie
from odie_async.quality import Gate, load_gate_config
from odie_async.quality.filtering import filter_file
from odie_async.runtime import run_async

TEXT = ("The city council reviewed three venues on Monday. The Harbor Hall opened in 1998 and seats 1,200 people. "
        "The Elm Street Theatre, which opened in 1955, seats 430. The newest, Northgate Arena, opened in 2019.")
GOOD = {"instruction": "Extract the name, opening year and seating capacity of each venue mentioned in the article.",
        "text": TEXT, "category": "fixed header",
        "table": ("| Name | Opening Year | Seating Capacity |\n| --- | --- | --- |\n| Harbor Hall | 1998 | 1,200 |\n"
                  "| Elm Street Theatre | 1955 | 430 |\n| Northgate Arena | 2019 | N/A |")}
REFUSAL = {"instruction": "I'm not ready to talk about that."}
LEXICAL = "faithfulness: {enabled: false}\nconsistency: {enabled: false}\nrelevance: {enabled: false}\n"


def jsonl(path, rows) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def lines(path) -> list[dict]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture
def lexical(tmp_path):
    path = tmp_path / "lexical.yaml"  # the checks that need no encoder: the runs take a blink
    path.write_text(LEXICAL)
    return path


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "in.jsonl"
    jsonl(src, [GOOD | {"id": f"r{i}"} | (REFUSAL if i % 2 else {}) for i in range(6)])
    return src


def filter_cmd(src, kept, dropped, config) -> int:
    return odie(["filter", str(src), "--kept", str(kept), "--dropped", str(dropped), "--config", str(config),
                 "--no-progress"])


# -- F1: an output that is the input ------------------------------------------------------------------------

@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("which", ["--kept", "--dropped"])
def test_an_output_that_is_the_input_is_refused_and_the_input_is_untouched(tmp_path, source, lexical, capsys,
                                                                          link, which):
    torn = source.read_bytes() + b'{"id": "torn", "instr'  # what the torn-line repair would have cut
    source.write_bytes(torn)
    named = {"same": source, "symlink": tmp_path / "link.jsonl", "hardlink": tmp_path / "hard.jsonl"}[link]
    if link == "symlink":
        named.symlink_to(source)
    elif link == "hardlink":
        os.link(source, named)
    other = tmp_path / "other.jsonl"
    kept, dropped = (named, other) if which == "--kept" else (other, named)
    assert filter_cmd(source, kept, dropped, lexical) == 2
    assert "same file" in capsys.readouterr().err
    assert source.read_bytes() == torn and not other.exists()


def test_the_library_refuses_it_too(tmp_path, source, lexical):
    before = source.read_bytes()
    with pytest.raises(Exception, match="same file"):
        run_async(filter_file(source, source, tmp_path / "d.jsonl", Gate(load_gate_config(lexical)),
                              progress=False, handle_signals=False))
    assert source.read_bytes() == before


# -- F2: two runs on one output ------------------------------------------------------------------------------

@pytest.mark.parametrize("through_link", [False, True])
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, source, lexical, capsys,
                                                                         through_link):
    kept, dropped = tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    second: dict = {}

    async def external(prepared):
        if "code" not in second:  # the first run is judging: a second run starts now, on the same output
            named = kept
            if through_link:
                named = tmp_path / "alias.jsonl"
                kept.touch()
                named.symlink_to(kept)
            second["code"] = await asyncio.to_thread(filter_cmd, source, named, tmp_path / "d2.jsonl", lexical)
        return [None] * len(prepared)

    stats = run_async(filter_file(source, kept, dropped, Gate(load_gate_config(lexical)), external, batch_size=2,
                                  progress=False, handle_signals=False))
    assert second["code"] == 2 and "in use by another run" in capsys.readouterr().err
    ids = [line["id"] for line in lines(kept) + lines(dropped)]
    assert sorted(ids) == [f"r{i}" for i in range(6)] and stats.done == 6  # each record once
    assert not (tmp_path / "d2.jsonl").exists()


# -- F3: a re-judged record carries only its new verdict -----------------------------------------------------

def test_a_refiltered_dropped_record_that_now_passes_carries_no_old_reasons(tmp_path, source, lexical, capsys):
    kept, dropped = tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    assert filter_cmd(source, kept, dropped, lexical) == 0
    assert {line["id"] for line in lines(dropped)} == {"r1", "r3", "r5"}
    capsys.readouterr()
    lenient = tmp_path / "lenient.yaml"  # a gate under which the refusals pass
    lenient.write_text(LEXICAL + "instruction: {enabled: false}\n")
    again_kept, again_dropped = tmp_path / "k2.jsonl", tmp_path / "d2.jsonl"
    assert filter_cmd(dropped, again_kept, again_dropped, lenient) == 0
    out = capsys.readouterr().out
    rejudged = lines(again_kept)
    assert {line["id"] for line in rejudged} == {"r1", "r3", "r5"} and not lines(again_dropped)
    assert all("reasons" not in line for line in rejudged)
    assert "kept 3 of 3, dropped 0" in out and "instruction.refusal" not in out

    from odie_async.viewer.record_view import status
    assert {status(line, "kept") for line in rejudged} == {"kept"}


# -- F4: an export never writes over its run -----------------------------------------------------------------

@pytest.mark.parametrize("target", ["train.jsonl", "train_cot.jsonl", "requests.jsonl", "dropped.jsonl", "link"])
def test_export_refuses_a_parquet_target_that_is_one_of_the_runs_files(tmp_path, capsys, target):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("train.jsonl", "train_cot.jsonl", "requests.jsonl", "dropped.jsonl"):
        (run / name).write_text('{"id": "a-plain", "variant": "plain"}\n')
    if target == "link":
        (tmp_path / "elsewhere.parquet").symlink_to(run / "train.jsonl")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    path = tmp_path / "elsewhere.parquet" if target == "link" else run / target
    assert odie(["export", str(run), "--parquet", str(path)]) == 2
    assert "would write over the run's own files" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("where", [".", ".."])
def test_export_refuses_a_save_to_disk_folder_holding_the_run(tmp_path, capsys, where):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.jsonl").write_text('{"id": "a-plain", "variant": "plain"}\n')
    assert odie(["export", str(run), "--save-to-disk", str(run / where)]) == 2
    assert "would write over the run's own files" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["train.jsonl"]


# -- unknown top-level keys ----------------------------------------------------------------------------------

def test_a_misspelled_top_level_key_is_refused_by_batch_config(tmp_path, capsys):
    config = tmp_path / "pool.yaml"
    config.write_text("endpoits:\n  - base_url: http://127.0.0.1:9/v1\n")
    requests = tmp_path / "in.jsonl"
    jsonl(requests, [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}])
    code = odie(["batch", str(requests), "-o", str(tmp_path / "out.jsonl"), "--config", str(config),
                 "--base-url", "http://127.0.0.1:9/v1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pool.yaml" in err and "'endpoits'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("loader", ["generate", "train", "filter"])
def test_a_misspelled_top_level_key_is_refused_by_every_other_config_reader(tmp_path, loader):
    from odie_async.exceptions import ConfigError
    from odie_async.model.train_config import load_config as load_train
    from odie_async.pipeline.config import load_config as load_generate

    config = tmp_path / "typo.yaml"
    config.write_text("endpoits:\n  base_url: mock\n")
    load = {"generate": load_generate, "train": load_train, "filter": load_gate_config}[loader]
    with pytest.raises(ConfigError, match=r"typo.yaml.*endpoits"):
        load(str(config))


# -- a filter's files hold one gate's verdicts ---------------------------------------------------------------

def test_a_rerun_with_another_gate_into_the_same_files_is_refused(tmp_path, source, lexical, capsys):
    kept, dropped = tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    half = tmp_path / "half.jsonl"
    half.write_bytes(b"".join(source.read_bytes().splitlines(keepends=True)[:3]))
    assert filter_cmd(half, kept, dropped, lexical) == 0
    before = kept.read_bytes(), dropped.read_bytes()
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(LEXICAL + "instruction: {enabled: false}\n")
    capsys.readouterr()
    assert filter_cmd(source, kept, dropped, lenient) == 2
    assert "instruction.enabled True → False" in capsys.readouterr().err
    assert (kept.read_bytes(), dropped.read_bytes()) == before
    assert filter_cmd(source, kept, dropped, lexical) == 0  # the same gate resumes
    assert sorted(line["id"] for line in lines(kept) + lines(dropped)) == [f"r{i}" for i in range(6)]
