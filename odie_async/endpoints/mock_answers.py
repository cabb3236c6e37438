"""The mock's answers on the routes beside (chat) completions, shaped as OpenAI's API writes them.

``/v1/responses`` (a ``response`` object with one output message), ``/v1/embeddings`` (one
deterministic unit vector per input) and ``/v1/moderations`` (one result per input, nothing
flagged). Each carries the usage its route reports, so a run's token accounting is exercised.
"""

from __future__ import annotations

import hashlib
import math
import time

from ..engine.routes import input_texts

EMBEDDING_DIMENSIONS = 16
_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def responses_data(body: dict, content: str, prompt_tokens: int, output_tokens: int, answer_id: str) -> dict:
    """A completed ``response`` object holding one assistant message with ``content``."""
    return {
        "id": f"resp_{answer_id}", "object": "response", "created_at": int(time.time()), "status": "completed",
        "model": body.get("model"), "error": None, "incomplete_details": None,
        "output": [{"id": f"msg_{answer_id}", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": content, "annotations": []}]}],
        "usage": {"input_tokens": prompt_tokens, "output_tokens": output_tokens,
                  "total_tokens": prompt_tokens + output_tokens},
    }


def embeddings_data(body: dict, prompt_tokens: int) -> dict:
    """One unit vector per input, the same for the same text."""
    texts = input_texts(body.get("input"))
    data = [{"object": "embedding", "index": i, "embedding": _vector(text)} for i, text in enumerate(texts)]
    return {"object": "list", "data": data, "model": body.get("model"),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def moderations_data(body: dict, answer_id: str) -> dict:
    """One unflagged result per input."""
    results = [{"flagged": False, "categories": dict.fromkeys(_CATEGORIES, False),
                "category_scores": dict.fromkeys(_CATEGORIES, 0.0)} for _ in input_texts(body.get("input"))]
    return {"id": f"modr-{answer_id}", "model": body.get("model") or "omni-moderation-latest", "results": results}


def _vector(text: str) -> list[float]:
    raw = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIMENSIONS).digest()
    values = [b - 127.5 for b in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]
