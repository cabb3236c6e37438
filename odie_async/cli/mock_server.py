"""``odie mock-server``: the loopback mock endpoint as a command (see ``endpoints.mock_server``)."""

from __future__ import annotations

import orjson

from ..endpoints.mock_batches import BATCH_FAULTS, BatchMockSettings
from ..endpoints.mock_batches import install as install_batches
from ..endpoints.mock_server import EXTRA_FAULTS, FAULTS, MockServer, MockSettings, serve_forever
from ..engine.keys import api_key_from_env
from ..exceptions import ConfigError
from ..option_types import number, output_file
from ..runtime import run_async


def add_arguments(parser) -> None:
    """Options of ``odie mock-server``."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=number(int, 0, True, 65535), default=8100,
                        help="port (0 picks a free one; `odie serve` takes 8000, as vLLM does)")
    parser.add_argument("--latency-ms", type=number(float, 0), default=0.0)
    parser.add_argument("--latency-jitter-ms", type=number(float, 0), default=0.0)
    parser.add_argument("--rpm", type=number(float, 0), default=0, help="enforced requests per minute (0: none)")
    parser.add_argument("--tpm", type=number(float, 0), default=0, help="enforced tokens per minute (0: none)")
    parser.add_argument("--no-limit-headers", action="store_true",
                        help="enforce --rpm/--tpm without sending x-ratelimit-* headers")
    parser.add_argument("--fault-rate", type=number(float, 0, True, 1), default=0.0, help="share of requests given a fault")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated kinds drawn for --fault-rate, of {', '.join(FAULTS + EXTRA_FAULTS)}")
    parser.add_argument("--stall-s", type=number(float, 0), default=30.0, help="how long a stalled request hangs")
    parser.add_argument("--seed", type=number(int, 0), default=0)
    parser.add_argument("--api-key-env", default=None, help="require the key in this environment variable")
    parser.add_argument("--log-requests", metavar="FILE", type=output_file, help="append one line per completion request: "
                        "monotonic seconds, prompt digest, outcome (200, 429, fault_*); flushed every 0.1 s")
    parser.add_argument("--stream", action="store_true", help='answer "stream": true requests with server-sent events')
    parser.add_argument("--ttft-ms", type=number(float, 0), default=0.0,
                        help="streamed: time to the first token (default: --latency-ms)")
    parser.add_argument("--itl-ms", type=number(float, 0), default=0.0, help="streamed: time between tokens")
    parser.add_argument("--max-concurrency", type=number(int, 0), default=0,
                        help="serve this many requests at a time and queue the rest (0: no limit)")
    _add_batch_arguments(parser)  # provider batch APIs: processing time, failures, expiry, faults, log


def _add_batch_arguments(parser) -> None:
    """The mock server's options for the batch APIs (defaults: ``BatchMockSettings``')."""
    given = BatchMockSettings
    parser.add_argument("--batch-processing-s", type=number(float, 0), default=given.processing_s,
                        help="seconds a batch takes to complete")
    parser.add_argument("--batch-fail-rate", type=number(float, 0, True, 1), default=given.fail_rate,
                        help="share of batch requests answered with an error")
    parser.add_argument("--batch-expire-after-s", type=number(float, 0), default=given.expire_after_s,
                        help="batches expire at this age with the share done so far (0: never)")
    parser.add_argument("--batch-drop-after-create", type=number(int, 0), default=given.drop_after_create, metavar="N",
                        help="the first N batch creations drop the connection instead of answering")
    parser.add_argument("--batch-log", metavar="FILE", help="append a JSON line per file or batch created (with its custom_ids)")
    parser.add_argument("--batch-faults", default="", metavar="LIST",
                        help=f"comma-separated wrong answers to give: {', '.join(BATCH_FAULTS)}")


def _batch_settings(args) -> BatchMockSettings:
    return BatchMockSettings(args.batch_processing_s, args.batch_fail_rate, args.batch_expire_after_s,
                             args.batch_drop_after_create, args.batch_log,
                             tuple(f for f in args.batch_faults.split(",") if f))


def run(args) -> int:
    """Entry point of ``odie mock-server``."""
    key = api_key_from_env(args.api_key_env, fallback=None)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        raise ConfigError("binding beyond loopback needs --api-key-env")
    faults = tuple(kind.strip() for kind in args.faults.split(",") if kind.strip())
    unknown = sorted(set(faults) - set(FAULTS + EXTRA_FAULTS))
    if unknown or not faults:
        raise ConfigError(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}")
    settings = MockSettings(args.latency_ms, args.latency_jitter_ms, args.rpm, args.tpm,
                            args.fault_rate, args.seed, args.stall_s, key,
                            limit_headers=not args.no_limit_headers, faults=faults, stream=args.stream,
                            ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, max_concurrency=args.max_concurrency)
    server = MockServer(args.host, args.port, settings, log_requests=args.log_requests)
    install_batches(server.state, _batch_settings(args))
    counts = run_async(serve_forever(server, lambda url: print(f"mock server listening on {url}", flush=True)))
    print(orjson.dumps(counts).decode(), flush=True)
    return 0
