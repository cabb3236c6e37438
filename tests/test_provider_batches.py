"""``odie batch --mode provider-batch`` against the mock's batch APIs, as users run it (subprocesses).

The mock's own log (``--batch-log``) is the bill: every batch it created, with
the custom_ids in it. The tests check that log and the output/errors files
after faults, expiry, deadlines, cancels and SIGKILLs at every step.
"""

import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections import Counter

import orjson
import pytest

from odie_async.providers.anthropic import to_chat_completion, to_params
from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import mock_factory  # noqa: F401  (the fixture)

ODIE = [sys.executable, "-m", "odie_async"]
FAST = ("--poll-interval", "0.05", "--poll-max", "0.2", "--reconcile-grace", "0.1", "--no-progress")


def _batch(tmp_path, url, provider, *extra, env=None):
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", url,
                  "--mode", "provider-batch", "--provider", provider, *FAST, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _mock(mock_factory, tmp_path, *options):
    log = tmp_path / "mock.jsonl"
    mock = mock_factory("--batch-log", str(log), *options)
    mock.log = log
    return mock


def _events(mock, kind):
    if not mock.log.exists():
        return []
    events = [orjson.loads(line) for line in mock.log.read_bytes().splitlines()]
    return [e for e in events if e["event"] == kind]


def _billed(mock) -> Counter:
    """How many created batches carried each custom_id (Anthropic's are mapped back by the output)."""
    return Counter(cid for e in _events(mock, "batch_created") for cid in e["custom_ids"])


def _assert_each_once(tmp_path, n):
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == n and set(counts.values()) == {1}, counts.most_common(3)


def test_translation_to_and_from_anthropic():
    body = {"model": "claude-x", "max_tokens": 50, "temperature": 0.2, "stop": "END",
            "messages": [{"role": "system", "content": "Be terse."},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    params = to_params(body)
    assert params == {"model": "claude-x", "max_tokens": 50, "temperature": 0.2, "stop_sequences": ["END"],
                      "system": "Be terse.", "messages": [{"role": "user", "content": "Hi"}]}
    message = {"id": "msg_1", "model": "claude-x", "content": [{"type": "text", "text": "| a |"}],
               "stop_reason": "max_tokens", "usage": {"input_tokens": 7, "output_tokens": 3}}
    chat = to_chat_completion(message)
    assert chat["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "| a |"},
                                  "finish_reason": "length"}
    assert chat["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert chat["anthropic"] == message
    with pytest.raises(ValueError, match="role"):
        to_params({"model": "m", "messages": [{"role": "tool", "content": "x"}]})


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_partial_failures_land_in_errors_and_chunks_respect_limits(tmp_path, mock_factory, provider):
    write_requests(tmp_path / "in.jsonl", 230)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.3", "--batch-fail-rate", "0.1")
    done = _batch(tmp_path, mock.url, provider, "--batch-max-requests", "100")
    assert done.returncode == 1, done.stderr[-2000:]
    _assert_each_once(tmp_path, 230)
    failed = ids_in(tmp_path / "out.errors.jsonl")
    assert 5 <= len(failed) <= 50
    sizes = sorted(len(e["custom_ids"]) for e in _events(mock, "batch_created"))
    assert sizes == [30, 100, 100]
    if provider == "openai":
        assert set(_billed(mock).values()) == {1} and len(_billed(mock)) == 230
    good = orjson.loads((tmp_path / "out.jsonl").read_bytes().splitlines()[0])
    assert good["response"]["body"]["choices"][0]["message"]["content"]
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["records"]["batch_failed"] == len(failed) and summary["tokens"]["completion"] > 0
    assert "chunk 0002" in done.stdout


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_lost_create_answers_are_adopted_not_created_again(tmp_path, mock_factory, provider):
    write_requests(tmp_path / "in.jsonl", 90)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.3", "--batch-drop-after-create", "2")
    done = _batch(tmp_path, mock.url, provider, "--batch-max-requests", "30")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_events(mock, "response_dropped")) == 2
    assert len(_events(mock, "batch_created")) == 3  # three chunks, three batches: none paid twice
    assert set(_billed(mock).values()) == {1}
    _assert_each_once(tmp_path, 90)
    assert sum(b["adopted"] for b in orjson.loads((tmp_path / "out.summary.json").read_bytes())["batches"]) == 2


def test_expired_batches_keep_their_work_and_resubmit_the_rest_once(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 100)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "1.0", "--batch-expire-after-s", "0.5")
    done = _batch(tmp_path, mock.url, "openai")
    assert done.returncode == 1, done.stderr[-2000:]
    _assert_each_once(tmp_path, 100)
    created = _events(mock, "batch_created")
    assert [len(e["custom_ids"]) for e in created] == [100, 50]  # half done, the other half once more
    assert [e["answered"] for e in _events(mock, "batch_ended")] == [50, 25]
    errors = [orjson.loads(line) for line in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()]
    assert len(errors) == 25 and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len(ids_in(tmp_path / "out.jsonl")) == 75


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_deadline_sends_the_rest_online_none_twice(tmp_path, mock_factory, provider):
    write_requests(tmp_path / "in.jsonl", 200)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "4")
    done = _batch(tmp_path, mock.url, provider, "--deadline", "1.2", "--online-reserve", "0.6")
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_each_once(tmp_path, 200)
    assert len(_events(mock, "batch_cancel")) == 1
    via_batch = _events(mock, "batch_ended")[0]["answered"]
    assert 0 < via_batch < 200
    online_sent = mock.stop()["200"]
    assert online_sent == 200 - via_batch  # each record the batch did not run went online exactly once
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["records"]["online_ok"] == online_sent and summary["records"]["batch_ok"] == via_batch


