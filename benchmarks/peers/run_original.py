"""The original project's approach: one request at a time, the whole output file rewritten after each record.

As its generation scripts do: ``requests.post`` with no timeout, any non-200 answer
or connection error sleeps 20 s and tries again (forever), and a rerun resumes at
index ``len(done)`` of the JSON list it reads back.
"""

import json
import os
import time

import requests
from common import API_KEY, MODEL, meter, parse_args, read_input

RETRY_SLEEP_S = 20.0


def complete(url: str, messages: list, max_tokens: int) -> str:
    """POST until a 200 arrives, sleeping 20 s after each failure."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    data = {"model": MODEL, "messages": messages, "max_tokens": max_tokens}
    while True:
        try:
            response = requests.post(url, headers=headers, data=json.dumps(data))
            if response.status_code == 200:
                return response.json()["choices"][0]["message"]["content"]
            time.sleep(RETRY_SLEEP_S)
        except requests.exceptions.RequestException as exc:
            print(f"Error: {exc}", flush=True)
            time.sleep(RETRY_SLEEP_S)


def load_data(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return json.load(handle)


def save_data(path: str, data: list) -> None:
    with open(path, "w") as handle:
        handle.write(json.dumps(data, indent=4))


if __name__ == "__main__":
    args = parse_args(__doc__)
    records = read_input(args.input)
    done = load_data(args.output)
    url = args.base_url.rstrip("/") + "/chat/completions"
    with meter():
        for record in records[len(done):]:
            done.append({"custom_id": record.custom_id, "content": complete(url, record.messages, record.max_tokens)})
            save_data(args.output, done)
