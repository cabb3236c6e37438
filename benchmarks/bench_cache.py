"""The shared answer cache: what a hit costs against a round trip, and lookups at a million entries.

    python benchmarks/bench_cache.py [--records 5000] [--entries 1000000] [--json OUT.json]

1. ``odie batch`` of ``--records`` requests against the zero-latency mock, then the same file into
   a new output through ``--cache``, where every answer is a hit: client CPU per record (user +
   system time of the ``odie batch`` process over the records) for each.
2. A cache filled to 1,000, 100,000 and ``--entries`` entries: microseconds per lookup of a random
   stored key (median of 2,000), so a flat figure means lookups do not slow as the cache grows.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

ODIE = [sys.executable, "-m", "odie_async"]


def _requests(path: Path, n: int) -> None:
    import orjson

    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                            "body": {"model": "mock-model", "max_tokens": 16, "messages": [
                                                {"role": "user", "content": f"question {i}"}]}}) + b"\n"
                              for i in range(n)))


def _batch_cpu(inp: Path, out: Path, url: str, *extra: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(ODIE + ["batch", str(inp), "-o", str(out), "--base-url", url, "--no-progress", *extra],
                   check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def hit_against_round_trip(tmp: Path, n: int) -> dict:
    port = 18000 + os.getpid() % 1000
    mock = subprocess.Popen(ODIE + ["mock-server", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    mock.stdout.readline()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        inp = tmp / "in.jsonl"
        _requests(inp, n)
        sent = _batch_cpu(inp, tmp / "sent.jsonl", url, "--cache", str(tmp / "cache"))
        hits = _batch_cpu(inp, tmp / "hits.jsonl", url, "--cache", str(tmp / "cache"))
        plain = _batch_cpu(inp, tmp / "plain.jsonl", url)
    finally:
        mock.terminate()
        mock.wait()
    per = lambda seconds: round(seconds / n * 1e6, 1)  # noqa: E731
    return {"records": n, "round_trip_no_cache_us": per(plain), "round_trip_filling_cache_us": per(sent),
            "cache_hit_us": per(hits), "note": "client CPU per record, process start included"}


def lookups(tmp: Path, sizes: list[int]) -> dict:
    from odie_async.engine.answer_cache import AnswerCache

    cache = AnswerCache(tmp / "big")
    stored, figures = 0, {}
    body = b'{"choices": [{"message": {"content": "' + b"x" * 200 + b'"}}]}'
    for size in sizes:
        with cache._db:  # one transaction per fill step: filling is not what is measured
            cache._db.executemany("INSERT INTO answers (key, body, created) VALUES (?, ?, ?)",
                                  ((f"{i:064x}:0", body, time.time()) for i in range(stored, size)))
        stored = size
        keys = [f"{random.randrange(size):064x}:0" for _ in range(2000)]
        times = []
        for key in keys:
            start = time.perf_counter()
            assert cache.get(key) is not None
            times.append(time.perf_counter() - start)
        figures[str(size)] = round(statistics.median(times) * 1e6, 2)
    return {"lookup_median_us_by_entries": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="odie-bench-cache-") as tmp:
        tmp = Path(tmp)
        report = {"load_average": os.getloadavg()} | hit_against_round_trip(tmp, args.records)
        report |= lookups(tmp, sorted({1000, 100_000, args.entries}))
    emit(report, args.json)


if __name__ == "__main__":
    main()