def test_interrupt_then_cancel_keeps_finished_work(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 60)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "15")  # the cancel comes long before the end
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.url,
                  "--mode", "provider-batch", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not _events(mock, "batch_created"):
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "--cancel" in stderr
    cancelled = _batch(tmp_path, mock.url, "openai", "--cancel")
    assert cancelled.returncode == 1, cancelled.stderr[-2000:]
    _assert_each_once(tmp_path, 60)
    errors = {orjson.loads(line)["error"]["code"] for line in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()}
    assert errors == {"batch_cancelled"}
    assert len(_events(mock, "batch_created")) == 1 and len(_events(mock, "batch_cancel")) == 1


def test_bad_input_stops_before_anything_is_sent(tmp_path, mock_factory):
    path = write_requests(tmp_path / "in.jsonl", 5)
    path.write_bytes(path.read_bytes() + b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", '
                     b'"body": {"model": "m", "input": "a"}}\n')
    mock = _mock(mock_factory, tmp_path)
    done = _batch(tmp_path, mock.url, "anthropic")
    assert done.returncode == 2 and f"{path}:6:" in done.stderr
    assert mock.stop().get("total", 0) == 0  # not one request reached the endpoint


# -- SIGKILL inside every step, then rerun ------------------------------------------------------------

STEPS = {"openai": {"upload": 3, "uploaded": 3, "create": 3, "created": 3, "poll": 3, "download": 3, "write": 5},
         "anthropic": {"create": 3, "created": 3, "poll": 3, "download": 3, "write": 5}}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sigkill_inside_each_step_then_rerun_bills_each_chunk_once(tmp_path, mock_factory, provider):
    rng = random.Random(provider)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.3", "--batch-fail-rate", "0.05")
    for step, hits in STEPS[provider].items():
        for path in tmp_path.glob("out*"):
            if path.is_file():
                path.unlink()
        write_requests(tmp_path / "in.jsonl", 1200, prefix=f"{step}-")  # new content: nothing to adopt
        mark = len(_events(mock, "batch_created"))
        env = os.environ | {"ODIE_BATCH_KILL_AT": f"{step}:{rng.randint(1, hits)}"}
        killed = _batch(tmp_path, mock.url, provider, "--batch-max-requests", "500", env=env)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
        rerun = _batch(tmp_path, mock.url, provider, "--batch-max-requests", "500")
        assert rerun.returncode == 1, (step, rerun.stderr[-2000:])  # 5 % of requests fail by design
        _assert_each_once(tmp_path, 1200)
        created = _events(mock, "batch_created")[mark:]
        billed = Counter(cid for e in created for cid in e["custom_ids"])
        assert len(created) == 3 and len(billed) == 1200 and set(billed.values()) == {1}, step
        if provider == "openai":
            chunks = Counter(e["metadata"]["odie_chunk"] for e in created)
            assert chunks == {"0000": 1, "0001": 1, "0002": 1}, step


def test_sigkill_at_random_moments_then_rerun(tmp_path, mock_factory):
    rng = random.Random(5)
    write_requests(tmp_path / "in.jsonl", 3000)
    # Batches take longer than the widest kill window, so that every start is killed mid-run.
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "4", "--batch-drop-after-create", "1")
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.url,
                  "--mode", "provider-batch", "--batch-max-requests", "400", *FAST]
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.5))
        except subprocess.TimeoutExpired:
            proc.kill()
            kills += proc.wait() == -signal.SIGKILL
    assert kills >= 2
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_each_once(tmp_path, 3000)
    chunks = Counter(e["metadata"]["odie_chunk"] for e in _events(mock, "batch_created"))
    assert len(chunks) == 8 and set(chunks.values()) == {1}
    assert set(_billed(mock).values()) == {1}


