"""Chat layouts and assistant-only labels, on a small byte-level tokenizer built in the test.

The tokenizer has a few merges so that tokens span several characters (as real
BPE tokens do), ChatML special tokens, and SmolLM2's chat template.
"""

from __future__ import annotations

import pytest

from odie_async.model import chat_format
from odie_async.exceptions import ConfigError, TrainError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM = "You are a helpful assistant."
ANSWER = "| Name | Year |\n| --- | --- |\n| Heron | 2022 |"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "List each vessel and its year.\n\nThe vessel Heron was built in 2022."},
    {"role": "assistant", "content": ANSWER},
]


def _tokenizer(template: str | None = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("|", "Ġ"), ("Ġ", "|"), ("e", "r"), ("Ġ", "-"), ("Ġ-", "-")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


def _labeled_text(tokenizer, encoded) -> str:
    labeled = [t for t in encoded.labels if t != chat_format.IGNORE_INDEX]
    return tokenizer.decode(labeled)


def _first_label(encoded) -> int:
    return next(i for i, t in enumerate(encoded.labels) if t != chat_format.IGNORE_INDEX)


def test_template_layout_labels_exactly_the_answer_and_its_end_of_turn(tokenizer):
    encoded = chat_format.encode(tokenizer, CONVERSATION, chat_format.TEMPLATE, cutoff=4096)
    assert _labeled_text(tokenizer, encoded) == ANSWER + "<|im_end|>"
    start = _first_label(encoded)
    prompt = chat_format.render(tokenizer, CONVERSATION[:-1], chat_format.TEMPLATE, add_generation_prompt=True)
    assert tokenizer.decode(encoded.input_ids[:start]) == prompt
    # Labelled tokens are one contiguous run, and equal the input ids they sit on.
    labeled = [i for i, t in enumerate(encoded.labels) if t != chat_format.IGNORE_INDEX]
    assert labeled == list(range(start, start + len(labeled)))
    assert all(encoded.labels[i] == encoded.input_ids[i] for i in labeled)
    # The newline the template writes after <|im_end|> carries no loss.
    assert tokenizer.decode(encoded.input_ids[labeled[-1] + 1:]) == "\n"
    assert not encoded.truncated


def test_paper_layout_renders_the_papers_markers_and_labels_the_answer(tokenizer):
    full = chat_format.render(tokenizer, CONVERSATION, chat_format.PAPER)
    user = CONVERSATION[1]["content"]
    assert full == f"<|system|>\n{SYSTEM}\n\n<|user|>\n{user}\n\n<|assistant|>\n{ANSWER}\n\n<|im_end|>"
    prompt = chat_format.render(tokenizer, CONVERSATION[:-1], chat_format.PAPER, add_generation_prompt=True)
    assert prompt == f"<|system|>\n{SYSTEM}\n\n<|user|>\n{user}\n\n<|assistant|>\n"
    encoded = chat_format.encode(tokenizer, CONVERSATION, chat_format.PAPER, cutoff=4096)
    assert _labeled_text(tokenizer, encoded) == ANSWER + "\n\n<|im_end|>"
    assert tokenizer.decode(encoded.input_ids[:_first_label(encoded)]) == prompt


def test_only_the_final_assistant_turn_carries_loss(tokenizer):
    earlier = [CONVERSATION[0], CONVERSATION[1], {"role": "assistant", "content": "| Old | Table |"},
               {"role": "user", "content": "Again, please."}, CONVERSATION[2]]
    encoded = chat_format.encode(tokenizer, earlier, chat_format.TEMPLATE, cutoff=4096)
    assert _labeled_text(tokenizer, encoded) == ANSWER + "<|im_end|>"


def test_cutoff_truncates_and_can_leave_no_answer(tokenizer):
    whole = chat_format.encode(tokenizer, CONVERSATION, chat_format.TEMPLATE, cutoff=4096)
    start = _first_label(whole)
    cut = chat_format.encode(tokenizer, CONVERSATION, chat_format.TEMPLATE, cutoff=start + 5)
    assert cut.truncated and len(cut.input_ids) == start + 5 and cut.n_labels == 5
    none_left = chat_format.encode(tokenizer, CONVERSATION, chat_format.TEMPLATE, cutoff=start)
    assert none_left.truncated and none_left.n_labels == 0


def test_a_conversation_must_end_with_the_answer(tokenizer):
    with pytest.raises(TrainError, match="assistant"):
        chat_format.encode(tokenizer, CONVERSATION[:-1], chat_format.TEMPLATE, cutoff=4096)


def test_a_template_that_rewrites_the_prompt_is_refused():
    # Renders the system turn differently once an answer follows: no prefix to mask.
    odd = ("{% for m in messages %}{{ m['role'] }}{% if messages[-1]['role'] == 'assistant' %}!{% endif %}: "
           "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TrainError, match="prompt differently"):
        chat_format.encode(_tokenizer(odd), CONVERSATION, chat_format.TEMPLATE, cutoff=4096)


def test_layout_resolution():
    with_template, without = _tokenizer(), _tokenizer(template=None)
    assert chat_format.resolve_layout(with_template, chat_format.AUTO) == chat_format.TEMPLATE
    assert chat_format.resolve_layout(without, chat_format.AUTO) == chat_format.PAPER
    assert chat_format.resolve_layout(with_template, chat_format.PAPER) == chat_format.PAPER
    with pytest.raises(ConfigError, match="no chat template"):
        chat_format.resolve_layout(without, chat_format.TEMPLATE)
    with pytest.raises(ConfigError, match="unknown chat layout"):
        chat_format.resolve_layout(with_template, "alpaca")


def test_item_messages_use_the_system_prompt_file(tmp_path, monkeypatch):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "system.txt").write_text("Extract tables.\n", encoding="utf-8")
    (tmp_path / "prompts" / "system_cot.txt").write_text("Explain, then extract.\n", encoding="utf-8")
    monkeypatch.setenv("ODIE_CONFIG_DIR", str(tmp_path))
    item = {"instruction": "  List the vessels. ", "text": "Heron, 2022.\n"}
    messages = chat_format.item_messages(item, chat_format.system_prompt())
    assert messages == [{"role": "system", "content": "Extract tables."},
                        {"role": "user", "content": "List the vessels.\n\nHeron, 2022."}]
    assert chat_format.system_prompt(cot=True) == "Explain, then extract."
    with pytest.raises(ConfigError, match="cannot read"):
        chat_format.system_prompt(tmp_path / "missing.txt")


def test_the_shipped_system_prompt_is_the_papers():
    assert chat_format.system_prompt() == (
        "You are a helpful assistant. Follow the user instruction to extract information from the given "
        "text into a concise markdown table.")
