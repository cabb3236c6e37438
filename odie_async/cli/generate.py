"""``odie generate``: the six-stage InstructIE data pipeline, resumable, into one run folder."""

from __future__ import annotations

import argparse
import sys

from ..api import generate
from ..logs import configure_logging
from ..pipeline.run import exit_code, format_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie generate``."""
    parser.add_argument("--config", default=None,
                        help="pipeline config: a file, or a packaged preset's name (default, mock, openai; "
                             "default: configs/generate-default.yaml)")
    parser.add_argument("--out", default="runs/generate", help="run folder: checkpoint, exports, summary")
    parser.add_argument("--limit", type=int, default=None, help="final records to attempt (overrides run.records)")
    parser.add_argument("--structured", choices=("auto", "on", "off"), default=None,
                        help="override endpoint.structured (JSON-schema outputs)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")


def run(args: argparse.Namespace) -> int:
    """Run the pipeline, print the summary; 0 done, 1 some requests failed, 130/143 interrupted."""
    configure_logging(json=args.log_json)
    summary = generate(args.config, args.out, limit=args.limit, structured=args.structured,
                       progress=not args.no_progress, handle_signals=True)
    print(format_summary(summary), file=sys.stdout)
    return exit_code(summary)
