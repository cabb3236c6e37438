"""The whole loop at tiny scale: train the embedded model's adapter, serve it, predict, score.

One module-scoped adapter (three optimizer steps on eight hand-written
conversations, with a resume after the second), one vLLM server for the
base model and the adapter, eight test items each way, and ``odie eval``
scoring of both files. A last test runs ``odie predict`` with the offline
backend as a subprocess (vLLM's offline engine must start under a
``__main__`` guard).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from odie_async.model import predict, train, train_config
from odie_async.model.chat_format import system_prompt
from odie_async.evaluation.evaluate import score_files
from odie_async.evaluation.metrics import REQUIRED_FIELDS
from odie_async.paths import shared_dir

pytestmark = pytest.mark.slow

ITEMS = 8
MAX_TOKENS = 96
EXAMPLES = [
    ("List each bridge with its city and opening year.",
     "The Arden Bridge in Leeds opened in 1911. Kelso Bridge, in Perth, opened in 1954.",
     "| Bridge | City | Opening year |\n| --- | --- | --- |\n| Arden Bridge | Leeds | 1911 |\n"
     "| Kelso Bridge | Perth | 1954 |"),
    ("Extract the players and the number of goals each scored.",
     "Mira Holt scored twice in the final, while Ana Ruiz added one goal late in the game.",
     "| Player | Goals |\n| --- | --- |\n| Mira Holt | 2 |\n| Ana Ruiz | 1 |"),
    ("What medications are mentioned, and at what dose?",
     "The patient takes 5 mg of Lisoril each morning and 20 mg of Cardex at night.",
     "| Medication | Dose | Time |\n| --- | --- | --- |\n| Lisoril | 5 mg | morning |\n| Cardex | 20 mg | night |"),
    ("Summarize the products and prices in a table.",
     "Our spring sale lists the Tern kettle at $39 and the Wren toaster at $25.",
     "| Product | Price |\n| --- | --- |\n| Tern kettle | $39 |\n| Wren toaster | $25 |"),
    ("Give the name, role and start date of each new hire.",
     "Jonas Berg joins as data engineer on 3 March; Lea Moss starts as designer on 10 March.",
     "| Name | Role | Start date |\n| --- | --- | --- |\n| Jonas Berg | data engineer | 3 March |\n"
     "| Lea Moss | designer | 10 March |"),
    ("Pull out each planet and the number of moons.",
     "The survey counts 14 moons around Veyra and 3 around the smaller Tosk.",
     "| Planet | Moons |\n| --- | --- |\n| Veyra | 14 |\n| Tosk | 3 |"),
    ("Tabulate the trains, their departure times and platforms.",
     "The 8:15 Coastline leaves from platform 4; the 9:40 Northern Star departs from platform 7.",
     "| Train | Departure | Platform |\n| --- | --- | --- |\n| Coastline | 8:15 | 4 |\n| Northern Star | 9:40 | 7 |"),
    ("Extract the key facts about each recipe.",
     "Lentil soup takes 40 minutes and serves four. Apple crumble takes an hour and serves six.",
     "| Recipe | Time | Serves |\n| --- | --- | --- |\n| Lentil soup | 40 minutes | 4 |\n"
     "| Apple crumble | 1 hour | 6 |"),
]


def _training_file(path) -> str:
    system = system_prompt()
    lines = [{"messages": [{"role": "system", "content": system},
                           {"role": "user", "content": f"{instruction}\n\n{text}"},
                           {"role": "assistant", "content": table}],
              "instruction": instruction, "text": text, "table": table}
             for instruction, text, table in EXAMPLES]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """Three steps (two, then a resume for the third) of the CPU config, at a learning rate that shows."""
    work = tmp_path_factory.mktemp("train")
    config = train_config.load_config(None)
    config.learning_rate, config.warmup_ratio, config.save_steps = 1e-3, 0.0, 1
    job = train.TrainJob(_training_file(work / "train.jsonl"), "embedded", str(work / "adapter"), config,
                         max_steps=2)
    first = train.train(job)
    job.max_steps, job.resume = 3, True
    return train.train(job), first


@pytest.fixture(scope="module")
def test_items(tmp_path_factory):
    items = json.loads((shared_dir() / "instructie" / "test_data.json").read_text(encoding="utf-8"))[:ITEMS]
    path = tmp_path_factory.mktemp("test") / "test_8.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path, items


def test_training_logs_finite_loss_and_saves_a_servable_adapter(adapter):
    summary, first = adapter
    folder = summary["adapter"]
    assert os.path.isfile(os.path.join(folder, "adapter_model.safetensors"))
    assert train.check_adapter(folder) == sorted(train.VLLM_LORA_MODULES)
    assert first["steps"] == 2 and summary["steps"] == 3
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert [h["step"] for h in summary["history"]] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in summary["history"])
    assert summary["tokens_per_s"] > 0 and summary["history"][-1]["tokens_per_s"] > 0
    assert os.path.getsize(os.path.join(folder, train.LOSS_PLOT)) > 0
    assert summary["data_counts"]["examples"] == len(EXAMPLES)


def _check_predictions(path, items) -> list[dict]:
    records = json.loads(path.read_text(encoding="utf-8"))
    assert len(records) == len(items)
    for record, item in zip(records, items):
        assert set(REQUIRED_FIELDS) | {"instruction", "text", "domain"} <= set(record)
        assert record["gold"] == item["table"] and record["instruction"] == item["instruction"]
        assert isinstance(record["output"], str)
    assert any(record["output"].strip() for record in records)
    return records


def test_served_base_and_adapter_predict_and_score(adapter, test_items, tmp_path):
    from odie_async.endpoints.serve import ServeSettings, VLLMServer

    summary, _ = adapter
    path, items = test_items
    with VLLMServer(ServeSettings(loras={"odie": summary["adapter"]}, max_model_len=4096)) as server:
        runs = {}
        for name, model in (("base", server.model_name), ("adapted", "odie")):
            settings = predict.PredictSettings(lora=summary["adapter"] if name == "adapted" else None,
                                               backend="server", base_url=server.base_url, model_name=model,
                                               max_tokens=MAX_TOKENS)
            runs[name] = predict.predict(items, settings, tmp_path / f"{name}.json")
    outputs = {name: _check_predictions(tmp_path / f"{name}.json", items) for name in runs}
    for run in runs.values():
        assert run["items"] == ITEMS and 0 < run["output_tokens"] <= ITEMS * MAX_TOKENS
    # The adapter is really applied: its greedy answers differ from the base model's somewhere.
    assert [r["output"] for r in outputs["base"]] != [r["output"] for r in outputs["adapted"]]
    reports = score_files([tmp_path / "base.json", tmp_path / "adapted.json"], compat=False)
    for report in reports:
        assert report["n"] == ITEMS
        for metric in ("header", "content"):
            assert 0.0 <= report[metric]["overall"] <= 100.0


def test_offline_cli_predicts_with_the_adapter(adapter, test_items, tmp_path):
    summary, _ = adapter
    path, _items = test_items
    out = tmp_path / "offline.json"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "odie"), "predict", "--data", str(path), "--lora", summary["adapter"],
         "--output", str(out), "--limit", "2", "--max-tokens", "32", "--max-model-len", "4096"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    _check_predictions(out, _items[:2])
