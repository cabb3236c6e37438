"""``odie batch``: an OpenAI Batch API input file through any OpenAI-compatible endpoint.

A thin shell over ``odie_async.engine.batch.run_batch``: options in, exit code
out (0 all succeeded, 1 some records failed, 2 usage or input error, 3 stopped
by the endpoint, 4 a local error, 130/143 interrupted; see the README).
"""

from __future__ import annotations

import os
import shlex
import sys

import structlog

from ..distributed import ray_batch
from ..engine.batch import BatchReport, run_batch
from ..engine.progress import format_summary
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..options import number, settings_from_args
from ..providers import add_arguments as add_provider_arguments
from ..providers import run_provider_batch
from ..runtime import run_async

log = structlog.get_logger(__name__)


def add_arguments(parser) -> None:
    """Options of ``odie batch``."""
    parser.add_argument("input", help="OpenAI Batch API input file (.jsonl)")
    parser.add_argument("--output", "-o", required=True, help="results file (.jsonl); also the checkpoint")
    parser.add_argument("--errors", help="failed records (default: OUTPUT with .errors.jsonl)")
    parser.add_argument("--base-url", help="endpoint, e.g. https://api.openai.com/v1 (default: the embedded model)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key (default: OPENAI_API_KEY if set)")
    parser.add_argument("--model", help="override every body's model")
    parser.add_argument("--concurrency", type=number(int, 1), default=64, help="requests in flight at most")
    parser.add_argument("--rpm", type=number(float, 0), default=0,
                        help="requests per minute (0: learned from the endpoint's headers or 429s)")
    parser.add_argument("--tpm", type=number(float, 0), default=0, help="tokens per minute (0: as --rpm)")
    parser.add_argument("--max-attempts", type=number(int, 1), default=5, help="attempts per record, first included")
    parser.add_argument("--timeout", type=number(float, 0, False), default=120.0, help="seconds per request")
    parser.add_argument("--drain-timeout", type=number(float, 0), default=30.0,
                        help="on the first SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cancelled")
    parser.add_argument("--max-retry-wait", type=number(float, 0, False), default=60.0,
                        help="longest Retry-After to wait; a longer one stops the run (exit 3) for a later rerun")
    parser.add_argument("--resend-changed", action="store_true",
                        help="send again the records whose request changed since they were answered")
    parser.add_argument("--skip-invalid", action="store_true", help="log and skip bad input lines instead of stopping")
    parser.add_argument("--retry-failed", action="store_true", help="send the records of the errors file again")
    parser.add_argument("--no-adaptive", action="store_true", help="keep concurrency fixed (no AIMD back-off)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_provider_arguments(parser)  # --mode provider-batch and its options
    ray_batch.add_arguments(parser)  # --ray, --workers, --merge-only


def _batch(args, base_url: str, model: str | None, api_key: str | None = None) -> BatchReport:
    settings = settings_from_args(args, base_url, api_key)
    return run_async(run_batch(
        args.input, args.output, settings, args.errors, model=model, skip_invalid=args.skip_invalid,
        retry_failed=args.retry_failed, resend_changed=args.resend_changed, progress=not args.no_progress,
        log_json=args.log_json))


def run(args) -> int:
    """Entry point of ``odie batch``."""
    if ray_batch.wanted(args):
        return ray_batch.run(args)
    configure_logging(json=args.log_json)
    if not os.path.isfile(args.input):
        raise ConfigError(f"input file {args.input} does not exist")
    if args.mode == "provider-batch":
        return run_provider_batch(args)
    if args.base_url:
        report = _batch(args, args.base_url, args.model)
    else:
        from ..endpoints.serve import embedded_endpoint

        with embedded_endpoint() as endpoint:
            report = _batch(args, endpoint.base_url, args.model or endpoint.model, endpoint.api_key)
    _print(format_summary(report.summary))
    if report.error is not None:
        _complain(args, str(report.error))
    if report.resumable:
        _complain(args, "stopped early; to resume, rerun: " + shlex.join(["odie", *sys.argv[1:]]))
    return report.exit_code


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # piped into `head`: the reader left; the exit code still tells
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _complain(args, message: str) -> None:
    if args.log_json:
        log.error("odie batch", message=message)
    else:
        print(f"odie batch: {message}", file=sys.stderr, flush=True)
