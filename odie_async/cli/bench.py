"""``odie bench``: measure an endpoint's capacity with your own workload, then run at it.

Exit codes: 0 every request answered; 1 finished, some requests failed (counted
in ``results.json``); 2 a usage or input error, before anything was sent; 3 the
endpoint did not answer a first request or refused the key; 4 a local failure: a result
file could not be written (disk full: the levels written before stay) or an internal
error; 5 the spending cap (``--max-cost``) stopped the load (the points measured so
far are written). Errors end through ``odie_async.cli``'s one exit-code map; 130/143
interrupted (the points measured so far are written).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from ..engine.keys import api_key_from_env
from ..engine.settings import DEFAULTS
from ..exceptions import exit_code
from ..exceptions import SpendCapReached
from ..option_types import count, duration, number, number_list, output_folder, rate, slo
from ..options import add_spend_arguments
from ..logs import configure_logging
from ..runtime import StopSignals, run_async

DEFAULT_SYNTHETIC = "prompt_tokens=256,output_tokens=128"


def add_arguments(parser) -> None:
    """Options of ``odie bench``."""
    parser.add_argument("--base-url", help="endpoint, e.g. http://127.0.0.1:8000/v1 (default: the embedded model)")
    parser.add_argument("--endpoint", action="append", metavar="URL",
                        help="an endpoint of a pool (repeatable; with --base-url or instead of it): each is benched "
                             "in turn into OUTPUT/NAME/, and OUTPUT/recommended.yaml lists every one at its own knee")
    parser.add_argument("--api-path", default="/v1/chat/completions", choices=("/v1/chat/completions", "/v1/completions"),
                        help="API path of synthetic requests (an input file's lines name their own)")
    parser.add_argument("--model", help="model for every request (default: the bodies', else the endpoint's first)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="OpenAI Batch API input file (.jsonl) whose requests to send")
    source.add_argument("--synthetic", help=f"synthetic prompts, e.g. {DEFAULT_SYNTHETIC} (the default)[,count=1000]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="find the knee: grow concurrency until throughput stops rising or the SLO fails (the default)")
    mode.add_argument("--synchronous", action="store_true", help="one request at a time")
    mode.add_argument("--concurrency", type=_list_of(count), help="comma-separated concurrencies, e.g. 1,8,32")
    mode.add_argument("--rate", type=_list_of(rate), help="comma-separated request rates per second, e.g. 5,10,20")
    parser.add_argument("--rate-type", choices=("constant", "poisson"), default="constant", help="arrivals of --rate")
    parser.add_argument("--slo", type=slo, help="limits a usable load meets, e.g. ttft_p95=2s,latency_p95=20s")
    parser.add_argument("--duration", type=duration, default="30s", help="time per load level (30s, 2m, 500ms)")
    parser.add_argument("--timeout", type=duration, default=DEFAULTS["batch"]["timeout_s"],
                        help="per request (seconds, or 30s, 2m)")
    parser.add_argument("--max-in-flight", type=count, default=1024, help="--rate: requests outstanding at most")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="seed of Poisson arrivals")
    parser.add_argument("--output", type=output_folder, default="bench-results",
                        help="folder for results.json, bench.png, recommended.yaml")
    add_spend_arguments(parser, "requests", after="the levels measured so far are written")
    parser.add_argument("--metrics-port", type=number(int, 1, True, 65535), default=None, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT while the bench runs")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")


def _list_of(parse):
    def parse_list(text: str) -> list:
        return number_list(text, parse)
    parse_list.__name__ = "list"
    return parse_list


def settings_from_args(args, base_url: str):
    """Everything ``run_bench`` needs, checked before anything is sent."""
    from ..bench.measure import BenchSettings
    from ..bench.sweep import plan
    from ..bench.workload import from_file, parse_synthetic, synthetic
    from ..engine.spend import Prices, SpendCap

    concurrency = [1] if args.synchronous else args.concurrency
    model = args.model
    if args.input:
        workload = from_file(args.input, model)
    else:
        workload = synthetic(parse_synthetic(args.synthetic or DEFAULT_SYNTHETIC), model, args.api_path)
    return BenchSettings(
        base_url=base_url, workload=workload, output=Path(args.output),
        api_key=api_key_from_env(args.api_key_env), api_key_env=args.api_key_env, model=model,
        loads=plan(concurrency, args.rate, args.rate_type), slo=args.slo or {}, duration_s=args.duration,
        timeout_s=args.timeout, max_in_flight=args.max_in_flight, seed=args.seed, say=_say,
        cap=SpendCap(args.max_cost, Prices.load(args.prices, args.price)) if args.max_cost else None,
        metrics_port=args.metrics_port,
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _bench(benches: list, output: Path, stopped: list[StopSignals]) -> list[dict]:
    from ..bench.measure import run_bench, run_pool_bench

    task = asyncio.current_task()
    with StopSignals(lambda _sig: task.cancel(), lambda _sig: task.cancel()) as stop:
        stopped.append(stop)
        if len(benches) > 1:
            return await run_pool_bench(benches, output)
        return [await run_bench(benches[0])]


def _run(benches: list, output: Path) -> int:
    """Bench one endpoint into ``output``, or a pool's endpoints each into a folder of ``output``."""
    stopped: list[StopSignals] = []
    try:
        results = run_async(_bench(benches, output, stopped))
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        print(f"odie bench: interrupted; the points measured so far are in {output}", file=sys.stderr)
        return (stopped and stopped[0].exit_code) or exit_code(KeyboardInterrupt() if isinstance(exc, asyncio.CancelledError) else exc)
    except SpendCapReached as exc:
        print(f"odie bench: {exc}: {output}", file=sys.stderr)
        return exit_code(exc)
    for one in results:
        _print_knee(one)
    if len(results) > 1:
        print(f"pool settings: {output / 'recommended.yaml'}")
    return 1 if any(p["failed"] for one in results for p in one["points"]) else 0


def _print_knee(results: dict) -> None:
    knee = results["recommended"]
    print(f"results: {results['files']['results']}")
    if knee:
        print(f"knee: {knee['point']['label']}, {knee['point']['requests_per_s']:,.1f} req/s "
              f"(best {knee['max_requests_per_s']:,.1f}); settings in {results['files']['recommended']}")


def pool_settings(args, urls: list[str]) -> list:
    """One ``BenchSettings`` per endpoint, each with its own workload (models may differ) and folder."""
    from ..bench.measure import endpoint_names

    names = endpoint_names(urls)
    benches = []
    for url, name in zip(urls, names):
        one = settings_from_args(args, url)
        one.name, one.output = name, Path(args.output) / name
        one.cap = benches[0].cap if benches else one.cap  # one cap over the whole pool
        benches.append(one)
    return benches


def run(args) -> int:
    """Entry point of ``odie bench``."""
    configure_logging(json=args.log_json)
    urls = ([args.base_url] if args.base_url else []) + list(args.endpoint or ())
    output = Path(args.output)
    if len(urls) > 1:
        return _run(pool_settings(args, urls), output)
    settings = settings_from_args(args, urls[0] if urls else "")
    if urls:
        return _run([settings], output)
    from ..endpoints.resolve import resolve_endpoint

    with resolve_endpoint() as endpoint:
        settings.base_url, settings.api_key, settings.embedded = endpoint.base_url, endpoint.api_key, True
        settings.model = settings.model or endpoint.model
        if not settings.workload.models:
            settings.workload.with_model(endpoint.model)
        return _run([settings], output)
