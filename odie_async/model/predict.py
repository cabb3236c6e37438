"""``odie predict``: tables for an InstructIE test set, the whole set at once through vLLM.

Two backends, both batched:

- ``offline`` (default): one ``vllm.LLM`` in this process, one ``LLM.chat`` call
  for every item, the adapter as a ``LoRARequest``;
- ``server``: the engine sends every request at once to vLLM's OpenAI server,
  the adapter requested by its served name. ``--base-url`` points it at a
  running ``odie serve``; without one a server is started for the run. Answers
  are checkpointed next to the output, so an interrupted run resumes.

The output is the released prediction format that ``odie eval`` reads: a JSON
list of ``instruction``, ``text``, ``gold`` (the test table), ``output``,
``source_type``, ``domain``, ``category``, ``difficulty`` (plus ``explanation``
with ``--cot``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from . import chat_format
from .adapter_files import SUMMARY, read_adapter_json
from ..exceptions import ConfigError, InputError, OdieError, RunAborted
from ..endpoints.embedded import EMBEDDED, require_ml_stack, resolve_model
from ..evaluation.tables import TableError, split_around_table
from ..files import Entry, read_json_records, write_atomic
from ..runtime import offline_hf

log = structlog.get_logger(__name__)

ITEM_FIELDS = ("instruction", "text", "table", "category", "difficulty", "source_type")
ADAPTER_NAME = "adapter"
COMPLETIONS_PATH = "/v1/completions"
_DEFAULT_MAX_TOKENS = {False: 512, True: 768}
_KV_CACHE_GIB = "2"
# vLLM's CPU LoRA ops gather a copy of the adapter's matrices for every token of a step:
# short steps keep those copies in cache (rank-16 adapter, 2 cores: 34 tok/s at vLLM's
# default of 4096 tokens a step, 72 at 256).
CPU_LORA_STEP_TOKENS = 256


@dataclass
class PredictSettings:
    """What to predict with and how."""

    base_model: str = EMBEDDED
    lora: str | None = None
    lora_name: str = ADAPTER_NAME
    chat_layout: str | None = None
    cot: bool = False
    system_prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    max_model_len: int | None = None
    backend: str = "offline"
    base_url: str | None = None
    model_name: str | None = None
    api_key: str | None = None
    # None: the engine's ``predict`` preset (engine/settings.py DEFAULTS)
    concurrency: int | None = None
    timeout_s: float | None = None
    merge_lora: bool = False
    step_tokens: int | None = None

    @property
    def answer_tokens(self) -> int:
        """The completion budget: ``max_tokens``, or a default that leaves room for a CoT paragraph."""
        return self.max_tokens or _DEFAULT_MAX_TOKENS[self.cot]


@dataclass
class Answer:
    """One generated answer and its length in tokens."""

    text: str
    tokens: int


def load_items(path: str | Path, limit: int | None = None) -> list[dict]:
    """Test items from a JSON list (or JSONL); InputError names the item or line that is wrong."""
    entries = read_json_records(path, "the test set")
    items = [_checked(path, e) for e in entries]
    if not items:
        raise ConfigError(f"{path}: no test items")
    return items[:limit] if limit else items


def _checked(path: str | Path, entry: Entry) -> dict:
    record = entry.value
    missing = [f for f in ITEM_FIELDS if not isinstance(record, dict) or not isinstance(record.get(f), str)]
    if missing:
        prefix = f"item {entry.index}: " if entry.index is not None else ""
        raise InputError(str(path), entry.line, f"{prefix}missing or non-string fields {missing}")
    return record


def split_cot(answer: str) -> tuple[str, str]:
    """``(explanation, table text)`` of a chain-of-thought answer; the whole answer when no table parses."""
    normalized = answer.replace("\r\n", "\n").strip()
    try:
        before, _table, _after = split_around_table(normalized, strict=False)
    except TableError:
        return "", normalized
    if not before:
        return "", normalized
    return before, normalized[normalized.index(before) + len(before):].strip()


def prediction_record(item: dict, answer: str, cot: bool) -> dict:
    """One line of the released prediction format; ``output`` is the table part with ``--cot``."""
    record = {"instruction": item["instruction"], "text": item["text"], "gold": item["table"]}
    if cot:
        record["explanation"], record["output"] = split_cot(answer)
    else:
        record["output"] = answer.strip()
    record.update({k: item.get(k, "") for k in ("source_type", "domain", "category", "difficulty")})
    return record


def write_predictions(path: str | Path, records: list[dict]) -> None:
    """Write the predictions as one JSON list, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(records, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def adapter_layout(lora: str | None) -> str | None:
    """The chat layout an adapter was trained with (from its ``train_summary.json``), if recorded."""
    summary = read_adapter_json(lora, SUMMARY, required=False) if lora else None
    return (summary or {}).get("chat_layout")


def build_prompts(model_dir: str, items: list[dict], settings: PredictSettings) -> tuple[str, list, list[str]]:
    """``(layout, messages per item, rendered prompt per item)`` with the base model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    wanted = settings.chat_layout or adapter_layout(settings.lora) or chat_format.AUTO
    layout = chat_format.resolve_layout(tokenizer, wanted)
    system = chat_format.system_prompt(settings.system_prompt, cot=settings.cot)
    conversations = [chat_format.item_messages(item, system) for item in items]
    prompts = [chat_format.render(tokenizer, c, layout, add_generation_prompt=True) for c in conversations]
    return layout, conversations, prompts


def _ml_env(on_gpu: bool) -> None:
    offline_hf()
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries only the output path
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", _KV_CACHE_GIB)
        # vLLM keeps one core for its front end and binds the engine to the rest; offline the
        # front end waits while the engine works, and on 2 cores that halved the speed.
        cores = sorted(os.sched_getaffinity(0))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("OMP_NUM_THREADS", str(len(cores)))


def predict_offline(model_dir: str, conversations: list, layout: str,
                    settings: PredictSettings) -> tuple[list[Answer], float]:
    """Every conversation in one ``LLM.chat`` call (the adapter as a ``LoRARequest``); answers, seconds."""
    import torch

    on_gpu = torch.cuda.is_available()
    _ml_env(on_gpu)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from ..endpoints.serve import vllm_max_rank, lora_rank

    extra = {}
    if settings.lora:
        extra = {"enable_lora": True, "max_loras": 1, "max_lora_rank": vllm_max_rank(lora_rank(settings.lora))}
        if not on_gpu:
            extra["max_num_batched_tokens"] = CPU_LORA_STEP_TOKENS
    if settings.step_tokens:
        extra["max_num_batched_tokens"] = settings.step_tokens
    llm = LLM(model=model_dir, dtype="auto" if on_gpu else "float32", max_model_len=settings.max_model_len,
              seed=0, **extra)
    request = LoRARequest(settings.lora_name, 1, str(Path(settings.lora).resolve())) if settings.lora else None
    sampling = SamplingParams(temperature=settings.temperature, max_tokens=settings.answer_tokens)
    started = time.monotonic()
    outputs = llm.chat(conversations, sampling, lora_request=request,
                       chat_template=chat_format.chat_template(layout), use_tqdm=True)
    seconds = time.monotonic() - started
    return [Answer(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs], seconds


def request_bodies(model: str, conversations: list, prompts: list[str], layout: str,
                   settings: PredictSettings) -> tuple[str, list[dict]]:
    """The endpoint path and one body per item: chat for the model's template, raw prompts for the paper's."""
    from ..engine.core import CHAT_PATH

    common = {"model": model, "max_tokens": settings.answer_tokens, "temperature": settings.temperature}
    if layout == chat_format.TEMPLATE:
        return CHAT_PATH, [common | {"messages": c} for c in conversations]
    # The server only applies its own chat template; the paper's is rendered here.
    return COMPLETIONS_PATH, [common | {"prompt": p, "add_special_tokens": False} for p in prompts]


def _run_key(model: str, bodies: list[dict]) -> str:
    """A short hash of the request settings, so a checkpoint never answers for other settings."""
    sample = {k: v for k, v in bodies[0].items() if k not in ("messages", "prompt")}
    return hashlib.sha256(json.dumps([model, sample], sort_keys=True).encode()).hexdigest()[:8]


async def predict_engine(base_url: str, path: str, bodies: list[dict], checkpoint: Path,
                         settings: PredictSettings, show_progress: bool = True) -> list[Answer]:
    """Send every body at once through the engine (answers checkpointed to ``checkpoint``)."""
    import contextlib

    from ..engine.core import Engine
    from ..engine.settings import DEFAULTS, build_settings
    from ..engine.progress import ProgressLine

    preset = DEFAULTS["predict"]
    engine_settings = build_settings(base_url, preset="predict", api_key=settings.api_key,
                                     concurrency=settings.concurrency or preset["concurrency"],
                                     timeout_s=settings.timeout_s or preset["timeout_s"])
    key = _run_key(bodies[0]["model"], bodies)
    engine = Engine(engine_settings, checkpoint, keep_bodies=True)
    engine.stats.total = len(bodies)
    progress = ProgressLine(engine.stats, label="predict") if show_progress else contextlib.nullcontext()
    async with progress, engine:
        results = await asyncio.gather(*(engine.call(f"{key}-{i}", b, path) for i, b in enumerate(bodies)))
    failed = [r for r in results if not r.ok]
    if failed:
        raise RunAborted(f"{len(failed)} of {len(results)} predictions failed (first: {failed[0].error}); "
                         f"rerun to retry them (answers so far are in {checkpoint})")
    return [Answer(r.content or "", ((r.body or {}).get("usage") or {}).get("completion_tokens", 0))
            for r in results]


def _timed_engine(base_url: str, model: str, conversations, prompts, layout, settings,
                  checkpoint) -> tuple[list[Answer], float]:
    from ..runtime import run_async

    path, bodies = request_bodies(model, conversations, prompts, layout, settings)
    started = time.monotonic()
    answers = run_async(predict_engine(base_url, path, bodies, checkpoint, settings))
    return answers, time.monotonic() - started


def _predict_server(model_dir: str, conversations, prompts, layout, settings,
                    checkpoint) -> tuple[list[Answer], float]:
    from ..endpoints.resolve import resolve_endpoint

    loras = {settings.lora_name: settings.lora} if settings.lora and not settings.base_url else {}
    with resolve_endpoint(settings.base_url, settings.model_name, settings.api_key, serve_model=model_dir,
                          loras=loras, max_model_len=settings.max_model_len) as endpoint:
        model = settings.model_name or (settings.lora_name if loras else endpoint.model)
        return _timed_engine(endpoint.base_url, model, conversations, prompts, layout,
                             replace(settings, api_key=endpoint.api_key), checkpoint)


def checkpoint_path(output: str | Path) -> Path:
    """Where the server backend keeps its answers: ``P.responses.jsonl`` beside ``P.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".responses.jsonl")


