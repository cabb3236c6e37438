"""``odie batch``: an OpenAI Batch API input file through any OpenAI-compatible endpoint.

A thin shell over ``odie_async.engine.batch.run_engine_batch`` (online), ``distributed.ray_batch``
(``--ray``) and ``odie_async.providers`` (``--mode provider-batch``): options in, exit code out
(0 all succeeded, 1 some records failed, 2 usage or input error, 3 stopped by the endpoint, 4 a
local error, 5 the spending cap, 130/143 interrupted; see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import structlog

from ..distributed import ray_batch
from ..engine.answer_cache import default_location
from ..engine.batch import BatchReport, run_engine_batch
from ..engine.batchfile import BatchReader
from ..engine.keys import clean_api_key
from ..engine.estimate import Estimate, format_estimate
from ..engine.progress import format_summary
from ..engine.spend import Prices, SpendCap
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..option_types import input_file
from ..options import (AUTO_START, AUTO_WORKERS, DEFAULTS, ENGINE_OPTIONS, add_spend_arguments, apply_config, number,
                       settings_from_args)
from ..providers import ProviderBatchRun, RunOptions, drive, make_provider
from ..providers.factory import provider_class
from ..providers.report import format_batch_summary, stopped
from ..providers.runner import new_run_id
from ..runtime import StopSignals, run_async

log = structlog.get_logger(__name__)
_D = DEFAULTS["batch"]  # the engine's one table of defaults


def add_arguments(parser) -> None:
    """Options of ``odie batch``."""
    parser.add_argument("input", help="OpenAI Batch API input file (.jsonl), or - for standard input")
    parser.add_argument("--output", "-o", required=True, help="results file (.jsonl); also the checkpoint")
    parser.add_argument("--errors", help="failed records (default: OUTPUT with .errors.jsonl)")
    parser.add_argument("--base-url", help="endpoint, e.g. https://api.openai.com/v1 (default: the embedded model)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key (default: OPENAI_API_KEY if set)")
    parser.add_argument("--model", help="override every body's model")
    parser.add_argument("--endpoint", action="append", metavar="URL",
                        help="an endpoint of a pool (repeatable; with --base-url or instead of it); each is a lane "
                             "with its own limits, breaker and concurrency")
    parser.add_argument("--config", metavar="FILE",
                        help="a YAML file with generate's endpoint/engine sections and an endpoints: list "
                             "(base_url, api_key_env, model, rpm, tpm, max_concurrency, weight, name); "
                             "options given here win")
    parser.add_argument("--concurrency", type=number(int, 1), default=None,
                        help=f"requests in flight at most (default: adaptive, starting at {AUTO_START} and growing "
                             f"to {AUTO_WORKERS} while the endpoint keeps up; a vLLM/SGLang server's own load "
                             "figures steer it)")
    parser.add_argument("--rpm", type=number(float, 0), default=_D["rpm"],
                        help="requests per minute (0: learned from the endpoint's headers or 429s)")
    parser.add_argument("--tpm", type=number(float, 0), default=_D["tpm"], help="tokens per minute (0: as --rpm)")
    parser.add_argument("--max-attempts", type=number(int, 1), default=_D["max_attempts"],
                        help="attempts per record, first included")
    parser.add_argument("--timeout", type=number(float, 0, False), default=_D["timeout_s"], help="seconds per request")
    parser.add_argument("--drain-timeout", type=number(float, 0), default=_D["drain_timeout_s"],
                        help="on the first SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cancelled")
    parser.add_argument("--max-retry-wait", type=number(float, 0, False), default=_D["max_retry_wait_s"],
                        help="longest Retry-After to wait; a longer one stops the run (exit 3) for a later rerun")
    parser.add_argument("--resend-changed", action="store_true",
                        help="send again the records whose request changed since they were answered")
    parser.add_argument("--skip-invalid", action="store_true", help="log and skip bad input lines instead of stopping")
    parser.add_argument("--retry-failed", action="store_true", help="send the records of the errors file again")
    parser.add_argument("--no-adaptive", action="store_true", help="keep concurrency fixed (no AIMD back-off)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    parser.add_argument("--max-outage", type=number(float, 0, False), default=_D["max_outage_s"],
                        help="with a pool: seconds every endpoint may be down before the run stops (exit 3)")
    parser.add_argument("--hedge-share", type=number(float, 0), default=_D["hedge_share"],
                        help="at the tail of a run, the share of requests that may be sent twice to beat a straggler")
    parser.add_argument("--stream", action="store_true",
                        help="send every request streamed and record its time to first token and inter-token "
                             "latency in its output line (response.timing); the body stored is the whole answer")
    add_spend_arguments(parser)
    parser.add_argument("--cache", nargs="?", const=str(default_location()), default=None, metavar="DIR",
                        help="take answers from a cache shared across runs and output files before sending, and "
                             f"store new ones there (DIR, or alone: {default_location()})")
    parser.add_argument("--metrics-port", type=number(int, 1, True, 65535), default=None, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT while the run lasts")
    parser.add_argument("--dry-run", action="store_true",
                        help="count requests, tokens, time at the limits and cost; send nothing")
    parser.set_defaults(option_defaults={name: parser.get_default(name) for name in ENGINE_OPTIONS})
    _add_provider_arguments(parser)  # --mode provider-batch and its options
    _add_ray_arguments(parser)


def _add_provider_arguments(parser) -> None:
    """The options of ``odie batch`` that choose and tune provider batches (defaults: ``RunOptions``')."""
    group = parser.add_argument_group("provider batch APIs (half price, results within 24 h)")
    group.add_argument("--mode", choices=("online", "provider-batch"), default="online",
                       help="online: request by request (default); provider-batch: the provider's Batch API")
    group.add_argument("--provider", choices=("openai", "anthropic"), default="openai",
                       help="whose batch API (--base-url defaults to that provider's)")
    seconds, at_least_0 = number(float, 0, inclusive=False), number(float, 0)
    group.add_argument("--deadline", type=seconds, metavar="SECONDS",
                       help="hybrid: when the deadline (from the run's start) is near, cancel the batches and "
                            "send what they have not done through the online path")
    group.add_argument("--online-reserve", type=at_least_0, default=RunOptions.online_reserve_s, metavar="SECONDS",
                       help="time kept for the online rest before the deadline (at most half of it)")
    group.add_argument("--online-base-url", help="endpoint of the online rest (default: --base-url)")
    group.add_argument("--poll-interval", type=seconds, default=RunOptions.poll_interval_s,
                       help="first seconds between polls (grows 1.5x)")
    group.add_argument("--poll-max", type=seconds, default=RunOptions.poll_max_s, help="longest seconds between polls")
    group.add_argument("--batch-max-requests", type=number(int, 1), help="requests per batch (default: the provider's limit)")
    group.add_argument("--batch-max-bytes", type=number(int, 1), help="bytes per batch file (default: the provider's limit)")
    group.add_argument("--reconcile-grace", type=at_least_0, default=RunOptions.reconcile_grace_s,
                       help="seconds to wait before looking for what an unanswered call created")
    group.add_argument("--cancel", action="store_true", help="cancel this output's batches, keep what they finished")


def _add_ray_arguments(parser) -> None:
    group = parser.add_argument_group("running on a Ray cluster (pip install 'odie-async[ray]')")
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run on Ray: 'auto', a cluster address, or none for a local Ray started for the run; "
                            "--concurrency, --rpm and --tpm are then the whole cluster's")
    group.add_argument("--workers", type=number(int, 1), default=None, help="shard workers (Ray actors; default: 2)")
    group.add_argument("--merge-only", action="store_true",
                       help="only fold the shards of an earlier --ray run into the output and name the records "
                            "of the input that still have no line (exit 1 if any)")