def test_anthropic_adoption_rejects_a_foreign_batch_and_creates_its_own_once(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 40)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.3")
    env = os.environ | {"ODIE_BATCH_KILL_AT": "create:1"}  # the intent is journaled, the call never made
    assert _batch(tmp_path, mock.url, "anthropic", env=env).returncode == -signal.SIGKILL
    decoy = [{"custom_id": f"other-{i}", "params": {"model": "m", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "x"}]}} for i in range(40)]
    request = urllib.request.Request(mock.url + "/messages/batches", data=orjson.dumps({"requests": decoy}), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        decoy_id = orjson.loads(answer.read())["id"]  # same size, seconds after the intent: looks like ours
    rerun = _batch(tmp_path, mock.url, "anthropic")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "not this run's" in rerun.stderr  # adopted, then set aside
    _assert_each_once(tmp_path, 40)
    ours = [e for e in _events(mock, "batch_created") if e["id"] != decoy_id]
    assert len(ours) == 1 and len(ours[0]["custom_ids"]) == 40


def test_refused_key_stops_with_exit_3_and_never_leaks(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 10)
    mock = mock_factory("--api-key-env", "MOCK_KEY", env=os.environ | {"MOCK_KEY": "right-key"})
    secret = "sk-ant-wrong-0123456789"
    done = _batch(tmp_path, mock.url, "anthropic", "--api-key-env", "MY_KEY", env=os.environ | {"MY_KEY": secret})
    assert done.returncode == 3 and "stopped by the endpoint" in done.stderr
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    assert secret not in done.stdout + done.stderr + written


def test_a_journal_of_another_provider_is_refused(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 20)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2")
    assert _batch(tmp_path, mock.url, "openai").returncode == 0
    other = _batch(tmp_path, mock.url, "anthropic")
    assert other.returncode == 2 and "--provider openai" in other.stderr
    assert len(_events(mock, "batch_created")) == 1


# -- the output is the truth (issue 25) ------------------------------------------------------------------


def _lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _digests_match_input(tmp_path):
    from odie_async.engine.batchfile import BatchReader
    from odie_async.providers.chunks import line_digest

    want = {line.custom_id: line_digest(line) for line in BatchReader(tmp_path / "in.jsonl")}
    for name in ("out.jsonl", "out.errors.jsonl"):
        for record in _lines(tmp_path / name):
            assert record["request_digest"] == want[record["custom_id"]], record["custom_id"]


@pytest.mark.parametrize("loss", ["output", "some_lines", "errors"])
def test_records_missing_from_the_output_are_collected_again(tmp_path, mock_factory, loss):
    write_requests(tmp_path / "in.jsonl", 60)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2", "--batch-fail-rate", "0.2")
    assert _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "25").returncode == 1
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    if loss == "output":
        out.unlink()
    elif loss == "some_lines":
        out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[::2]))
    else:
        errors.unlink()
    rerun = _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "25")
    assert rerun.returncode == 1, rerun.stderr[-2000:]
    assert "collecting them again" in rerun.stderr
    _assert_each_once(tmp_path, 60)
    assert len(_events(mock, "batch_created")) == 3  # collected from the stored results, not billed again
    _digests_match_input(tmp_path)


def test_records_whose_results_are_gone_are_sent_again_once(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 30)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2")
    assert _batch(tmp_path, mock.url, "anthropic").returncode == 0
    (tmp_path / "out.jsonl").unlink()
    journal = tmp_path / "out.batches.jsonl"  # the batch is forgotten by the provider: its id answers 404
    journal.write_bytes(journal.read_bytes().replace(b'"batch_id":"msgbatch_', b'"batch_id":"msgbatch_gone'))
    rerun = _batch(tmp_path, mock.url, "anthropic")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "sending records again" in rerun.stderr
    _assert_each_once(tmp_path, 30)
    assert len(_events(mock, "batch_created")) == 2


