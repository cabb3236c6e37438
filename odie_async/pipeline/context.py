"""What every stage shares: config, templates, seeds, the engine, and the per-stage counts.

``Context.ask`` is the one way a stage sends a request. Its custom_id is the
stage, a stable record key and a digest of the request body, so a rerun that
rebuilds the same request finds its answer in the checkpoint, and a changed
prompt or setting makes a new request instead of reusing a stale answer.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import orjson

from ..engine.core import Engine
from .config import PipelineConfig
from .prompts import Prompts, Seed
from .registry import STRUCTURED
from .schemas import response_format

class Dropped(Exception):
    """A record leaves the pipeline; ``reason`` goes to the filter histogram."""

    def __init__(self, reason: str, **details) -> None:
        self.reason = reason
        self.details = details
        super().__init__(reason)


@dataclass
class Answer:
    """One stage answer: its content, or why there is none."""

    ok: bool
    content: str | None
    finish_reason: str | None
    error: str | None
    cached: bool
    contents: list[str] = field(default_factory=list)  # every choice, when more than one was asked for
    tokens: int = 0  # prompt and completion tokens the request spent (its usage)


def digest(body: dict) -> str:
    """A short, stable digest of a request body."""
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=6).hexdigest()


@dataclass
class Context:
    """Shared state of one ``odie generate`` run."""

    config: PipelineConfig
    prompts: Prompts
    seeds: list[Seed]
    engine: Engine
    model: str | None
    structured: bool = False
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def rng(self, key: str) -> random.Random:
        """A random generator seeded by the run seed and ``key``: the same on every rerun."""
        return random.Random(f"{self.config.run.seed}:{key}")

    def mode(self, stage: str) -> str:
        """How ``stage`` asks for its structure: ``json_schema``, ``prompt`` or ``free_text``."""
        if stage not in STRUCTURED:
            return "free_text"
        return "json_schema" if self.structured else "prompt"

    def format_key(self) -> str:
        """The template key of the answer-format sentence for the current mode."""
        return "format_json" if self.structured else "format_text"

    def body(self, stage: str, key: str, messages: list[dict], schema: dict | None = None, n: int = 1) -> dict:
        """A chat-completions body with the stage's sampling (and schema when structured).

        With ``endpoint.send_seed`` a sampling ``seed`` derived from the run seed and
        the record key goes along: two records with the same prompt still sample
        differently, and a resent request samples the same.
        """
        stage_cfg = self.config.stage(stage)
        body = {"messages": messages, "temperature": stage_cfg.temperature, "max_tokens": stage_cfg.max_tokens}
        if self.config.endpoint.send_seed:
            seed = hashlib.blake2b(f"{self.config.run.seed}:{stage}:{key}".encode(), digest_size=4).digest()
            body["seed"] = int.from_bytes(seed, "big") >> 1
        if self.model:
            body["model"] = self.model
        if n > 1:
            body["n"] = n
        if schema is not None and self.structured:
            body["response_format"] = response_format(f"odie_{stage}", schema, self.config.endpoint)
        return body

    async def ask(self, stage: str, key: str, messages: list[dict], schema: dict | None = None, n: int = 1) -> Answer:
        """Send (or fetch from the checkpoint) one request of ``stage`` for record ``key``; ``n`` answers to it."""
        body = self.body(stage, key, messages, schema, n)
        result = await self.engine.call(f"{stage}:{key}:{digest(body)}", body)
        counts = self.counts[stage]
        counts["cached" if result.cached else "sent"] += 1
        usage = (result.body or {}).get("usage") if result.ok else None
        tokens = int(usage.get("total_tokens") or 0) if isinstance(usage, dict) else 0
        counts["tokens"] += tokens
        if not result.ok:
            counts["failed"] += 1
            return Answer(False, None, None, (result.error or {}).get("code", "error"), result.cached)
        choices = (result.body or {}).get("choices") or [{}]
        counts["answered"] += 1
        contents = [_choice_text(c) for c in choices if isinstance(c, dict)]
        return Answer(True, result.content or "", choices[0].get("finish_reason"), None, result.cached,
                      contents, tokens)

    def parsed(self, stage: str, ok: bool) -> None:
        """Count one answer of ``stage`` as parsed or not."""
        self.counts[stage]["parsed" if ok else "unparsable"] += 1


def _choice_text(choice: dict) -> str:
    message = choice.get("message")
    return str((message.get("content") if isinstance(message, dict) else choice.get("text")) or "")


def system(text: str) -> dict:
    """A system message."""
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    """An assistant message."""
    return {"role": "assistant", "content": text}
