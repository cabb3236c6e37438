"""The filter stage's scorers: the quality gate, with the LLM judge or UniEval when configured.

``FilterStage.judge_table`` runs the same ``quality.Gate`` as ``odie filter``:
every check that needs no model first, then (only for records those checks
pass) the configured judge, then the encoder checks with the judge's scores in
place of the encoder's faithfulness and consistency.

- ``offline``: the gate's own encoder checks (all-MiniLM-L6-v2), no requests.
- ``llm``: a judge prompt through the same engine (checkpointed like any stage).
- ``unieval``: the paper's UniEval "fact" evaluator from a local checkpoint
  folder: one claim per header ("Extract the X from the given text.") against
  the instruction, one per cell ("The X of R is V.") against the text, each
  scored P(Yes) / (P(Yes) + P(No)) and averaged.

``auto`` is the LLM judge when the config names an endpoint, else ``offline``.
The CPU work is batched over the records that wait at the same moment, in a
worker thread, so the event loop keeps streaming requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from statistics import fmean

from ..evaluation.tables import Table
from ..exceptions import ConfigError
from ..runtime import offline_hf
from ..quality import Gate, Verdict
from ..quality.gate import Prepared
from . import schemas
from .config import PipelineConfig, load_config, override_endpoint, override_engine
from .context import Context, Dropped, system, user
from .parsers import ParseError, parse_scores
from .prompts import FIXED, OPEN
from .stages import Record


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
            scores = {"faithfulness": fmean(self.yes_share(cell_claims)) if cell_claims else 0.0}
            if fixed:
                scores["consistency"] = fmean(self.yes_share(header_claims))
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


def make_judge(config: PipelineConfig):
    """The judge the config asks for besides the gate's encoder (None for ``offline``)."""
    kind = scorer_kind(config)
    if kind == "llm":
        return LLMJudge()
    if kind == "offline":
        return None
    if not config.scorer.unieval_dir:
        raise ConfigError(f"{config.source}: scorer.kind is unieval but scorer.unieval_dir is not set")
    return UniEvalScorer(config.scorer.unieval_dir, config.scorer.batch_size)


class FilterStage:
    """The pipeline's filter: ``judge_table`` gives one record's ``Verdict``."""

    def __init__(self, gate: Gate, judge=None, batch_size: int = 16) -> None:
        self.gate = gate
        self.judge = judge
        self._batcher = _Batcher(self._finish, batch_size)

    def _finish(self, items: list[tuple[Prepared, dict | None]]) -> list[Verdict]:
        return self.gate.finish([p for p, _ in items], [e for _, e in items])

    async def judge_table(self, ctx: Context, record: Record, variant: str, table: Table) -> Verdict:
        """Every check of the gate on one table; the judge is asked only when the cheap checks pass."""
        prepared = self.gate.prepare([{"instruction": record.instruction, "text": record.text, "table": table,
                                       "category": record.category}])[0]
        external = None
        if self.judge is not None and not prepared.reasons:
            external = await self.judge.score(ctx, record, variant, table)
        return await self._batcher.run((prepared, external))

    async def similarities(self, pairs: list[tuple[str, str]]) -> list[float] | None:
        """The encoder's cosine similarity of each pair; None when the encoder cannot be loaded."""
        def run() -> list[float]:
            vectors = self.gate.judge.embedder().encode([s for pair in pairs for s in pair])
            return [float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(pairs))]

        try:
            return await asyncio.to_thread(run)
        except (ImportError, OSError, ConfigError):
            return None

    async def aclose(self) -> None:
        """Release the judge."""
        if self.judge is not None:
            await self.judge.aclose()


def make_scorer(config: PipelineConfig) -> FilterStage:
    """The filter stage the config asks for."""
    judge = make_judge(config)
    return FilterStage(Gate(config.filter, external=judge is not None), judge, config.scorer.batch_size)


def _content_key(prepared: Prepared) -> str:
    item = prepared.item
    body = "\x1f".join((item.instruction, item.text, item.table.markdown() if item.table else ""))
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


async def _judge_one(judge: LLMJudge, ctx: Context, prepared: Prepared) -> dict | None:
    if prepared.table is None or prepared.reasons:
        return None  # the gate drops it anyway: no request is spent on it
    item = prepared.item
    record = Record(_content_key(prepared), FIXED if item.fixed else OPEN, "", item.instruction, item.text, item.instruction)
    try:
        return await judge.score(ctx, record, "plain", prepared.table)
    except Dropped as drop:
        return {"error": drop.reason}


@contextlib.asynccontextmanager
async def external_scope(kind: str, config_path: str | None, checkpoint: Path, endpoint: dict | None = None,
                         engine_keys: dict | None = None):
    """``odie filter``'s other scorers: yields ``score(prepared) -> scores per record`` for ``llm`` or ``unieval``.

    The LLM judge talks to the endpoint of the generate config (the embedded model
    without one) through the engine, whose checkpoint is ``checkpoint``: a rerun
    asks nothing twice. UniEval reads ``scorer.unieval_dir`` of that config. ``endpoint``
    overrides the config's endpoint section (``override_endpoint``), ``engine_keys`` its engine section
    (a spending cap among them: a judge's model without a price is refused before anything is sent).
    """
    config = load_config(config_path)
    override_endpoint(config, endpoint)
    override_engine(config, engine_keys)
    config.scorer.kind = kind
    judge = make_judge(config)
    if isinstance(judge, UniEvalScorer):
        async def score_unieval(prepared: list[Prepared]) -> list[dict | None]:
            todo = [i for i, p in enumerate(prepared) if p.table is not None and not p.reasons]
            items = [(p.item.instruction, p.item.text, p.table, p.item.fixed) for p in (prepared[i] for i in todo)]
            found = dict(zip(todo, await asyncio.to_thread(judge._score_batch, items))) if items else {}
            return [found.get(i) for i in range(len(prepared))]

        yield score_unieval
        return
    from ..engine.core import Engine
    from .prompts import Prompts
    from .run import endpoint_scope, engine_settings
    from .structured import resolve_structured

    prompts = Prompts(config.path(config.prompts))
    async with endpoint_scope(config, prompts) as endpoint:
        errors = checkpoint.with_name(checkpoint.stem + ".errors.jsonl")
        async with Engine(engine_settings(config, endpoint), checkpoint, errors, keep_bodies=True) as engine:
            if engine.spend is not None:
                engine.spend.require_prices([endpoint.model])
            structured, _why = await resolve_structured(engine, config, endpoint.model)
            ctx = Context(config, prompts, [], engine, endpoint.model, structured)

            async def score_llm(prepared: list[Prepared]) -> list[dict | None]:
                return list(await asyncio.gather(*(_judge_one(judge, ctx, p) for p in prepared)))

            score_llm.spend = engine.spend or engine.stats.meter  # the filter's progress line shows what the judge spent
            yield score_llm
