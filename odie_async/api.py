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
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from . import notebook
from .exceptions import ConfigError, EvalError
from .option_types import count, duration, number
from .runtime import run_sync

PathLike = str | Path


def _pipeline_config(config, limit: int | None, structured: str | None, endpoint: dict | None = None,
                     engine: dict | None = None):
    from .pipeline.config import PipelineConfig, from_dict, load_config, override_endpoint, override_engine

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
    override_engine(config, engine)
    return config


async def agenerate(config: Any = None, out: PathLike = "runs/generate", *, limit: int | None = None,
                    structured: str | None = None, progress: bool = True, handle_signals: bool = False,
                    endpoint: dict | None = None, update: bool = False, engine: dict | None = None) -> dict:
    """Run the InstructIE pipeline into ``out`` and return its summary (``odie generate``).

    ``config`` is a config file, a packaged preset's name (``"mock"``, ``"default"``,
    ``"openai"``), a mapping shaped like the YAML, a ``PipelineConfig``, or None for
    the default preset. ``limit`` sets ``run.records``; ``structured`` overrides
    ``endpoint.structured``; ``endpoint`` (keys ``base_url``, ``api_key_env``,
    ``model``) overrides the config's endpoint section, and ``engine`` (its keys, e.g.
    ``metrics_port``, ``max_cost``, ``cache``) its engine section. A rerun into the same ``out`` resumes;
    ``out`` holding another run (teacher, config, prompts or seeds changed) raises ``ConfigError``
    naming the change, nothing sent, unless ``update=True`` (only changed requests are re-sent).
    """
    from .pipeline.run import generate as run_pipeline

    settings = _pipeline_config(config, limit, structured, endpoint, engine)
    return await run_pipeline(settings, Path(out), show_progress=progress, handle_signals=handle_signals,
                              update=update)


def generate(config: Any = None, out: PathLike = "runs/generate", **options) -> dict:
    """``agenerate`` for code without an event loop, or inside one (a notebook cell)."""
    return run_sync(agenerate(config, out, **options))


def _prediction_sets(predictions) -> tuple[list[tuple[str, list[dict]]], bool]:
    """``([(name, records)], one)`` for a path, a list of paths, or a list of prediction records."""
    from .evaluation.evaluate import checked_records, load_predictions

    if isinstance(predictions, (str, Path)):
        return [(str(predictions), load_predictions(predictions))], True
    if not isinstance(predictions, Iterable) or isinstance(predictions, (bytes, dict)):
        raise EvalError(f"predictions: expected a file, a list of files or a list of records, "
                        f"not {type(predictions).__name__}")
    items = list(predictions)
    if not items:
        raise EvalError("predictions: an empty list (no files, no records)")
    if any(isinstance(p, dict) for p in items):
        return [("records", checked_records(items))], True
    bad = next((p for p in items if not isinstance(p, (str, Path))), None)
    if bad is not None:
        raise EvalError(f"predictions: expected paths or records, got {type(bad).__name__} {bad!r:.40}")
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
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _option("batch_size", count, batch_size)
    threads = DEFAULT_THREADS if threads is None else _option("threads", number(int, 0, True, 4096), threads)
    done = [0]
    bar = contextlib.nullcontext()
    if progress and notebook.wanted():
        bar = notebook.NotebookBar("eval", lambda: (done[0], len(sets)), unit="file")
    async with bar:
        reports = await asyncio.to_thread(
            score_sets, sets, compat, device, batch_size, threads, lambda n: done.__setitem__(0, n))
    if json_out:
        write_scores(reports, json_out)
    if plot_dir:
        plot_reports(reports, plot_dir)
    return reports[0] if one else reports


def evaluate(predictions: PathLike | Sequence[PathLike] | Sequence[dict], **options) -> dict | list[dict]:
    """``aevaluate`` for code without an event loop, or inside one (a notebook cell)."""
    return run_sync(aevaluate(predictions, **options))


def _batch_records(requests, order: list[str]) -> Any:
    """Dicts in the Batch API's line shape, or bare chat bodies (numbered ``"0"``, ``"1"``...);
    ``order`` collects the custom_ids as they go by."""
    for i, record in enumerate(requests):
        if isinstance(record, dict) and "custom_id" not in record:
            record = {"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": record}
        order.append(record.get("custom_id") if isinstance(record, dict) else None)
        yield record  # the engine's reader refuses anything else, naming the item (InputError)


def _option(name: str, parse, value):
    """``value`` checked by an option type; its error names the keyword."""
    try:
        return parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _requests_source(requests, order: list[str]):
    """The engine's input: a file's path, or the records, checked to be an iterable holding some."""
    if isinstance(requests, (str, Path)):
        return requests
    if isinstance(requests, (bytes, dict)) or not isinstance(requests, Iterable):
        raise ConfigError(f"requests: expected a Batch API file or an iterable of dicts, not {type(requests).__name__}")
    if isinstance(requests, Sequence):  # in memory already: checked whole before anything is sent
        from .engine.batchfile import RecordReader

        if not requests:
            raise ConfigError("requests: an empty list (nothing to send)")
        records = list(_batch_records(requests, order))
        for _line in RecordReader(records):
            pass
        return records
    return _batch_records(requests, order)


