"""``odie generate``: the six-stage InstructIE data pipeline, resumable, into one run folder."""

from __future__ import annotations

import argparse
import sys

from ..api import generate
from ..logs import configure_logging
from ..engine.answer_cache import default_location
from ..option_types import number, output_folder
from ..options import add_spend_arguments, spend_overrides
from ..pipeline.run import exit_code, format_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie generate``."""
    parser.add_argument("--config", default=None,
                        help="pipeline config: a file, or a packaged preset's name (default, mock, openai; "
                             "default: configs/generate-default.yaml)")
    parser.add_argument("--output", "--out", dest="output", type=output_folder, default="runs/generate",
                        help="run folder: checkpoint, exports, summary")
    _hide_alias(parser, "--out")
    parser.add_argument("--base-url", default=None, help="endpoint (overrides the config's endpoint.base_url)")
    parser.add_argument("--api-key-env", default=None,
                        help="environment variable holding the API key (overrides endpoint.api_key_env)")
    parser.add_argument("--model", default=None, help="the served model's name (overrides endpoint.model)")
    parser.add_argument("--limit", type=int, default=None, help="final records to attempt (overrides run.records)")
    parser.add_argument("--update", action="store_true",
                        help="take a changed teacher, config or prompts in an existing run folder: re-send only the "
                             "requests whose content changed, keep the rest, record the change in its history")
    parser.add_argument("--structured", choices=("auto", "on", "off"), default=None,
                        help="override endpoint.structured (JSON-schema outputs)")
    add_spend_arguments(parser, "requests", default=None)
    parser.add_argument("--cache", nargs="?", const=str(default_location()), default=None, metavar="DIR",
                        help="take answers from the shared answer cache before sending (DIR, or alone: the per-user one)")
    parser.add_argument("--metrics-port", type=number(int, 1, True, 65535), default=None, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT while the run lasts")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")


def _hide_alias(parser: argparse.ArgumentParser, alias: str) -> None:
    """Keep ``alias`` working but out of ``--help``: one name per meaning is shown."""
    action = parser._option_string_actions[alias]
    action.option_strings = [name for name in action.option_strings if name != alias]


def run(args: argparse.Namespace) -> int:
    """Run the pipeline, print the summary; 0 done, 1 some requests failed, 2 bad config or a run folder
    that holds another run (nothing sent), 130/143 interrupted."""
    configure_logging(json=args.log_json)
    endpoint = {"base_url": args.base_url, "api_key_env": args.api_key_env, "model": args.model}
    summary = generate(args.config, args.output, limit=args.limit, structured=args.structured,
                       progress=not args.no_progress, handle_signals=True, endpoint=endpoint, update=args.update,
                       engine={"metrics_port": args.metrics_port, "cache": args.cache, **spend_overrides(args)})
    print(format_summary(summary), file=sys.stdout)
    return exit_code(summary)
