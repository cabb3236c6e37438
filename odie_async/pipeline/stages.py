"""The generation stages: build each request from templates and seeds, parse its answer.

Every random choice (few-shot sample, paraphrase style) comes from
``ctx.rng(key)`` for the record's own key, so a rerun rebuilds byte-identical
requests and is answered from the checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from ..evaluation.tables import parse_table
from ..quality.checks import instruction_reasons
from .context import Context, Dropped, assistant, system, user
from .parsers import ParseError, align_paraphrases, free_text
from .prompts import FIXED, OPEN, Seed
from .registry import STAGES

_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


@dataclass
class Record:
    """One (instruction, text) pair on its way to a table."""

    id: str
    category: str
    domain: str
    original_instruction: str
    text: str = ""
    instruction: str = ""


def _sample(ctx: Context, key: str, pool: list[Seed], k: int) -> list[Seed]:
    return ctx.rng(key).sample(pool, min(k, len(pool)))


def _seeds(ctx: Context, category: str | None = None, cot: bool = False) -> list[Seed]:
    return [s for s in ctx.seeds if (category is None or s.category == category) and (s.explanation or not cot)]


# -- stage 1: fixed instructions ------------------------------------------------------


def _examples(ctx: Context, shots: list[Seed]) -> str:
    if ctx.structured:
        items = [{"domain": s.domain, "instruction": s.instruction} for s in shots]
        return orjson.dumps({"instructions": items}, option=orjson.OPT_INDENT_2).decode()
    return "\n\n".join(
        ctx.prompts.fill("instructions", "example", number=i, domain=s.domain, instruction=s.instruction)
        for i, s in enumerate(shots, 1)
    )


async def instruction_batch(ctx: Context, call: int) -> list[tuple[str, str]]:
    """Ask for ``per_call`` new (domain, instruction) pairs; [] when the answer is unusable."""
    stage = ctx.config.stage("instructions")
    key = f"c{call:05d}"
    shots = _sample(ctx, f"instructions:{key}", _seeds(ctx, FIXED), stage.shots)
    fmt = ctx.prompts.fill("instructions", ctx.format_key(), count=stage.per_call)
    prompt = ctx.prompts.fill("instructions", "user", examples=_examples(ctx, shots), count=stage.per_call, format=fmt)
    messages = [system(ctx.prompts.fill("instructions", "system")), user(prompt)]
    spec = STAGES["instructions"]
    answer = await ctx.ask(spec.name, key, messages, spec.schema(ctx.config.limits, stage.per_call))
    if not answer.ok:
        return []
    try:
        pairs = spec.parser(answer.content)
    except ParseError:
        ctx.parsed("instructions", False)
        return []
    ctx.parsed("instructions", True)
    ctx.counts["instructions"]["items"] += len(pairs)
    return pairs[: stage.per_call]


# -- stage 2: texts ---------------------------------------------------------------------


def _cut_to_sentence(text: str) -> str:
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text


async def write_text(ctx: Context, record: Record) -> str:
    """A realistic text of the record's domain holding what its instruction asks for."""
    stage = ctx.config.stage("texts")
    words = max(40, round(stage.max_tokens * 0.6, -1))
    fill = lambda d, i: ctx.prompts.fill("texts", "user", domain=d, instruction=i, words=int(words))  # noqa: E731
    messages = [system(ctx.prompts.fill("texts", "system"))]
    for seed in _sample(ctx, f"texts:{record.id}", _seeds(ctx, FIXED), stage.shots):
        messages += [user(fill(seed.domain, seed.instruction)), assistant(seed.text)]
    messages.append(user(fill(record.domain, record.original_instruction)))
    answer = await ctx.ask("texts", record.id, messages)
    text = _free(ctx, "texts", answer, min_words=20)
    return _cut_to_sentence(text) if answer.finish_reason == "length" else text


def _free(ctx: Context, stage: str, answer, min_words: int) -> str:
    if not answer.ok:
        raise Dropped(f"request_failed:{stage}")
    try:
        text = free_text(answer.content, min_words)
    except ParseError as exc:
        ctx.parsed(stage, False)
        raise Dropped(f"unparsable:{stage}") from exc
    ctx.parsed(stage, True)
    return text


# -- stage 3: open instructions ------------------------------------------------------


async def open_instruction(ctx: Context, record: Record) -> str:
    """An instruction that asks for information from the record's text without naming columns.

    An answer the gate's instruction checks reject (a statement, a refusal, a copy of
    the text) gets a round of candidates from one request, as verified tables do.
    """
    stage = ctx.config.stage("open_instructions")
    messages = [system(ctx.prompts.fill("open_instructions", "system"))]
    for seed in _sample(ctx, f"open:{record.id}", _seeds(ctx, OPEN), stage.shots):
        messages += [user(ctx.prompts.fill("open_instructions", "user", text=seed.text)), assistant(seed.instruction)]
    messages.append(user(ctx.prompts.fill("open_instructions", "user", text=record.text)))
    answer = await ctx.ask("open_instructions", record.id, messages)
    first = _one_paragraph(_free(ctx, "open_instructions", answer, min_words=3))
    cfg, budget = ctx.config.filter.instruction, ctx.config.verify
    if not instruction_reasons(first, record.text, cfg) or budget.rounds < 1 or budget.candidates < 2:
        return first
    more = await ctx.ask("open_instructions", f"{record.id}-cand", messages, n=budget.candidates - 1)
    ctx.counts["open_instructions"]["verify_requests"] += 1
    for content in more.contents if more.ok else []:
        candidate = _one_paragraph(content)
        if len(candidate.split()) >= 3 and not instruction_reasons(candidate, record.text, cfg):
            ctx.counts["open_instructions"]["kept_candidate"] += 1
            return candidate
    return first