def _batch(args, base_url: str, model: str | None, api_key: str | None = None) -> BatchReport:
    settings = settings_from_args(args, base_url, api_key)
    return run_async(run_engine_batch(
        args.input, args.output, settings, args.errors, model=model, skip_invalid=args.skip_invalid,
        retry_failed=args.retry_failed, resend_changed=args.resend_changed, progress=not args.no_progress,
        log_json=args.log_json))


def run(args) -> int:
    """Entry point of ``odie batch``."""
    if args.input != "-":
        return _run(args)
    with stdin_file(args.output) as path:
        args.input = path
        return _run(args)


@contextlib.contextmanager
def stdin_file(output: str):
    """Standard input read once into a temporary file beside ``output``, removed afterwards.

    A file, not a stream: every line is checked before anything is sent, the progress line knows
    the total, and a rerun (the same input piped again) compares each answered request with it.
    """
    folder = Path(output).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=".odie-stdin-", dir=folder))
    try:
        path = spool / "stdin.jsonl"
        with path.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        yield str(path)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _run(args) -> int:
    configure_logging(json=args.log_json)
    input_file(args.input)  # missing, a folder, unreadable: each said apart (exit 2)
    from ..pipeline.config import PipelineConfig

    # every mode takes the config, the pool and the options alike
    apply_config(args, args.option_defaults, PipelineConfig.model_fields)
    if args.dry_run:
        return _dry_run(args)
    if args.merge_only:
        return _merge_only(args)
    if args.ray is not None:
        return _ray(args)
    if args.mode == "provider-batch":
        if args.stream:
            raise ConfigError("--stream times requests sent online; a provider's Batch API answers without streaming")
        return _provider_batch(args)
    if args.base_url:
        report = _batch(args, args.base_url, args.model)
    else:
        from ..endpoints.resolve import resolve_endpoint

        print("odie batch: no --base-url: starting the embedded model (SmolLM2-135M-Instruct) on 127.0.0.1 for "
              "this run; point at your own server with --base-url URL (or a pool with --endpoint)",
              file=sys.stderr, flush=True)
        with resolve_endpoint() as endpoint:
            report = _batch(args, endpoint.base_url, args.model or endpoint.model, endpoint.api_key)
    _print(format_summary(report.summary))
    if report.error is not None:
        _complain(args, str(report.error))
    if report.resumable:
        _complain(args, "stopped early; to resume, rerun: " + shlex.join(["odie", *sys.argv[1:]]))
    return report.exit_code


