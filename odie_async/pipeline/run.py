"""The whole InstructIE pipeline as one resumable, streaming run (``odie generate``).

The out folder holds the engine's checkpoint (``requests.jsonl``,
``errors.jsonl``), the exports (``train.jsonl``, ``train_cot.jsonl``), the
dropped records with their reasons (``dropped.jsonl``) and ``summary.json``.
Running the same command again after an interruption resends nothing that was
answered. The endpoint comes from the config: a URL, ``mock`` (an in-process
mock teacher), or nothing, which serves the embedded model for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import structlog

from ..endpoints.resolve import MOCK, Endpoint, resolve_endpoint
from ..engine.prometheus import MetricsServer
from ..engine.core import Engine, EngineSettings
from ..engine.lockfile import held
from ..engine.progress import spend_text, write_summary
from ..engine.settings import build_settings
from ..exceptions import OdieError
from ..runtime import StopSignals
from . import fingerprint, registry
from .config import PipelineConfig
from .context import Context
from .display import progress_for
from .export import SUMMARY, export, filter_report, plain_words, stage_report, write_card, yields
from .flow import Flow
from .live import METRICS, MetricsLog, funnel
from .mock_responder import PipelineResponder
from .verify import verify_report, verify_words
from .prompts import Prompts, load_seeds
from .scorers import make_scorer, scorer_kind
from .structured import resolve_structured

log = structlog.get_logger(__name__)
# Output tokens a record costs on the embedded model, measured: 6.2k-11.6k for --limit 20.
_OUTPUT_TOKENS_PER_RECORD = 600


@contextlib.asynccontextmanager
async def endpoint_scope(config: PipelineConfig, prompts: Prompts):
    """The run's endpoint: the configured URL, the loopback mock teacher, or the embedded model served for the run."""
    cfg = config.endpoint
    responder = PipelineResponder(prompts, cfg.mock_wrong_share, config.run.seed) if cfg.base_url == MOCK else None
    async with resolve_endpoint(cfg.base_url, cfg.model, config.api_key(), discover=True,
                                mock_responder=responder,
                                expected_output_tokens=config.run.records * _OUTPUT_TOKENS_PER_RECORD) as endpoint:
        yield endpoint


def engine_settings(config: PipelineConfig, endpoint: Endpoint) -> EngineSettings:
    """Engine settings from the config's engine section (its keys are ``EngineSettings`` fields)."""
    pool = [e.with_env_key(str(config.source)) for e in config.endpoints]
    return build_settings(endpoint.base_url, preset="generate", api_key=endpoint.api_key, endpoints=pool,
                          **config.engine.model_dump())


