"""The pipeline's stages, each described once; every list of stage names is derived from here.

A ``StageSpec`` names a stage, the template keys its prompt file must hold, whether
it asks for JSON-schema output (and the schema builder), how its answer is parsed,
and its short label on the progress line. The config's ``stages`` section, the
prompt loader, the structured-output modes, the mock teacher, the progress line and
the summary all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..evaluation.tables import Table
from . import parsers, schemas


def parse_plain_answer(content: str) -> tuple[str, Table]:
    """``("", table)``: the plain table stage in the shape of the chain-of-thought one."""
    return "", parsers.parse_table_answer(content)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline."""

    name: str
    prompt_keys: tuple[str, ...]
    label: str
    parser: Callable
    schema: Callable[..., dict] | None = None
    variant: str | None = None      # the table variant a table stage makes
    optional: bool = False          # runs only with the LLM judge as scorer

    @property
    def structured(self) -> bool:
        """Whether the stage asks for JSON-schema output when the endpoint honours it."""
        return self.schema is not None


_FORMATS = ("format_text", "format_json")
STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("instructions", ("system", "user", "example", *_FORMATS), "instr",
              parsers.parse_instruction_list, schemas.instructions_schema),
    StageSpec("texts", ("system", "user"), "texts", parsers.free_text),
    StageSpec("open_instructions", ("system", "user"), "open", parsers.free_text),
    StageSpec("paraphrase", ("system", "styles", "user", *_FORMATS, "retry"), "para",
              parsers.parse_paraphrases, schemas.paraphrase_schema),
    StageSpec("tables", ("system", "user", *_FORMATS, "repair"), "tables",
              parse_plain_answer, schemas.table_schema, variant="plain"),
    StageSpec("tables_cot", ("system", "user", *_FORMATS, "repair"), "cot",
              parsers.parse_cot_answer, schemas.cot_schema, variant="cot"),
    StageSpec("judge", ("system", "user_fixed", "user_open", *_FORMATS), "judge",
              parsers.parse_scores, schemas.judge_schema, optional=True),
)}
NAMES = tuple(STAGES)
STRUCTURED = tuple(name for name, spec in STAGES.items() if spec.structured)
TABLE_STAGES = {spec.variant: spec for spec in STAGES.values() if spec.variant}
VARIANTS = tuple(TABLE_STAGES)


def table_stage(variant: str) -> StageSpec:
    """The stage that makes tables of ``variant`` (``plain`` or ``cot``)."""
    return TABLE_STAGES[variant]


def active(variants: list[str], judge: bool) -> list[str]:
    """The stages a run with these table variants (and the LLM judge or not) sends requests for."""
    return [name for name, spec in STAGES.items()
            if (spec.variant is None or spec.variant in variants) and (judge or not spec.optional)]
