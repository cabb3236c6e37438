"""``odie view RUN [RUN ...]``: watch runs live and read their records in the browser.

A RUN is an ``odie generate``, ``odie filter`` or ``odie bench`` folder, an
``odie batch`` output (``OUT.jsonl``), an ``odie eval --json`` file or an
``odie bench`` ``results.json``. The page is served on
127.0.0.1 unless ``--host`` says otherwise; beyond loopback the printed URL
carries a random token that every request needs.
"""

from __future__ import annotations

import argparse
import asyncio

from ..exceptions import ConfigError, exit_code
from ..logs import configure_logging
from ..option_types import number
from ..runtime import run_async


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie view``."""
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folder (generate, filter, bench), batch output OUT.jsonl, eval JSON, "
                             "or a bench's results.json")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=number(int, 0, True, 65535), default=8765, help="port (0: any free port)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``odie view``: serve until Ctrl-C."""
    configure_logging(json=args.log_json)
    from ..viewer.runs import load_runs
    from ..viewer.server import check_address, serve_forever

    try:
        check_address(args.host, args.port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    runs = load_runs(args.runs)  # a ConfigError is one line and exit 2, through cli.main

    def ready(url: str) -> None:
        names = ", ".join(f"{r.name} ({r.kind})" for r in runs)
        print(f"odie view: serving {names}\n  open {url}", flush=True)

    try:
        run_async(serve_forever(runs, args.host, args.port, ready))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return exit_code(KeyboardInterrupt())
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
