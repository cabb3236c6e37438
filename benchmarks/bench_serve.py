"""Embedded-model serving figures: conversion, vLLM start, output tokens/s with and without LoRA.

Starts ``VLLMServer`` with the embedded model and one LoRA adapter (a random rank-8
one unless ``--adapter`` names a trained one), sends ``--requests`` chat completions
at ``--concurrency`` through the project's engine for the base model and then for the
adapter, and prints JSON figures. Run: ``python benchmarks/bench_serve.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from odie_async.engine.core import Engine, EngineSettings
from odie_async.endpoints.embedded import embedded_model_dir
from odie_async.endpoints.serve import EMBEDDED_NAME, ServeSettings, VLLMServer


def random_adapter(base: Path, out: Path, rank: int = 8) -> Path:
    """A randomly initialised LoRA adapter on every projection (not a no-op like peft's default)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out)
    return out


async def throughput(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int, out: Path) -> dict:
    """Send ``requests`` fixed-length completions; output tokens per second of wall time."""
    settings = EngineSettings(base_url=base_url, concurrency=concurrency, timeout_s=600)
    started = time.monotonic()
    async with Engine(settings, output=out / f"{model}.jsonl") as engine:
        results = await asyncio.gather(*(
            engine.call(f"{model}-{i}", {
                "model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Write a short story about robot number {i}."}],
            }) for i in range(requests)))
    seconds = time.monotonic() - started
    tokens = sum(r.body["usage"]["completion_tokens"] for r in results if r.ok)
    return {"model": model, "ok": sum(r.ok for r in results), "output_tokens": tokens,
            "seconds": round(seconds, 1), "output_tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a trained peft adapter (default: a random rank-8 one)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.monotonic()
        base = embedded_model_dir()
        figures = {"convert_or_cache_s": round(time.monotonic() - started, 1)}
        adapter = args.adapter or random_adapter(base, tmp / "adapter")
        server = VLLMServer(ServeSettings(loras={"adapter": str(adapter)}))
        started = time.monotonic()
        with server:
            figures["vllm_start_s"] = round(time.monotonic() - started, 1)
            for model in (EMBEDDED_NAME, "adapter"):
                figures[model] = asyncio.run(
                    throughput(server.base_url, model, args.requests, args.concurrency, args.max_tokens, tmp))
    figures.update(requests=args.requests, concurrency=args.concurrency, max_tokens=args.max_tokens)
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
