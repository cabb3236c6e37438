"""``odie train``: LoRA fine-tuning of a causal LM on generated InstructIE data.

Reads chat-format JSONL (``{"messages": [system, user, assistant], ...}`` a line,
as ``odie generate`` exports), renders each conversation with the base model's
chat template (or the paper's layout), puts the loss on the assistant's tokens
only, and trains a peft LoRA adapter with the ``transformers`` Trainer.
Checkpoints go to ``OUTPUT/checkpoints`` (``--resume`` continues from the last
one); the final adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
loadable by vLLM with ``--enable-lora``), ``train_summary.json`` and a loss plot
go to ``OUTPUT``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..endpoints.embedded import require_ml_stack, resolve_model
from ..exceptions import InputError, TrainError
from ..files import Entry, read_json_records, write_atomic
from ..runtime import offline_hf
from . import chat_format
from .adapter_files import CONFIG, SUMMARY as SUMMARY_FILE, read_adapter_json
from .train_config import VLLM_LORA_MODULES, TrainConfig

log = structlog.get_logger(__name__)

CHECKPOINTS = "checkpoints"
SUMMARY = SUMMARY_FILE  # odie train writes what adapter_files reads
LOSS_PLOT = "loss.png"


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The ``messages`` of every record of a chat-format JSONL file (or JSON list); InputError names the line."""
    entries = read_json_records(path, "training data", error=TrainError)
    conversations = [_messages(Path(path), entry) for entry in entries]
    if not conversations:
        raise TrainError(f"{path}: no training conversations in the file")
    return conversations


def _messages(path: Path, entry: Entry) -> list[dict]:
    record, line_no = entry.value, entry.line
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InputError(str(path), line_no, "expected an object with a non-empty 'messages' list")
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str)):
            raise InputError(str(path), line_no, "each message needs a role (system/user/assistant) and "
                                                 "a string content")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise InputError(str(path), line_no, "the last message must be a non-empty assistant answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_all(tokenizer, conversations: list[list[dict]], layout: str, cutoff: int) -> tuple[list[dict], dict]:
    """Tokenized examples for the Trainer, and counts (kept, cut, dropped, tokens)."""
    examples, counts = [], {"conversations": len(conversations), "truncated": 0, "dropped": 0,
                            "tokens": 0, "answer_tokens": 0}
    for messages in conversations:
        enc = chat_format.encode(tokenizer, messages, layout, cutoff)
        counts["truncated"] += enc.truncated
        if enc.n_labels == 0:
            counts["dropped"] += 1  # the cutoff left none of the answer: nothing to learn from
            continue
        counts["tokens"] += len(enc.input_ids)
        counts["answer_tokens"] += enc.n_labels
        examples.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                         "labels": enc.labels})
    counts["examples"] = len(examples)
    if not examples:
        raise TrainError(f"no conversation keeps any answer token within cutoff_len={cutoff}")
    return examples, counts


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return getattr(torch, name)


def _lora_model(model_dir: str, config: TrainConfig):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_torch_dtype(config.dtype))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA model ready", trainable_parameters=trainable, total_parameters=total,
             trainable_share=f"{100 * trainable / total:.2f}%")
    return model


def _log_keys(values: dict) -> dict:
    """Log-line names for counts: the log redactor hides any key that contains 'token'."""
    return {key.replace("tokens", "tok"): value for key, value in values.items()}


def make_progress_callback(history: list[dict]):
    """A TrainerCallback logging loss, learning rate, tokens/s and ETA, and keeping the history.

    ``start_tokens`` is the token count when this session began (nonzero after a resume).
    """
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        start_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step, self.started = state.global_step, time.monotonic()
            self.start_tokens = state.num_input_tokens_seen
            self.mark = (state.num_input_tokens_seen, self.started)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            now, (tokens_before, before) = time.monotonic(), self.mark
            self.mark = (state.num_input_tokens_seen, now)
            rate = (state.num_input_tokens_seen - tokens_before) / max(now - before, 1e-9)
            done = state.global_step - self.start_step
            eta = (now - self.started) / done * (state.max_steps - state.global_step) if done else None
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": logs["loss"],
                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                     "tokens_per_s": round(rate, 1), "tokens_seen": state.num_input_tokens_seen}
            history.append(entry)
            log.info("training", **_log_keys({**entry, "of": state.max_steps, "loss": round(logs["loss"], 4),
                                              "eta_s": round(eta) if eta is not None else None}))

    return Progress()


def _training_arguments(config: TrainConfig, checkpoints: Path, max_steps: int | None):
    import torch
    from transformers import TrainingArguments

    dtype = _torch_dtype(config.dtype)
    steps = max_steps if max_steps is not None else config.max_steps
    return TrainingArguments(
        output_dir=str(checkpoints), per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, num_train_epochs=config.epochs,
        max_steps=steps if steps and steps > 0 else -1, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio, lr_scheduler_type=config.lr_scheduler, optim="adamw_torch",
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, data_seed=config.seed,
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), report_to="none", disable_tqdm=True,
        remove_unused_columns=False, dataloader_pin_memory=False,
        include_num_input_tokens_seen="non_padding",
    )


