"""Verified generation: a table the gate drops gets more tries, within the config's ``verify`` budget.

Round 0 is the record's first answer. Round 1 asks for ``candidates - 1`` more answers
in one request (``n``); when the endpoint returns fewer, the rest go as separate
requests, each under a key of its own (and a seed of its own where seeds are sent).
The gate judges every candidate and the best that passes is kept. Rounds 2 and
later are repair turns: the best failed answer goes back to the teacher with what
the gate found wrong ("these cells are not in the text: ..."), and the new answer
is judged again. No round starts once the record's tries of the stage have spent
``max_tokens_per_record``; a record dropped only for its instruction or text gets
no tries, since no table can fix those.

Every try is an ordinary request of the run's checkpoint under a key of its own
(``ID``, ``ID-cand``, ``ID-fix2``...), so a rerun pays for none twice and a larger
budget sends only the rounds it adds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from ..evaluation.tables import Table, TableError, is_na, parse_table
from ..quality.semantic import lexical_support
from ..quality.text import content_stems, normalise, numbers
from .context import Context, Dropped, assistant, user
from .registry import table_stage
from .stages import Record, table_messages

UNFIXABLE = ("instruction.", "text.", "relevance.")  # reasons no other table can change
MAX_NAMED = 6  # cells or values named in one repair message


@dataclass
class Try:
    """One judged answer: its content, table, explanation and the gate's verdict."""

    content: str
    table: Table | None = None
    explanation: str = ""
    reasons: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        """Whether the gate keeps it."""
        return self.table is not None and not self.reasons

    def rank(self) -> tuple:
        """Higher is better: kept first, then fewer reasons, then higher scores."""
        return (self.kept, -len(self.reasons), sum(v or 0.0 for v in self.scores.values()))


@dataclass
class Verified:
    """A record's best try in one variant, the round it came from and the tokens all tries spent."""

    best: Try
    round: int
    tokens: int
    rounds_run: int


class Verifier:
    """Runs the rounds of one table variant of one record."""

    def __init__(self, ctx: Context, scorer, record: Record, variant: str) -> None:
        self.ctx, self.scorer, self.record, self.variant = ctx, scorer, record, variant
        self.spec = table_stage(variant)
        self.budget = ctx.config.verify
        self.messages = table_messages(ctx, record, self.spec.name)
        self.schema = self.spec.schema(ctx.config.limits)
        self.tokens = 0
        self._judged: dict[str, Try] = {}  # an answer given twice is judged once
        self._verdicts: dict[str, object] = {}  # and so is a table given twice

    async def run(self) -> Verified:
        """The best try after as many rounds as the budget allows (raises Dropped when the first request fails)."""
        answer = await self._ask(self.record.id)
        if not answer.ok:
            raise Dropped(f"request_failed:{self.spec.name}")
        best = await self._judge(answer.content)
        rounds = 0
        for round_no in range(1, self.budget.rounds + 1):
            if best.kept or not self._worth_another(best):
                break
            tries = await (self._candidates() if round_no == 1 else self._repair(best, round_no))
            rounds = round_no
            best = max([best, *tries], key=Try.rank)
        return Verified(best, rounds if best.kept else -1, self.tokens, rounds)

    def _worth_another(self, best: Try) -> bool:
        limit = self.budget.max_tokens_per_record
        fixable = [r for r in best.reasons if not r.startswith(UNFIXABLE)]
        return bool(fixable or best.table is None) and (not limit or self.tokens < limit)

    async def _ask(self, key: str, messages: list[dict] | None = None, n: int = 1):
        answer = await self.ctx.ask(self.spec.name, key, messages or self.messages, self.schema, n)
        self.tokens += answer.tokens
        if key != self.record.id:
            self.ctx.counts[self.spec.name]["verify_requests"] += 1
        return answer

    async def _candidates(self) -> list[Try]:
        """Round 1: ``candidates - 1`` more answers, from one request where the endpoint honours ``n``."""
        wanted = self.budget.candidates - 1
        if wanted < 1:
            return []
        answer = await self._ask(f"{self.record.id}-cand", n=wanted)
        contents = (answer.contents or [answer.content]) if answer.ok else []
        if len(contents) < wanted:
            self.ctx.counts[self.spec.name]["n_not_honoured"] += 1
            extra = await asyncio.gather(*(self._ask(f"{self.record.id}-cand{i}") for i in range(len(contents), wanted)))
            contents += [a.content for a in extra if a.ok]
        self.ctx.counts[self.spec.name]["candidates"] += len(contents[:wanted])
        return [await self._judge(c) for c in contents[:wanted]]

    async def _repair(self, failed: Try, round_no: int) -> list[Try]:
        """A repair turn: the failed answer and the gate's findings go back to the teacher."""
        fmt = self.ctx.prompts.fill(self.spec.name, self.ctx.format_key())
        prompt = self.ctx.prompts.fill(self.spec.name, "repair", problems=feedback(self.record, failed), format=fmt)
        messages = self.messages + [assistant(failed.content), user(prompt)]
        answer = await self._ask(f"{self.record.id}-fix{round_no}", messages)
        self.ctx.counts[self.spec.name]["repairs"] += 1
        return [await self._judge(answer.content)] if answer.ok else []

    async def _judge(self, content: str | None) -> Try:
        content = content or ""
        if content not in self._judged:
            self._judged[content] = await self._judge_new(content)
        return self._judged[content]

    async def _judge_new(self, content: str) -> Try:
        stage = self.spec.name
        try:
            explanation, table = self.spec.parser(content)
            table = parse_table(table.markdown())  # the exported text must parse strictly, as the filter demands
        except TableError as exc:
            self.ctx.parsed(stage, False)
            return Try(content, None, "", [f"table:{exc.reason}"])
        self.ctx.parsed(stage, True)
        markdown = table.markdown()
        if markdown not in self._verdicts:
            self._verdicts[markdown] = await self.scorer.judge_table(self.ctx, self.record, self.variant, table)
        verdict = self._verdicts[markdown]
        return Try(content, table, explanation, list(verdict.reasons), dict(verdict.scores))