@pytest.mark.parametrize("lost", ["journal", "journal_tail", "chunk_files"])
def test_a_lost_journal_or_chunk_folder_bills_nothing_twice(tmp_path, mock_factory, lost):
    write_requests(tmp_path / "in.jsonl", 90)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "3")
    env = os.environ | {"ODIE_BATCH_KILL_AT": "poll:1"}  # every batch created, none collected
    killed = _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "30", env=env)
    assert killed.returncode == -signal.SIGKILL
    journal = tmp_path / "out.batches.jsonl"
    if lost == "journal":
        journal.unlink()
    elif lost == "journal_tail":
        journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:-4]))
    else:
        for path in (tmp_path / "out.batches.d").iterdir():
            path.unlink()
    rerun = _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "30")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _assert_each_once(tmp_path, 90)
    assert len(_events(mock, "batch_created")) == 3 and set(_billed(mock).values()) == {1}
    assert not _events(mock, "batch_cancel")


def test_an_anthropic_journal_without_its_first_line_keeps_its_batches(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 40)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "2")
    env = os.environ | {"ODIE_BATCH_KILL_AT": "poll:1"}
    assert _batch(tmp_path, mock.url, "anthropic", "--batch-max-requests", "20", env=env).returncode == -signal.SIGKILL
    journal = tmp_path / "out.batches.jsonl"
    journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[1:]))  # the run's own line
    for _ in range(2):  # the second start replays the run line the first one wrote after the chunks
        rerun = _batch(tmp_path, mock.url, "anthropic", "--batch-max-requests", "20")
        assert rerun.returncode == 0 and "not this run's" not in rerun.stderr, rerun.stderr[-2000:]
    _assert_each_once(tmp_path, 40)
    assert len(_events(mock, "batch_created")) == 2


def test_a_changed_input_is_planned_again_and_the_unwanted_batch_cancelled(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 40)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "4")
    env = os.environ | {"ODIE_BATCH_KILL_AT": "poll:1"}
    assert _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "20", env=env).returncode == -signal.SIGKILL
    lines = (tmp_path / "in.jsonl").read_bytes().splitlines(keepends=True)
    # chunk 0000 (r0-r19) stays; every record of chunk 0001 (r20-r39) changes; five records are new
    changed = [line.replace(b'"prompt', b'"Prompt') for line in lines[20:]]
    write_requests(tmp_path / "extra.jsonl", 5, prefix="n")
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines[:20] + changed) + (tmp_path / "extra.jsonl").read_bytes())
    rerun = _batch(tmp_path, mock.url, "openai", "--batch-max-requests", "20")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _assert_each_once(tmp_path, 45)
    _digests_match_input(tmp_path)
    created = _events(mock, "batch_created")
    assert [len(e["custom_ids"]) for e in created] == [20, 20, 20, 5]  # r20-r39 once more, as they changed
    assert f"cancelled a batch              batch={created[1]['id']}" in rerun.stderr  # retired, not abandoned
    assert [e["id"] for e in _events(mock, "batch_cancel")] in ([], [created[1]["id"]])  # [] if it had ended
    assert set(_billed(mock)[f"r{i}"] for i in range(20)) == {1}


@pytest.mark.parametrize("change", ["body", "model"])
def test_a_changed_request_is_refused_unless_resent(tmp_path, mock_factory, change):
    write_requests(tmp_path / "in.jsonl", 20)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2")
    assert _batch(tmp_path, mock.url, "anthropic").returncode == 0
    first = (tmp_path / "out.jsonl").read_bytes()
    extra = ()
    if change == "body":  # same size: only the digest can tell
        text = (tmp_path / "in.jsonl").read_bytes()
        (tmp_path / "in.jsonl").write_bytes(text.replace(b'"prompt r7"', b'"Prompt r7"', 1))
    else:
        extra = ("--model", "other-model")
    refused = _batch(tmp_path, mock.url, "anthropic", *extra)
    assert refused.returncode == 2 and "asked differently" in refused.stderr and "--resend-changed" in refused.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == first and len(_events(mock, "batch_created")) == 1
    resent = _batch(tmp_path, mock.url, "anthropic", "--resend-changed", *extra)
    assert resent.returncode == 0, resent.stderr[-2000:]
    _assert_each_once(tmp_path, 20)
    assert [len(e["custom_ids"]) for e in _events(mock, "batch_created")] == [20, 1 if change == "body" else 20]
    assert _batch(tmp_path, mock.url, "anthropic", *extra).returncode == 0  # now answered as asked
    if change == "body":
        _digests_match_input(tmp_path)


