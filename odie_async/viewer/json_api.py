"""The viewer's JSON API: runs, live metrics, paged and filtered records, one record, comparisons.

Every handler looks its run up by number and its file up by name in the run's
own list; anything else is a 404, and a parameter that is not a bounded ASCII
number a 400. File work runs in threads, so a big file being indexed never
stalls the live charts, under a budget of bytes in flight (``Budget``): however
many requests arrive, the answers being built and sent hold at most ``BUDGET``
bytes. A record above ``records.LIMIT`` is served in raw pages.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict

import orjson
from aiohttp import web

from . import record_view as records
from .access import FileChanged, OutsideScope
from .facets import FacetIndex
from .index import CHUNK
from .runs import MAX_JSON, Run, shown_name

NUMBER = re.compile(r"[0-9]{1,15}")
MAX_NUMBER = 10**15 - 1
BUDGET = 128 << 20
ROW_CAP = 1 << 18  # the most of one line a page of rows reads

MAX_PAGE = 200
METRICS_CHUNK = 1 << 20
SEARCH_CACHE = 32
FILTERS = records.FACETS
RUNS = web.AppKey("runs", list)
SEARCHES = web.AppKey("searches", OrderedDict)


class Budget:
    """A semaphore counted in bytes: what the answers being built and sent may hold at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._changed = asyncio.Condition()

    async def hold(self, request: web.Request, weight: int, work, *args) -> web.Response:
        """Run ``work(*args)`` in a thread and send its JSON answer, holding ``weight`` bytes meanwhile."""
        weight = max(1, min(weight, self.total))
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= weight)
            self.free -= weight
        try:
            data = await _thread(work, *args)
            response = data if isinstance(data, web.Response) else _json(data)
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            async with self._changed:
                self.free += weight
                self._changed.notify_all()


BUDGETS = web.AppKey("budget", Budget)


def add_routes(app: web.Application, runs: list[Run]) -> None:
    """Register the API's routes over ``runs``."""
    app[RUNS], app[SEARCHES], app[BUDGETS] = runs, OrderedDict(), Budget(BUDGET)
    app.router.add_get("/api/runs", list_runs)
    app.router.add_get("/api/runs/{run}/metrics", metrics)
    app.router.add_get("/api/runs/{run}/summary", summary)
    app.router.add_get("/api/runs/{run}/bench", bench)
    app.router.add_get("/api/runs/{run}/files/{file}/facets", file_facets)
    app.router.add_get("/api/runs/{run}/files/{file}/rows", rows)
    app.router.add_get("/api/runs/{run}/files/{file}/record/{n}", record)
    app.router.add_get("/api/runs/{run}/files/{file}/record/{n}/raw", record_raw)
    app.router.add_get("/api/compare", compare)


def _json(data, status: int = 200) -> web.Response:
    """A JSON answer (orjson: big lists stay cheap; a name orjson refuses is escaped, never a 500)."""
    try:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        body = json.dumps(data, ensure_ascii=True, default=str).encode()
    return web.Response(body=body, status=status, content_type="application/json")


def _number(raw: str, name: str) -> int:
    """``raw`` as a bounded non-negative integer of ASCII digits; 400 otherwise."""
    if not NUMBER.fullmatch(raw):
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer below {MAX_NUMBER + 1}")
    return int(raw)


def _run(request: web.Request) -> Run:
    runs = request.app[RUNS]
    number = _number(request.match_info["run"], "run")
    if number >= len(runs):
        raise web.HTTPNotFound(text="no such run")
    return runs[number]


def _file(request: web.Request) -> tuple[Run, str, FacetIndex]:
    run, name = _run(request), request.match_info["file"]
    if name not in run.data:
        raise web.HTTPNotFound(text="no such file in this run")
    return run, name, run.facets(name)