def predict(items: list[dict], settings: PredictSettings, output: str | Path) -> dict:
    """Predict every item, write the predictions file and return a summary with timings.

    vLLM and transformers raise plain exceptions: they become ``RunAborted`` naming the step.
    """
    try:
        summary = _predict(items, settings, output)
    except (OdieError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise RunAborted(f"prediction failed: {type(exc).__name__}: {exc}") from exc
    log.info("predictions written", **{k.replace("tokens", "tok"): v for k, v in summary.items()})
    return summary


def _predict(items: list[dict], settings: PredictSettings, output: str | Path) -> dict:
    require_ml_stack()
    offline_hf()
    model_dir = resolve_model(settings.base_model)
    layout, conversations, prompts = build_prompts(model_dir, items, settings)
    log.info("predicting", items=len(items), backend=settings.backend, layout=layout, lora=settings.lora,
             merged=settings.merge_lora, cot=settings.cot, answer_budget=settings.answer_tokens)
    started = time.monotonic()
    serve_dir, serve = model_dir, settings
    if settings.merge_lora and settings.lora:
        from .merge import merged_model_dir

        serve_dir, serve = str(merged_model_dir(model_dir, settings.lora)), replace(settings, lora=None)
    if settings.backend == "offline":
        answers, generating = predict_offline(serve_dir, conversations, layout, serve)
    else:
        answers, generating = _predict_server(serve_dir, conversations, prompts, layout, serve,
                                              checkpoint_path(output))
    write_predictions(output, [prediction_record(i, a.text, settings.cot) for i, a in zip(items, answers)])
    tokens = sum(a.tokens for a in answers)
    return {"output": str(output), "items": len(items), "backend": settings.backend, "layout": layout,
            "lora": settings.lora, "merged": serve is not settings, "seconds": round(time.monotonic() - started, 1),
            "generate_seconds": round(generating, 1), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / max(generating, 1e-9), 1)}