def _leaf(exc: BaseException) -> BaseException:
    """The most telling exception inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e) for e in exc.exceptions]
        return next((e for e in leaves if isinstance(e, OdieError)), leaves[0])
    return exc


async def _drive(flow: Flow, engine: Engine, show_progress: bool,
                 handle_signals: bool) -> tuple[bool, int | None, BaseException | None]:
    """Run the flow; ``(interrupted, the signal that stopped it, error)``."""
    task = asyncio.create_task(flow.run())

    def stop(_signum: int) -> None:
        engine.request_stop()
        task.cancel()

    signals = StopSignals(stop, lambda _signum: engine.cancel_in_flight())
    try:
        with signals if handle_signals else contextlib.nullcontext():
            async with progress_for(flow, engine.stats, show_progress):
                await task
        return False, None, None
    except asyncio.CancelledError:
        if engine.interrupted:
            return True, signals.received, None
        raise
    except BaseException as exc:  # noqa: BLE001 - reported in the summary, then raised
        return engine.interrupted, signals.received, (None if engine.interrupted else _leaf(exc))


async def generate(config: PipelineConfig, out: Path, show_progress: bool = True, handle_signals: bool = True,
                   update: bool = False) -> dict:
    """Run the pipeline into ``out``; return the summary (also written to ``out/summary.json``).

    ``out`` belongs to one run (``fingerprint.claim``): another teacher, config or prompts stop
    with a ``ConfigError`` before anything is sent, unless ``update``. The folder's lock is held for
    the whole run, so a second run never checks or rewrites the fingerprint of one in progress."""
    with held(out / fingerprint.LOCK, str(out)):
        return await _generate(config, out, show_progress, handle_signals, update)


async def _generate(config: PipelineConfig, out: Path, show_progress: bool, handle_signals: bool, update: bool) -> dict:
    started = time.monotonic()
    prompts_dir, seeds_path = config.path(config.prompts), config.path(config.seeds)
    prompts = Prompts(prompts_dir)
    seeds = load_seeds(seeds_path)
    api_key = config.api_key()
    new = await asyncio.to_thread(fingerprint.fingerprint, config, prompts_dir, seeds_path, api_key)
    fingerprint.claim(out, new, update)
    scorer = make_scorer(config)
    async with endpoint_scope(config, prompts) as endpoint:
        engine = Engine(engine_settings(config, endpoint), out / "requests.jsonl", out / "errors.jsonl", keep_bodies=True)
        async with engine:
            structured, why = await resolve_structured(engine, config, endpoint.model)
            log.info("structured outputs", enabled=structured, reason=why)
            ctx = Context(config, prompts, seeds, engine, endpoint.model, structured)
            flow = Flow(ctx, scorer)
            port = engine.settings.metrics_port
            with MetricsServer(engine, port) if port else contextlib.nullcontext():
                async with MetricsLog(engine, out / METRICS, extra=funnel(flow)):
                    interrupted, signum, error = await _drive(flow, engine, show_progress, handle_signals)
        await scorer.aclose()
    files = export(out, flow.outcomes, flow.variants, prompts.export_system)
    summary = _summary(config, endpoint, ctx, flow, engine, files, why, interrupted, error, time.monotonic() - started)
    summary["signal"] = signal.Signals(signum).name if signum else None
    summary["inputs"] = {"prompts": str(prompts_dir), "seeds": str(seeds_path)}
    summary["history"] = fingerprint.history(out)
    write_summary(summary, out / SUMMARY)  # the viewer reads it live: written whole
    write_card(out, summary, config.filter)
    if error is not None:
        raise error
    return summary


def _summary(config, endpoint, ctx: Context, flow: Flow, engine: Engine, files, why, interrupted, error, wall) -> dict:
    stages = registry.active(flow.variants, judge=scorer_kind(config) == "llm")
    modes = {stage: ctx.mode(stage) for stage in stages}
    summary = {
        "config": config.source,
        "endpoint": endpoint.base_url,
        "model": endpoint.model,
        "interrupted": interrupted,
        "error": str(error) if error else None,
        "records": {"planned": flow.n_fixed + flow.n_open, "fixed_header": flow.n_fixed, "open_header": flow.n_open},
        "structured": {"setting": config.endpoint.structured, "enabled": ctx.structured, "why": why,
                       "stages": {s: m for s, m in modes.items() if registry.STAGES[s].structured}},
        "scorer": scorer_kind(config),
        "stages": stage_report(ctx.counts, modes),
        "filter": filter_report(flow.outcomes, flow.variants),
        "yields": yields(ctx.counts, filter_report(flow.outcomes, flow.variants), flow.n_fixed + flow.n_open),
        "verify": verify_report(flow.outcomes, flow.variants, flow.n_fixed + flow.n_open, config.verify.rounds, ctx.counts),
        "files": files,
        "ledger": ledger(flow, ctx),
        "engine": engine.stats.as_dict() | {"shutdown": engine.shutdown_report if interrupted else None},
        "wall_time_s": round(wall, 2),
    }
    spend = engine.spend if engine.spend is not None else engine.stats.meter
    # projected over records (each with a fate in every variant), not requests: a record takes several
    done = len(flow.outcomes) // max(1, len(flow.variants))
    report = spend.report(done, flow.n_fixed + flow.n_open) if spend is not None else None
    if report is not None:
        summary["spend"] = report
    return summary


def ledger(flow: Flow, ctx: Context) -> dict:
    """Per variant: every planned record kept, dropped with a reason, never made (too few
    distinct instructions), or unaccounted (which only an interruption may leave)."""
    short = ctx.counts["instructions"].get("shortfall", 0)
    missing = range(flow.n_fixed - short, flow.n_fixed)
    never_made = short + sum(1 for i in missing if i < flow.n_open)
    out = {}
    for variant in flow.variants:
        mine = [o for o in flow.outcomes if o.variant == variant]
        kept = sum(o.kept for o in mine)
        planned = flow.n_fixed + flow.n_open
        out[variant] = {"planned": planned, "kept": kept, "dropped": len(mine) - kept, "never_made": never_made,
                        "unaccounted": planned - len(mine) - never_made}
    return out


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
    lines += verify_words(summary)
    lines.append(f"files: {', '.join(summary['files'].values())}")
    lines += plain_words(summary)  # last: what to do when the gate kept little
    if summary.get("spend"):
        lines.append(f"spend: {spend_text(summary['spend'])}")
    if summary["interrupted"]:
        lines.append("interrupted: run the same command again to resume")
    return "\n".join(lines)


def exit_code(summary: dict) -> int:
    """The command's exit status: 130/143 interrupted by SIGINT/SIGTERM, 4 when a planned record
    has no fate (kept, dropped or failed), 1 when some requests ended in ``errors.jsonl``, else 0
    (records the filter dropped are a normal outcome)."""
    if summary["interrupted"]:
        return 128 + signal.Signals[summary["signal"]].value if summary.get("signal") else 130
    lost = {v: c["unaccounted"] for v, c in summary["ledger"].items() if c["unaccounted"]}
    if lost:
        log.error("planned records without a fate (kept, dropped or failed)", unaccounted=lost)
        return 4
    return 1 if summary["engine"].get("failed") else 0
