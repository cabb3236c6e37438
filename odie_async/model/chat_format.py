"""Conversations for training and prediction: messages, rendering, assistant-only labels.

Two chat layouts render a conversation into text:

- ``template``: the base model's own chat template (``tokenizer.chat_template``);
- ``paper``: the ODIE paper's layout, ``configs/chat_templates/paper.jinja``
  (``<|system|>``, ``<|user|>``, ``<|assistant|>`` markers, each followed by a
  newline, each turn by a blank line, the answer by the end-of-sequence token),
  for base models without a chat template.

``auto`` picks ``template`` when the tokenizer has one. Rendered text is always
tokenized with ``add_special_tokens=False``: the layout itself carries every
special token, as vLLM's chat endpoint assumes too, so training and serving see
the same token sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ConfigError, TrainError
from ..paths import config_dir

TEMPLATE = "template"
PAPER = "paper"
AUTO = "auto"
LAYOUTS = (AUTO, TEMPLATE, PAPER)
IGNORE_INDEX = -100
SYSTEM_PROMPT = "prompts/system.txt"
SYSTEM_PROMPT_COT = "prompts/system_cot.txt"
PAPER_TEMPLATE = "chat_templates/paper.jinja"


@dataclass
class Encoded:
    """One tokenized conversation: ids, labels (-100 outside the answer), and whether it was cut."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_labels(self) -> int:
        """How many tokens carry loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def system_prompt(path: str | Path | None = None, cot: bool = False) -> str:
    """The system turn: ``path``, else ``configs/prompts/system.txt`` (``system_cot.txt`` with ``cot``)."""
    default = config_dir() / (SYSTEM_PROMPT_COT if cot else SYSTEM_PROMPT)
    return _read(Path(path) if path else default).strip()


def item_messages(item: dict, system: str) -> list[dict]:
    """The prompt of a test item: a system turn, and a user turn of instruction, blank line, text."""
    user = f"{item['instruction'].strip()}\n\n{item['text'].strip()}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def resolve_layout(tokenizer, layout: str) -> str:
    """``template`` or ``paper`` for this tokenizer; ``auto`` prefers the model's own template."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown chat layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if layout == AUTO:
        return TEMPLATE if has_template else PAPER
    if layout == TEMPLATE and not has_template:
        raise ConfigError("the base model has no chat template; use the paper's layout (chat_layout: paper)")
    return layout


def chat_template(layout: str) -> str | None:
    """The Jinja template to pass for ``layout``: None means the model's own."""
    return _read(config_dir() / PAPER_TEMPLATE) if layout == PAPER else None


def render(tokenizer, messages: list[dict], layout: str, add_generation_prompt: bool = False) -> str:
    """The conversation as text in ``layout`` (``template`` or ``paper``)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        chat_template=chat_template(layout),
    )


def answer_span(tokenizer, messages: list[dict], layout: str) -> tuple[str, int, int]:
    """The rendered conversation and the character span of the final assistant turn.

    The span runs from the end of the generation prompt to the end of the first
    end-of-sequence token after the answer (or the end of the text when the
    layout has none there), so the model learns to stop.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise TrainError("a training conversation must end with an assistant turn")
    prompt = render(tokenizer, messages[:-1], layout, add_generation_prompt=True)
    full = render(tokenizer, messages, layout)
    if not full.startswith(prompt):
        raise TrainError("the chat template renders the prompt differently with the answer appended; "
                         "cannot locate the assistant's tokens (try chat_layout: paper)")
    eos = tokenizer.eos_token or ""
    answer = messages[-1]["content"].strip()
    found = full.find(answer, len(prompt))
    stop = full.find(eos, found + len(answer)) if eos and found >= 0 else -1
    end = stop + len(eos) if stop >= 0 else len(full)
    return full, len(prompt), end


def encode(tokenizer, messages: list[dict], layout: str, cutoff: int) -> Encoded:
    """Tokenize a conversation with loss only on the final assistant turn, cut at ``cutoff`` tokens."""
    full, start, end = answer_span(tokenizer, messages, layout)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [tid if start <= lo and hi <= end and hi > lo else IGNORE_INDEX
              for tid, (lo, hi) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > cutoff
    return Encoded(ids[:cutoff], labels[:cutoff], truncated)
