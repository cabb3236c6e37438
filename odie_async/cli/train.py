"""``odie train``: LoRA fine-tuning of a causal LM on chat-format data (``odie generate``'s exports)."""

from __future__ import annotations

import argparse

from ..endpoints.embedded import EMBEDDED, MODEL_HELP
from ..logs import configure_logging
from ..model import chat_format
from ..model.train import TrainJob, train
from ..model.train_config import DEFAULT_CONFIG, load_config
from ..option_types import input_file, number, output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie train``."""
    parser.add_argument("--data", required=True, help="chat-format training JSONL (odie generate's train.jsonl)")
    parser.add_argument("--model", "--base-model", dest="model", default=EMBEDDED, help=MODEL_HELP)
    parser.add_argument("--output", required=True, type=output_folder, help="folder for the adapter, checkpoints and summary")
    parser.add_argument("--config", default=None,
                        help=f"training config YAML (default configs/{DEFAULT_CONFIG}; configs/train-paper.yaml "
                             "holds the paper's settings)")
    parser.add_argument("--max-steps", type=number(int, 1), default=None, help="stop after N optimizer steps (overrides)")
    parser.add_argument("--chat-layout", choices=chat_format.LAYOUTS, default=None,
                        help="render with the model's chat template or the paper's layout (overrides)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Train, print the adapter's folder."""
    configure_logging(json=args.log_json)
    input_file(args.data, "training data")
    config = load_config(args.config)
    if args.chat_layout:
        config.chat_layout = args.chat_layout
    summary = train(TrainJob(str(args.data), args.model, str(args.output), config, args.max_steps, args.resume))
    print(summary["adapter"])
    return 0
