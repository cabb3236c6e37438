"""One test per way a run used to lose records, hang or lie in its exit code.

In-process runs go through ``run_engine_batch`` (the library behind ``odie batch``)
against loopback servers; signals, locks and pipes are tested on real
``odie batch`` subprocesses.
"""

import asyncio
import errno
import math
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from structlog.testing import capture_logs

from odie_async.cli import main
from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.engine.batch import run_engine_batch
from odie_async.engine.keys import api_key_from_env
from odie_async.engine.routes import check_shape as check_answer
from odie_async.engine.core import Engine, EngineSettings
from odie_async.exceptions import ConfigError, MalformedResponseError
from tests.helpers import chat_line, ids_in, write_requests
from tests.scripted_server import ScriptedServer

ODIE = [sys.executable, "-m", "odie_async"]


def _settings(url, **kw):
    kw = {"concurrency": 8, "max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5} | kw
    return EngineSettings(base_url=url, **kw)


def _run(coro, limit=60):
    return asyncio.run(asyncio.wait_for(coro, limit))


async def _batch(tmp_path, url, n=20, engine=None, **kw):
    path = tmp_path / "in.jsonl"
    if not path.exists():
        write_requests(path, n)
    options = {k: kw.pop(k) for k in list(kw) if k in ("model", "resend_changed", "retry_failed", "skip_invalid")}
    settings = _settings(url, **kw)
    return await run_engine_batch(path, tmp_path / "out.jsonl", settings, progress=False, handle_signals=False,
                           engine=engine, **options)


def _once(tmp_path, n):
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    return len(counts) == n and set(counts.values()) == {1}


# -- usage of the wrong type ---------------------------------------------------------------------

def test_usage_of_the_wrong_type_is_a_per_record_error_never_a_crash(tmp_path):
    async def go():
        settings = MockSettings(fault_rate=0.5, seed=3, faults=("bad_usage",))
        async with MockServer(settings=settings) as server:
            return await _batch(tmp_path, server.base_url, 60, max_attempts=2)

    report = _run(go())
    assert _once(tmp_path, 60)
    ledger = report.ledger
    assert ledger["output"] + ledger["errors"] == 60 and ledger["unfinished"] == 0
    assert ledger["errors"] > 0 and report.exit_code == 1
    errors = [orjson.loads(x) for x in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()]
    assert all(e["error"]["code"] == "malformed_response" and "usage" in e["error"]["message"] for e in errors)


@pytest.mark.parametrize("usage", ["n/a", {"prompt_tokens": "3"}, {"total_tokens": -1}, [1]])
def test_usage_numbers_must_be_counts(usage):
    with pytest.raises(MalformedResponseError):
        check_answer("/v1/chat/completions", {"choices": [{}], "usage": usage})
    check_answer("/v1/chat/completions", {"choices": [{}], "usage": {"prompt_tokens": 3, "total_tokens": None}})


# -- the key ---------------------------------------------------------------------------------------

def test_key_with_windows_line_ending_is_cleaned_and_works(tmp_path, monkeypatch):
    monkeypatch.setenv("THE_KEY", "sk-Right-Key\r\n")
    key = api_key_from_env("THE_KEY")
    assert key == "sk-Right-Key"

    async def go():
        async with MockServer(settings=MockSettings(api_key="sk-Right-Key")) as server:
            return await _batch(tmp_path, server.base_url, 20, api_key="sk-Right-Key\r")

    report = _run(go())
    assert report.exit_code == 0 and report.ledger["output"] == 20


def test_key_holding_a_control_character_is_refused_without_echo(monkeypatch):
    monkeypatch.setenv("THE_KEY", "sk-a\x01b")
    with pytest.raises(ConfigError) as info:
        api_key_from_env("THE_KEY")
    assert "sk-a" not in str(info.value)


def test_key_echoed_back_by_the_server_is_redacted(tmp_path):
    secret = "sk-echo-0123456789"

    async def go():
        settings = MockSettings(fault_rate=1.0, faults=("echo_auth",), api_key=secret)
        async with MockServer(settings=settings) as server:
            with capture_logs() as logs:
                report = await _batch(tmp_path, server.base_url, 5, api_key=secret)
            return report, logs

    report, logs = _run(go())
    assert report.ledger["errors"] == 5
    written = (tmp_path / "out.errors.jsonl").read_text() + repr(logs) + repr(report.summary)
    assert "you sent" in written and "Bearer ***" in written
    assert secret not in written


def test_mock_server_compares_the_key_exactly_capitals_included(tmp_path):
    async def go(key):
        async with MockServer(settings=MockSettings(api_key="Sk-MiXeD")) as server:
            return await _batch(tmp_path / key, server.base_url, 3, api_key=key)

    (tmp_path / "Sk-MiXeD").mkdir()
    (tmp_path / "sk-mixed").mkdir()
    assert _run(go("Sk-MiXeD")).exit_code == 0
    assert _run(go("sk-mixed")).exit_code == 3  # the wrong case is the wrong key


# -- numeric options --------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [("--rpm", "nan"), ("--rpm", "-10"), ("--tpm", "-1"), ("--rpm", "inf"),
                                    ("--timeout", "0"), ("--timeout", "-1"), ("--concurrency", "0"),
                                    ("--drain-timeout", "nan"), ("--max-retry-wait", "0")])
