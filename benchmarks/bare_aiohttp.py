"""The baseline client: a bare aiohttp loop over an input file (no limiter, no checkpoint).

Usage: python benchmarks/bare_aiohttp.py INPUT.jsonl BASE_URL CONCURRENCY [uvloop|asyncio]
Prints {"requests", "ok", "wall_s"} as JSON.
"""

import asyncio
import sys
import time

import aiohttp
import orjson


async def main(path: str, base_url: str, concurrency: int) -> dict:
    with open(path, "rb") as handle:
        bodies = (orjson.dumps(orjson.loads(line)["body"]) for line in handle)
        ok = 0
        url = base_url.rstrip("/") + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:

            async def worker() -> None:
                nonlocal ok
                for body in bodies:
                    async with session.post(url, data=body) as resp:
                        await resp.read()
                        ok += resp.status == 200

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return {"ok": ok, "wall_s": time.perf_counter() - start}


if __name__ == "__main__":
    path, url, conc = sys.argv[1], sys.argv[2], int(sys.argv[3])
    loop_kind = sys.argv[4] if len(sys.argv) > 4 else "uvloop"
    if loop_kind == "uvloop":
        import uvloop

        result = uvloop.run(main(path, url, conc))
    else:
        result = asyncio.run(main(path, url, conc))
    print(orjson.dumps(result | {"loop": loop_kind}).decode())
