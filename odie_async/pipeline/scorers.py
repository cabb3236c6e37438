"""Consistency and faithfulness scorers of the filter, pluggable by ``scorer.kind``.

- ``llm``: a judge prompt through the same engine (checkpointed like any stage).
- ``offline``: header–instruction similarity with all-MiniLM-L6-v2 (each header
  cell's best cosine against the instruction's 1–4-word phrases, averaged) and
  the share of each non-N/A cell's words found in the text (averaged).
- ``unieval``: the paper's UniEval "fact" evaluator from a local checkpoint
  folder: one claim per header ("Extract the X from the given text.") against
  the instruction, one per cell ("The X of R is V.") against the text, each
  scored P(Yes) / (P(Yes) + P(No)) and averaged.

``auto`` is the LLM judge when the config names an endpoint, else ``offline``.
The CPU scorers batch the records that wait at the same moment into one call
in a worker thread, so the event loop keeps streaming requests meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import numpy as np

from ..exceptions import ConfigError
from ..runtime import offline_hf
from ..evaluation.tables import Table, is_na
from . import schemas
from .config import PipelineConfig
from .context import Context, Dropped, system, user
from .parsers import ParseError, parse_scores
from .prompts import FIXED
from .stages import Record

_WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")
STOPWORDS = frozenset(
    "a an the of and or in on at to for from by with about as is are was were be this that these those "
    "each every all any its their his her our your it they them which what who whom whose how when where "
    "please can could would you me my i we us extract list give provide create make table given text".split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``3.5`` and ``o'neil`` stay whole)."""
    return _WORD.findall(text.lower())


def phrases(instruction: str, longest: int = 4) -> list[str]:
    """The instruction's 1–``longest``-word phrases that hold at least one content word."""
    tokens = words(instruction)
    found = dict.fromkeys(
        " ".join(tokens[i : i + n])
        for n in range(1, longest + 1)
        for i in range(len(tokens) - n + 1)
        if any(t not in STOPWORDS for t in tokens[i : i + n])
    )
    return list(found) or [instruction.lower()]


def support(text: str, table: Table) -> float:
    """Mean share of each informative cell's content words that occur in ``text``."""
    vocabulary = set(words(text))
    shares = []
    for cell in table.cells():
        content = [w for w in words(cell) if w not in STOPWORDS] if not is_na(cell) else []
        if content:
            shares.append(sum(w in vocabulary for w in content) / len(content))
    return float(np.mean(shares)) if shares else 0.0


