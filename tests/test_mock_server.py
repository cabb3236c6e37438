import asyncio

import aiohttp
import jsonschema
import orjson

from odie_async.endpoints.mock_server import MockServer, MockSettings, TokenBucket, count_tokens
from tests.helpers import run

SCHEMA = {
    "type": "object",
    "properties": {
        "headers": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2, "maxItems": 4},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["headers", "score", "kind"],
    "additionalProperties": False,
}


async def _post(session, url, body):
    async with session.post(url + "/chat/completions", json=body) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def test_content_is_deterministic_with_real_usage():
    body = {"model": "m", "messages": [{"role": "user", "content": "Extract the names, please."}], "max_tokens": 5}

    async def go():
        async with MockServer() as server, aiohttp.ClientSession() as session:
            return [await _post(session, server.base_url, body) for _ in range(2)]

    (s1, _, b1), (s2, _, b2) = run(go())
    one, two = orjson.loads(b1), orjson.loads(b2)
    assert s1 == s2 == 200
    assert one["choices"] == two["choices"]
    content = one["choices"][0]["message"]["content"]
    assert one["usage"]["completion_tokens"] == count_tokens(content) == 5
    assert one["usage"]["prompt_tokens"] == count_tokens("Extract the names, please.")


def test_json_schema_response_format_gets_schema_valid_content():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": SCHEMA}}}

    async def go():
        async with MockServer() as server, aiohttp.ClientSession() as session:
            return await _post(session, server.base_url, body)

    _, _, raw = run(go())
    jsonschema.validate(orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"]), SCHEMA)


def test_rate_limit_answers_429_with_retry_hints():
    async def go():
        async with MockServer(settings=MockSettings(rpm=600)) as server, aiohttp.ClientSession() as session:
            body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
            return await asyncio.gather(*(_post(session, server.base_url, body) for _ in range(15)))

    answers = run(go())
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 5  # a burst of one second's budget
    _, headers, _ = next(a for a in answers if a[0] == 429)
    assert float(headers["retry-after-ms"]) > 0 and int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "600"


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(6000, clock=lambda: now[0])
    assert all(bucket.take(1) == 0 for _ in range(100))
    assert bucket.take(1) > 0
    now[0] += 0.5
    assert sum(bucket.take(1) == 0 for _ in range(100)) == 50


def test_api_key_is_enforced_when_set():
    async def go():
        async with MockServer(settings=MockSettings(api_key="k1")) as server:
            body = {"messages": [{"role": "user", "content": "x"}]}
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer nope"}) as bad:
                denied = await _post(bad, server.base_url, body)
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer k1"}) as good:
                allowed = await _post(good, server.base_url, body)
            return denied[0], allowed[0]

    assert run(go()) == (401, 200)
