"""LiteLLM's Router over several endpoints: one deployment per endpoint with its own ``rpm``.

    run_litellm_pool.py --input IN --output OUT --endpoints '[{"base_url": ..., "rpm": ...}, ...]'
        --strategy least-busy|usage-based-routing-v2 --concurrency C

Answers are appended as they arrive, one ``{"custom_id", "content"}`` line each; failures are
counted by exception type. LiteLLM keeps no checkpoint.
"""

import argparse
import asyncio
import json
from collections import Counter

import litellm
from common import API_KEY, MODEL, meter, read_input

litellm.suppress_debug_info = True
litellm.telemetry = False


def router(endpoints: list[dict], strategy: str, attempts: int, timeout: float) -> "litellm.Router":
    model_list = [{"model_name": MODEL, "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": e["base_url"], "api_key": API_KEY, "rpm": int(e["rpm"]),
        "timeout": timeout}} for e in endpoints]
    return litellm.Router(model_list=model_list, routing_strategy=strategy, num_retries=attempts - 1,
                          enable_pre_call_checks=True)


async def run(args) -> None:
    records = read_input(args.input)
    pool = router(json.loads(args.endpoints), args.strategy, args.max_attempts, args.timeout)
    gate = asyncio.Semaphore(args.concurrency)
    with open(args.output, "a", encoding="utf-8") as out:

        async def one(record) -> None:
            async with gate:
                response = await pool.acompletion(model=MODEL, messages=record.messages, max_tokens=record.max_tokens)
            out.write(json.dumps({"custom_id": record.custom_id, "content": response.choices[0].message.content}) + "\n")

        results = await asyncio.gather(*(one(r) for r in records), return_exceptions=True)
    failed = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    print(f"{len(records) - sum(failed.values())} answered; failed: {json.dumps(failed)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--input", "--output", "--endpoints", "--strategy"):
        parser.add_argument(name, required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    options = parser.parse_args()
    with meter():
        asyncio.run(run(options))
