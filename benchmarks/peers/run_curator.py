"""bespokelabs-curator: a ``curator.LLM`` subclass on the ``openai`` backend with ``backend_params``.

Concurrency, RPM, TPM, retries and timeout go in ``backend_params`` at the harness's
numbers (no limit is given as 10^9: without a number, curator falls back to its
default limits). Its cache (``CURATOR_CACHE_DIR``) is its checkpoint: a rerun
skips the responses already written there. Before the records it sends one probe
request with empty ``messages`` to read rate-limit headers.
"""

import json

from bespokelabs import curator
from common import API_KEY, MODEL, meter, parse_args, read_input

UNLIMITED = 10**9


class Extract(curator.LLM):
    """One record in, its completion out."""

    def prompt(self, row: dict) -> str:
        return row["prompt"]

    def parse(self, row: dict, response: str) -> dict:
        return {"custom_id": row["custom_id"], "content": response}


def backend_params(args) -> dict:
    return {
        "base_url": args.base_url, "api_key": API_KEY,
        "max_concurrent_requests": args.concurrency,
        "max_requests_per_minute": int(args.rpm) or UNLIMITED,
        "max_tokens_per_minute": int(args.tpm) or UNLIMITED,
        "max_retries": args.max_attempts - 1, "request_timeout": int(args.timeout),
        "require_all_responses": False,
    }


if __name__ == "__main__":
    options = parse_args(__doc__)
    rows = [{"custom_id": r.custom_id, "prompt": r.prompt} for r in read_input(options.input)]
    max_tokens = read_input(options.input)[0].max_tokens
    llm = Extract(model_name=MODEL, backend="openai", backend_params=backend_params(options),
                  generation_params={"max_tokens": max_tokens})
    with meter():
        result = llm(rows)
        dataset = getattr(result, "dataset", result)
        with open(options.output, "w", encoding="utf-8") as out:
            for row in dataset:
                out.write(json.dumps({"custom_id": row["custom_id"], "content": row["content"]}) + "\n")
