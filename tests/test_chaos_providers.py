"""Property-based chaos for provider batches: whatever stops a run and whatever the provider answers, nothing is
lost and nothing is billed twice.

Runs go through the real command (``odie_async.cli.main``, in-process) against loopback mocks of both batch
APIs, one answering correctly and one that repeats an id in every batch and invents another. A run is aborted
at a drawn moment (the journal's crash points: before or after an upload or create, at a poll, a download, a
write; in-process, like a SIGKILL, with no cleanup of the run's own), then its files are damaged (the journal's
tail cut or the journal deleted, every other output line deleted, the errors file deleted) before the next run.
A last, undisturbed run must finish. The invariant: every record exactly once across output and errors, no
batch created twice with the same content (counted at the mock), and every finished run's exit code agreeing
with its files.

Anthropic's message batches carry no label a lost journal could be matched by, so the journal is damaged only
in OpenAI examples. Profiles as in ``test_chaos.py``: ``ci`` (default) and ``long`` (``ODIE_CHAOS_PROFILE``).
"""

import itertools
import os
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odie_async.cli import main
from odie_async.providers import runner
from tests.helpers import ids_in, write_requests
from tests.test_batch_cli import Mock

settings.register_profile("providers-ci", max_examples=10, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("providers-long", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = settings.get_profile("providers-long" if os.environ.get("ODIE_CHAOS_PROFILE") == "long" else "providers-ci")

STEPS = {"openai": ("upload", "uploaded", "create", "created", "poll", "download", "write"),
         "anthropic": ("create", "created", "poll", "download", "write")}
DAMAGE = {"openai": ("none", "journal_tail", "journal", "output_lines", "errors"),
          "anthropic": ("none", "output_lines", "errors")}
FAST = ("--poll-interval", "0.02", "--poll-max", "0.05", "--reconcile-grace", "0", "--no-progress")
_examples = itertools.count()


class Aborted(BaseException):
    """The process died here (a BaseException, so that no handler of the run's catches it)."""


@pytest.fixture(scope="module")
def mocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mocks")
    started = {}
    for name, extra in (("clean", ()), ("faulty", ("--batch-faults", "invent_id,repeat_id"))):
        log = folder / f"{name}.jsonl"
        started[name] = Mock("--batch-processing-s", "0.05", "--batch-fail-rate", "0.1", "--batch-log", str(log),
                             *extra)
        started[name].log = log
    yield started
    for mock in started.values():
        mock.proc.kill()
        mock.proc.wait()


def _created(mock) -> list[dict]:
    if not mock.log.exists():
        return []
    return [e for e in map(orjson.loads, mock.log.read_bytes().splitlines()) if e["event"] == "batch_created"]


def _abort_at(monkeypatch, step: str | None, hits: int) -> None:
    seen = Counter()

    def crashpoint(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == hits:
            raise Aborted(name)

    monkeypatch.setattr(runner, "crashpoint", crashpoint)


def _damage(folder, kind: str, cut: int) -> None:
    journal, out, errors = folder / "out.batches.jsonl", folder / "out.jsonl", folder / "out.errors.jsonl"
    if kind == "journal_tail" and journal.exists():
        journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:-cut]))
    elif kind == "journal":
        journal.unlink(missing_ok=True)
    elif kind == "output_lines" and out.exists():
        out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[1::2]))
    elif kind == "errors":
        errors.unlink(missing_ok=True)


def _run(folder, mock, provider: str, max_requests: int) -> int:
    return main(["batch", str(folder / "in.jsonl"), "-o", str(folder / "out.jsonl"), "--base-url", mock.url,
                 "--mode", "provider-batch", "--provider", provider, "--batch-max-requests", str(max_requests),
                 *FAST])


def _check_ledger(folder, n: int, code: int) -> None:
    counts = ids_in(folder / "out.jsonl", folder / "out.errors.jsonl")
    assert set(counts.values()) <= {1}, counts.most_common(3)  # never twice, even mid-way
    failed = ids_in(folder / "out.errors.jsonl")
    assert code == (1 if failed or len(counts) < n else 0), (code, len(counts), len(failed))


@PROFILE
@given(provider=st.sampled_from(["openai", "anthropic"]), faulty=st.booleans(), n=st.integers(3, 40),
       max_requests=st.integers(2, 15), data=st.data())
def test_every_record_once_and_no_content_billed_twice(tmp_path_factory, monkeypatch, mocks, provider, faulty, n,
                                                       max_requests, data):
    folder = tmp_path_factory.mktemp("run")
    write_requests(folder / "in.jsonl", n, prefix=f"x{next(_examples)}-")
    mock = mocks["faulty" if faulty else "clean"]
    mark = len(_created(mock))
    disruptions = data.draw(st.lists(st.tuples(st.sampled_from(STEPS[provider]), st.integers(1, 3),
                                               st.sampled_from(DAMAGE[provider]), st.integers(1, 6)), max_size=3))
    for step, hits, damage, cut in disruptions:
        _abort_at(monkeypatch, step, hits)
        try:
            code = _run(folder, mock, provider, max_requests)
        except Aborted:
            _damage(folder, damage, cut)
        else:
            _check_ledger(folder, n, code)  # the moment never came: the run finished
    _abort_at(monkeypatch, None, 0)
    code = _run(folder, mock, provider, max_requests)
    counts = ids_in(folder / "out.jsonl", folder / "out.errors.jsonl")
    assert len(counts) == n and set(counts.values()) == {1}, (len(counts), counts.most_common(3))
    _check_ledger(folder, n, code)
    contents = Counter(tuple(e["custom_ids"]) for e in _created(mock)[mark:])
    assert set(contents.values()) == {1}, [ids[:3] for ids, times in contents.items() if times > 1]