def feedback(record: Record, failed: Try) -> str:
    """What the gate found wrong with an answer, said so the teacher can fix it."""
    table = failed.table
    if table is None:
        return "The answer held no table that could be read. "
    said = []
    reasons = set(failed.reasons)
    if any(r.startswith(("faithfulness.", "leakage.")) for r in reasons):
        missing = unsupported_cells(table, record.text)
        if missing:
            said.append("these cells are not in the text: " + ", ".join(f"'{c}'" for c in missing[:MAX_NAMED]))
        if any(r.startswith("leakage.") for r in reasons):
            said.append("values were copied from the example answer; take every value from this text")
    repeated = [h for h, k in Counter(h.strip() for h in table.header if h.strip()).items() if k > 1]
    if repeated:
        said.append("the header repeats " + ", ".join(f"'{h}'" for h in repeated[:MAX_NAMED]))
    if any(r.startswith("degenerate.") for r in reasons):
        common = [c for c, k in Counter(c for c in table.cells() if not is_na(c)).most_common(MAX_NAMED) if k > 1]
        said.append("rows or cells repeat" + (" (" + ", ".join(f"'{c}'" for c in common) + ")" if common else "")
                    + "; write each row once, with the values the text gives")
    if any(r.startswith("consistency.") for r in reasons):
        said.append(f"the columns must be what the request asks for: {record.instruction}")
    if any(r.startswith("structure.") for r in reasons):
        said.append("too many cells are N/A or the table is malformed; keep only rows and columns the text gives values for")
    if any(r.startswith(("truncation.", "table:")) for r in reasons):
        said.append("the table was cut off; write a shorter, complete table")
    return ("; ".join(said) or "the table does not match the text and the request") + ". "


def unsupported_cells(table: Table, text: str) -> list[str]:
    """Body cells whose value the text does not state word for word (N/A cells aside), in table order."""
    text_norm, text_numbers, stems = normalise(text), numbers(text), set(content_stems(text))
    seen: list[str] = []
    for cell in table.cells():
        if is_na(cell) or not normalise(cell) or cell in seen:
            continue
        if lexical_support(cell, text_norm, text_numbers, stems) is not True:
            seen.append(cell)
    return seen


def verify_report(outcomes, variants: list[str], planned: int, rounds: int, counts) -> dict:
    """Per variant: records kept after each round, and tokens spent per kept record (all stages, whole run)."""
    report: dict = {}
    for variant in variants:
        mine = [o for o in outcomes if o.variant == variant]
        after = [sum(1 for o in mine if o.kept and o.round <= r) for r in range(rounds + 1)]
        tokens = sum(o.tokens for o in mine)
        kept = after[-1] if after else 0
        report[variant] = {"planned": planned, "kept_after_round": after, "table_tokens": tokens,
                           "table_tokens_per_kept": round(tokens / kept) if kept else None}
    total = sum(c.get("tokens", 0) for c in counts.values())
    kept_all = sum(1 for o in outcomes if o.kept)
    report["tokens"] = total
    report["tokens_per_kept_record"] = round(total / kept_all) if kept_all else None
    return report


def verify_words(summary: dict) -> list[str]:
    """The yield after each round and the tokens spent per kept record, one line per variant and one overall."""
    report = summary.get("verify") or {}
    lines = []
    for variant, r in report.items():
        if isinstance(r, dict):
            rounds = ", ".join(f"{k}" for k in r["kept_after_round"])
            lines.append(f"{variant}: kept/planned after each round (first answer, candidates, repairs): "
                         f"{rounds} of {r['planned']}; table tokens per kept record: {r['table_tokens_per_kept']}")
    if report:
        lines.append(f"tokens spent: {report['tokens']:,} in all, {report['tokens_per_kept_record']} per kept record "
                     "(every stage, both variants)")
    return lines
