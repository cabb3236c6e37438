"""``odie cache stats|prune``: the shared answer cache that ``odie batch --cache`` reads and fills."""

from __future__ import annotations

import argparse
import json

from ..engine.answer_cache import AnswerCache, default_location
from ..exceptions import ConfigError
from ..option_types import duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie cache``."""
    parser.add_argument("action", choices=("stats", "prune"), help="show the cache's size, or delete old entries")
    parser.add_argument("--cache", default=None, metavar="DIR", help=f"the cache folder (default {default_location()})")
    parser.add_argument("--older-than", type=duration, default=None, metavar="DURATION",
                        help="prune: delete entries stored longer ago than this (e.g. 72h, 30m)")


def run(args: argparse.Namespace) -> int:
    """Print the cache's figures (as JSON), after pruning when asked."""
    cache = AnswerCache(args.cache)
    try:
        report = {}
        if args.action == "prune":
            if args.older_than is None:
                raise ConfigError("prune needs --older-than DURATION")
            report["deleted"] = cache.prune(args.older_than)
        print(json.dumps(report | cache.stats(), indent=2))
    finally:
        cache.close()
    return 0