def test_bad_numeric_options_are_usage_errors(tmp_path, option, capsys):
    write_requests(tmp_path / "in.jsonl", 2)
    with pytest.raises(SystemExit) as info:
        main(["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
              "--base-url", "http://127.0.0.1:9/v1", *option])
    assert info.value.code == 2
    assert option[0] in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("rpm", math.nan), ("tpm", -1), ("timeout_s", 0), ("concurrency", 0)])
def test_engine_settings_refuse_bad_numbers(field, value):
    with pytest.raises(ConfigError):
        EngineSettings(base_url="http://x", **{field: value})


# -- the disk ---------------------------------------------------------------------------------------

def _full_disk_after(limit):
    written = {"n": 0}

    def write(fd, data):
        room = limit - written["n"]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data[:room])
        written["n"] += min(room, len(data))
        if room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_disk_full_stops_with_the_file_named_leaves_no_torn_line_and_a_rerun_completes(tmp_path):
    async def go(limit):
        async with MockServer() as server:
            engine = Engine(_settings(server.base_url), tmp_path / "out.jsonl", keep_bodies=False)
            if limit:
                engine.store.write = _full_disk_after(limit)
            return await _batch(tmp_path, server.base_url, 200, engine=engine)

    report = _run(go(5000), limit=20)
    assert report.exit_code == 4
    assert "out.jsonl" in str(report.error) and "No space left" in str(report.error)
    data = (tmp_path / "out.jsonl").read_bytes()
    assert 0 < len(data) <= 5000 and data.endswith(b"\n")
    assert report.ledger["output"] == len(data.splitlines())
    rerun = _run(go(0))
    assert rerun.exit_code == 0 and _once(tmp_path, 200)


def test_output_folder_or_unwritable_path_is_refused_before_sending(tmp_path):
    (tmp_path / "a_file").write_text("x")
    write_requests(tmp_path / "in.jsonl", 3)
    for output in (tmp_path, tmp_path / "a_file" / "out.jsonl"):
        async def go():
            async with ScriptedServer() as server:
                report = await run_engine_batch(tmp_path / "in.jsonl", output, _settings(server.base_url),
                                         progress=False, handle_signals=False)
                return report, len(server.seen)

        report, sent = _run(go())
        assert report.exit_code == 2 and sent == 0
        assert str(output if output == tmp_path else output.parent) in str(report.error)


def test_input_output_and_errors_must_be_three_files(tmp_path):
    path = write_requests(tmp_path / "in.jsonl", 3)

    async def go(output, errors=None):
        async with ScriptedServer() as server:
            report = await run_engine_batch(path, output, _settings(server.base_url), errors, progress=False,
                                     handle_signals=False)
            return report, len(server.seen)

    for output, errors in ((path, None), (tmp_path / "o.jsonl", tmp_path / "o.jsonl"), (tmp_path / "o.jsonl", path)):
        report, sent = _run(go(output, errors))
        assert report.exit_code == 2 and sent == 0 and "same file" in str(report.error)
    assert len(path.read_bytes().splitlines()) == 3


# -- the endpoint -----------------------------------------------------------------------------------

def test_long_retry_after_stops_the_run_with_exit_3(tmp_path):
    async def go():
        async with ScriptedServer([(429, {"retry-after": "86400"})] * 50) as server:
            start = time.monotonic()
            report = await _batch(tmp_path, server.base_url, 10, max_retry_wait_s=5)
            return report, time.monotonic() - start

    report, elapsed = _run(go(), limit=30)
    assert report.exit_code == 3 and elapsed < 10
    assert "asks to wait 86400 s" in str(report.error) and "rerun" in str(report.error)
    assert report.ledger["unfinished"] == 10 and not _once(tmp_path, 1)  # nothing marked done


@pytest.mark.parametrize("headers", [True, False])
def test_limits_are_learned_when_none_are_given(tmp_path, headers):
    async def go():
        async with MockServer(settings=MockSettings(rpm=600, limit_headers=headers)) as server:
            report = await _batch(tmp_path, server.base_url, 80, concurrency=64, max_attempts=8)
            return report, server.state.requests

    report, requests = _run(go(), limit=60)
    assert report.ledger["errors"] == 0 and report.exit_code == 0 and _once(tmp_path, 80)
    share = requests["429"] / requests["total"]
    # With headers the first answer tells the limit; without, the first burst meets it before anything is known.
    assert share <= (0.05 if headers else 0.5), requests


