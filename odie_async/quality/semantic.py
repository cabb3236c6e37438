"""The checks that use the sentence encoder: per-cell faithfulness, consistency, relevance.

All strings of a batch of records go through the encoder in one call
(``get_embedder()``: all-MiniLM-L6-v2, unit rows, dot product = cosine).

- faithfulness: each informative body cell is supported when its normalised
  string occurs in the text, or all its numbers and dates occur in the text (in
  any format: ``1,200`` / ``1.2k``, ``2022-02-19`` / ``February 19, 2022``) and
  most of its other content words do, or (no number missing) its best similarity
  with a sentence of the text reaches ``paraphrase_similarity``. The score is the
  share of supported cells; ``columns`` is ``worst_column``, how near the text the
  unsupported cells of the worst mostly-unsupported column come.
- consistency: fixed header, the mean over header cells of 1 when most of the
  cell's words are in the instruction, else the cell's best similarity with one of
  the instruction's 1–4-word phrases; open header, the similarity of the
  instruction and the header cells joined.
- relevance: the best similarity of the instruction with a sentence of the text.
- header: the similarity of the instruction and the header cells joined (``belongs``
  adds it for fixed headers, whose consistency counts header words the instruction names).

numpy is imported only when the encoder runs: without the ``ml`` extra the
scores that need it stay None (``<check>.not_run``), and ``Gate`` refuses a
config whose encoder checks are on.

On the calibration set, comparing cells with 8-word spans of the text as well as
its sentences changed no verdict and cost five times the encoding.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..evaluation.tables import Table, is_na
from .gate_config import GateConfig
from .text import content_stems, flat, normalise, numbers, phrases, quantities, sentences, without_quantities

if TYPE_CHECKING:  # numpy comes with the encoder's extra; the checks that need no encoder run without it
    import numpy as np


@dataclass
class Item:
    """What the encoder checks look at in one record."""

    instruction: str
    text: str
    table: Table | None
    fixed: bool
    judged: frozenset[str] = frozenset()  # scores another scorer gave: the encoder skips them


class _Pool:
    """Strings to encode, each once; ``vectors[index]`` after ``encode``."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    def encode(self, embedder, cache: dict[str, np.ndarray]) -> np.ndarray:
        """Vectors of the pool's strings; those in ``cache`` are not encoded again."""
        import numpy as np

        missing = [text for text in self.index if text not in cache]
        if missing:
            if len(cache) + len(missing) > CACHE_SIZE:
                cache.clear()
            cache.update(zip(missing, embedder.encode(missing)))
        return np.stack([cache[text] for text in self.index])


def lexical_support(cell: str, text_norm: str, text_numbers: set[str], text_stems: set[str]) -> bool | None:
    """``text_norm`` is ``flat(text)``. True: the text states the cell; False: a number of the cell is not in the text; None: ask the encoder."""
    norm = flat(cell)
    if norm and f" {norm} " in f" {text_norm} ":
        return True
    if any(not forms & text_numbers for forms in quantities(cell)):
        return False  # a number or date of the cell is not in the text, in any way of writing it
    stems = content_stems(without_quantities(cell))  # the numbers and dates were checked above
    if stems and sum(s in text_stems for s in stems) / len(stems) >= 0.6:
        return True
    return None if stems else bool(quantities(cell))


def header_in_instruction(cell: str, instruction_stems: set[str]) -> bool:
    """Whether most content words of a header cell occur in the instruction."""
    stems = content_stems(cell)
    return bool(stems) and sum(s in instruction_stems for s in stems) / len(stems) >= 0.5


ENCODER_MODULES = ("numpy", "sentence_transformers")  # what the "ml" extra brings for the encoder


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or refused package is as good as none
        return False


def missing_encoder_modules() -> list[str]:
    """The encoder's packages this install lacks (empty: the encoder can load)."""
    return [name for name in ENCODER_MODULES if not _installed(name)]


CACHE_SIZE = 50_000  # vectors kept across batches (the plain and CoT tables of a record share text and instruction)


