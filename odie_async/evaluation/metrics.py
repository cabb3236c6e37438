"""The InstructIE paper's two metrics: header soft-match F1 and content ROUGE-Lsum.

Both follow the original evaluation scripts step by step (see the shared
InstructIE README). The original has two quirks that ``compat=True`` keeps and
the default mode fixes:

* A prediction with no ``|`` has no header. The original passed the empty
  *string* to the encoder, which returned one vector, so that item adds 0 to
  ``pred_n`` yet adds the empty string's similarities to both sums. The default
  mode scores it as zero predicted cells that contribute nothing, which lowers
  recall. (The same applies to a gold answer with no ``|``.)
* Groups are keyed exactly as spelled, so a category written ``fixed headers``
  is a group of its own; the default mode folds it into ``fixed header``.

The sentence encoder is passed in as ``encode(texts) -> unit-length rows`` so the
logic runs with any encoder (``odie_async.evaluation.embedder.Embedder.encode`` in use, a tiny
fake one in tests). Every distinct header cell of a file is encoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer

Encode = Callable[[Sequence[str]], np.ndarray]

NA = "| N/A |"
# Order matters: each replacement sees the result of the previous ones.
HEADER_NA_PATTERNS = ("| |", "|  |", "|   |", "|-|", "| - |", "| not specified |", "| none |")
CONTENT_NA_PATTERNS = (
    "| |", "|  |", "|   |", "|-|", "| - |",
    "| Not specified |", "| not specified |", "| Not Specified |", "| None |", "| none |",
)
GROUP_FIELDS = ("category", "difficulty", "source_type")
REQUIRED_FIELDS = ("gold", "output", *GROUP_FIELDS)
CATEGORY_ALIASES = {"fixed headers": "fixed header", "open headers": "open header"}
# Print and plot order of the known group keys; unknown keys follow, sorted.
KNOWN_KEYS = ("fixed header", "open header", "easy", "medium", "hard", "retrieve", "generate")
_MAX_LISTED = 10


def replace_na(span: str, patterns: Sequence[str]) -> str:
    """Replace each pattern, in the given order, with ``| N/A |``."""
    for pattern in patterns:
        span = span.replace(pattern, NA)
    return span


def header_cells(table_text: str) -> list[str] | None:
    """The lower-cased header cells of a markdown answer, or ``None`` when it has no ``|``."""
    text = table_text.lower()
    first, last = text.find("|"), text.rfind("|")
    if first == -1:
        return None
    span = replace_na(text[first : last + 1], HEADER_NA_PATTERNS)
    return span.split("\n")[0].strip("|").strip().split(" | ")


def content_span(table_text: str) -> str:
    """The answer from its first ``|`` to its end, N/A-normalised; ``""`` with no ``|``."""
    first = table_text.find("|")
    if first == -1:
        return ""
    return replace_na(table_text[first:], CONTENT_NA_PATTERNS)


@dataclass(frozen=True)
class HeaderCounts:
    """Sums of the pooled header metric; add items' counts to pool a group."""

    p_sum: float = 0.0
    r_sum: float = 0.0
    pred_n: int = 0
    gold_n: int = 0

    def __add__(self, other: HeaderCounts) -> HeaderCounts:
        return HeaderCounts(
            self.p_sum + other.p_sum,
            self.r_sum + other.r_sum,
            self.pred_n + other.pred_n,
            self.gold_n + other.gold_n,
        )

    @property
    def precision(self) -> float:
        """100·P_sum/pred_n; 0 when nothing was predicted (the original divides by zero)."""
        return 100.0 * self.p_sum / self.pred_n if self.pred_n else 0.0

    @property
    def recall(self) -> float:
        """100·R_sum/gold_n; 0 when the gold has no cells."""
        return 100.0 * self.r_sum / self.gold_n if self.gold_n else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _encoded_side(cells: list[str] | None, compat: bool) -> tuple[list[str], int]:
    """The texts to embed for one side of an item, and how many cells it counts."""
    if cells is None:
        return ([""] if compat else []), 0
    return cells, len(cells)


def header_counts(
    preds: Sequence[list[str] | None],
    golds: Sequence[list[str] | None],
    encode: Encode,
    compat: bool = False,
) -> list[HeaderCounts]:
    """Per-item soft-match counts; all distinct cells are encoded in one ``encode`` call."""
    sides = [
        (_encoded_side(p, compat), _encoded_side(g, compat)) for p, g in zip(preds, golds, strict=True)
    ]
    texts = list(dict.fromkeys(t for pair in sides for side in pair for t in side[0]))
    vectors = encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    row = {text: i for i, text in enumerate(texts)}
    return [_item_counts(pred, gold, vectors, row) for pred, gold in sides]


