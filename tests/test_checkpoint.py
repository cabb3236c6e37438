import os

import orjson
import pytest

from odie_async.engine.checkpoint import Result, ResultStore, repair_tail
from odie_async.exceptions import InputError, OutputError


def _ok(custom_id):
    body = {"choices": [{"message": {"role": "assistant", "content": f"answer {custom_id}"}}]}
    return Result(custom_id, True, body, None, 200, "req-1", 1)


def test_results_survive_reopen_and_are_answered_from_the_checkpoint(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl", keep_bodies=True)
    store.open()
    store.append([store.encode(_ok("a")), store.encode(_ok("b"))], [])
    failed = Result("c", False, None, {"code": "server_error", "message": "HTTP 500"}, 500, None, 5)
    store.append([], [store.encode(failed)])
    store.close()

    again = ResultStore(tmp_path / "out.jsonl", keep_bodies=True)
    again.open()
    assert again.done("a") and again.done("c") and not again.done("d")
    assert again.get("b").content == "answer b" and again.get("b").cached
    assert again.get("c").error["code"] == "server_error" and again.get("c").attempts == 5
    assert (again.resumed_ok, again.resumed_failed) == (2, 1)
    again.close()


def test_output_lines_follow_the_batch_api_format(tmp_path):
    line = orjson.loads(_ok("a").to_line("batch_req_1"))
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["response"]["status_code"] == 200 and line["error"] is None


def test_torn_tail_is_cut_back_to_the_last_complete_line(tmp_path):
    path = tmp_path / "out.jsonl"
    good = _ok("a").to_line("x")
    path.write_bytes(good + b'{"id": "y", "custom_id": "b", "resp')
    assert repair_tail(path) > 0
    assert path.read_bytes() == good
    assert repair_tail(path) == 0


def test_a_file_of_one_torn_line_becomes_empty(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "y", "cust')
    repair_tail(path)
    assert path.read_bytes() == b""


def test_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(_ok("a").to_line("x") + b"not json\n" + _ok("b").to_line("y"))
    store = ResultStore(path)
    with pytest.raises(InputError) as info:
        store.open()
    assert info.value.line_no == 2 and str(path) in str(info.value)


def test_retry_failed_moves_the_errors_file_aside(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    store.append([], [store.encode(Result("c", False, error={"code": "x", "message": "y"}))])
    store.close()
    again = ResultStore(tmp_path / "out.jsonl")
    again.open(retry_failed=True)
    assert not again.done("c")
    assert list(tmp_path.glob("out.errors.jsonl.*.bak"))
    again.close()


def _failed(custom_id):
    return Result(custom_id, False, error={"code": "server_error", "message": "HTTP 500"}, attempts=5)


def test_accept_writes_only_ids_asked_for_once_and_into_one_file(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    store.expect("a", "d-a")
    store.expect("b")
    verdict = store.accept([_ok("a"), _ok("x"), _failed("b"), _ok("b"), _failed("a")])
    assert (verdict.ok, verdict.failed) == (1, 1)
    assert verdict.unknown == ["x"] and verdict.repeated == ["b", "a"] and verdict.refused == 3
    store.expect("c")
    assert store.accept([_ok("c")]).ok == 1
    store.close()
    out = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    errors = [orjson.loads(line) for line in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()]
    assert [r["custom_id"] for r in out] == ["a", "c"] and [r["custom_id"] for r in errors] == ["b"]
    assert out[0]["request_digest"] == "d-a" and "request_digest" not in errors[0]


def test_accept_refuses_an_id_answered_by_an_earlier_run(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    store.expect("a")
    store.accept([_ok("a")])
    store.close()
    again = ResultStore(tmp_path / "out.jsonl")
    again.open()
    verdict = again.accept([_ok("a")])
    again.close()
    assert verdict.repeated == ["a"] and verdict.ok == 0
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 1


def test_a_failed_write_accepts_nothing(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    store.expect("a")

    def full(fd, data):
        raise OSError(28, "No space left on device")

    store.write = full
    with pytest.raises(OutputError):
        store.accept([_ok("a")])
    store.write = ResultStore(tmp_path / "other.jsonl").write
    assert store.accept([_ok("a")]).ok == 1
    store.expect("b")
    store.expect("c")
    writes = []

    def errors_file_full(fd, data):
        writes.append(data)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        os.write(fd, data)

    store.write = errors_file_full
    with pytest.raises(OutputError):
        store.accept([_ok("b"), _failed("c")])  # the output's line is written, then the errors file fails
    store.close()
    assert [orjson.loads(x)["custom_id"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines()] == ["a"]


def test_a_second_store_on_the_same_file_under_another_name_is_refused(tmp_path):
    from odie_async.exceptions import ConfigError

    real = tmp_path / "real" / "out.jsonl"
    real.parent.mkdir()
    first = ResultStore(real)
    first.open()
    (tmp_path / "link.jsonl").symlink_to(real)
    (tmp_path / "linked").symlink_to(real.parent, target_is_directory=True)
    os.link(real, tmp_path / "hard.jsonl")
    for other in (tmp_path / "link.jsonl", tmp_path / "linked" / "out.jsonl", tmp_path / "hard.jsonl"):
        with pytest.raises(ConfigError, match="in use by another run"):
            ResultStore(other).open()
    first.close()
    again = ResultStore(tmp_path / "link.jsonl")
    again.open()
    assert again.errors == real.with_name("out.errors.jsonl")  # beside the real file, whatever the name
    again.close()


def test_a_compaction_left_by_a_killed_resend_is_finished_by_the_next_store(tmp_path):
    out = tmp_path / "out.jsonl"
    store = ResultStore(out)
    store.open()
    for cid in "abc":
        store.expect(cid, "old")
    store.accept([_ok("a"), _ok("b"), _failed("c")])
    store.close()
    killed = ResultStore(out)
    killed.open()
    killed.resend({"a", "c"})
    killed.expect("a", "new")
    killed.expect("c", "new")
    killed.accept([_ok("a"), _ok("c")])  # then SIGKILL: no close, no compaction
    killed._close_fds()
    killed._unlock()
    assert len(out.read_bytes().splitlines()) == 4
    after = ResultStore(out)
    after.open()
    after.close()
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in lines) == ["a", "b", "c"]
    assert {r["custom_id"]: r.get("request_digest") for r in lines} == {"a": "new", "b": "old", "c": "new"}
    assert not (tmp_path / "out.errors.jsonl").read_bytes() and not list(tmp_path.glob("*.compacting"))
