"""Near-duplicate instructions by ROUGE-L, as self-instruct drops them.

ROUGE-L F between token lists of lengths m and n with LCS length L is
2L/(m+n). L is at most the bag-of-tokens overlap, so an inverted index probed
with a text's rarest tokens finds the few kept texts that could reach the
threshold, and the quadratic LCS runs only on those.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge-score's default tokens: lower-cased runs of letters and digits."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure of two token lists."""
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


class Deduper:
    """Keeps texts whose ROUGE-L against every text kept (or given) so far stays below ``threshold``."""

    def __init__(self, threshold: float = 0.7, known: list[str] = ()) -> None:
        self.threshold = threshold
        self._tokens: list[list[str]] = []
        self._counts: list[Counter] = []
        self._index: dict[str, list[int]] = defaultdict(list)
        self.kept = 0
        for text in known:
            self._remember(tokenize(text))

    def _remember(self, tokens: list[str]) -> None:
        slot = len(self._tokens)
        counts = Counter(tokens)
        self._tokens.append(tokens)
        self._counts.append(counts)
        for token in counts:
            self._index[token].append(slot)

    def _candidates(self, counts: Counter, length: int) -> set[int]:
        """Remembered texts that share a token with the rarest part of ``counts``.

        A text reaching the threshold shares at least ``need`` tokens with this
        one (``need`` = θm/(2-θ), from the LCS and length bounds), so it shares
        one of any ``m - need + 1`` token positions: probing the rarest ones is enough.
        """
        need = math.ceil(self.threshold * length / (2.0 - self.threshold) - 1e-9)
        budget = max(1, length - need + 1)
        found: set[int] = set()
        for token in sorted(counts, key=lambda t: len(self._index.get(t, ()))):
            found.update(self._index.get(token, ()))
            budget -= counts[token]
            if budget <= 0:
                break
        return found

    def near_duplicate(self, tokens: list[str]) -> bool:
        """Whether ``tokens`` reach the threshold against any remembered text."""
        if not tokens:
            return True
        counts = Counter(tokens)
        for slot in self._candidates(counts, len(tokens)):
            other = self._tokens[slot]
            overlap = sum((counts & self._counts[slot]).values())
            bound = 2.0 * overlap / (len(tokens) + len(other))
            if bound >= self.threshold and rouge_l(tokens, other) >= self.threshold:
                return True
        return False

    def add(self, text: str) -> bool:
        """Keep ``text`` unless it is a near duplicate; True when kept."""
        tokens = tokenize(text)
        if self.near_duplicate(tokens):
            return False
        self._remember(tokens)
        self.kept += 1
        return True
