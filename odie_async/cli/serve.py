"""``odie serve``: vLLM's OpenAI-compatible server (and LoRA adapters) as a managed child process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..endpoints.embedded import EMBEDDED, MODEL_HELP
from ..endpoints.serve import API_KEY_ENV, ServeSettings, serve_until_stopped
from ..logs import configure_logging
from ..option_types import count, duration, number, output_file
from ..options import parse_lora


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie serve``."""
    parser.add_argument("--model", default=EMBEDDED, help=MODEL_HELP)
    parser.add_argument("--lora", action="append", type=parse_lora, default=[], metavar="NAME=PATH",
                        help="serve a peft LoRA adapter under NAME (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"address to bind (default 127.0.0.1; any other needs {API_KEY_ENV})")
    parser.add_argument("--port", type=number(int, 0, True, 65535), default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-model-len", type=number(int, 1), default=None,
                        help="context length limit (default on a CPU: 4,096 tokens or the model's, if shorter; "
                             "a longer request is refused with an error)")
    parser.add_argument("--served-model-name", default=None, help="name clients use for the base model")
    parser.add_argument("--max-num-seqs", type=count, default=None,
                        help="sequences served at once (default on a CPU: as many 512-token requests as the KV "
                             "cache holds, 16 to 64; vLLM's own on a GPU)")
    parser.add_argument("--kv-cache-gib", type=number(float, 0, False, 1 << 20), default=None,
                        help="KV-cache memory in GiB (default on a CPU: a quarter of the memory free at start, "
                             "1 to 4 GiB, never more than is free beside the model)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                        help="run without compiling (default: compiled; its graphs are cached, so only the first "
                             "start on a machine compiles)")
    parser.add_argument("--start-timeout", type=duration, default=900.0,
                        help="seconds to wait for vLLM to answer (default 900)")
    parser.add_argument("--log-file", type=output_file, default=None,
                        help="where vLLM's own output goes (default: under the cache folder)")


def _announce(server) -> None:
    print(server.base_url, flush=True)
    print(f"models: {', '.join([server.model_name, *server.settings.loras])}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Start vLLM, print its base URL, serve until SIGINT or SIGTERM (a requested stop exits 0)."""
    configure_logging(json=args.log_json)
    settings = ServeSettings(model=args.model, loras=dict(args.lora), host=args.host, port=args.port,
                             max_model_len=args.max_model_len, served_model_name=args.served_model_name,
                             start_timeout_s=args.start_timeout, log_path=Path(args.log_file) if args.log_file else None,
                             max_num_seqs=args.max_num_seqs, kv_cache_gib=args.kv_cache_gib,
                             enforce_eager=args.enforce_eager)
    serve_until_stopped(settings, announce=_announce)
    return 0
