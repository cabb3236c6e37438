"""The paper's filter rules; each returns the reason a record is dropped, or None.

Structure (the table parses strictly, which ``stages.make_table`` enforces),
size (rows + columns > 3 and at least 2 columns), fewer than 4 ``N/A`` cells,
text at most 768 words, then the consistency and faithfulness scores (≥ 0.5;
consistency only for fixed-header records, as in the paper). Beyond the paper,
``distinct_rows`` drops tables that repeat a row, the way a small model
degenerates (one cell copied until ``max_tokens``).
"""

from __future__ import annotations

from ..evaluation.tables import Table
from .config import FilterConfig
from .prompts import FIXED


def text_words(text: str) -> int:
    """Words of a text, counted as the paper does (split on spaces)."""
    return len(text.split(" "))


def check_text(text: str, cfg: FilterConfig) -> str | None:
    """``text_too_long`` above ``max_text_words``; checked before any table is asked for."""
    return "text_too_long" if text_words(text) > cfg.max_text_words else None


def check_table(table: Table, cfg: FilterConfig) -> str | None:
    """``too_few_columns``, ``too_small``, ``too_many_na`` or (opt-in) ``repeated_rows``."""
    if table.n_columns < cfg.min_columns:
        return "too_few_columns"
    if table.n_rows + table.n_columns < cfg.min_size:
        return "too_small"
    if table.na_count() > cfg.max_na:
        return "too_many_na"
    if cfg.distinct_rows and len(set(table.rows)) < table.n_rows:
        return "repeated_rows"
    return None


def check_scores(scores: dict[str, float | None], category: str, cfg: FilterConfig) -> str | None:
    """``low_consistency`` (fixed-header records only) or ``low_faithfulness``."""
    if category == FIXED and (scores.get("consistency") or 0.0) < cfg.min_consistency:
        return "low_consistency"
    if (scores.get("faithfulness") or 0.0) < cfg.min_faithfulness:
        return "low_faithfulness"
    return None
