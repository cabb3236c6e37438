"""Every route of ``odie view`` fuzzed: only 200, 400 or 404, never 500, never a byte from outside the runs."""

import asyncio
import http.client
import os
import threading
from urllib.parse import quote, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odie_async.viewer.runs import load_runs
from odie_async.viewer.server import serve

SECRET = b"FUZZ-SECRET-0xBADC0DE"
ROUTES = [
    "/api/runs/{run}/metrics?from={a}",
    "/api/runs/{run}/summary",
    "/api/runs/{run}/bench?since={text}",
    "/api/runs/{run}/files/{file}/facets",
    "/api/runs/{run}/files/{file}/rows?offset={a}&limit={b}&q={text}&{filter}={text}",
    "/api/runs/{run}/files/{file}/record/{a}",
    "/api/runs/{run}/files/{file}/record/{a}/raw?page={b}",
    "/api/compare",
    "/api/runs",
    "/static/{text}",
    "/{text}",
]
FILES = ["kept.jsonl", "dropped.jsonl", "leak.jsonl", "out.jsonl", "out.errors.jsonl", "big.jsonl",
         "bad\\xff.jsonl", "../outside/secret.jsonl", "%2e%2e%2fsecret.jsonl"]
NUMBERS = st.one_of(st.integers(-3, 30).map(str), st.integers(0, 2**70).map(str), st.text(max_size=12),
                    st.sampled_from(["²", "٣", "1e3", "0x10", " 1", "9" * 5000, "", "-0", "+1", "1.5"]))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.jsonl"
    secret.write_bytes(b'{"id": "' + SECRET + b'", "reasons": ["' + SECRET + b'"]}\n')
    run = root / "run"
    run.mkdir()
    rows = [{"id": f"r{i}", "reasons": ["no_table"] if i % 3 else [], "category": "open header",
             "text": "é" * i} for i in range(40)]
    (run / "dropped.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"torn": ')
    (run / "kept.jsonl").write_bytes(b'{"id": "k", "reasons": []}\nnot json\n[1, 2]\n')
    (run / "big.jsonl").write_bytes(orjson.dumps({"id": "big", "text": "x" * (5 << 20)}) + b"\n")
    (run / os.fsdecode(b"bad\xff.jsonl")).write_bytes(b'{"id": "bad"}\n')
    (run / "leak.jsonl").symlink_to(secret)
    (run / "metrics.jsonl").write_bytes(b'{"t": 1, "done": 1}\n{"t": 2, "done": 2}\n')
    (run / "summary.json").symlink_to(secret)
    out = root / "batch" / "out.jsonl"
    out.parent.mkdir()
    out.write_bytes(b'{"custom_id": "a", "response": null, "error": null}\n')
    ready, state = threading.Event(), {}

    def loop():
        async def main():
            runner, url = await serve(load_runs([str(run), str(out)]), "127.0.0.1", 0)
            state["url"], state["stop"] = url, asyncio.Event()
            ready.set()
            await state["stop"].wait()
            await runner.cleanup()

        state["loop"] = asyncio.new_event_loop()
        state["loop"].run_until_complete(main())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield urlsplit(state["url"])
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(30)
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


def _get(where, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), run=NUMBERS, file=st.one_of(st.sampled_from(FILES), st.text(max_size=20)),
       a=NUMBERS, b=NUMBERS, text=st.text(max_size=20), filter=st.sampled_from(["status", "reason", "category", "x"]))
def test_every_route_answers_200_400_or_404_and_nothing_from_outside(server, route, run, file, a, b, text, filter):
    path = route.format(run=quote(run, safe=""), file=quote(file, safe=""), a=quote(a, safe=""), b=quote(b, safe=""),
                        text=quote(text, safe=""), filter=filter)
    status, body = _get(server, path)
    assert status in (200, 400, 404), (path, status, body[:300])
    assert SECRET not in body, path
