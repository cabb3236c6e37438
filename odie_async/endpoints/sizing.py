"""How a self-hosted vLLM server is sized on a CPU: KV cache, context length, sequence limit.

Bulk ODIE work sends many short requests (a prompt of a few hundred to two thousand tokens, an
answer of a few hundred), so the server is sized for throughput on those, not for the worst case:

- the **KV cache** is a share of the memory available when the server starts, within a floor and
  a cap, and never more than what is left once the model and a margin are counted;
- the **context** (``--max-model-len``) is what a typical ODIE request needs, not the model's 8k
  maximum; a longer request is refused by vLLM with a clear error;
- the **sequence limit** (``--max-num-seqs``) is how many typical requests the cache holds at once,
  so the server runs as many streams as its memory allows, up to 64, where a wave of answers still
  finishes within a request's timeout on a CPU. vLLM preempts (and later resumes) a
  sequence when a rare long request fills the cache: that is the safety valve, not a low ceiling.

``plan()`` returns the numbers and the reasons, printed when the server starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ServeError

GIB = 1 << 30
KV_SHARE = 0.25          # of the memory available at start
KV_FLOOR = 1 * GIB
KV_CAP = 4 * GIB
MARGIN = 1 * GIB         # the API server, the engine process and torch beside the weights and the cache
DEFAULT_CONTEXT = 4096   # a table-stage prompt (few-shot examples and a text) plus its answer
TYPICAL_REQUEST = 512    # tokens a bulk request holds in the cache on average
# At most 64: at 182 sequences the embedded model on 2 cores decoded about 145 tokens/s in all, so a
# wave of 128-token answers took longer than a request's 120 s timeout and every request timed out
# (benchmarks/bench_saturate.py --defaults); 64 keeps a wave near a minute.
SEQS_MIN, SEQS_MAX = 16, 64
_STEP = 64 << 20


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know of a model: KV bytes per token, weights, longest context."""

    kv_bytes_per_token: int
    weight_bytes: int
    max_context: int


@dataclass(frozen=True)
class Sizing:
    """The numbers given to vLLM, and why."""

    kv_cache_bytes: int
    max_model_len: int
    max_num_seqs: int
    cache_tokens: int
    reasons: tuple[str, ...]

    def describe(self) -> str:
        """One line for the start-up log: the numbers, then the reasons."""
        numbers = (f"KV cache {self.kv_cache_bytes / GIB:.2f} GiB ({self.cache_tokens:,} tokens), "
                   f"max-model-len {self.max_model_len}, max-num-seqs {self.max_num_seqs}")
        return f"{numbers}: " + "; ".join(self.reasons)


def model_shape(model_dir: str | Path, dtype_bytes: int) -> ModelShape:
    """Read the attention shape and size of the model in ``model_dir`` (its ``config.json``)."""
    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin"))
    # Weights saved in half precision are widened to float32 on the CPU.
    weights = weights * max(1, dtype_bytes // 2) if _half_precision(config) else weights
    return ModelShape(2 * layers * kv_heads * head_dim * dtype_bytes, weights,
                      int(text.get("max_position_embeddings") or DEFAULT_CONTEXT))


def _half_precision(config: dict) -> bool:
    return str(config.get("torch_dtype") or config.get("dtype") or "").lower() in ("float16", "bfloat16")


def available_memory() -> int:
    """Memory the kernel can hand out now (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan(shape: ModelShape, available: int, *, kv_cache_gib: float | None = None,
         max_model_len: int | None = None, max_num_seqs: int | None = None) -> Sizing:
    """Size the server for ``shape`` with ``available`` bytes free; explicit settings win.

    Raises ``ServeError`` when the memory free cannot hold the model, a margin and a cache of
    at least one full-length sequence: asking vLLM for more than is free would only fail later.
    """
    room = available - shape.weight_bytes - MARGIN
    reasons = []
    if kv_cache_gib:
        kv = int(kv_cache_gib * GIB)
        reasons.append(f"--kv-cache-gib {kv_cache_gib:g}")
    else:
        kv = _round_down(min(max(available * KV_SHARE, KV_FLOOR), KV_CAP, room))
        reasons.append(f"{KV_SHARE:.0%} of the {available / GIB:.1f} GiB free, within "
                       f"{KV_FLOOR / GIB:g}-{KV_CAP / GIB:g} GiB")
        if kv <= 0:
            raise ServeError(_too_little(KV_FLOOR, available, shape))
    if kv > room:
        raise ServeError(_too_little(kv, available, shape))
    context = max_model_len or min(shape.max_context, DEFAULT_CONTEXT)
    tokens = kv // shape.kv_bytes_per_token
    if tokens < context:
        raise ServeError(f"a KV cache of {kv / GIB:.2f} GiB holds {tokens:,} tokens, fewer than one sequence of "
                         f"--max-model-len {context}: raise --kv-cache-gib or lower --max-model-len")
    reasons.append(f"--max-model-len {context}" if max_model_len else
                   f"context {context} tokens, enough for ODIE requests (the model allows {shape.max_context})")
    seqs = max_num_seqs or min(max(tokens // TYPICAL_REQUEST, SEQS_MIN), SEQS_MAX)
    reasons.append(f"--max-num-seqs {max_num_seqs}" if max_num_seqs else
                   f"{seqs} sequences of {TYPICAL_REQUEST} tokens fit the cache (longer ones are preempted, "
                   "not refused)")
    return Sizing(kv, context, seqs, tokens, tuple(reasons))


def _round_down(size: float) -> int:
    return int(size) // _STEP * _STEP


def _too_little(kv: int, available: int, shape: ModelShape) -> str:
    need = (kv + shape.weight_bytes + MARGIN) / GIB
    return (f"not enough free memory to serve: {available / GIB:.2f} GiB free, {need:.2f} GiB needed "
            f"({kv / GIB:.2f} GiB of KV cache, {shape.weight_bytes / GIB:.2f} GiB of weights, "
            f"{MARGIN / GIB:g} GiB margin): free memory, or lower --kv-cache-gib")