def test_half_faults_do_not_trip_the_breaker_but_a_streak_of_400s_does(tmp_path):
    async def go():
        settings = MockSettings(fault_rate=0.5, seed=7, faults=("500", "503", "malformed"))
        async with MockServer(settings=settings) as server:
            return await _batch(tmp_path / "a", server.base_url, 300, concurrency=32, max_attempts=10)

    (tmp_path / "a").mkdir()
    report = _run(go())
    assert report.error is None and report.exit_code in (0, 1)
    assert report.ledger["output"] + report.ledger["errors"] == 300

    async def bad():
        async with ScriptedServer(default=400) as server:
            return await _batch(tmp_path / "b", server.base_url, 200, concurrency=4), len(server.seen)

    (tmp_path / "b").mkdir()
    report, sent = _run(bad())
    assert report.exit_code == 3 and "in a row" in str(report.error) and sent < 60


# -- the checkpoint ---------------------------------------------------------------------------------

def test_changed_requests_are_not_silently_reused(tmp_path):
    async def go(**kw):
        async with MockServer() as server:
            report = await _batch(tmp_path, server.base_url, 30, **kw)
            return report, server.request_count

    first, sent = _run(go())
    assert first.exit_code == 0 and sent == 30
    refused, sent = _run(go(model="another-model"))
    assert refused.exit_code == 2 and sent == 0
    assert "30 record(s)" in str(refused.error) and "'r0'" in str(refused.error)
    resent, sent = _run(go(model="another-model", resend_changed=True))
    assert resent.exit_code == 0 and sent == 30
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(lines) == 30 and {x["response"]["body"]["model"] for x in lines} == {"another-model"}
    again, sent = _run(go(model="another-model"))
    assert again.exit_code == 0 and sent == 0 and again.ledger["already_done"] == 30


# -- every record has a fate ------------------------------------------------------------------------

class _ExplodingClient:
    def __init__(self, after):
        self.after, self.calls = after, 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def post(self, path, payload):
        self.calls += 1
        if self.calls > self.after:
            raise KeyError("surprise")
        from odie_async.engine.client import Reply
        return Reply(200, {"choices": [{"message": {"content": "ok"}}]}, None, 0.001)


def test_an_unexpected_exception_in_a_worker_stops_the_run_loudly(tmp_path):
    async def go():
        engine = Engine(_settings("http://127.0.0.1:9/v1", concurrency=2), tmp_path / "out.jsonl",
                        keep_bodies=False, client=_ExplodingClient(after=5))
        return await _batch(tmp_path, "http://unused", 50, engine=engine)

    report = _run(go(), limit=20)
    assert report.exit_code == 4
    assert "KeyError" in str(report.error) and "record 'r" in str(report.error)
    ledger = report.ledger
    assert ledger["output"] == 5 and ledger["errors"] == 0
    assert ledger["read"] == ledger["output"] + ledger["unfinished"] and ledger["unfinished"] >= 1


def test_empty_input_is_an_input_error(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b"\n\n")
    report = _run(_batch(tmp_path, "http://127.0.0.1:9/v1"))
    assert report.exit_code == 2 and "holds no records" in str(report.error)


def test_a_byte_order_mark_is_stripped(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + chat_line("a") + chat_line("b"))

    async def go():
        async with MockServer() as server:
            return await _batch(tmp_path, server.base_url)

    report = _run(go())
    assert report.exit_code == 0 and report.ledger["output"] == 2


def test_eval_warns_when_a_file_covers_only_part_of_the_items():
    from odie_async.evaluation.evaluate import coverage_warnings

    item = {"output": "", "gold": ""}
    warnings = coverage_warnings([("few.json", [item] * 3), ("all.json", [item] * 150)])
    assert list(warnings) == ["few.json"] and "3 of 150 items" in warnings["few.json"]
    assert "3 of 150 items" in coverage_warnings([("few.json", [item] * 3)], expect=150)["few.json"]
    assert not coverage_warnings([("all.json", [item] * 150)], expect=150)


def test_rate_learner_cuts_on_429s_and_raises_only_after_a_quiet_cooldown():
    from odie_async.engine.limits import RateLearner

    learner = RateLearner(decrease=0.8, increase=0.05, cooldown=2.0)
    learner.start(0.0)
    assert learner.on_429(10.0, 100) == 0.8 * 600  # 100 answers in 10 s
    assert learner.on_429(10.5, 105) is None  # inside the cooldown: one cut per burst of 429s
    assert learner.probe_up(11.0, 110) is None  # a 429 came less than 2 s ago
    assert learner.probe_up(12.6, 120) == 0.8 * 600 * 1.05
    assert learner.probe_up(13.0, 125) is None  # one raise per cooldown
    assert learner.on_429(20.0, 150) < 0.8 * 600  # the answered rate since the last cut decides
