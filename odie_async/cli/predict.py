"""``odie predict``: tables for an InstructIE test set, the whole set at once through vLLM."""

from __future__ import annotations

import argparse

from ..endpoints.embedded import EMBEDDED, MODEL_HELP
from ..engine.keys import api_key_from_env
from ..engine.settings import DEFAULTS
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..model import chat_format
from ..model.adapter_files import read_adapter_json
from ..model.predict import ADAPTER_NAME, CPU_LORA_STEP_TOKENS, PredictSettings, load_items, predict
from ..option_types import count, input_file, number, output_file
from ..options import parse_lora


# a count with no upper bound but the integers' (item limits, token budgets)
count_any = number(int, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie predict``."""
    parser.add_argument("--data", required=True, help="test set: a JSON list (or JSONL) of InstructIE items")
    parser.add_argument("--model", "--base-model", dest="base_model", default=EMBEDDED, help=MODEL_HELP)
    parser.add_argument("--lora", type=parse_lora, default=None, metavar="NAME=PATH",
                        help="a peft LoRA adapter (odie train) served as NAME, as in `odie serve`; a bare PATH "
                             "is named after its folder")
    parser.add_argument("--output", required=True, type=output_file, help="predictions file to write (JSON list)")
    parser.add_argument("--limit", type=count_any, default=None, help="only the first N items")
    parser.add_argument("--cot", action="store_true",
                        help="explanation-then-table answers (the CoT system prompt; output keeps the table)")
    parser.add_argument("--backend", choices=("offline", "server"), default=None,
                        help="offline vllm.LLM (default) or the engine against vLLM's server "
                             "(implied by --base-url)")
    parser.add_argument("--base-url", default=None, help="a running `odie serve` (OpenAI base URL)")
    parser.add_argument("--served-model-name", dest="model_name", default=None,
                        help="the model name to request with --base-url (default: the --lora NAME)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the server's key")
    parser.add_argument("--chat-layout", choices=chat_format.LAYOUTS, default=None,
                        help="prompt layout (default: the adapter's, else the model's chat template)")
    parser.add_argument("--system-prompt", default=None, metavar="FILE",
                        help="system turn (default configs/prompts/system.txt, system_cot.txt with --cot)")
    parser.add_argument("--max-tokens", type=count_any, default=None, help="answer budget (default 512, 768 with --cot)")
    parser.add_argument("--temperature", type=number(float, 0), default=0.0, help="sampling temperature (default 0: greedy)")
    parser.add_argument("--max-model-len", type=count_any, default=None, help="vLLM context length limit")
    parser.add_argument("--merge-lora", action="store_true",
                        help="serve the adapter merged into the base weights (same model; on a CPU several "
                             "times faster than vLLM's LoRA kernels); the merged copy is cached")
    parser.add_argument("--step-tokens", type=number(int, 16), default=None,
                        help=f"offline: vLLM's max tokens per engine step (default vLLM's; {CPU_LORA_STEP_TOKENS} "
                             "with an adapter on a CPU)")
    parser.add_argument("--concurrency", type=count, default=DEFAULTS["predict"]["concurrency"],
                        help="requests in flight (server backend)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")


def settings_from_args(args: argparse.Namespace) -> PredictSettings:
    """PredictSettings from the command line, checked."""
    if args.limit is not None and args.limit < 1:  # parsed values are checked already; a built Namespace is not
        raise ConfigError("--limit must be at least 1")
    if args.step_tokens is not None and args.step_tokens < 16:
        raise ConfigError("--step-tokens must be at least 16")
    lora_name, lora = args.lora or (None, None)
    if lora:
        read_adapter_json(lora)  # present and readable, or a ConfigError naming it
    backend = args.backend or ("server" if args.base_url else "offline")
    if args.base_url and backend != "server":
        raise ConfigError("--base-url needs the server backend")
    if args.merge_lora and (args.base_url or not lora):
        raise ConfigError("--merge-lora needs --lora, and a server this command starts (no --base-url)")
    model_name = args.model_name or (lora_name if args.base_url else None)
    if args.base_url and not model_name:
        raise ConfigError("--base-url needs --served-model-name (the served name of the base model) or "
                          "--lora NAME=PATH (the adapter served under NAME)")
    return PredictSettings(
        base_model=args.base_model, lora=lora, lora_name=lora_name or ADAPTER_NAME, chat_layout=args.chat_layout,
        cot=args.cot,
        system_prompt=args.system_prompt, max_tokens=args.max_tokens, temperature=args.temperature,
        max_model_len=args.max_model_len, backend=backend, base_url=args.base_url, model_name=model_name,
        api_key=api_key_from_env(args.api_key_env, fallback=None), concurrency=args.concurrency,
        merge_lora=args.merge_lora, step_tokens=args.step_tokens,
    )


def run(args: argparse.Namespace) -> int:
    """Predict, print the predictions file's path."""
    configure_logging(json=args.log_json)
    input_file(args.data, "test set")
    settings = settings_from_args(args)
    predict(load_items(args.data, args.limit), settings, args.output)
    print(args.output)  # the path the user named, as named
    return 0
