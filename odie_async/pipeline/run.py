"""``odie generate``: the whole InstructIE pipeline as one resumable, streaming run.

::

    odie generate [--config configs/NAME.yaml] [--out DIR] [--limit N]

The out folder holds the engine's checkpoint (``requests.jsonl``,
``errors.jsonl``), the exports (``train.jsonl``, ``train_cot.jsonl``), the
dropped records with their reasons (``dropped.jsonl``) and ``summary.json``.
Running the same command again after an interruption resends nothing that was
answered. The endpoint comes from the config: a URL, ``mock`` (an in-process
mock teacher), or nothing, which serves the embedded model for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import structlog

from ..engine.core import Engine, EngineSettings
from ..exceptions import ConfigError, OdieError
from ..logs import configure_logging
from ..runtime import run_async
from .config import PipelineConfig, load_config
from .context import STRUCTURED_STAGES, Context
from .display import StageProgress
from .export import SUMMARY, export, filter_report, plain_words, stage_report, write_card, yields
from .flow import Flow
from .prompts import Prompts, load_seeds
from .scorers import make_scorer, scorer_kind
from .structured import resolve_structured

log = structlog.get_logger(__name__)

MOCK = "mock"
STAGES = ("instructions", "texts", "open_instructions", "paraphrase", "tables", "tables_cot", "judge")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie generate``."""
    parser.add_argument("--config", default=None, help="pipeline config (default: configs/generate-default.yaml)")
    parser.add_argument("--out", default="runs/generate", help="run folder: checkpoint, exports, summary")
    parser.add_argument("--limit", type=int, default=None, help="final records to attempt (overrides run.records)")
    parser.add_argument("--structured", choices=("auto", "on", "off"), default=None,
                        help="override endpoint.structured (JSON-schema outputs)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")


class _Endpoint:
    """Base URL, model and key of the endpoint a run talks to."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None) -> None:
        self.base_url, self.model, self.api_key = base_url, model, api_key


def discover_model(base_url: str, api_key: str | None) -> str | None:
    """The first model an endpoint lists at ``/models`` (None when it lists none)."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            models = json.load(response).get("data") or []
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"endpoint.model is not set and {base_url}/models did not answer ({exc})") from exc
    return models[0].get("id") if models else None


@contextlib.asynccontextmanager
async def endpoint_scope(config: PipelineConfig, prompts: Prompts):
    """The run's endpoint: the configured URL, an in-process mock, or the embedded model served for the run."""
    cfg = config.endpoint
    if cfg.base_url == MOCK:
        from ..endpoints.mock_server import MockServer
        from .mock_responder import PipelineResponder

        async with MockServer(responder=PipelineResponder(prompts)) as server:
            yield _Endpoint(server.base_url, cfg.model or "mock-model", None)
    elif cfg.base_url:
        key = config.api_key()
        model = cfg.model or await asyncio.to_thread(discover_model, cfg.base_url, key)
        yield _Endpoint(cfg.base_url, model, key)
    else:
        from ..endpoints.serve import embedded_endpoint

        async with embedded_endpoint() as served:
            yield _Endpoint(served.base_url, cfg.model or served.model, served.api_key)


def engine_settings(config: PipelineConfig, endpoint: _Endpoint) -> EngineSettings:
    """Engine settings from the config's engine section."""
    e = config.engine
    return EngineSettings(base_url=endpoint.base_url, api_key=endpoint.api_key, concurrency=e.concurrency,
                          rpm=e.rpm, tpm=e.tpm, max_attempts=e.max_attempts, timeout_s=e.timeout_s,
                          drain_timeout_s=e.drain_timeout_s)


def _leaf(exc: BaseException) -> BaseException:
    """The most telling exception inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e) for e in exc.exceptions]
        return next((e for e in leaves if isinstance(e, OdieError)), leaves[0])
    return exc


def _install_signals(engine: Engine, task: asyncio.Task) -> list[int]:
    """First SIGINT/SIGTERM: stop intake, drain in-flight requests; second: cancel them."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        if hits["n"] == 1:
            engine.request_stop()
            task.cancel()
        else:
            engine.cancel_in_flight()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    return installed


async def _drive(flow: Flow, engine: Engine, show_progress: bool, handle_signals: bool) -> tuple[bool, BaseException | None]:
    """Run the flow; ``(interrupted, error)``."""
    task = asyncio.create_task(flow.run())
    installed = _install_signals(engine, task) if handle_signals else []
    progress = StageProgress(flow, engine.stats) if show_progress else contextlib.nullcontext()
    try:
        async with progress:
            await task
        return False, None
    except asyncio.CancelledError:
        if engine.interrupted:
            return True, None
        raise
    except BaseException as exc:  # noqa: BLE001 - reported in the summary, then raised
        return engine.interrupted, (None if engine.interrupted else _leaf(exc))
    finally:
        for sig in installed:
            asyncio.get_running_loop().remove_signal_handler(sig)