def _last_checkpoint(checkpoints: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def _resume_point(checkpoints: Path, resume: bool) -> str | None:
    last = _last_checkpoint(checkpoints)
    if resume and last is None:
        raise TrainError(f"--resume: no checkpoint under {checkpoints}")
    if not resume and last is not None:
        raise TrainError(f"{checkpoints} already holds {Path(last).name}: pass --resume to continue from it, "
                         "or choose another --output")
    return last


def check_adapter(adapter_dir: str | Path) -> list[str]:
    """The adapter's target modules, after checking vLLM can serve every one of them."""
    path = Path(adapter_dir) / CONFIG
    config = read_adapter_json(adapter_dir, CONFIG, error=TrainError)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    bad = [t for t in targets if t not in VLLM_LORA_MODULES]
    if bad or not targets or config.get("modules_to_save"):
        raise TrainError(f"{path}: vLLM cannot serve target modules {bad or targets} "
                         f"(modules_to_save {config.get('modules_to_save')})")
    return targets


def full_history(log_history: list[dict], session: list[dict]) -> list[dict]:
    """Every logged step of the run, from before a resume too (the Trainer's state keeps them).

    Steps logged in this session carry their tokens/s; earlier ones have None.
    """
    rates = {h["step"]: h["tokens_per_s"] for h in session}
    return [{"step": e["step"], "epoch": round(e.get("epoch") or 0, 3), "loss": e["loss"],
             "learning_rate": e.get("learning_rate"), "grad_norm": e.get("grad_norm"),
             "tokens_per_s": rates.get(e["step"]), "tokens_seen": e.get("num_input_tokens_seen")}
            for e in log_history if "loss" in e]


def plot_loss(history: list[dict], png: Path) -> None:
    """Training loss and tokens/s against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], marker="o", ms=3, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (assistant tokens)")
    rate = ax.twinx()
    timed = [h for h in history if h["tokens_per_s"] is not None]
    rate.plot([h["step"] for h in timed], [h["tokens_per_s"] for h in timed], color="tab:gray", alpha=0.5)
    rate.set_ylabel("tokens/s")
    ax.set_title("odie train")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


@dataclass
class TrainJob:
    """One ``odie train`` invocation."""

    data: str
    base_model: str
    output: str
    config: TrainConfig
    max_steps: int | None = None
    resume: bool = False


def train(job: TrainJob) -> dict:
    """Train the adapter, save it to ``job.output`` and return the summary."""
    offline_hf()
    require_ml_stack()
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, PrinterCallback, Trainer

    started = time.monotonic()
    model_dir = resolve_model(job.base_model)
    out = Path(job.output)
    checkpoints = out / CHECKPOINTS
    resume_from = _resume_point(checkpoints, job.resume)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layout = chat_format.resolve_layout(tokenizer, job.config.chat_layout)
    examples, counts = encode_all(tokenizer, read_conversations(job.data), layout, job.config.cutoff_len)
    log.info("training data ready", data=job.data, layout=layout, **_log_keys(counts))
    model = _lora_model(model_dir, job.config)
    history: list[dict] = []
    progress = make_progress_callback(history)
    trainer = Trainer(
        model=model, args=_training_arguments(job.config, checkpoints, job.max_steps), train_dataset=examples,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8),
        processing_class=tokenizer, callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)
    if resume_from:
        log.info("resuming", checkpoint=resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    model.save_pretrained(out)
    targets = check_adapter(out)
    session_tokens = trainer.state.num_input_tokens_seen - progress.start_tokens
    summary = _summary(job, model_dir, layout, counts, trainer.state, targets, resume_from) | {
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 1),
        "tokens_per_s": round(session_tokens / max(result.metrics.get("train_runtime", 0.0), 1e-9), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "history": full_history(trainer.state.log_history, history),
    }
    write_atomic(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))  # the viewer reads it live
    if summary["history"]:
        plot_loss(summary["history"], out / LOSS_PLOT)
    log.info("adapter saved", adapter=summary["adapter"], steps=summary["steps"], last_loss=summary["last_loss"],
             tok_per_s=summary["tokens_per_s"], seconds=summary["wall_seconds"])
    return summary


def _summary(job, model_dir, layout, counts, state, targets, resumed) -> dict:
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "adapter": str(Path(job.output).resolve()),
        "base_model": model_dir,
        "data": str(Path(job.data).resolve()),
        "chat_layout": layout,
        "target_modules": targets,
        "config": job.config.model_dump(),
        "data_counts": counts,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0, 3),
        "resumed_from": resumed,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses_finite": all(math.isfinite(x) for x in losses),
        "tokens_seen": state.num_input_tokens_seen,
    }