FAULTS = [("openai", "invent_id", 0), ("anthropic", "invent_id", 0), ("openai", "repeat_id", 0),
          ("anthropic", "repeat_id", 0), ("openai", "non_json_line", 0), ("anthropic", "non_json_line", 0),
          ("openai", "no_custom_id", 1), ("anthropic", "no_custom_id", 1), ("openai", "error_string", 1),
          ("anthropic", "error_string", 1), ("anthropic", "no_message", 1), ("openai", "create_no_id", 0),
          ("anthropic", "create_no_id", 0), ("openai", "unknown_status", 1), ("anthropic", "unknown_status", 1)]


@pytest.mark.parametrize("provider, fault, code", FAULTS)
def test_a_wrong_answer_is_an_error_on_its_record_never_a_traceback(tmp_path, mock_factory, provider, fault, code):
    write_requests(tmp_path / "in.jsonl", 6)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2", "--batch-faults", fault)
    done = _batch(tmp_path, mock.url, provider)
    assert done.returncode == code and "Traceback" not in done.stderr, done.stderr[-2000:]
    _assert_each_once(tmp_path, 6)  # nothing invented, nothing twice, nothing lost
    errors = _lines(tmp_path / "out.errors.jsonl")
    assert all(e["error"]["code"] and e["error"]["message"] for e in errors)
    if fault == "unknown_status":
        assert {e["error"]["code"] for e in errors} == {"batch_status_unknown"} and "cancelled a batch" in done.stderr
    again = _batch(tmp_path, mock.url, provider)
    assert again.returncode == code and "Traceback" not in again.stderr, again.stderr[-2000:]
    _assert_each_once(tmp_path, 6)
    assert len(_events(mock, "batch_created")) == 1


def test_an_echoed_key_is_never_written_or_shown(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 5)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2", "--batch-faults", "echo_key")
    secret = "sk-echoed-0123456789abcdef"
    done = _batch(tmp_path, mock.url, "openai", "--api-key-env", "MY_KEY", env=os.environ | {"MY_KEY": secret})
    assert done.returncode == 0, done.stderr[-2000:]
    written = "".join(p.read_text() for p in tmp_path.glob("out*") if p.is_file())
    assert "you called with the key ***" in written
    assert secret not in done.stdout + done.stderr + written


def test_a_key_ending_in_a_carriage_return_is_cleaned(tmp_path, mock_factory):
    write_requests(tmp_path / "in.jsonl", 5)
    mock = mock_factory("--api-key-env", "MOCK_KEY", "--batch-processing-s", "0.2",
                        env=os.environ | {"MOCK_KEY": "right-key"})
    done = _batch(tmp_path, mock.url, "openai", "--api-key-env", "MY_KEY", env=os.environ | {"MY_KEY": "right-key\r\n"})
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_each_once(tmp_path, 5)


@pytest.mark.parametrize("option", [("--batch-max-requests", "-3"), ("--batch-max-bytes", "0"),
                                    ("--poll-interval", "nan"), ("--poll-max", "inf"), ("--deadline", "-1"),
                                    ("--reconcile-grace", "nan")])
def test_provider_options_are_range_checked(tmp_path, option):
    write_requests(tmp_path / "in.jsonl", 5)
    done = _batch(tmp_path, "http://127.0.0.1:9/v1", "openai", *option)
    last = done.stderr.strip().splitlines()[-1]  # after argparse's usage lines
    assert done.returncode == 2 and last.startswith(f"odie batch: error: argument {option[0]}:")
    assert "Traceback" not in done.stderr


def _in_process(tmp_path, url):
    from odie_async.cli import main

    return main(["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", url,
                 "--mode", "provider-batch", *FAST])


def test_a_full_disk_exits_4_and_the_rerun_completes(tmp_path, mock_factory, monkeypatch, capsys):
    import errno

    from odie_async.engine import checkpoint

    write_requests(tmp_path / "in.jsonl", 20)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_all", full)
    assert _in_process(tmp_path, mock.url) == 4
    assert "No space left" in capsys.readouterr().err
    monkeypatch.undo()
    assert _in_process(tmp_path, mock.url) == 0
    _assert_each_once(tmp_path, 20)
    assert len(_events(mock, "batch_created")) == 1


def test_an_internal_crash_exits_4(tmp_path, mock_factory, monkeypatch, capsys):
    from odie_async.providers.runner import ProviderBatchRun

    write_requests(tmp_path / "in.jsonl", 5)
    mock = _mock(mock_factory, tmp_path, "--batch-processing-s", "0.2")

    async def broken(self, c, status):
        raise KeyError("a bug")

    monkeypatch.setattr(ProviderBatchRun, "collect", broken)
    assert _in_process(tmp_path, mock.url) == 4
    assert "internal error" in capsys.readouterr().err
