"""The fast parts of ``odie train`` and ``odie predict``: configs, input files, records, requests."""

from __future__ import annotations

import argparse
import json

import pytest

from odie_async.cli import predict as predict_cli
from odie_async.exceptions import ConfigError, InputError, TrainError
from odie_async.model import chat_format, predict, train, train_config
from odie_async.paths import config_dir

from .test_chat_format import ANSWER, CONVERSATION, _tokenizer

ITEM = {"instruction": "List the vessels.", "text": "Heron, 2022.", "table": "| Name |\n| --- |\n| Heron |",
        "source_type": "retrieve", "domain": "Shipping", "category": "fixed header", "difficulty": "easy"}


def test_shipped_configs_load_with_the_papers_settings():
    paper = train_config.load_config(config_dir() / "train-paper.yaml")
    assert (paper.r, paper.alpha, paper.dropout, paper.learning_rate) == (16, 16, 0.05, 3e-4)
    assert (paper.cutoff_len, paper.epochs) == (2048, 10)
    assert set(paper.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    small = train_config.load_config(None)
    assert small.cutoff_len <= 1024 and 0 < small.max_steps <= 100 and small.dtype == "float32"


@pytest.mark.parametrize("text, message", [
    ("lora:\n  rank: 8\n", "lora: unknown key 'rank' \\(known: r, alpha"),
    ("lora:\n  target_modules: [q_proj, embed_tokens]\n", "embed_tokens.*cannot be served by vLLM"),
    ("training:\n  dtype: int8\n", "dtype"),
    ("chat_layout: alpaca\n", "chat_layout"),
    ("lora: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        train_config.load_config(path)
    assert str(path) in str(info.value)


def _jsonl(tmp_path, lines: list) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "invalid JSON"),
    ({"instruction": "no messages"}, "'messages' list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": CONVERSATION[:2]}, "last message"),
    ({"messages": CONVERSATION[:2] + [{"role": "assistant", "content": "  "}]}, "last message"),
])
def test_bad_training_lines_name_the_line(tmp_path, bad, message):
    path = _jsonl(tmp_path, [{"messages": CONVERSATION}, "", bad])
    with pytest.raises(InputError, match=message) as info:
        train.read_conversations(path)
    assert info.value.line_no == 3 and info.value.path == path