def _ray(args) -> int:
    """``--ray``: the run's shards on a Ray cluster, sent to the same endpoint or pool as a plain run."""
    if args.mode == "provider-batch":
        raise ConfigError("--ray sends requests online; a provider's Batch API runs without it")
    if not args.base_url:
        raise ConfigError("--ray needs an endpoint every worker reaches: --base-url URL, --endpoint URL "
                          "or a --config with endpoints")
    job = ray_batch.ClusterJob(args.input, args.output, settings_from_args(args, args.base_url), errors=args.errors,
                               address=args.ray, workers=args.workers, model=args.model,
                               retry_failed=args.retry_failed, resend_changed=args.resend_changed,
                               progress=not args.no_progress, log_json=args.log_json)
    summary = ray_batch.run_on_ray(job, skip_invalid=args.skip_invalid)
    _print(format_summary(summary))
    return summary["exit_code"]


def _merge_only(args) -> int:
    """``--merge-only``: fold an earlier run's shards in; name the records still without a line."""
    ledger = ray_batch.merge_only(args.input, args.output, args.errors, args.skip_invalid)
    merged = ledger["merged"] or {"output_records": 0, "error_records": 0}
    _print(f"folded {merged['output_records']:,} + {merged['error_records']:,} shard lines; "
           f"{ledger['output']:,} record(s) of {args.input} are in {ledger['output_file']}, "
           f"{ledger['errors']:,} in {ledger['errors_file']}")
    if ledger["unfinished"]:
        first = ", ".join(repr(cid) for cid in ledger["missing"])
        _complain(args, f"{ledger['unfinished']:,} record(s) of {args.input} have no line yet (first: {first}); "
                  "rerun without --merge-only to send them")
        return 1
    return 1 if ledger["errors"] else 0


def _dry_run(args) -> int:
    """What the run would send and cost; nothing is sent."""
    estimate = Estimate()
    for line in BatchReader(args.input, skip_invalid=args.skip_invalid):
        if args.model:
            line.body["model"] = args.model
        estimate.add(line.body)
    report = estimate.report(args.rpm, args.tpm)
    _print(format_estimate(report))
    return 0


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


# -- --mode provider-batch: the run itself is odie_async.providers ------------------------------------------

def _provider_options(args) -> RunOptions:
    """Run options from the command line."""
    if args.deadline is not None and args.deadline <= 0:
        raise ConfigError("--deadline must be positive")
    if args.retry_failed:
        raise ConfigError("--retry-failed sends the errors file's records online: run it with --mode online")
    return RunOptions(args.input, args.output, args.errors, args.model, args.skip_invalid,
                      args.batch_max_requests, args.batch_max_bytes, args.poll_interval, args.poll_max,
                      args.reconcile_grace, args.max_attempts, args.deadline, args.online_reserve, args.cancel,
                      getattr(args, "resend_changed", False))


def _provider_key(args, provider_name: str, default_url: bool) -> str | None:
    name = args.api_key_env or provider_class(provider_name).key_env
    key = clean_api_key(os.environ.get(name), name)
    if key is None and (default_url or args.api_key_env):
        raise ConfigError(f"environment variable {name} (the API key) is not set")
    return key


def _provider_batch(args) -> int:
    """Run ``odie batch --mode provider-batch``; the exit code (0, 1, 2, 3, 4, 5, 130, 143)."""
    key = None
    try:
        options = _provider_options(args)
        key = _provider_key(args, args.provider, not args.base_url)
        run_id = new_run_id()
        provider = make_provider(args.provider, args.base_url, key, run_id, max_attempts=args.max_attempts)
        online = None
        if options.deadline_s is not None:
            online = settings_from_args(args, args.online_base_url or provider.base_url, key)
        prices = Prices.load(args.prices, args.price, "batch")
        cap = SpendCap(args.max_cost, prices) if args.max_cost else SpendCap.meter(prices)
        run = ProviderBatchRun(options, provider, online, cap)
        summary_path = Path(args.output).with_suffix(".summary.json")
        summary = run_async(_with_signals(drive(run, run_id, summary_path, progress=not args.no_progress)))
    except _Interrupted as exc:
        print("odie batch: interrupted; the provider keeps the batches: rerun the same command to collect "
              "them, or add --cancel", file=sys.stderr)
        return exc.code
    except Exception as exc:  # every way a run ends is an OdieError for cli.exit_code, the key never shown
        raise stopped(exc, key) from None
    _print(format_batch_summary(summary))
    if run.cap_error() is not None:
        raise stopped(run.cap_error(), key)
    return 1 if summary["errors_file_lines"] or summary["unfinished"] else 0


class _Interrupted(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


async def _with_signals(coro):
    task = asyncio.ensure_future(coro)
    with StopSignals(lambda _sig: task.cancel()) as signals:
        try:
            return await task
        except asyncio.CancelledError:
            if signals.exit_code is not None:
                raise _Interrupted(signals.exit_code) from None
            raise
