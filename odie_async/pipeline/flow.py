"""How the stages stream into each other.

Futures connect the stages, so nothing waits for a whole stage to finish:

- one task asks for fixed instructions, a few calls ahead, and keeps them in
  call order (so ROUGE-L de-duplication and the instruction numbering are the
  same on every rerun), resolving ``fixed[i]`` the moment instruction *i* is kept;
- one task per chunk of ten instructions paraphrases the chunk as soon as its
  members exist (fixed chunks from ``fixed``, open chunks from ``open``);
- one chain per text, admitted in order with at most ``max_outstanding`` alive,
  writes the text as soon as ``fixed[i]`` resolves, then the open instruction,
  then for each of its records waits for the paraphrase and asks for the tables,
  filters and scores them.

Admission in order with a window of at least two chunks cannot deadlock: the
members of the lowest unfinished open chunk are always admitted.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from dataclasses import dataclass, field

from ..evaluation.tables import Table
from ..quality.checks import instruction_reasons
from ..quality.text import content_stems
from . import filter as rules
from .context import Context, Dropped
from .dedup import Deduper
from .prompts import FIXED, OPEN
from .registry import table_stage
from .stages import Record, instruction_batch, open_instruction, paraphrase, write_text
from .verify import Verifier


@dataclass
class Outcome:
    """What became of one record in one table variant."""

    record: Record
    variant: str
    kept: bool
    reason: str | None = None
    table: Table | None = None
    explanation: str = ""
    scores: dict = field(default_factory=dict)
    stage: str = ""
    reasons: list[str] = field(default_factory=list)
    round: int = -1   # the verification round whose answer was kept (0: the first answer); -1 when dropped
    tokens: int = 0   # tokens this record's table tries spent


def _word_share(paraphrase: str, original: str) -> float:
    """Share of the original's content words the paraphrase keeps."""
    wanted = set(content_stems(original))
    return len(wanted & set(content_stems(paraphrase))) / len(wanted) if wanted else 0.0


def _keeps_words(paraphrase: str, original: str, chunk: list[str]) -> bool:
    """Whether a paraphrase keeps most (70 %) of its original's content words, and no more of another
    request's of the chunk (two rewrites of templated requests swapped keep most words of either)."""
    own = _word_share(paraphrase, original)
    return own >= 0.7 and all(_word_share(paraphrase, other) <= own for other in chunk)


def fixed_id(i: int) -> str:
    """Record id of the fixed-header record of text ``i``."""
    return f"f{i:05d}"


def open_id(i: int) -> str:
    """Record id of the open-header record of text ``i``."""
    return f"o{i:05d}"