class _Batcher:
    """Runs ``fn(items) -> results`` in a worker thread on whatever items are waiting."""

    def __init__(self, fn, batch_size: int) -> None:
        self.fn = fn
        self.batch_size = batch_size
        self._waiting: list[tuple[object, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def run(self, item):
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the records that become ready together join one batch
        while self._waiting:
            batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size :]
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting record
                for _, future in batch:
                    future.done() or future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.done() or future.set_result(result)


def _names(record: Record) -> tuple[str, ...]:
    return ("consistency", "faithfulness") if record.category == FIXED else ("faithfulness",)


class LLMJudge:
    """Scores from a judge prompt sent through the engine."""

    name = "llm"

    async def score(self, ctx: Context, record: Record, variant: str, table: Table) -> dict[str, float]:
        names = _names(record)
        key = "user_fixed" if record.category == FIXED else "user_open"
        fmt = ctx.prompts.fill("judge", ctx.format_key())
        prompt = ctx.prompts.fill("judge", key, instruction=record.instruction, text=record.text,
                                  table=table.markdown(), format=fmt)
        messages = [system(ctx.prompts.fill("judge", "system")), user(prompt)]
        answer = await ctx.ask("judge", f"{record.id}-{variant}", messages, schemas.judge_schema(names))
        if not answer.ok:
            raise Dropped("request_failed:judge")
        try:
            scores = parse_scores(answer.content, names)
        except ParseError as exc:
            ctx.parsed("judge", False)
            raise Dropped("unparsable:judge") from exc
        ctx.parsed("judge", True)
        return scores

    async def aclose(self) -> None:
        """Nothing to release."""


class OfflineScorer:
    """Sentence-embedding consistency and word-support faithfulness, no requests."""

    name = "offline"

    def __init__(self, batch_size: int = 16, embedder=None) -> None:
        self._embedder = embedder
        self._batcher = _Batcher(self._score_batch, batch_size)

    def _encoder(self):
        if self._embedder is None:
            from ..evaluation.embedder import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def _score_batch(self, items: list[tuple[str, str, Table, bool]]) -> list[dict[str, float]]:
        texts: list[str] = []
        spans = []
        for instruction, _text, table, fixed in items:
            if fixed:
                start = len(texts)
                texts += [cell.lower() for cell in table.header] + phrases(instruction)
                spans.append((start, start + len(table.header), len(texts)))
            else:
                spans.append(None)
        vectors = self._encoder().encode(texts) if texts else None
        results = []
        for (instruction, text, table, fixed), span in zip(items, spans):
            scores = {"faithfulness": support(text, table)}
            if span is not None:
                start, split, end = span
                similarity = vectors[start:split] @ vectors[split:end].T
                scores["consistency"] = float(np.clip(similarity.max(axis=1).mean(), 0.0, 1.0))
            results.append(scores)
        return results

    async def score(self, ctx: Context, record: Record, variant: str, table: Table) -> dict[str, float]:
        return await self._batcher.run((record.instruction, record.text, table, record.category == FIXED))

    async def aclose(self) -> None:
        """Nothing to release."""


def unieval_claims(record_instruction: str, text: str, table: Table) -> tuple[list[str], list[str]]:
    """UniEval inputs: header claims against the instruction, cell claims against the text."""
    question = "question: Is this claim consistent with the document? </s> claim: {} </s> document: {}"
    header_claims = [question.format(f"Extract the {col} from the given text.", record_instruction) for col in table.header]
    cell_claims = [
        question.format(f"The {table.header[j]} of {row[0]} is {row[j]}.", text)
        for row in table.rows for j in range(1, len(table.header))
    ]
    return header_claims, cell_claims


class UniEvalScorer:
    """The UniEval fact evaluator (a T5 checkpoint) loaded from a local folder."""

    name = "unieval"

    def __init__(self, folder: str, batch_size: int = 8, max_length: int = 1024) -> None:
        path = Path(os.path.expanduser(folder))
        if not (path / "config.json").is_file():
            raise ConfigError(f"scorer.unieval_dir {path} holds no checkpoint (no config.json)")
        self.path = path
        self.max_length = max_length
        self._model = None
        self._batcher = _Batcher(self._score_batch, batch_size)

    def _load(self):
        if self._model is None:
            offline_hf()
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.path, local_files_only=True).eval()
            self._yes = self._tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
            self._no = self._tokenizer("No", add_special_tokens=False)["input_ids"][0]
        return self._model

    def yes_share(self, inputs: list[str]) -> list[float]:
        """P(Yes) / (P(Yes) + P(No)) at the first decoder step, per input."""
        import torch

        model = self._load()
        encoded = self._tokenizer(inputs, max_length=self.max_length, truncation=True, padding=True, return_tensors="pt")
        start = torch.full((len(inputs), 1), model.config.decoder_start_token_id, dtype=torch.long)
        with torch.no_grad():
            logits = model(**encoded, decoder_input_ids=start).logits[:, 0, :]
        probs = torch.softmax(logits.float(), dim=-1)
        yes, no = probs[:, self._yes], probs[:, self._no]
        return (yes / (yes + no).clamp_min(1e-12)).tolist()

    def _score_batch(self, items: list[tuple[str, str, Table, bool]]) -> list[dict[str, float]]:
        results = []
        for instruction, text, table, fixed in items:
            header_claims, cell_claims = unieval_claims(instruction, text, table)
            scores = {"faithfulness": float(np.mean(self.yes_share(cell_claims))) if cell_claims else 0.0}
            if fixed:
                scores["consistency"] = float(np.mean(self.yes_share(header_claims)))
            results.append(scores)
        return results

    async def score(self, ctx: Context, record: Record, variant: str, table: Table) -> dict[str, float]:
        return await self._batcher.run((record.instruction, record.text, table, record.category == FIXED))

    async def aclose(self) -> None:
        """Nothing to release."""


def scorer_kind(config: PipelineConfig) -> str:
    """The scorer ``auto`` resolves to: the LLM judge with a configured endpoint, else offline."""
    kind = config.scorer.kind
    if kind == "auto":
        return "llm" if config.endpoint.base_url else "offline"
    return kind


def make_scorer(config: PipelineConfig):
    """The scorer the config asks for."""
    kind = scorer_kind(config)
    if kind == "llm":
        return LLMJudge()
    if kind == "offline":
        return OfflineScorer(config.scorer.batch_size)
    if not config.scorer.unieval_dir:
        raise ConfigError(f"{config.source}: scorer.kind is unieval but scorer.unieval_dir is not set")
    return UniEvalScorer(config.scorer.unieval_dir, config.scorer.batch_size)