def _item_counts(pred, gold, vectors: np.ndarray, row: Mapping[str, int]) -> HeaderCounts:
    (pred_texts, pred_n), (gold_texts, gold_n) = pred, gold
    if not pred_texts or not gold_texts:
        return HeaderCounts(0.0, 0.0, pred_n, gold_n)
    sims = vectors[[row[t] for t in pred_texts]] @ vectors[[row[t] for t in gold_texts]].T
    return HeaderCounts(
        p_sum=float(sims.max(axis=1).sum(dtype=np.float64)),
        r_sum=float(sims.max(axis=0).sum(dtype=np.float64)),
        pred_n=pred_n,
        gold_n=gold_n,
    )


def content_scores(preds: Sequence[str], golds: Sequence[str]) -> list[float]:
    """Per-item ROUGE-Lsum F-measure ×100 of each prediction against its gold."""
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    return [
        100.0 * scorer.score(content_span(g), content_span(p))["rougeLsum"].fmeasure
        for p, g in zip(preds, golds, strict=True)
    ]


def group_key(field: str, value: str, compat: bool = False) -> str:
    """The group an item's ``field`` value falls in (aliases folded unless ``compat``)."""
    if compat or field != "category":
        return value
    return CATEGORY_ALIASES.get(value, value)


def group_indices(records: Sequence[Mapping], compat: bool = False) -> dict[str, dict[str, list[int]]]:
    """``{field: {key: [item indexes]}}`` for every group field, keys in print order."""
    out: dict[str, dict[str, list[int]]] = {}
    for field in GROUP_FIELDS:
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            groups.setdefault(group_key(field, record[field], compat), []).append(i)
        out[field] = {key: groups[key] for key in sorted(groups, key=key_order)}
    return out


def key_order(key: str) -> tuple[int, str]:
    """Sort key putting the paper's groups in the paper's order, then the rest by name."""
    return (KNOWN_KEYS.index(key), "") if key in KNOWN_KEYS else (len(KNOWN_KEYS), key)


def _pool(counts: Sequence[HeaderCounts], indices: Sequence[int]) -> HeaderCounts:
    total = HeaderCounts()
    for i in indices:
        total = total + counts[i]
    return total


def _mean(scores: Sequence[float], indices: Sequence[int]) -> float:
    return sum(scores[i] for i in indices) / len(indices) if indices else 0.0


def evaluate_records(records: Sequence[Mapping], encode: Encode, compat: bool = False) -> dict:
    """Score prediction records: ``{"mode", "notes", "n", "header": {...}, "content": {...}}``.

    ``header`` holds the pooled soft-match F1 (overall and per group) plus overall
    precision and recall; ``content`` the mean ROUGE-Lsum. Scores are on a 0–100 scale.
    """
    preds = [header_cells(r["output"]) for r in records]
    golds = [header_cells(r["gold"]) for r in records]
    counts = header_counts(preds, golds, encode, compat)
    rouge = content_scores([r["output"] for r in records], [r["gold"] for r in records])
    groups = group_indices(records, compat)
    everything = range(len(records))
    total = _pool(counts, everything)
    header = {"overall": total.f1, "precision": total.precision, "recall": total.recall}
    content = {"overall": _mean(rouge, everything)}
    for field, keyed in groups.items():
        header[field] = {key: _pool(counts, idx).f1 for key, idx in keyed.items()}
        content[field] = {key: _mean(rouge, idx) for key, idx in keyed.items()}
    return {
        "mode": "compat" if compat else "default",
        "notes": mode_notes(records, preds, golds, compat),
        "n": len(records),
        "header": header,
        "content": content,
    }


def _listed(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    return shown + (", ..." if len(indices) > _MAX_LISTED else "")


def mode_notes(records, preds, golds, compat: bool) -> list[str]:
    """Human-readable lines saying which mode ran and which items its rules changed."""
    no_pred = [i for i, cells in enumerate(preds) if cells is None]
    no_gold = [i for i, cells in enumerate(golds) if cells is None]
    notes = []
    if compat:
        notes.append("compat mode: the original scripts' behaviour, quirks included")
        if no_pred or no_gold:
            notes.append(
                f"{len(no_pred)} output(s) and {len(no_gold)} gold answer(s) with no table add the "
                f"empty string's similarity to the header score (items {_listed(no_pred + no_gold)})"
            )
        return notes
    notes.append("default mode: the original's quirks fixed (use --compat for the paper's exact numbers)")
    if no_pred or no_gold:
        notes.append(
            f"{len(no_pred)} output(s) and {len(no_gold)} gold answer(s) with no table count as zero "
            f"header cells that match nothing, lowering recall (items {_listed(no_pred + no_gold)}); "
            "--compat adds the empty string's similarity instead"
        )
    for alias, key in CATEGORY_ALIASES.items():
        hits = [i for i, r in enumerate(records) if r["category"] == alias]
        if hits:
            notes.append(
                f"category '{alias}' scored as '{key}' ({len(hits)} items); --compat keeps it a group of its own"
            )
    return notes
