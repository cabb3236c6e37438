"""The filter rule the pipeline applies before asking for tables: the gate's text check.

Every other rule of the filter stage (instruction, table structure, degenerate
tables, truncation, faithfulness, consistency, relevance) runs in
``scorers.FilterStage`` through ``quality.Gate``, the code ``odie filter`` runs.
"""

from __future__ import annotations

from ..quality.checks import text_reasons
from ..quality.gate_config import GateConfig


def check_text(text: str, cfg: GateConfig) -> str | None:
    """``text.too_long`` (or ``text.empty``) by the gate's text check; checked before any table is asked for."""
    reasons = text_reasons(text, cfg.text)
    return reasons[0] if reasons else None
