"""``odie generate``'s ledger: every planned record ends kept, dropped with a reason, or never made."""

import asyncio

import orjson

from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.pipeline.run import generate

from .pipeline_support import make_config, responder


def test_every_planned_record_has_a_fate_matching_the_files(tmp_path):
    config = make_config(tmp_path, structured="off", records=12)

    async def go():
        async with MockServer(settings=MockSettings(fault_rate=0.1, seed=5, faults=("500", "malformed")),
                              responder=responder()) as server:
            config.endpoint.base_url = server.base_url
            return await generate(config, tmp_path / "out", show_progress=False, handle_signals=False)

    summary = asyncio.run(go())
    dropped = [orjson.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_bytes().splitlines()]
    for variant, name in (("plain", "train.jsonl"), ("cot", "train_cot.jsonl")):
        entry = summary["ledger"][variant]
        assert entry["unaccounted"] == 0
        assert entry["kept"] + entry["dropped"] + entry["never_made"] == entry["planned"] == 12
        assert entry["kept"] == len((tmp_path / "out" / name).read_bytes().splitlines())
        assert entry["dropped"] == sum(1 for d in dropped if d["variant"] == variant and d["reason"])