async def arun_batch(requests: PathLike | Iterable[dict], output: PathLike | None = None, *,
                     base_url: str | None = None, endpoints: Sequence[str | dict] = (),
                     api_key_env: str | None = None, model: str | None = None, concurrency: int | None = None,
                     rpm: float | None = None, tpm: float | None = None, max_attempts: int | None = None,
                     timeout: float | None = None, errors: PathLike | None = None, progress: bool = True,
                     stream: bool = False, max_cost: float | None = None, price: tuple[float, float] | None = None,
                     prices_file: PathLike | None = None, cache: PathLike | None = None) -> dict | list[dict]:
    """Send requests through the engine (``odie batch``), exactly once, resumable.

    ``requests`` is a Batch API input file, or an iterable of its lines as dicts (or of bare
    chat bodies). With ``output`` the results go to that file (and its ``.errors.jsonl``) and the
    run's summary is returned; a rerun resumes. Without it, the result lines come back as a list
    in input order. ``endpoints`` (URLs, or dicts with ``base_url``, ``api_key_env``, ``model``,
    ``rpm``, ``tpm``, ``max_concurrency``, ``weight``, ``name``) makes a pool. ``stream=True`` sends
    every request streamed and puts its time to first token and inter-token latency in its
    result line (``response.timing``). ``max_cost`` (USD) stops taking records before the spend could
    pass it (``SpendCapReached``), counted at ``price`` (``(IN, OUT)`` USD per million tokens) or the
    price table (``prices_file``, else the packaged ``configs/prices.yaml``). ``cache`` (a folder) shares
    answers across runs and output files: a request asked before is answered from it, not sent.
    An option left at None takes ``odie batch``'s default (engine/settings.py ``DEFAULTS``).
    """
    from .engine.batch import run_engine_batch
    from .engine.keys import api_key_from_env
    from .engine.settings import PoolEndpoint, build_settings
    from .config_models import validate

    if concurrency is not None:
        concurrency = _option("concurrency", count, concurrency)
    given = {field: _option(name, parse, value) for name, field, parse, value in (
        ("rpm", "rpm", number(float, 0), rpm), ("tpm", "tpm", number(float, 0), tpm),
        ("max_attempts", "max_attempts", count, max_attempts), ("timeout", "timeout_s", duration, timeout))
        if value is not None}
    if max_cost is not None:
        given["max_cost"] = max_cost
    order: list[str] = []
    source = _requests_source(requests, order)
    key = api_key_from_env(api_key_env)
    if isinstance(endpoints, (str, bytes, dict)) or not isinstance(endpoints, Iterable):
        raise ConfigError(f"endpoints: expected a list of URLs or dicts, not {type(endpoints).__name__}")
    limits = {name: given[name] for name in ("rpm", "tpm") if name in given}
    pool = [PoolEndpoint.keyed(e, key, **limits) if isinstance(e, str)
            else validate(PoolEndpoint, e, f"endpoints[{i}]").with_env_key("endpoints")
            for i, e in enumerate(endpoints)]
    if not base_url and not pool:
        raise ConfigError("run_batch needs base_url= or endpoints=")
    if base_url is not None and not isinstance(base_url, str):
        raise ConfigError(f"base_url: expected a URL, not {type(base_url).__name__}")
    settings = build_settings(
        base_url or pool[0].base_url, api_key=key, endpoints=pool, concurrency=concurrency, **given,
        stream=stream, price=price,
        prices_file=str(prices_file) if prices_file else None, cache=str(cache) if cache else None)
    with tempfile.TemporaryDirectory(prefix="odie-batch-") if output is None else contextlib.nullcontext() as tmp:
        target = Path(tmp) / "results.jsonl" if output is None else Path(output)
        report = await run_engine_batch(source, target, settings, errors, model=model,
                                 progress=progress and not notebook.wanted(), handle_signals=False)
        if report.error is not None:
            raise report.error
        if output is not None:
            return report.summary
        if isinstance(requests, (str, Path)):  # a file: its own order
            order = [orjson.loads(raw)["custom_id"] for raw in Path(requests).read_bytes().splitlines() if raw.strip()]
        return _in_input_order(order, target, Path(report.summary["errors"]))


def _in_input_order(order: list[str], output: Path, errors: Path) -> list[dict]:
    lines = {}
    for path in (output, errors):
        if path.exists():
            for raw in path.read_bytes().splitlines():
                line = orjson.loads(raw)
                lines[line["custom_id"]] = line
    return [lines[custom_id] for custom_id in order if custom_id in lines]


def run_batch(requests: PathLike | Iterable[dict], output: PathLike | None = None, **options) -> dict | list[dict]:
    """``arun_batch`` for code without an event loop, or inside one (a notebook cell)."""
    return run_sync(arun_batch(requests, output, **options))
