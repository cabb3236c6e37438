"""The Python API: what every command does, callable from code and notebooks.

Each function has an async form (``agenerate``, ``aevaluate``) to await inside an
event loop, and a sync form (``generate``, ``evaluate``) that works anywhere: in a
script it runs its own loop; inside a running loop (a notebook cell) it runs on a
worker thread. In a notebook (the sync form inside a running loop, or either form
in a Jupyter kernel) progress is a ``tqdm`` bar instead of a terminal line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import notebook
from .runtime import run_sync

PathLike = str | Path


def _pipeline_config(config, limit: int | None, structured: str | None, endpoint: dict | None = None):
    from .pipeline.config import PipelineConfig, from_dict, load_config, override_endpoint

    if isinstance(config, PipelineConfig):
        config = config.model_copy(deep=True)
        if limit is not None:
            config = config.with_records(limit)
    elif isinstance(config, dict):
        config = from_dict(config, "<dict>", limit=limit)
    else:
        config = load_config(config, limit)
    if structured:
        config.endpoint.structured = structured
    override_endpoint(config, endpoint)
    return config


async def agenerate(config: Any = None, out: PathLike = "runs/generate", *, limit: int | None = None,
                    structured: str | None = None, progress: bool = True, handle_signals: bool = False,
                    endpoint: dict | None = None) -> dict:
    """Run the InstructIE pipeline into ``out`` and return its summary (``odie generate``).

    ``config`` is a config file, a packaged preset's name (``"mock"``, ``"default"``,
    ``"openai"``), a mapping shaped like the YAML, a ``PipelineConfig``, or None for
    the default preset. ``limit`` sets ``run.records``; ``structured`` overrides
    ``endpoint.structured``; ``endpoint`` (keys ``base_url``, ``api_key_env``,
    ``model``) overrides the config's endpoint section. A rerun into the same ``out`` resumes.
    """
    from .pipeline.run import generate as run_pipeline

    settings = _pipeline_config(config, limit, structured, endpoint)
    return await run_pipeline(settings, Path(out), show_progress=progress, handle_signals=handle_signals)


def generate(config: Any = None, out: PathLike = "runs/generate", **options) -> dict:
    """``agenerate`` for code without an event loop, or inside one (a notebook cell)."""
    return run_sync(agenerate(config, out, **options))


def _prediction_sets(predictions) -> tuple[list[tuple[str, list[dict]]], bool]:
    """``([(name, records)], one)`` for a path, a list of paths, or a list of prediction records."""
    from .evaluation.evaluate import checked_records, load_predictions

    if isinstance(predictions, (str, Path)):
        return [(str(predictions), load_predictions(predictions))], True
    items = list(predictions)
    if items and all(isinstance(p, dict) for p in items):
        return [("records", checked_records(items))], True
    return [(str(p), load_predictions(p)) for p in items], False


async def aevaluate(predictions: PathLike | Sequence[PathLike] | Sequence[dict], *, compat: bool = False,
                    device: str = "cpu", batch_size: int | None = None, threads: int | None = None,
                    json_out: PathLike | None = None, plot_dir: PathLike | None = None,
                    progress: bool = True) -> dict | list[dict]:
    """Score predictions with the paper's two metrics (``odie eval``).

    ``predictions`` is a predictions file, a list of them, or a list of prediction
    records. Returns one report, or one per file for a list of files; writes them as
    JSON to ``json_out`` and one bar chart per metric into ``plot_dir`` when given.
    The encoder runs on a worker thread, so the event loop stays responsive.
    """
    from .evaluation.embedder import DEFAULT_BATCH_SIZE, DEFAULT_THREADS
    from .evaluation.evaluate import plot_reports, score_sets, write_scores

    sets, one = _prediction_sets(predictions)
    done = [0]
    bar = contextlib.nullcontext()
    if progress and notebook.wanted():
        bar = notebook.NotebookBar("eval", lambda: (done[0], len(sets)), unit="file")
    async with bar:
        reports = await asyncio.to_thread(
            score_sets, sets, compat, device, batch_size or DEFAULT_BATCH_SIZE,
            DEFAULT_THREADS if threads is None else threads, lambda n: done.__setitem__(0, n))
    if json_out:
        write_scores(reports, json_out)
    if plot_dir:
        plot_reports(reports, plot_dir)
    return reports[0] if one else reports


def evaluate(predictions: PathLike | Sequence[PathLike] | Sequence[dict], **options) -> dict | list[dict]:
    """``aevaluate`` for code without an event loop, or inside one (a notebook cell)."""
    return run_sync(aevaluate(predictions, **options))