class Flow:
    """One run of the pipeline over ``config.run.records`` records."""

    def __init__(self, ctx: Context, scorer) -> None:
        self.ctx = ctx
        self.scorer = scorer
        cfg = ctx.config
        self.n_fixed, self.n_open = cfg.n_fixed, cfg.n_open
        self.variants = list(cfg.run.variants)
        self.chunk = cfg.stage("paraphrase").chunk
        loop = asyncio.get_running_loop()
        self.fixed = [loop.create_future() for _ in range(self.n_fixed)]
        self.open = [loop.create_future() for _ in range(self.n_open)]
        ids = [fixed_id(i) for i in range(self.n_fixed)] + [open_id(i) for i in range(self.n_open)]
        self.paraphrased = {rid: loop.create_future() for rid in ids}
        self.outcomes: list[Outcome] = []
        self.progress: Counter = Counter()

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> list[Outcome]:
        """Run every stage to the end; returns every record's outcome per variant."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._instructions())
            for start in range(0, self.n_fixed, self.chunk):
                group.create_task(self._paraphrase_chunk("fixed", start, self.fixed, fixed_id))
            for start in range(0, self.n_open, self.chunk):
                group.create_task(self._paraphrase_chunk("open", start, self.open, open_id))
            group.create_task(self._admit())
        return self.outcomes

    def expected(self) -> dict[str, int]:
        """How many items each stage should produce (for the progress line)."""
        chunks = math.ceil(self.n_fixed / self.chunk) + math.ceil(self.n_open / self.chunk)
        records = self.n_fixed + self.n_open
        expected = {"instructions": self.n_fixed, "texts": self.n_fixed, "open_instructions": self.n_open,
                    "paraphrase": chunks}
        for variant in self.variants:
            expected[table_stage(variant).name] = records
        expected["scored"] = records * len(self.variants)
        return expected

    # -- stage 1 -----------------------------------------------------------------------------

    async def _instructions(self) -> None:
        stage = self.ctx.config.stage("instructions")
        dedup = Deduper(stage.dedup_rouge, [s.instruction for s in self.ctx.seeds])
        max_calls = math.ceil(self.n_fixed / stage.per_call * stage.max_calls_factor) + 1
        kept: list[tuple[str, str]] = []
        pending: deque[asyncio.Task] = deque()
        next_call = 0
        try:
            while len(kept) < self.n_fixed:
                needed = math.ceil((self.n_fixed - len(kept)) / stage.per_call)
                while len(pending) < min(stage.parallel_calls, needed) and next_call < max_calls:
                    pending.append(asyncio.create_task(instruction_batch(self.ctx, next_call)))
                    next_call += 1
                if not pending:
                    break
                for domain, instruction in await pending.popleft():
                    if len(kept) < self.n_fixed and self._keep(dedup, domain, instruction, len(kept)):
                        kept.append((domain, instruction))
        finally:
            for task in pending:
                task.cancel()
        self.ctx.counts["instructions"]["calls"] = next_call
        for future in self.fixed[len(kept) :]:
            future.set_result(None)
        self.ctx.counts["instructions"]["shortfall"] = self.n_fixed - len(kept)

    def _keep(self, dedup: Deduper, domain: str, instruction: str, index: int) -> bool:
        if instruction_reasons(instruction, "", self.ctx.config.filter.instruction):
            self.ctx.counts["instructions"]["rejected_by_gate"] += 1  # the gate would drop it: another call replaces it
            return False
        if not dedup.add(instruction):
            self.ctx.counts["instructions"]["near_duplicates"] += 1
            return False
        self.ctx.counts["instructions"]["kept"] += 1
        self.progress["instructions"] += 1
        self.fixed[index].set_result((domain, instruction))
        return True

    # -- stage 4 -----------------------------------------------------------------------------

    async def _paraphrase_chunk(self, kind: str, start: int, sources: list[asyncio.Future], make_id) -> None:
        members = []
        for i in range(start, min(start + self.chunk, len(sources))):
            value = await sources[i]
            if value is not None:
                members.append((make_id(i), value if isinstance(value, str) else value[1]))
        if members:
            originals = [text for _, text in members]
            rewritten = await paraphrase(self.ctx, f"{kind}{start // self.chunk:04d}", originals)
            chosen = await self._close_to_original(rewritten, originals)
            for (rid, _), text in zip(members, chosen):
                self.paraphrased[rid].set_result(text)
        self.progress["paraphrase"] += 1

    async def _close_to_original(self, rewritten: list[str | None], originals: list[str]) -> list[str]:
        """Each paraphrase, or its original where none came back, the gate rejects only the paraphrase,
        or it strayed from its own original (encoder similarity under ``verify.paraphrase_similarity``)
        or came closer to another request's original of the chunk (two rewrites swapped). A paraphrase
        keeping most of its own original's content words, and fewer of any other's, needs no encoder."""
        counts = self.ctx.counts["paraphrase"]
        counts["kept_original"] += sum(new is None for new in rewritten)
        chosen = [old if new is None else self._paraphrased(new, old) for new, old in zip(rewritten, originals)]
        asked = [i for i, new in enumerate(chosen)
                 if new != originals[i] and not _keeps_words(new, originals[i], originals)]
        chunk = list(dict.fromkeys(originals))
        similar = await self.scorer.similarities([(chosen[i], old) for i in asked for old in chunk]) if asked else []
        if similar is None:
            counts["similarity_not_run"] += len(asked)
        far = set()
        for k, i in enumerate(asked if similar else []):
            row = dict(zip(chunk, similar[k * len(chunk) : (k + 1) * len(chunk)]))
            own = row[originals[i]]
            if own < self.ctx.config.verify.paraphrase_similarity:
                counts["far_from_original_kept_original"] += 1
            elif own < max(row.values()):
                counts["closer_to_another_kept_original"] += 1
            else:
                continue
            far.add(i)
        return [originals[i] if i in far else text for i, text in enumerate(chosen)]

    def _paraphrased(self, rewritten: str, original: str) -> str:
        """The paraphrase, or the original where the gate's instruction checks reject only the paraphrase."""
        cfg = self.ctx.config.filter.instruction
        if instruction_reasons(rewritten, "", cfg) and not instruction_reasons(original, "", cfg):
            self.ctx.counts["paraphrase"]["rejected_kept_original"] += 1
            return original
        return rewritten

    # -- per text ----------------------------------------------------------------------------

    async def _admit(self) -> None:
        window = asyncio.Semaphore(max(self.ctx.config.run.max_outstanding, 2 * self.chunk))
        async with asyncio.TaskGroup() as group:
            for i in range(self.n_fixed):
                await window.acquire()
                group.create_task(self._text_chain(i, window))

    async def _text_chain(self, i: int, window: asyncio.Semaphore) -> None:
        try:
            await self._text_chain_body(i)
        finally:
            window.release()

    async def _text_chain_body(self, i: int) -> None:
        has_open = i < self.n_open
        pair = await self.fixed[i]
        if pair is None:
            if has_open:
                self.open[i].set_result(None)
            return
        domain, instruction = pair
        fixed = Record(fixed_id(i), FIXED, domain, instruction)
        records = [fixed]
        try:
            fixed.text = await write_text(self.ctx, fixed)
            self.progress["texts"] += 1
            reason = rules.check_text(fixed.text, self.ctx.config.filter)
            if reason:
                raise Dropped(reason)
        except Dropped as drop:
            if has_open:
                self.open[i].set_result(None)
                records.append(Record(open_id(i), OPEN, domain, "", fixed.text))
            for record in records:
                self._drop_all(record, drop, "texts")
            return
        chains = [self._record_chain(fixed)]
        if has_open:
            chains.append(self._open_chain(i, fixed))
        await asyncio.gather(*chains)

    async def _open_chain(self, i: int, fixed: Record) -> None:
        record = Record(open_id(i), OPEN, fixed.domain, "", fixed.text)
        try:
            record.original_instruction = await open_instruction(self.ctx, record)
        except Dropped as drop:
            self.open[i].set_result(None)
            self._drop_all(record, drop, "open_instructions")
            return
        self.progress["open_instructions"] += 1
        self.open[i].set_result(record.original_instruction)
        await self._record_chain(record)

    async def _record_chain(self, record: Record) -> None:
        record.instruction = await self.paraphrased[record.id]
        await asyncio.gather(*(self._variant(record, variant) for variant in self.variants))

    async def _variant(self, record: Record, variant: str) -> None:
        stage = table_stage(variant).name
        try:
            done = await Verifier(self.ctx, self.scorer, record, variant).run()
        except Dropped as drop:
            self.outcomes.append(Outcome(record, variant, False, drop.reason, stage=stage, reasons=[drop.reason]))
            return
        best = done.best
        self.progress[stage] += 1
        if best.table is not None:
            self.progress["scored"] += 1
        outcome = Outcome(record, variant, best.kept, best.reasons[0] if best.reasons else None, best.table,
                          best.explanation, best.scores, "kept" if best.kept else ("filter" if best.table else stage),
                          best.reasons, done.round, done.tokens)
        self.outcomes.append(outcome)

    def _drop_all(self, record: Record, drop: Dropped, stage: str) -> None:
        for variant in self.variants:
            self.outcomes.append(Outcome(record, variant, False, drop.reason, stage=stage, reasons=[drop.reason]))
