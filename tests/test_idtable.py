"""The compact id table, and the reader and store that share it."""

import pytest

from odie_async.engine import batchfile, idtable
from odie_async.engine.batchfile import BatchReader
from odie_async.engine.checkpoint import Result, ResultStore, request_digest
from odie_async.engine.idtable import DONE, FAILED, READ, IdTable, id_of
from odie_async.exceptions import DuplicateIdError
from tests.helpers import chat_line


def test_flags_are_set_cleared_and_absent_ids_have_none():
    table = IdTable(4)
    a, b = id_of("a"), id_of("b")
    assert table.update(a, DONE | FAILED) == 0 and len(table) == 1
    assert table.update(a, READ, FAILED) == DONE | FAILED
    assert table.flags(a) == DONE | READ and table.flags(b) == 0 and b not in table
    table.update(b, 0)
    assert b in table and table.flags(b) == 0 and len(table) == 2


def test_ids_whose_home_slots_meet_probe_past_each_other_and_wrap_around():
    table = IdTable(8)
    cap = table._cap
    keys = [k for k in range(16, 16 * cap * 50, 16) if k % cap == cap - 1][:3]  # three ids, one home: the last slot
    for n, key in enumerate(keys):
        table.update(key, DONE if n else READ)
    assert [table.flags(k) for k in keys] == [READ, DONE, DONE]
    assert table._slots[0] and table._slots[1]  # the second and third wrapped to the start


def test_the_table_grows_past_its_reserve_and_keeps_every_id_and_value():
    table = IdTable(10)
    ids = [id_of(f"req-{i}") for i in range(5000)]
    for n, key in enumerate(ids):
        table.update(key, DONE if n % 2 else FAILED)
        table.set_value(key, n + 1)
    assert len(table) == 5000 and table._cap > 5000 / idtable.MAX_LOAD
    assert all(table.flags(k) == (DONE if n % 2 else FAILED) for n, k in enumerate(ids))
    assert all(table.value(k) == n + 1 for n, k in enumerate(ids))
    assert table.value(id_of("absent")) == 0


def test_a_reserved_table_is_allocated_once_and_takes_about_ten_bytes_an_id():
    table = IdTable()
    table.reserve(100_000)
    slots = table._slots
    for i in range(100_000):
        table.update(id_of(f"req-{i}"), READ)
    assert table._slots is slots  # never grown, never copied
    assert table._values is None  # no value set: no second array
    assert len(slots) * slots.itemsize / 100_000 < 10


def _colliding(monkeypatch):
    """Every custom_id gets the same table id, as a hash collision would give them."""
    monkeypatch.setattr(batchfile, "id_of", lambda custom_id: 16)


def test_a_hash_collision_is_no_duplicate_and_a_true_duplicate_names_both_lines(tmp_path, monkeypatch):
    _colliding(monkeypatch)
    path = tmp_path / "in.jsonl"
    path.write_bytes(chat_line("a") + chat_line("b") + chat_line("c") + chat_line("b"))
    reader = BatchReader(path)
    read = []
    with pytest.raises(DuplicateIdError) as info:
        read.extend(line.custom_id for line in reader)
    assert read == ["a", "b", "c"]  # b and c collide with a, and are read
    assert (info.value.first_line, info.value.line_no) == (2, 4)


def test_the_reader_sizes_its_own_table_from_the_line_count(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(chat_line(f"r{i}") for i in range(1000)))
    reader = BatchReader(path)
    assert len(list(reader)) == 1000
    assert 1000 / idtable.MAX_LOAD <= reader._ids._cap < 1000 / idtable.MAX_LOAD + 2


def _ok(custom_id):
    return Result(custom_id, True, {"choices": []}, None, 200, "req", 1)


def _failed(custom_id):
    return Result(custom_id, False, error={"code": "server_error", "message": "HTTP 500"}, attempts=5)


def _earlier_run(tmp_path, digests: dict[str, str]) -> None:
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    for custom_id, digest in digests.items():
        store.expect(custom_id, digest)
    store.accept([_failed(c) if c.startswith("f") else _ok(c) for c in digests])
    store.close()


def test_a_resumed_store_skips_done_ids_and_tells_a_changed_request(tmp_path):
    same, other = request_digest("/v1/chat/completions", b"{}"), request_digest("/v1/chat/completions", b"[]")
    _earlier_run(tmp_path, {"a": same, "f": same, "old": ""})
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    assert store.done("a") and store.done("f") and store.done("old") and not store.done("new")
    assert store.failed_before("f") and not store.failed_before("a")
    assert not store.changed("a", same) and store.changed("a", other)
    assert not store.changed("old", other)  # its line has no digest: nothing to compare
    store.close()


def test_shared_table_reader_refuses_a_duplicate_of_a_done_id_and_store_refuses_a_second_result(tmp_path):
    _earlier_run(tmp_path, {"a": "d"})
    path = tmp_path / "in.jsonl"
    path.write_bytes(chat_line("a") + chat_line("b") + chat_line("c") + chat_line("b"))
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    reader = BatchReader(path, ids=store.share_ids(4))
    lines = iter(reader)
    assert next(lines).custom_id == "a" and store.done("a")  # done before: read once, no duplicate
    assert next(lines).custom_id == "b" and not store.done("b")
    store.expect("b", "d-b")
    assert store.accept([_ok("b")]).ok == 1
    verdict = store.accept([_ok("b"), _ok("x")])
    assert verdict.repeated == ["b"] and verdict.unknown == ["x"] and verdict.ok == 0
    assert next(lines).custom_id == "c"
    with pytest.raises(DuplicateIdError) as info:
        next(lines)
    assert (info.value.first_line, info.value.line_no) == (2, 4)
    store.close()
    assert [line.count(b'"b"') for line in (tmp_path / "out.jsonl").read_bytes().splitlines()] == [0, 1]


def test_a_store_of_its_own_still_knows_the_ids_accepted_since(tmp_path):
    store = ResultStore(tmp_path / "out.jsonl")
    store.open()
    assert not store.done("a")
    store.expect("a")
    store.expect("f")
    store.accept([_ok("a"), _failed("f")])
    assert store.done("a") and store.done("f") and store.failed_before("f") and not store.failed_before("a")
    store.close()
