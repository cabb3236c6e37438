"""The ``odie`` command line: one console script, one module per subcommand.

Each subcommand's module is imported only when that subcommand runs, so
``odie batch`` never pays for importing torch. A command module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..exceptions import ConfigError, OdieError, exit_code, signal_exit_code
from ..logs import configure_logging
from ..runtime import tune_gc

# ``exit_code`` (exception -> exit code) and ``signal_exit_code`` (signal -> 130/143) are the
# project's one map, defined beside the exceptions so library runners share it; commands import
# them from here.
__all__ = ["COMMANDS", "command_parser", "exit_code", "main", "signal_exit_code"]

COMMANDS: dict[str, tuple[str, str]] = {
    "batch": ("odie_async.cli.batch", "run an OpenAI Batch API input file through an endpoint"),
    "mock-server": ("odie_async.cli.mock_server", "serve a fast OpenAI-compatible mock on loopback"),
    "generate": ("odie_async.cli.generate", "run the six-stage InstructIE data pipeline"),
    "serve": ("odie_async.cli.serve", "serve a model (and LoRA adapters) with vLLM"),
    "train": ("odie_async.cli.train", "fine-tune a LoRA adapter on generated data"),
    "predict": ("odie_async.cli.predict", "predict tables for a test set, batched through vLLM"),
    "eval": ("odie_async.cli.evaluate", "score predictions with the paper's metrics"),
    "view": ("odie_async.cli.view", "watch runs live and read their records in the browser"),
    "config-schema": ("odie_async.cli.config_schema", "print the JSON Schema of a generate or train config file"),
    "filter": ("odie_async.cli.filter", "keep or drop (instruction, text, table) records by the quality gate"),
    "export": ("odie_async.cli.export", "write a run's training files as one datasets split (Parquet, disk)"),
    "bench": ("odie_async.cli.bench", "measure an endpoint's capacity and recommend settings"),
    "cache": ("odie_async.cli.cache", "show or prune the answer cache shared across runs (odie batch --cache)"),
}


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's line with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS or default == []:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".lstrip()
        return text


class CommandParser(argparse.ArgumentParser):
    """argparse with the project's edge: an option type's ``ConfigError`` is a usage error naming the
    option, and a usage error is one line on stderr and exit 2 (``--help`` shows the usage)."""

    def _get_value(self, action: argparse.Action, arg_string: str):
        try:
            return super()._get_value(action, arg_string)
        except ConfigError as exc:
            raise argparse.ArgumentError(action, str(exc)) from None

    def error(self, message: str):
        """Print ``odie NAME: error: MESSAGE`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``odie NAME`` with the options every command takes (--log-json, --no-progress)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = CommandParser(prog=f"odie {name}", description=description, formatter_class=DefaultsFormatter)
    module.add_arguments(parser)
    taken = parser._option_string_actions  # a command may declare them itself, with its own words
    if "--log-json" not in taken:
        parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr instead of readable text")
    if "--no-progress" not in taken:
        parser.add_argument("--no-progress", action="store_true",
                            help="no live progress line (accepted by every command; some have none)")
    return parser


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odie",
        description="Bulk instruction-data generation and on-demand IE, on an asyncio engine.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"odie {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``odie`` console script (``argv`` given: called as a function, by tests)."""
    process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    args = command_parser(name, COMMANDS[name][1]).parse_args(rest)
    configure_logging(json=args.log_json)  # commands may configure it again with their own stream
    if process:
        tune_gc()  # the process is the command's own: its collector settings are ours to choose
    try:
        return int(module.run(args) or 0)
    except OdieError as exc:
        _report(name, args, f"error: {exc}")
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        _report(name, args, "interrupted")
        return exit_code(exc)
    except BrokenPipeError:  # output piped into a reader that left (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a local failure nothing below named: one line, exit 4
        _report(name, args, f"error: {_os_reason(exc)}")
        return exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - an internal crash is still one line and exit 4
        if os.environ.get("ODIE_TRACEBACK"):
            raise
        _report(name, args, f"internal error: {type(exc).__name__}: {exc} (ODIE_TRACEBACK=1 shows where)")
        return exit_code(exc)


def _os_reason(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {exc.strerror}" if where and exc.strerror else str(exc)


def _report(name: str, args, message: str) -> None:
    if getattr(args, "log_json", False):
        import structlog

        structlog.get_logger("odie_async.cli").error(f"odie {name}", message=message)
    else:
        print(f"odie {name}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
