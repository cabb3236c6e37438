"""distilabel: a ``Pipeline`` of ``LoadDataFromDicts`` >> ``TextGeneration(llm=OpenAILLM(base_url=...))``.

Concurrency is ``input_batch_size`` (each batch goes out as one ``asyncio.gather``);
retries and timeout are ``OpenAILLM``'s ``max_retries``/``timeout`` (the openai
client's own backoff, which honours ``Retry-After``). distilabel has no RPM/TPM
setting. ``use_cache=True`` with the pipeline's ``cache_dir`` is its checkpoint:
a rerun recovers the batches already written there.
"""

import json
import logging

from common import API_KEY, MODEL, meter, parse_args, read_input
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration


def build(args, rows: list[dict], max_tokens: int) -> Pipeline:
    llm = OpenAILLM(model=MODEL, base_url=args.base_url, api_key=API_KEY, max_retries=args.max_attempts - 1,
                    timeout=int(args.timeout), generation_kwargs={"max_new_tokens": max_tokens})
    with Pipeline(name="odie-bench-peers", cache_dir=args.state_dir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=args.concurrency)
        generate = TextGeneration(llm=llm, input_batch_size=args.concurrency)
        load >> generate
    return pipeline


if __name__ == "__main__":
    options = parse_args(__doc__)
    records = read_input(options.input)
    rows = [{"custom_id": r.custom_id, "instruction": r.prompt} for r in records]
    pipeline = build(options, rows, records[0].max_tokens)
    with meter():
        distiset = pipeline.run(use_cache=True, logging_handlers=[logging.NullHandler()])
        with open(options.output, "w", encoding="utf-8") as out:
            for row in distiset["default"]["train"]:
                out.write(json.dumps({"custom_id": row["custom_id"], "content": row["generation"]}) + "\n")
