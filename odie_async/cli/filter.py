"""``odie filter``: the quality gate over any dataset of (instruction, text, table) records.

::

    odie filter IN.jsonl --kept KEPT.jsonl --dropped DROPPED.jsonl [--scorer offline|llm|unieval]
                [--config configs/filter-default.yaml] [--report DIR]

Every record of IN (a JSON array or JSONL) ends in exactly one of the two files:
kept with its ``scores``, or dropped with its ``reasons`` (all that failed) and
scores. Rerunning the same command resumes. The input is never written: a
``--kept`` or ``--dropped`` that is the input (through a link too) is refused, and
a second run on the same ``--kept`` is refused while the first runs, and so is a
rerun with another gate, scorer or judge (``KEPT.run.json``). Exit codes: 0
finished, 2 bad input or settings (nothing written), 3 the judge's endpoint
stopped the run, 5 the judge's spending cap (``--max-cost``) stopped it (a rerun
with a higher cap goes on), 130/143 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ..exceptions import ConfigError, InputError, RunAborted, ServeError, SpendCapReached, exit_code
from ..engine.progress import spend_text
from ..logs import configure_logging
from ..option_types import output_file, output_folder
from ..options import add_spend_arguments, spend_overrides
from ..quality import Gate, load_gate_config
from ..quality.records import validate
from ..quality.filtering import check_outputs, filter_file, judge_identity, tally
from ..runtime import run_async

SCORERS = ("offline", "llm", "unieval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie filter``."""
    parser.add_argument("input", help="records with instruction, text, table: a JSON array or JSONL")
    parser.add_argument("--kept", required=True, type=output_file, help="kept records (.jsonl); also the checkpoint")
    parser.add_argument("--dropped", required=True, type=output_file, help="dropped records with their reasons (.jsonl)")
    parser.add_argument("--config", default=None, help="filter config (default: configs/filter-default.yaml)")
    parser.add_argument("--scorer", choices=SCORERS, default="offline",
                        help="who scores faithfulness and consistency (default: offline, the sentence encoder)")
    parser.add_argument("--pipeline-config", default=None,
                        help="with --scorer llm or unieval: the generate config naming the endpoint or checkpoint")
    parser.add_argument("--base-url", default=None, help="with --scorer llm: the judge's endpoint (overrides the config's)")
    parser.add_argument("--api-key-env", default=None,
                        help="with --scorer llm: environment variable holding the judge's API key")
    parser.add_argument("--model", default=None, help="with --scorer llm: the judge's served model name")
    add_spend_arguments(parser.add_argument_group("with --scorer llm: the judge's spending cap"), "records", default=None)
    parser.add_argument("--report", default=None, type=output_folder, help="folder for report.png (reasons, score histograms) and summary.json")
    parser.add_argument("--label-field", default="expected",
                        help="field holding keep/drop labels, for precision and recall in the report")
    parser.add_argument("--batch-size", type=int, default=32, help="records judged together")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")


def format_summary(counts: dict, stats, gate: Gate) -> str:
    """What was kept and dropped, and why, in a few lines."""
    total = counts["kept"] + counts["dropped"]
    lines = [f"kept {counts['kept']:,} of {total:,}, dropped {counts['dropped']:,} "
             f"({stats.resumed:,} were already written, {stats.done:,} judged now)"]
    lines += [f"  {count:>6,}  {reason}" for reason, count in counts["reasons"].items()]
    if stats.spend_report() is not None:
        lines.append(f"the judge's spend: {spend_text(stats.spend_report())}")
    off = gate.cfg.switched_off()
    lines.append(f"checks off: {', '.join(off)}" if off else "all checks on")
    if stats.interrupted:
        lines.append(f"interrupted by {stats.interrupted}: run the same command again to resume")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``odie filter``."""
    configure_logging(json=args.log_json)
    try:
        gate = Gate(load_gate_config(args.config), external=args.scorer != "offline")
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if not Path(args.input).is_file():
            raise InputError(args.input, 0, "no such file")
        check_outputs(Path(args.input), Path(args.kept), Path(args.dropped))
        if args.max_cost and args.scorer != "llm":
            raise ConfigError(f"--max-cost caps what the LLM judge spends: --scorer {args.scorer} sends no paid request")
        validate(args.input)  # every line checked before a model is loaded or a request sent
        stats = run_async(_filter(args, gate))
    except SpendCapReached as exc:  # what was judged is written: a rerun with a higher cap goes on
        print(f"odie filter: {exc}", file=sys.stderr)
        return exit_code(exc)
    except (RunAborted, ServeError) as exc:  # the judge's endpoint stopped the run: rerun to resume
        print(f"odie filter: stopped by the endpoint: {exc}", file=sys.stderr)
        return 3
    counts = tally(args.kept, args.dropped)
    print(format_summary(counts, stats, gate))
    if args.report:
        from ..quality.calibration import format_figures
        from ..quality.drop_report import write_report

        paths = write_report(Path(args.report), args.kept, args.dropped, gate.cfg, args.label_field)
        figures = json.loads(paths[1].read_bytes()).get("checks")
        print("\n".join(format_figures(figures)) if figures else "no keep/drop labels: no precision or recall")
        print(f"report: {', '.join(str(p) for p in paths)}")
    return stats.exit_code or 0


async def _filter(args: argparse.Namespace, gate: Gate):
    endpoint = {"base_url": args.base_url, "api_key_env": args.api_key_env, "model": args.model}
    identity = await asyncio.to_thread(judge_identity, args.scorer, args.pipeline_config, endpoint)

    def judge(external):
        return filter_file(args.input, args.kept, args.dropped, gate, external, args.batch_size,
                           progress=not args.no_progress, judge=identity)

    if args.scorer == "offline":
        return await judge(None)
    from ..pipeline.scorers import external_scope

    async with external_scope(args.scorer, args.pipeline_config, Path(args.kept + ".judge.jsonl"),
                              endpoint, spend_overrides(args)) as external:
        return await judge(external)
