"""``odie predict`` speed: vLLM batched against a sequential ``transformers`` generate loop.

Both sides get the same base model, the same LoRA adapter (unmerged, as the
original project's inference script used it through peft), the same rendered
prompts and the same greedy decoding with the same token budget. The baseline
is the original project's loop: one ``model.generate`` call per test item, one
after the other (the original also used 4-beam search, which would only make
it slower; greedy keeps the work equal). vLLM gets every prompt in one
``LLM.chat`` call, the adapter as a ``LoRARequest``; a third run serves the
adapter merged into the base weights (``odie predict --merge-lora``), the same
model without vLLM's per-token LoRA kernels. Output tokens per second of
generation are reported for each (model loading and merging timed apart), with
the ratios to the baseline and how many greedy answers match the baseline's, as
JSON on stdout; ``--plot`` also draws them.

Run: ``.venv/bin/python benchmarks/bench_predict.py --adapter ADAPTER_DIR [--items 16] [--max-tokens 128]``.
The transformers loop runs first, so vLLM's engine process cannot take CPU from it.
Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from odie_async.logs import configure_logging
from odie_async.paths import shared_dir


def sequential_generate(model_dir: str, adapter: str | None, prompts: list[str], max_tokens: int) -> dict:
    """One ``generate`` call per prompt with transformers (+ peft); tokens, seconds, answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    load_s = time.perf_counter() - started
    tokens, answers = 0, []
    started = time.perf_counter()
    for i, prompt in enumerate(prompts, start=1):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:]
        tokens += int(new.shape[0])
        answers.append(tokenizer.decode(new, skip_special_tokens=True))
        print(f"transformers {i}/{len(prompts)}: {tokens} tokens, {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    seconds = time.perf_counter() - started
    return {"load_s": round(load_s, 1), "generate_s": round(seconds, 1), "output_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 2), "answers": answers}


def vllm_batched(model_dir: str, conversations: list, layout: str, settings) -> dict:
    """Every conversation in one ``LLM.chat`` call; tokens, seconds, answers."""
    from odie_async.model.predict import predict_offline

    started = time.perf_counter()
    answers, seconds = predict_offline(model_dir, conversations, layout, settings)
    tokens = sum(a.tokens for a in answers)
    return {"load_s": round(time.perf_counter() - started - seconds, 1), "generate_s": round(seconds, 1),
            "output_tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
            "answers": [a.text for a in answers]}


def vllm_merged(model_dir: str, conversations: list, layout: str, settings) -> dict:
    """The same batch with the adapter merged into the base weights (``--merge-lora``)."""
    import gc
    from dataclasses import replace

    from odie_async.model.merge import merged_model_dir

    gc.collect()  # the previous LLM's engine process goes before this one starts
    started = time.perf_counter()
    merged = str(merged_model_dir(model_dir, settings.lora))
    merge_s = time.perf_counter() - started
    return vllm_batched(merged, conversations, layout, replace(settings, lora=None)) | {"merge_s": round(merge_s, 1)}


def plot(result: dict, path: Path) -> None:
    """Bar chart of output tokens/s of both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["transformers\nsequential", "vLLM batched\nLoRARequest", "vLLM batched\nmerged adapter"]
    rates = [result[key]["tokens_per_s"] for key in ("transformers", "vllm", "vllm_merged") if key in result]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names[:len(rates)], rates, color=["tab:gray", "tab:blue", "tab:green"][:len(rates)])
    for x, rate in enumerate(rates):
        ax.text(x, rate, f"{rate:.1f}", ha="center", va="bottom")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{result['items']} items, {result['max_tokens']} max tokens, "
                 f"{'LoRA r16' if result['adapter'] else 'no adapter'}, {result['cpu_count']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (odie train); none: the base model")
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--data", default=str(shared_dir() / "instructie" / "test_data.json"))
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-merged", action="store_true", help="skip the run with the adapter merged in")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    args = parser.parse_args()
    configure_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from odie_async.endpoints.embedded import resolve_model
    from odie_async.model.predict import PredictSettings, build_prompts, load_items

    model_dir = resolve_model(args.base_model)
    settings = PredictSettings(base_model=model_dir, lora=args.adapter, max_tokens=args.max_tokens)
    layout, conversations, prompts = build_prompts(model_dir, load_items(args.data, args.items), settings)
    runs = {"transformers": sequential_generate(model_dir, args.adapter, prompts, args.max_tokens),
            "vllm": vllm_batched(model_dir, conversations, layout, settings)}
    if args.adapter and not args.no_merged:
        runs["vllm_merged"] = vllm_merged(model_dir, conversations, layout, settings)
    reference = runs["transformers"].pop("answers")
    result = {"items": args.items, "max_tokens": args.max_tokens, "adapter": args.adapter, "layout": layout,
              "cpu_count": os.cpu_count(), **runs}
    for name in list(runs)[1:]:
        answers = runs[name].pop("answers")
        result[f"speedup_{name}"] = round(runs[name]["tokens_per_s"] / runs["transformers"]["tokens_per_s"], 2)
        result[f"identical_answers_{name}"] = f"{sum(a == b for a, b in zip(reference, answers))}/{args.items}"
    result["speedup"] = result["speedup_vllm"]
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
