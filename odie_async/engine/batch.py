"""``odie batch``: an OpenAI Batch API input file through any OpenAI-compatible endpoint.

Rerunning the same command resumes: records already in the output or errors
file are skipped, a torn last line is repaired, and only the rest is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import structlog

from .batchfile import BatchReader, count_lines
from .core import Engine, EngineSettings
from .metrics_log import MetricsLog, metrics_path_for
from ..exceptions import ConfigError, InputError
from ..logs import configure_logging
from .progress import ProgressLine, format_summary, write_summary
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
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at most")
    parser.add_argument("--rpm", type=float, default=0, help="requests per minute (0: unlimited)")
    parser.add_argument("--tpm", type=float, default=0, help="tokens per minute (0: unlimited)")
    parser.add_argument("--max-attempts", type=int, default=5, help="attempts per record, first included")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to let in-flight requests finish on stop")
    parser.add_argument("--skip-invalid", action="store_true", help="log and skip bad input lines instead of stopping")
    parser.add_argument("--retry-failed", action="store_true", help="send the records of the errors file again")
    parser.add_argument("--no-adaptive", action="store_true", help="keep concurrency fixed (no AIMD back-off)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    from ..providers import add_arguments as add_provider_arguments

    add_provider_arguments(parser)  # --mode provider-batch and its options
    from ..distributed import ray_batch

    ray_batch.add_arguments(parser)


def api_key_from_env(name: str | None) -> str | None:
    """The key in environment variable ``name`` (``OPENAI_API_KEY`` when unnamed and set)."""
    if name is None:
        return os.environ.get("OPENAI_API_KEY") or None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} (from --api-key-env) is not set")
    return value


def settings_from_args(args, base_url: str, api_key: str | None = None) -> EngineSettings:
    """Engine settings from the command line."""
    if args.concurrency < 1 or args.max_attempts < 1:
        raise ConfigError("--concurrency and --max-attempts must be at least 1")
    return EngineSettings(
        base_url=base_url, api_key=api_key or api_key_from_env(args.api_key_env), concurrency=args.concurrency,
        rpm=args.rpm, tpm=args.tpm, max_attempts=args.max_attempts, timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout, adaptive=not args.no_adaptive,
    )


async def run_batch(args, base_url: str, model: str | None = None, api_key: str | None = None) -> dict:
    """Stream the input through the engine; return the summary."""
    settings = settings_from_args(args, base_url, api_key)
    engine = Engine(settings, args.output, args.errors, keep_bodies=False, retry_failed=args.retry_failed)
    engine.stats.total = count_lines(args.input)
    reader = BatchReader(args.input, skip_invalid=args.skip_invalid)
    progress = ProgressLine(engine.stats) if not args.no_progress else contextlib.nullcontext()
    error: Exception | None = None
    async with progress:
        try:
            async with MetricsLog(engine, metrics_path_for(args.output)), engine:
                _install_signals(engine)
                await _produce(engine, reader, model)
        except Exception as exc:  # reported after the summary; nothing written is lost
            error = exc
    engine.stats.invalid = reader.invalid
    summary = engine.stats.as_dict() | {"shutdown": engine.shutdown_report if engine.interrupted else None}
    summary["output"], summary["errors"] = str(engine.store.output), str(engine.store.errors)
    write_summary(summary, Path(args.output).with_suffix(".summary.json"))
    if error is not None:
        summary["error"] = error
    return summary


async def _produce(engine: Engine, reader: BatchReader, model: str | None) -> None:
    try:
        for line in reader:
            if engine.stopping:
                return
            if model:
                line.body["model"] = model
            await engine.submit(line.custom_id, line.body, line.url)
    except InputError:
        await engine.join()  # the lines before the bad one are valid: finish them first
        raise


def _install_signals(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        engine.request_stop() if hits["n"] == 1 else engine.cancel_in_flight()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def run(args) -> int:
    """Entry point of ``odie batch``."""
    from ..distributed import ray_batch

    if ray_batch.wanted(args):
        return ray_batch.run(args)
    configure_logging(json=args.log_json)
    if not Path(args.input).is_file():
        raise ConfigError(f"input file {args.input} does not exist")
    if args.mode == "provider-batch":
        from ..providers import run_provider_batch

        return run_provider_batch(args)
    if args.base_url:
        summary = run_async(run_batch(args, args.base_url, args.model))
    else:
        from ..endpoints.serve import embedded_endpoint

        with embedded_endpoint() as endpoint:
            summary = run_async(run_batch(args, endpoint.base_url, args.model or endpoint.model, endpoint.api_key))
    error = summary.pop("error", None)
    print(format_summary(summary))
    if error is not None:
        raise error
    return 1 if summary["failed"] else 0