class OfflineJudge:
    """Scores faithfulness, consistency and relevance for a batch of items."""

    def __init__(self, cfg: GateConfig, embedder=None) -> None:
        self.cfg = cfg
        self._embedder = embedder
        self._cache: dict[str, np.ndarray] = {}

    def embedder(self):
        """The sentence encoder, loaded on first use."""
        if self._embedder is None:
            from ..evaluation.embedder import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def score(self, items: list[Item]) -> list[dict[str, float | None]]:
        """``{"faithfulness", "consistency", "relevance"}`` per item; None where a score cannot be computed."""
        pool = _Pool()
        plans = [self._plan(item, pool) for item in items]
        vectors = None  # without the encoder (a core install), the scores that need it stay None: not_run
        if pool.index and (self._embedder is not None or not missing_encoder_modules()):
            vectors = pool.encode(self.embedder(), self._cache)
        return [self._finish(plan, vectors) for plan in plans]

    def _plan(self, item: Item, pool: _Pool) -> dict:
        cfg = self.cfg
        plan: dict = {}
        if cfg.relevance.enabled and item.instruction.strip() and item.text.strip():
            plan["relevance"] = (pool.add(item.instruction), [pool.add(p) for p in sentences(item.text) or [item.text]])
        table = item.table
        if table is None:
            return plan
        if cfg.faithfulness.enabled and "faithfulness" not in item.judged:
            plan["faithfulness"] = self._plan_cells(item, table, pool)
        if (cfg.consistency.enabled and "consistency" not in item.judged and item.instruction.strip()
                and any(h.strip() for h in table.header)):
            plan["consistency"] = self._plan_header(item, table, pool)
            header = ", ".join(h for h in table.header if h.strip())
            plan["header"] = (pool.add(item.instruction), pool.add(header))
        return plan

    def _plan_cells(self, item: Item, table: Table, pool: _Pool) -> tuple[list[tuple[int, bool | None, int]], list[int]]:
        """Per informative cell: its column, the strings' verdict (None: ask the encoder), its pool index
        (-1 when the strings support it); and the text's sentences."""
        text_norm = flat(item.text)
        text_numbers, text_stems = numbers(item.text), set(content_stems(item.text))
        numbering = row_number_columns(table)
        cells = []
        for row in table.rows:
            for column, cell in enumerate(row):
                if is_na(cell) or not normalise(cell):
                    continue
                verdict = lexical_support(cell, text_norm, text_numbers, text_stems)
                cells.append((-1 if column in numbering else column, verdict, -1 if verdict else pool.add(cell)))
        spans = [pool.add(w) for w in sentences(item.text) or [item.text]] if any(i >= 0 for *_, i in cells) else []
        return cells, spans

    def _plan_header(self, item: Item, table: Table, pool: _Pool):
        header = [h for h in table.header if h.strip()]
        if not item.fixed:
            return "open", pool.add(item.instruction), pool.add(", ".join(header))
        stems = set(content_stems(item.instruction))
        found = [header_in_instruction(h, stems) for h in header]
        asked = [pool.add(h.lower()) for h, ok in zip(header, found) if not ok]
        spans = [pool.add(p) for p in phrases(item.instruction)] if asked else []
        return "fixed", sum(found), asked, spans, len(header)

    def _finish(self, plan: dict, vectors) -> dict[str, float | None]:
        scores: dict[str, float | None] = {"faithfulness": None, "consistency": None, "relevance": None}
        if vectors is None:
            plan = {k: v for k, v in plan.items() if not _needs_vectors(k, v)}
        if "relevance" in plan:
            query, spans = plan["relevance"]
            scores["relevance"] = _clip(float((vectors[spans] @ vectors[query]).max()))
        if "faithfulness" in plan:
            scores["faithfulness"], scores["columns"] = self._faithfulness(*plan["faithfulness"], vectors)
        if "consistency" in plan:
            scores["consistency"] = self._consistency(plan["consistency"], vectors)
        if "header" in plan:
            query, header = plan["header"]
            scores["header"] = _clip(float(vectors[query] @ vectors[header]))
        return scores

    def _faithfulness(self, cells: list, spans: list[int], vectors) -> tuple[float | None, float | None]:
        """The share of supported cells, and ``worst_column`` of the cells' support and closeness to the text."""
        if not cells:
            return None, None
        asked = [i for *_, i in cells if i >= 0]
        best = dict(zip(asked, (vectors[asked] @ vectors[spans].T).max(axis=1))) if asked and vectors is not None else {}
        threshold = self.cfg.faithfulness.paraphrase_similarity
        judged = []
        for column, verdict, i in cells:
            closeness = float(best[i]) if i in best else None
            supported = bool(verdict) or (verdict is None and closeness is not None and closeness >= threshold)
            judged.append((column, supported, closeness))
        return sum(s for _, s, _ in judged) / len(judged), worst_column(judged)

    @staticmethod
    def _consistency(plan, vectors) -> float:
        if plan[0] == "open":
            _, query, header = plan
            return _clip(float(vectors[query] @ vectors[header]))
        _, found, asked, spans, n = plan
        best = (vectors[asked] @ vectors[spans].T).max(axis=1).clip(0.0, 1.0).sum() if asked else 0.0
        return float((found + best) / n)


def _needs_vectors(name: str, plan) -> bool:
    if name == "faithfulness":
        return any(verdict is None for _, verdict, _ in plan[0])  # cells the strings and numbers could not decide
    return name in ("relevance", "header") or plan[0] == "open" or bool(plan[2])


_ROW_NUMBER = re.compile(r"#?\d{1,3}(?:st|nd|rd|th)?\.?")


def row_number_columns(table: Table) -> set[int]:
    """The columns that number the rows (``1``, ``2.``, ``#3``, ``4th``): no text states them."""
    out = set()
    for j in range(table.n_columns):
        values = [row[j].strip() for row in table.rows if j < len(row) and not is_na(row[j]) and row[j].strip()]
        if values and all(_ROW_NUMBER.fullmatch(v) for v in values):
            out.add(j)
    return out


def worst_column(judged: list[tuple[int, bool, float | None]]) -> float | None:
    """How close to the text the worst column's unsupported cells come (1.0 when no column is mostly unsupported).

    ``judged`` holds ``(column, supported, closeness)`` per informative cell (column -1: a row number, not
    judged), closeness being the cell's best encoder similarity with a sentence of the text (None when the
    strings support it). A column of two or more cells, more than half of them unsupported, scores the mean
    closeness of its unsupported cells: a column the annotator derived ("Positive", "2h 30m") stays near the
    text's words, one made of values from elsewhere does not.
    None when the closeness of such a column could not be computed (no encoder).
    """
    columns: dict[int, list[tuple[bool, float | None]]] = {}
    for column, supported, closeness in judged:
        if column >= 0:
            columns.setdefault(column, []).append((supported, closeness))
    worst: float | None = 1.0
    for cells in columns.values():
        missing = [closeness for supported, closeness in cells if not supported]
        if len(cells) < 2 or 2 * len(missing) <= len(cells):
            continue
        if None in missing:
            return None
        worst = min(worst, _clip(sum(missing) / len(missing)))
    return worst


def _clip(value: float) -> float:
    return min(1.0, max(0.0, float(value)))
