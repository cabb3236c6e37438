"""A naive provider-batch client, the baseline of ``bench_batch_crash.py``: submit, then record.

    python benchmarks/naive_batch.py IN.jsonl OUT.jsonl BASE_URL [--chunk N]

It does what a straightforward client does: for each chunk, upload and
create the batch (retrying a create that got no answer, as SDKs do), and only
when the create call has returned append ``{"chunk", "batch_id"}`` to
``OUT.state.jsonl``; it then polls, appends each chunk's results to OUT and
records the chunk as collected. On restart, a chunk with no record is
submitted again. The HTTP calls are odie's own (``OpenAIBatches``), so the
only difference from ``odie batch --mode provider-batch`` is the order of
recording and calling. It honours the same ``ODIE_BATCH_KILL_AT`` hook at
``created`` (after create returned, before the record), ``poll`` and ``write``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from pathlib import Path

import orjson

from odie_async.engine.batchfile import BatchReader
from odie_async.exceptions import RequestError
from odie_async.providers.base import Chunk
from odie_async.providers.chunks import encode_line
from odie_async.providers.journal import crashpoint
from odie_async.providers.openai import OpenAIBatches


def chunks_of(inp: Path, size: int, workdir: Path) -> list[Chunk]:
    """The input split into files of ``size`` lines."""
    workdir.mkdir(exist_ok=True)
    lines = [encode_line(line) for line in BatchReader(inp)]
    chunks = []
    for index, start in enumerate(range(0, len(lines), size)):
        data = b"".join(lines[start : start + size])
        path = workdir / f"chunk-{index}.jsonl"
        path.write_bytes(data)
        chunks.append(Chunk(str(index), path, hashlib.sha256(data).hexdigest(), data.count(b"\n"),
                            "/v1/chat/completions", "mock-model"))
    return chunks


async def create_with_retries(api: OpenAIBatches, chunk: Chunk, file_id: str) -> str:
    """Create, and on an error create again (what a client with retries does)."""
    for attempt in range(3):
        try:
            return await api.create(chunk, file_id)
        except RequestError:
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


def append(results, block: list[bytes]) -> None:
    """Append a block of result lines (the ``write`` crash point comes first)."""
    crashpoint("write")
    results.write(b"".join(block))
    results.flush()


async def main(inp: Path, out: Path, url: str, size: int) -> None:
    state_path = out.with_name(out.stem + ".state.jsonl")
    state = [orjson.loads(line) for line in state_path.read_bytes().splitlines()] if state_path.exists() else []
    batches = {s["chunk"]: s["batch_id"] for s in state if "batch_id" in s}
    collected = {s["chunk"] for s in state if s.get("collected")}
    chunks = chunks_of(inp, size, out.with_name(out.stem + ".chunks"))
    with open(state_path, "ab") as record, open(out, "ab") as results:
        async with OpenAIBatches(url, None, "naive") as api:
            for chunk in chunks:
                if chunk.key not in batches:
                    file_id = await api.upload(chunk)
                    batches[chunk.key] = await create_with_retries(api, chunk, file_id)
                    crashpoint("created")
                    record.write(orjson.dumps({"chunk": chunk.key, "batch_id": batches[chunk.key]}) + b"\n")
                    record.flush()
            for chunk in chunks:
                if chunk.key in collected:
                    continue
                while not (status := await api.retrieve(batches[chunk.key])).terminal:
                    crashpoint("poll")
                    await asyncio.sleep(0.05)
                block = []
                async for custom_id, result, _why in api.results(status, chunk):
                    if result is not None:
                        block.append(result.to_line(custom_id))
                    if len(block) == 256:
                        append(results, block)
                        block = []
                append(results, block)
                record.write(orjson.dumps({"chunk": chunk.key, "collected": True}) + b"\n")
                record.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("base_url")
    parser.add_argument("--chunk", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.input, args.output, args.base_url, args.chunk))
