"""Near-duplicate instructions by ROUGE-L, as self-instruct drops them.

ROUGE-L F between token lists of lengths m and n with LCS length L is
2L/(m+n). L is at most the bag-of-tokens overlap, so an inverted index finds
the few kept instructions that could reach the threshold and the quadratic LCS
runs only on those.
"""

from __future__ import annotations

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

    def near_duplicate(self, tokens: list[str]) -> bool:
        """Whether ``tokens`` reach the threshold against any remembered text."""
        if not tokens:
            return True
        counts = Counter(tokens)
        shared: Counter = Counter()
        for token, n in counts.items():
            for slot in self._index.get(token, ()):
                shared[slot] += min(n, self._counts[slot][token])
        for slot, overlap in shared.items():
            other = self._tokens[slot]
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
