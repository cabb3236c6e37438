"""The viewer's JSON API: runs, live metrics, paged and filtered records, one record, comparisons.

Every handler looks its run up by number and its file up by name in the run's
own list; anything else is a 404. File work runs in threads, so a big file
being indexed never stalls the live charts.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import orjson
from aiohttp import web

from . import records
from .facets import FacetIndex
from .runs import Run

MAX_PAGE = 200
METRICS_CHUNK = 1 << 20
SEARCH_CACHE = 32
FILTERS = records.FACETS
RUNS = web.AppKey("runs", list)
SEARCHES = web.AppKey("searches", OrderedDict)


def add_routes(app: web.Application, runs: list[Run]) -> None:
    """Register the API's routes over ``runs``."""
    app[RUNS], app[SEARCHES] = runs, OrderedDict()
    app.router.add_get("/api/runs", list_runs)
    app.router.add_get("/api/runs/{run}/metrics", metrics)
    app.router.add_get("/api/runs/{run}/summary", summary)
    app.router.add_get("/api/runs/{run}/bench", bench)
    app.router.add_get("/api/runs/{run}/files/{file}/facets", file_facets)
    app.router.add_get("/api/runs/{run}/files/{file}/rows", rows)
    app.router.add_get("/api/runs/{run}/files/{file}/record/{n}", record)
    app.router.add_get("/api/compare", compare)


def _json(data, status: int = 200) -> web.Response:
    """A JSON answer (orjson: big lists stay cheap)."""
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def _run(request: web.Request) -> Run:
    runs = request.app[RUNS]
    raw = request.match_info["run"]
    if not raw.isdigit() or int(raw) >= len(runs):
        raise web.HTTPNotFound(text="no such run")
    return runs[int(raw)]


def _file(request: web.Request) -> tuple[Run, str, FacetIndex]:
    run, name = _run(request), request.match_info["file"]
    if name not in run.data:
        raise web.HTTPNotFound(text="no such file in this run")
    return run, name, run.facets(name)


def _int(request: web.Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer")
    value = int(raw)
    return max(low, value if high is None else min(value, high))


async def list_runs(request: web.Request) -> web.Response:
    """Every run served, by number."""
    runs = request.app[RUNS]
    return _json([{"id": i, **run.describe()} for i, run in enumerate(runs)])


async def metrics(request: web.Request) -> web.Response:
    """Metrics lines from byte ``from`` on (complete lines only) and the offset to ask for next."""
    run = _run(request)
    start = _int(request, "from", 0)
    if run.metrics is None:
        return _json({"lines": [], "next": 0})
    lines, following = await asyncio.to_thread(_read_metrics, run.metrics, start)
    return _json({"lines": lines, "next": following})


def _read_metrics(path, start: int) -> tuple[list, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(METRICS_CHUNK)
    except FileNotFoundError:
        return [], 0
    complete = data[:data.rfind(b"\n") + 1]
    out = []
    for raw in complete.splitlines():
        try:
            out.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue  # a torn line of a killed run: the next sample supersedes it
    return out, start + len(complete)


async def summary(request: web.Request) -> web.Response:
    """The run's summary JSON (null when it has none yet)."""
    run = _run(request)
    return _json(await asyncio.to_thread(run.read_summary))


async def bench(request: web.Request) -> web.Response:
    """An ``odie bench`` run's results and recommended settings; ``since=VERSION`` answers ``unchanged`` cheaply."""
    run = _run(request)
    if run.bench is None:
        raise web.HTTPNotFound(text="this run is not an odie bench result")
    return _json(await asyncio.to_thread(run.read_bench, request.query.get("since")))


async def file_facets(request: web.Request) -> web.Response:
    """The values each filter can take in one file, with their counts."""
    _, _, index = _file(request)
    await asyncio.to_thread(index.refresh)
    return _json({"lines": index.lines, "facets": index.counts()})


async def rows(request: web.Request) -> web.Response:
    """One page of a file's records, optionally searched (``q``) and filtered (``status``, ``reason`` ...)."""
    run, name, index = _file(request)
    offset = _int(request, "offset", 0)
    limit = _int(request, "limit", 50, 1, MAX_PAGE)
    query = request.query.get("q", "").strip()
    wanted = {k: request.query[k] for k in FILTERS if request.query.get(k)}
    count = await asyncio.to_thread(index.index.refresh)
    if not wanted and not query:
        numbers, total = range(offset, min(offset + limit, count)), count
        raws = await asyncio.to_thread(index.index.lines, offset, offset + limit)
    else:
        chosen = await asyncio.to_thread(_select, request.app, run, name, index, wanted, query)
        numbers, total = chosen[offset:offset + limit], len(chosen)
        raws = await asyncio.to_thread(index.index.pick, numbers)
    out = [records.row(n, _parse(raw), index.default_status) for n, raw in zip(numbers, raws)]
    return _json({"total": total, "lines": count, "offset": offset, "rows": out})


def _parse(raw: bytes) -> dict:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"id": "(not JSON)", "instruction": raw[:records.PREVIEW].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"instruction": str(value)[:records.PREVIEW]}


def _select(app, run: Run, name: str, index: FacetIndex, wanted: dict, query: str) -> list[int]:
    if wanted:
        index.refresh()
    chosen = index.select(wanted) if wanted else None
    if query:
        hits = _search(app, run, name, index, query)
        chosen = list(hits) if chosen is None else sorted(set(chosen).intersection(hits))
    return chosen


def _search(app, run: Run, name: str, index: FacetIndex, query: str):
    cache: OrderedDict = app[SEARCHES]
    key = (id(run), name, query, index.index.count)
    if key not in cache:
        needle = orjson.dumps(query)[1:-1]  # as the text appears inside a JSON string
        cache[key] = index.index.search(needle)
        while len(cache) > SEARCH_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


async def record(request: web.Request) -> web.Response:
    """One record opened: its parts and the record itself."""
    _, _, index = _file(request)
    raw_n = request.match_info["n"]
    if not raw_n.isdigit():
        raise web.HTTPNotFound(text="no such line")
    count = await asyncio.to_thread(index.index.refresh)
    if int(raw_n) >= count:
        raise web.HTTPNotFound(text="no such line")
    raw = await asyncio.to_thread(index.index.line, int(raw_n))
    return _json(records.detail(int(raw_n), _parse(raw), index.default_status))


async def compare(request: web.Request) -> web.Response:
    """Per run: eval reports, the generate filter's kept share and reasons, per-file status counts, bench results."""
    runs = request.app[RUNS]
    return _json(await asyncio.to_thread(lambda: [_compare_one(i, run) for i, run in enumerate(runs)]))


def _compare_one(number: int, run: Run) -> dict:
    out = {"id": number, "name": run.name, "kind": run.kind, "evals": run.read_evals(), "filter": None,
           "bench": run.read_bench()}
    summary = run.read_summary() or {}
    if isinstance(summary.get("filter"), dict):
        out["filter"] = summary["filter"]
    elif run.kind == "folder" and run.data:
        out["filter"] = {"all": _tally(run)}
    return out


def _tally(run: Run) -> dict:
    """Kept and dropped-by-reason counts over a folder's files (``odie filter`` output)."""
    kept, reasons, total = 0, {}, 0
    for name in run.data:
        index = run.facets(name)
        index.refresh()
        counts = index.counts()
        kept += counts.get("status", {}).get("kept", 0)
        total += index.lines
        for reason, n in counts.get("reason", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {"records": total, "kept": kept, "yield": round(kept / total, 4) if total else None,
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