def _int(request: web.Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = _number(raw, name)
    return max(low, value if high is None else min(value, high))


async def _thread(work, *args):
    """``work(*args)`` in a thread; a file changed under it is a 409, one out of scope a 404."""
    try:
        return await asyncio.to_thread(work, *args)
    except FileChanged as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except (OutsideScope, FileNotFoundError):
        raise web.HTTPNotFound(text="no such file in this run") from None


async def _hold(request: web.Request, weight: int, work, *args) -> web.Response:
    return await request.app[BUDGETS].hold(request, weight, work, *args)


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
    return await _hold(request, 8 * METRICS_CHUNK, _read_metrics, run, start)


def _read_metrics(run: Run, start: int) -> dict:
    try:
        with run.scope.open(run.metrics) as handle:
            handle.seek(start)
            data = handle.read(METRICS_CHUNK)
    except FileNotFoundError:
        return {"lines": [], "next": 0}
    complete = data[:data.rfind(b"\n") + 1]
    out = []
    for raw in complete.splitlines():
        try:
            out.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue  # a torn line of a killed run: the next sample supersedes it
    return {"lines": out, "next": start + len(complete)}


async def summary(request: web.Request) -> web.Response:
    """The run's summary JSON (null when it has none yet)."""
    run = _run(request)
    return await _hold(request, 3 * MAX_JSON, run.read_summary)


async def bench(request: web.Request) -> web.Response:
    """An ``odie bench`` run's results and recommended settings; ``since=VERSION`` answers ``unchanged`` cheaply."""
    run = _run(request)
    if run.bench is None:
        raise web.HTTPNotFound(text="this run is not an odie bench result")
    return await _hold(request, 3 * MAX_JSON, run.read_bench, request.query.get("since"))


async def file_facets(request: web.Request) -> web.Response:
    """The values each filter can take in one file, with their counts."""
    _, _, index = _file(request)
    return await _hold(request, 4 * CHUNK, _facets, index)


def _facets(index: FacetIndex) -> dict:
    index.refresh()
    return {"lines": index.lines, "facets": index.counts()}


async def rows(request: web.Request) -> web.Response:
    """One page of a file's records, optionally searched (``q``) and filtered (``status``, ``reason`` ...)."""
    run, name, index = _file(request)
    offset = _int(request, "offset", 0)
    limit = _int(request, "limit", 50, 1, MAX_PAGE)
    query = request.query.get("q", "").strip()
    wanted = {k: request.query[k] for k in FILTERS if request.query.get(k)}
    count = await _thread(index.index.refresh)
    if wanted or query:
        weight = 2 * CHUNK + 3 * ROW_CAP * limit
    else:
        weight = 4 * sum(min(index.index.size_of(n), ROW_CAP) for n in range(offset, min(offset + limit, count)))
    return await _hold(request, weight, _rows, request.app, run, name, index, (offset, limit, wanted, query))


def _rows(app, run: Run, name: str, index: FacetIndex, asked: tuple) -> dict:
    offset, limit, wanted, query = asked
    count = index.index.refresh()
    if not wanted and not query:
        numbers, total = range(offset, min(offset + limit, count)), count
        raws = index.index.lines(offset, offset + limit, cap=ROW_CAP)
    else:
        chosen = _select(app, run, name, index, wanted, query)
        numbers, total = chosen[offset:offset + limit], len(chosen)
        raws = index.index.pick(numbers, cap=ROW_CAP)
    out = [_row(index, n, raw) for n, raw in zip(numbers, raws)]
    return {"total": total, "lines": count, "offset": offset, "rows": out}


def _row(index: FacetIndex, number: int, raw: bytes) -> dict:
    size = index.index.size_of(number)
    if size > ROW_CAP:
        return {"n": number, "id": f"(large record: {size:,} bytes)", "status": "large",
                "preview": raw[:records.PREVIEW].decode("utf-8", "replace")}
    return records.row(number, _parse(raw), index.default_status)


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


def _line_number(request: web.Request, index: FacetIndex) -> int:
    number = _number(request.match_info["n"], "line")
    if number >= index.index.refresh():
        raise web.HTTPNotFound(text="no such line")
    return number


async def record(request: web.Request) -> web.Response:
    """One record opened: its parts and the record itself; a record above the limit as its number of raw pages."""
    _, _, index = _file(request)
    number = await _thread(_line_number, request, index)
    size = index.index.size_of(number)
    if size > records.LIMIT:
        return _json({"n": number, "too_large": True, "bytes": size, "pages": -(-size // records.RAW_PAGE),
                      "page_bytes": records.RAW_PAGE})
    return await _hold(request, 6 * size, _detail, index, number)


def _detail(index: FacetIndex, number: int) -> dict:
    return records.detail(number, _parse(index.index.line(number)), index.default_status)


async def record_raw(request: web.Request) -> web.Response:
    """Page ``page`` of one record's raw bytes (``records.RAW_PAGE`` each), as text."""
    _, _, index = _file(request)
    number = await _thread(_line_number, request, index)
    page = _int(request, "page", 0)
    start, end = index.index.span(number)
    if page * records.RAW_PAGE >= max(1, end - start):
        raise web.HTTPNotFound(text="no such page")
    first = start + page * records.RAW_PAGE
    return await _hold(request, 2 * records.RAW_PAGE, _raw_page, index, first, min(end, first + records.RAW_PAGE))


def _raw_page(index: FacetIndex, first: int, last: int) -> web.Response:
    with index.index.open() as handle:
        data = index.index.read_span(handle, first, last)
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def compare(request: web.Request) -> web.Response:
    """Per run: eval reports, the generate filter's kept share and reasons, per-file status counts, bench results."""
    runs = request.app[RUNS]
    return await _hold(request, 4 * CHUNK + 3 * MAX_JSON, lambda: [_compare_one(i, run) for i, run in enumerate(runs)])


def _compare_one(number: int, run: Run) -> dict:
    out = {"id": number, "name": shown_name(run.name), "kind": run.kind, "evals": run.read_evals(), "filter": None,
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
