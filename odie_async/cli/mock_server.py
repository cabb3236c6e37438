"""``odie mock-server``: the loopback mock endpoint as a command (see ``endpoints.mock_server``)."""

from __future__ import annotations

import os

from ..endpoints.mock_batches import add_arguments as add_batch_arguments
from ..endpoints.mock_batches import install as install_batches
from ..endpoints import mock_stream
from ..endpoints.mock_server import EXTRA_FAULTS, FAULTS, MockServer, MockSettings, serve_forever
from ..engine.client import clean_api_key
from ..runtime import run_async
from ..options import number


def add_arguments(parser) -> None:
    """Options of ``odie mock-server``."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=number(int, 0), default=8100,
                        help="port (0 picks a free one; `odie serve` takes 8000, as vLLM does)")
    parser.add_argument("--latency-ms", type=number(float, 0), default=0.0)
    parser.add_argument("--latency-jitter-ms", type=number(float, 0), default=0.0)
    parser.add_argument("--rpm", type=number(float, 0), default=0, help="enforced requests per minute (0: none)")
    parser.add_argument("--tpm", type=number(float, 0), default=0, help="enforced tokens per minute (0: none)")
    parser.add_argument("--no-limit-headers", action="store_true",
                        help="enforce --rpm/--tpm without sending x-ratelimit-* headers")
    parser.add_argument("--fault-rate", type=number(float, 0), default=0.0, help="share of requests given a fault")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated kinds drawn for --fault-rate, of {', '.join(FAULTS + EXTRA_FAULTS)}")
    parser.add_argument("--stall-s", type=number(float, 0), default=30.0, help="how long a stalled request hangs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key-env", default=None, help="require the key in this environment variable")
    parser.add_argument("--log-requests", metavar="FILE", help="append one line per completion request: "
                        "monotonic seconds, prompt digest, outcome (200, 429, fault_*); flushed every 0.1 s")
    mock_stream.add_arguments(parser)  # streaming (--stream, --ttft-ms, --itl-ms) and --max-concurrency
    add_batch_arguments(parser)  # provider batch APIs: processing time, failures, expiry, faults, log


def run(args) -> int:
    """Entry point of ``odie mock-server``."""
    key = clean_api_key(os.environ.get(args.api_key_env), args.api_key_env) if args.api_key_env else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print("odie mock-server: binding beyond loopback needs --api-key-env", flush=True)
        return 2
    if args.fault_rate > 1:
        print("odie mock-server: --fault-rate must be at most 1", flush=True)
        return 2
    faults = tuple(kind.strip() for kind in args.faults.split(",") if kind.strip())
    unknown = sorted(set(faults) - set(FAULTS + EXTRA_FAULTS))
    if unknown or not faults:
        print(f"odie mock-server: unknown fault kind(s) {', '.join(unknown) or '(none given)'}", flush=True)
        return 2
    settings = MockSettings(args.latency_ms, args.latency_jitter_ms, args.rpm, args.tpm,
                            args.fault_rate, args.seed, args.stall_s, key,
                            limit_headers=not args.no_limit_headers, faults=faults, **mock_stream.options(args))
    server = MockServer(args.host, args.port, settings, log_requests=args.log_requests)
    install_batches(server.state, args)
    run_async(serve_forever(server))
    return 0