def _one_paragraph(text: str) -> str:
    return " ".join(_free_or_empty(text).split("\n\n")[0].split())


def _free_or_empty(content: str) -> str:
    try:
        return free_text(content, 0)
    except ParseError:
        return ""


# -- stage 4: paraphrase -------------------------------------------------------------


async def paraphrase(ctx: Context, key: str, instructions: list[str]) -> list[str | None]:
    """Each instruction restyled in one drawn style, tied to it by its number; None where none came back.

    An answer whose numbers are missing, repeated or unknown is never placed by
    position: the requests without exactly one rewrite are asked again, alone, and
    so are those whose rewrite the gate's instruction checks reject.
    """
    stage = ctx.config.stage("paraphrase")
    style = ctx.rng(f"paraphrase:{key}").choice(ctx.prompts.raw("paraphrase", "styles"))
    spec = STAGES["paraphrase"]
    found: dict[int, str] = {}
    rejected: dict[int, str] = {}  # rewrites the gate would reject: asked again, returned only if nothing better came
    todo = list(range(1, len(instructions) + 1))
    for attempt in range(stage.max_tries):
        messages = _paraphrase_messages(ctx, style, instructions, todo, retry=attempt > 0)
        answer = await ctx.ask("paraphrase", key if not attempt else f"{key}-try{attempt}", messages,
                               spec.schema(ctx.config.limits, todo))
        if not answer.ok:
            break
        got, todo = align_paraphrases(spec.parser(answer.content), todo)
        ctx.parsed("paraphrase", not todo)
        worse = {i: text for i, text in got.items() if _worse(ctx, text, instructions[i - 1])}
        rejected |= worse
        found |= {i: text for i, text in got.items() if i not in worse}
        todo = sorted(set(todo) | set(worse))
        if not todo:
            break
        ctx.counts["paraphrase"]["asked_again"] += 1
    return [found.get(i, rejected.get(i)) for i in range(1, len(instructions) + 1)]


def _worse(ctx: Context, rewritten: str, original: str) -> bool:
    """Whether the gate's instruction checks reject the rewrite but not its original (it is asked again)."""
    cfg = ctx.config.filter.instruction
    return bool(instruction_reasons(rewritten, "", cfg)) and not instruction_reasons(original, "", cfg)


def _paraphrase_messages(ctx: Context, style: str, instructions: list[str], ids: list[int], retry: bool) -> list[dict]:
    items = "\n".join(f"{i}. {instructions[i - 1]}" for i in ids)
    fmt = ctx.prompts.fill("paraphrase", ctx.format_key(), count=len(ids))
    prompt = ctx.prompts.fill("paraphrase", "user", count=len(ids), style=style, format=fmt, items=items)
    if retry:
        prompt += "\n\n" + ctx.prompts.fill("paraphrase", "retry")
    return [system(ctx.prompts.fill("paraphrase", "system")), user(prompt)]


# -- stage 5: tables ---------------------------------------------------------------------


def _shot_answer(ctx: Context, seed: Seed, cot: bool) -> str:
    table = parse_table(seed.table)
    if ctx.structured:
        data = ({"explanation": seed.explanation} if cot else {}) | {"table": table.as_json()}
        return orjson.dumps(data).decode()
    return f"{seed.explanation}\n\n{table.markdown()}" if cot else table.markdown()


def _table_shots(ctx: Context, record: Record, stage_name: str, k: int) -> list[Seed]:
    cot = STAGES[stage_name].variant == "cot"
    same = _seeds(ctx, record.category, cot)
    other = [s for s in _seeds(ctx, None, cot) if s not in same]
    rng = ctx.rng(f"{stage_name}:{record.id}")
    picked = rng.sample(same, min(k, len(same)))
    return picked + rng.sample(other, min(k - len(picked), len(other)))


def table_messages(ctx: Context, record: Record, stage_name: str) -> list[dict]:
    """The few-shot conversation asking for the record's table."""
    stage = ctx.config.stage(stage_name)
    sys_text = ctx.prompts.fill(stage_name, "system") + "\n" + ctx.prompts.fill(stage_name, ctx.format_key())
    messages = [system(sys_text)]
    for seed in _table_shots(ctx, record, stage_name, stage.shots):
        messages += [user(ctx.prompts.fill(stage_name, "user", instruction=seed.instruction, text=seed.text)),
                     assistant(_shot_answer(ctx, seed, STAGES[stage_name].variant == "cot"))]
    messages.append(user(ctx.prompts.fill(stage_name, "user", instruction=record.instruction, text=record.text)))
    return messages
