"""``odie predict``: tables for an InstructIE test set, the whole set at once through vLLM."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..endpoints.embedded import EMBEDDED
from ..endpoints.resolve import api_key_from_env
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..model import chat_format
from ..model.predict import CPU_LORA_STEP_TOKENS, PredictSettings, load_items, predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie predict``."""
    parser.add_argument("--data", required=True, help="test set: a JSON list (or JSONL) of InstructIE items")
    parser.add_argument("--base-model", default=EMBEDDED,
                        help="a Hugging Face model folder, or 'embedded' (SmolLM2-135M-Instruct; default)")
    parser.add_argument("--lora", default=None, metavar="ADAPTER_DIR", help="a peft LoRA adapter (odie train)")
    parser.add_argument("--output", required=True, help="predictions file to write (JSON list)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--cot", action="store_true",
                        help="explanation-then-table answers (the CoT system prompt; output keeps the table)")
    parser.add_argument("--backend", choices=("offline", "server"), default=None,
                        help="offline vllm.LLM (default) or the engine against vLLM's server "
                             "(implied by --base-url)")
    parser.add_argument("--base-url", default=None, help="a running `odie serve` (OpenAI base URL)")
    parser.add_argument("--model", dest="model_name", default=None,
                        help="served model name to request with --base-url (the adapter's name for LoRA)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the server's key")
    parser.add_argument("--chat-layout", choices=chat_format.LAYOUTS, default=None,
                        help="prompt layout (default: the adapter's, else the model's chat template)")
    parser.add_argument("--system-prompt", default=None, metavar="FILE",
                        help="system turn (default configs/prompts/system.txt, system_cot.txt with --cot)")
    parser.add_argument("--max-tokens", type=int, default=None, help="answer budget (default 512, 768 with --cot)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM context length limit")
    parser.add_argument("--merge-lora", action="store_true",
                        help="serve the adapter merged into the base weights (same model; on a CPU several "
                             "times faster than vLLM's LoRA kernels); the merged copy is cached")
    parser.add_argument("--step-tokens", type=int, default=None,
                        help=f"offline: vLLM's max tokens per engine step (default vLLM's; {CPU_LORA_STEP_TOKENS} "
                             "with an adapter on a CPU)")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight (server backend)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")


def settings_from_args(args: argparse.Namespace) -> PredictSettings:
    """PredictSettings from the command line, checked."""
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if args.step_tokens is not None and args.step_tokens < 16:
        raise ConfigError("--step-tokens must be at least 16")
    if args.lora and not Path(args.lora, "adapter_config.json").is_file():
        raise ConfigError(f"--lora {args.lora}: no adapter_config.json there")
    backend = args.backend or ("server" if args.base_url else "offline")
    if args.base_url and backend != "server":
        raise ConfigError("--base-url needs the server backend")
    if args.merge_lora and (args.base_url or not args.lora):
        raise ConfigError("--merge-lora needs --lora, and a server this command starts (no --base-url)")
    if args.base_url and not args.model_name:
        raise ConfigError("--base-url needs --model: the served name of the base model, or of the adapter")
    return PredictSettings(
        base_model=args.base_model, lora=args.lora, chat_layout=args.chat_layout, cot=args.cot,
        system_prompt=args.system_prompt, max_tokens=args.max_tokens, temperature=args.temperature,
        max_model_len=args.max_model_len, backend=backend, base_url=args.base_url, model_name=args.model_name,
        api_key=api_key_from_env(args.api_key_env), concurrency=args.concurrency,
        merge_lora=args.merge_lora, step_tokens=args.step_tokens,
    )


def run(args: argparse.Namespace) -> int:
    """Predict, print the predictions file's path."""
    configure_logging(json=args.log_json)
    settings = settings_from_args(args)
    predict(load_items(args.data, args.limit), settings, args.output)
    print(args.output)
    return 0