def test_training_data_keeps_only_the_messages_and_drops_answerless_examples(tmp_path):
    path = _jsonl(tmp_path, [{"messages": CONVERSATION, "table": "x"}, {"messages": CONVERSATION}])
    conversations = train.read_conversations(path)
    assert conversations == [CONVERSATION, CONVERSATION]
    tokenizer = _tokenizer()
    examples, counts = train.encode_all(tokenizer, conversations, chat_format.TEMPLATE, cutoff=4096)
    assert counts["examples"] == 2 and counts["dropped"] == 0 and counts["truncated"] == 0
    assert set(examples[0]) == {"input_ids", "attention_mask", "labels"}
    assert counts["answer_tokens"] == 2 * len(tokenizer(ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"])
    with pytest.raises(TrainError, match="cutoff_len=8"):
        train.encode_all(tokenizer, conversations, chat_format.TEMPLATE, cutoff=8)


def test_adapter_check_accepts_projections_and_refuses_the_rest(tmp_path):
    config = {"target_modules": ["v_proj", "q_proj"], "modules_to_save": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert train.check_adapter(tmp_path) == ["q_proj", "v_proj"]
    config["target_modules"] = ["q_proj", "lm_head"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TrainError, match="lm_head"):
        train.check_adapter(tmp_path)
    config.update(target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TrainError, match="modules_to_save"):
        train.check_adapter(tmp_path)


def test_full_history_keeps_steps_from_before_a_resume():
    log_history = [{"loss": 2.0, "step": 1, "epoch": 0.5, "num_input_tokens_seen": 100},
                   {"loss": 1.5, "step": 2, "epoch": 1.0, "num_input_tokens_seen": 200},
                   {"train_runtime": 3.0, "step": 2}]
    history = train.full_history(log_history, [{"step": 2, "tokens_per_s": 50.0}])
    assert [(h["step"], h["loss"], h["tokens_per_s"]) for h in history] == [(1, 2.0, None), (2, 1.5, 50.0)]


def test_test_items_load_from_a_list_or_jsonl_and_bad_ones_are_named(tmp_path):
    listed = tmp_path / "test.json"
    listed.write_text(json.dumps([ITEM, ITEM, ITEM]))
    assert len(predict.load_items(listed)) == 3 and len(predict.load_items(listed, limit=2)) == 2
    lines = tmp_path / "test.jsonl"
    lines.write_text(json.dumps(ITEM) + "\n\n" + json.dumps({**ITEM, "category": None}) + "\n")
    with pytest.raises(InputError, match="category") as info:
        predict.load_items(lines)
    assert info.value.line_no == 3
    listed.write_text(json.dumps([ITEM, {"instruction": "x"}]))
    with pytest.raises(InputError, match="item 1: missing"):
        predict.load_items(listed)


def test_prediction_records_have_the_released_fields():
    record = predict.prediction_record(ITEM, "  | Name |\n| --- |\n| Heron |\n", cot=False)
    assert list(record) == ["instruction", "text", "gold", "output", "source_type", "domain", "category",
                            "difficulty"]
    assert record["gold"] == ITEM["table"] and record["output"] == "| Name |\n| --- |\n| Heron |"


def test_cot_answers_split_into_explanation_and_table():
    answer = "The text names one vessel | no table here.\n\n| Name | Year |\n|---|---|\n| Heron | 2022 |\nDone."
    record = predict.prediction_record(ITEM, answer, cot=True)
    assert record["explanation"] == "The text names one vessel | no table here."
    assert record["output"] == "| Name | Year |\n|---|---|\n| Heron | 2022 |\nDone."
    assert predict.split_cot("no table at all") == ("", "no table at all")


def test_request_bodies_use_chat_for_the_template_and_raw_prompts_for_the_paper():
    settings = predict.PredictSettings(max_tokens=64)
    messages = [chat_format.item_messages(ITEM, "S")]
    path, bodies = predict.request_bodies("m", messages, ["<|system|>\nS..."], chat_format.TEMPLATE, settings)
    assert path == "/v1/chat/completions" and bodies == [
        {"model": "m", "max_tokens": 64, "temperature": 0.0, "messages": messages[0]}]
    path, bodies = predict.request_bodies("m", messages, ["<|system|>\nS..."], chat_format.PAPER, settings)
    assert path == "/v1/completions"
    assert bodies[0]["prompt"] == "<|system|>\nS..." and bodies[0]["add_special_tokens"] is False
    assert predict.PredictSettings(cot=True).answer_tokens > predict.PredictSettings().answer_tokens


def test_checkpoint_ids_change_with_the_model_and_settings():
    body = {"model": "adapter", "max_tokens": 64, "temperature": 0.0, "messages": []}
    key = predict._run_key("adapter", [body])
    assert key == predict._run_key("adapter", [{**body, "messages": [{"role": "user", "content": "x"}]}])
    assert key != predict._run_key("base", [body])
    assert key != predict._run_key("adapter", [{**body, "max_tokens": 65}])


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    args = parser.parse_args(["--data", "t.json", "--output", "p.json"])
    vars(args).update(overrides)
    return args


def test_predict_options_are_checked(tmp_path):
    assert predict_cli.settings_from_args(_args()).backend == "offline"
    assert predict_cli.settings_from_args(_args(base_url="http://h/v1", model_name="a")).backend == "server"
    with pytest.raises(ConfigError, match="--served-model-name"):
        predict_cli.settings_from_args(_args(base_url="http://h/v1"))
    with pytest.raises(ConfigError, match="server backend"):
        predict_cli.settings_from_args(_args(base_url="http://h/v1", model_name="a", backend="offline"))
    with pytest.raises(ConfigError, match="adapter_config.json"):
        predict_cli.settings_from_args(_args(lora=("adapter", str(tmp_path))))
    with pytest.raises(ConfigError, match="--limit"):
        predict_cli.settings_from_args(_args(limit=0))
    with pytest.raises(ConfigError, match="--step-tokens"):
        predict_cli.settings_from_args(_args(step_tokens=8))


def test_the_adapter_remembers_its_chat_layout(tmp_path):
    assert predict.adapter_layout(str(tmp_path)) is None
    (tmp_path / "train_summary.json").write_text(json.dumps({"chat_layout": "paper"}))
    assert predict.adapter_layout(str(tmp_path)) == "paper"


def test_merge_lora_needs_an_adapter_and_a_local_server(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert predict_cli.settings_from_args(_args(lora=("adapter", str(tmp_path)), merge_lora=True)).merge_lora
    with pytest.raises(ConfigError, match="--merge-lora"):
        predict_cli.settings_from_args(_args(merge_lora=True))
    with pytest.raises(ConfigError, match="--merge-lora"):
        predict_cli.settings_from_args(_args(lora=("adapter", str(tmp_path)), merge_lora=True, base_url="http://h/v1",
                                         model_name="a"))


def test_merged_adapter_gives_the_adapted_models_logits_and_is_built_once(tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from odie_async.model import merge

    monkeypatch.setenv("ODIE_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    _tokenizer().save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "base"), lora).save_pretrained(tmp_path / "adapter")

    calls = []
    real_merge = merge._merge
    monkeypatch.setattr(merge, "_merge", lambda *a: calls.append(a) or real_merge(*a))
    folder = merge.merged_model_dir(str(tmp_path / "base"), str(tmp_path / "adapter"))
    assert merge.merged_model_dir(str(tmp_path / "base"), str(tmp_path / "adapter")) == folder
    assert len(calls) == 1 and (folder / "tokenizer_config.json").is_file()

    ids = torch.tensor([[1, 5, 9, 13]])
    adapted = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    base_logits = LlamaForCausalLM.from_pretrained(tmp_path / "base")(ids).logits
    with torch.no_grad():
        expected = adapted(ids).logits
        merged = LlamaForCausalLM.from_pretrained(folder)(ids).logits
    assert torch.allclose(merged, expected, atol=1e-5)
    assert not torch.allclose(merged, base_logits, atol=1e-3)
