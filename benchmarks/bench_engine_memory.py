"""Does the engine's memory stay flat with run length? Peak RSS after each checkpoint of one run.

    python benchmarks/bench_engine_memory.py [--checkpoints 1000000,2000000,5000000] [--json OUT.json]

One process pushes zero-latency requests through ``Engine`` (checkpointing on, the output written
to a temporary folder) over an in-process transport that answers at once, so the figure is the
engine's own bookkeeping (queue, workers, pool, watchdog, histograms, store), without sockets or
the input reader. It prints the peak RSS at each checkpoint and the growth per million requests;
the target is a peak within 50 MB between 1,000,000 and 5,000,000. ``bench_engine.py --only
memory_slope`` measures the same through ``odie batch`` and ``odie mock-server`` (slower).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from odie_async.engine.client import ChatClient  # noqa: E402
from odie_async.engine.core import Engine  # noqa: E402
from odie_async.engine.settings import EngineSettings  # noqa: E402

ANSWER = orjson.dumps({"id": "x", "object": "chat.completion", "model": "mock-model",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


class InstantTransport(ChatClient):
    """Answers every request at once with the same body, judged by ``ChatClient.reply``."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info) -> None:
        return None

    async def post(self, path: str, payload: bytes):
        await asyncio.sleep(0)
        return self.reply(path, 200, {}, ANSWER, time.perf_counter())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(checkpoints: list[int], folder: Path) -> list[dict]:
    settings = EngineSettings("http://127.0.0.1:1/v1", concurrency=256, learn_limits=False)
    points, start = [], time.perf_counter()
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "Extract item"}], "max_tokens": 16}
    async with Engine(settings, folder / "out.jsonl", keep_bodies=False,
                      client=InstantTransport(settings.base_url)) as engine:
        sent = 0
        for target in checkpoints:
            while sent < target:
                await engine.submit(f"req-{sent}", body)
                sent += 1
            await engine.join()
            point = {"requests": sent, "peak_rss_mb": round(peak_rss_mb(), 1),
                     "requests_per_s": round(sent / (time.perf_counter() - start))}
            points.append(point)
            print(orjson.dumps(point).decode(), file=sys.stderr, flush=True)
            (folder / "out.jsonl").write_bytes(b"")  # the store appends; disk stays small
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="1000000,2000000,5000000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoints = sorted(int(x) for x in args.checkpoints.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        points = asyncio.run(run(checkpoints, Path(tmp)))
    first, last = points[0], points[-1]
    growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    span = (last["requests"] - first["requests"]) / 1e6
    result = {"points": points, "growth_mb": round(growth, 1),
              "mb_per_million": round(growth / span, 1) if span else None,
              "target": "peak within 50 MB from 1,000,000 to 5,000,000"}
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