async def generate(config: PipelineConfig, out: Path, show_progress: bool = True, handle_signals: bool = True) -> dict:
    """Run the pipeline into ``out``; return the summary (also written to ``out/summary.json``)."""
    started = time.monotonic()
    prompts = Prompts(config.path(config.prompts))
    seeds = load_seeds(config.path(config.seeds))
    out.mkdir(parents=True, exist_ok=True)
    scorer = make_scorer(config)
    async with endpoint_scope(config, prompts) as endpoint:
        engine = Engine(engine_settings(config, endpoint), out / "requests.jsonl", out / "errors.jsonl", keep_bodies=True)
        async with engine:
            structured, why = await resolve_structured(engine, config, endpoint.model)
            log.info("structured outputs", enabled=structured, reason=why)
            ctx = Context(config, prompts, seeds, engine, endpoint.model, structured)
            flow = Flow(ctx, scorer)
            interrupted, error = await _drive(flow, engine, show_progress, handle_signals)
        await scorer.aclose()
    files = export(out, flow.outcomes, flow.variants, prompts.export_system)
    summary = _summary(config, endpoint, ctx, flow, engine, files, why, interrupted, error, time.monotonic() - started)
    (out / SUMMARY).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    write_card(out, summary, config.filter)
    if error is not None:
        raise error
    return summary


def _summary(config, endpoint, ctx: Context, flow: Flow, engine: Engine, files, why, interrupted, error, wall) -> dict:
    stages = [s for s in STAGES if s != "judge" or scorer_kind(config) == "llm"]
    stages = [s for s in stages if s not in ("tables", "tables_cot") or ("cot" if s == "tables_cot" else "plain") in flow.variants]
    modes = {stage: ctx.mode(stage) for stage in stages}
    return {
        "config": config.source,
        "endpoint": endpoint.base_url,
        "model": endpoint.model,
        "interrupted": interrupted,
        "error": str(error) if error else None,
        "records": {"planned": flow.n_fixed + flow.n_open, "fixed_header": flow.n_fixed, "open_header": flow.n_open},
        "structured": {"setting": config.endpoint.structured, "enabled": ctx.structured, "why": why,
                       "stages": {s: m for s, m in modes.items() if s in STRUCTURED_STAGES}},
        "scorer": scorer_kind(config),
        "stages": stage_report(ctx.counts, modes),
        "filter": filter_report(flow.outcomes, flow.variants),
        "yields": yields(ctx.counts, filter_report(flow.outcomes, flow.variants), flow.n_fixed + flow.n_open),
        "files": files,
        "engine": engine.stats.as_dict() | {"shutdown": engine.shutdown_report if interrupted else None},
        "wall_time_s": round(wall, 2),
    }


def format_summary(summary: dict) -> str:
    """A few readable lines of the summary."""
    lines = [f"records planned: {summary['records']['planned']} "
             f"({summary['records']['fixed_header']} fixed header, {summary['records']['open_header']} open header)",
             f"structured outputs: {summary['structured']['why']}; scorer: {summary['scorer']}"]
    instructions = summary["stages"].get("instructions", {})
    lines.append(f"fixed instructions: kept {instructions.get('kept', 0)} of {summary['records']['fixed_header']} "
                 f"wanted after {instructions.get('calls', 0)} calls ({instructions.get('near_duplicates', 0)} near duplicates dropped)")
    for stage, c in summary["stages"].items():
        lines.append(f"  {stage:<18} sent {c.get('sent', 0):>4} cached {c.get('cached', 0):>4} failed {c.get('failed', 0):>3} "
                     f"parsed {c.get('parsed', 0):>4}/{c.get('parsed', 0) + c.get('unparsable', 0):<4} [{c['mode']}]")
    for variant, report in summary["filter"].items():
        lines.append(f"{variant}: kept {report['kept']}/{report['records']} {report['kept_by_category']} "
                     f"dropped {report['reasons']}")
    lines += plain_words(summary)
    lines.append(f"files: {', '.join(summary['files'].values())}")
    if summary["interrupted"]:
        lines.append("interrupted: run the same command again to resume")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``odie generate``."""
    configure_logging(json=args.log_json)
    config = load_config(args.config, args.limit)
    if args.structured:
        config.endpoint.structured = args.structured
    summary = run_async(generate(config, Path(args.out), show_progress=not args.no_progress))
    print(format_summary(summary), file=sys.stdout)
    return 130 if summary["interrupted"] else 0
