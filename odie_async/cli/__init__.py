"""The ``odie`` command line: one console script, one module per subcommand.

Each subcommand's module is imported only when that subcommand runs, so
``odie batch`` never pays for importing torch. A command module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..exceptions import OdieError

COMMANDS: dict[str, tuple[str, str]] = {
    "batch": ("odie_async.engine.batch", "run an OpenAI Batch API input file through an endpoint"),
    "mock-server": ("odie_async.endpoints.mock_server", "serve a fast OpenAI-compatible mock on loopback"),
    "generate": ("odie_async.pipeline.run", "run the six-stage InstructIE data pipeline"),
    "serve": ("odie_async.endpoints.serve", "serve a model (and LoRA adapters) with vLLM"),
    "train": ("odie_async.model.train", "fine-tune a LoRA adapter on generated data"),
    "predict": ("odie_async.model.predict", "predict tables for a test set, batched through vLLM"),
    "eval": ("odie_async.evaluation.evaluate", "score predictions with the paper's metrics"),
    "bench": ("odie_async.cli.bench", "measure an endpoint's capacity and recommend settings"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odie",
        description="Bulk instruction-data generation and on-demand IE, on an asyncio engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``odie`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"odie {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except OdieError as exc:
        print(f"odie {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"odie {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
