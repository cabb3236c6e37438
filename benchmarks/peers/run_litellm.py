"""LiteLLM: ``acompletion(api_base=...)`` under an ``asyncio.Semaphore``, each answer appended as it arrives.

With ``--rpm``/``--tpm`` it goes through a ``Router`` whose one deployment carries those
limits with ``enable_pre_call_checks`` (LiteLLM's documented way to hold a rate limit).
LiteLLM keeps no checkpoint: a rerun sends every record again.
"""

import asyncio
import json
from collections import Counter

import litellm
from common import API_KEY, MODEL, meter, parse_args, read_input

litellm.suppress_debug_info = True
litellm.telemetry = False


def completer(args):
    """``acompletion`` with the endpoint, retries and timeout filled in (a Router when limits are set)."""
    params = {"model": f"openai/{MODEL}", "api_base": args.base_url, "api_key": API_KEY, "timeout": args.timeout}
    if not (args.rpm or args.tpm):
        return lambda **kw: litellm.acompletion(**params, num_retries=args.max_attempts - 1, **kw)
    limits = {k: int(v) for k, v in (("rpm", args.rpm), ("tpm", args.tpm)) if v}
    router = litellm.Router(model_list=[{"model_name": MODEL, "litellm_params": params | limits}],
                            num_retries=args.max_attempts - 1, enable_pre_call_checks=True)
    return lambda **kw: router.acompletion(model=MODEL, **kw)


async def run(args) -> None:
    records = read_input(args.input)
    complete = completer(args)
    gate = asyncio.Semaphore(args.concurrency)
    with open(args.output, "a", encoding="utf-8") as out:

        async def one(record) -> None:
            async with gate:
                response = await complete(messages=record.messages, max_tokens=record.max_tokens)
            content = response.choices[0].message.content
            out.write(json.dumps({"custom_id": record.custom_id, "content": content}) + "\n")

        results = await asyncio.gather(*(one(r) for r in records), return_exceptions=True)
    failed = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    print(f"{len(records) - sum(failed.values())} answered; failed: {json.dumps(failed)}", flush=True)


if __name__ == "__main__":
    options = parse_args(__doc__)
    with meter():
        asyncio.run(run(options))
