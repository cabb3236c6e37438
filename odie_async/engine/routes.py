"""The routes of OpenAI's Batch API, and what the engine reads from each one's answers.

``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings`` and
``/v1/moderations``: what a 2xx body must hold to be kept, its text, and its token usage
(``prompt_tokens``/``completion_tokens``, or the Responses API's ``input_tokens``/``output_tokens``).
"""

from __future__ import annotations

from ..exceptions import MalformedResponseError

SUPPORTED_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/moderations")
# The list a 2xx answer of each route must carry (by the path's last segment).
_REQUIRED_LIST = {"completions": "choices", "responses": "output", "embeddings": "data", "moderations": "results"}
_COUNTS = ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens")


def input_texts(value) -> list[str]:
    """The texts of an ``input`` field: a string, a list of strings, or a list of message items."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    texts = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            content = item.get("content", item.get("text", ""))
            texts.append(content if isinstance(content, str) else " ".join(
                part.get("text", "") for part in content if isinstance(part, dict)))
    return texts


def check_shape(path: str, body: dict) -> None:
    """Raise ``MalformedResponseError`` when a 2xx ``body`` lacks what its route must carry."""
    usage = body.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise MalformedResponseError(f"'usage' is a {type(usage).__name__}, not an object")
        for name in _COUNTS:
            value = usage.get(name)
            if value is not None and (type(value) is not int or value < 0):
                raise MalformedResponseError(f"'usage.{name}' is {value!r}, not a count")
    key = _REQUIRED_LIST.get(path.rstrip("/").rsplit("/", 1)[-1])
    if key is None:
        return
    items = body.get(key)
    if not isinstance(items, list) or (key == "choices" and not items):
        raise MalformedResponseError(f"response has no '{key}'")


def usage_tokens(usage) -> tuple[int, int]:
    """``(prompt, completion)`` tokens of an answer's ``usage``, whichever route's names it uses."""
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    return prompt, completion


def requested_output_tokens(body: dict, default: int) -> int:
    """The most output a request asks for, under any route's name for it."""
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
               or default)


def answer_text(body) -> str | None:
    """The answer's text: the first choice's (chat or completions), or a response's output text."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message.get("content") if isinstance(message, dict) else choices[0].get("text")
    output = body.get("output")
    if isinstance(output, list):
        texts = [part.get("text", "") for item in output if isinstance(item, dict)
                 for part in item.get("content") or [] if isinstance(part, dict) and part.get("type") == "output_text"]
        return "".join(texts) if texts else None
    return None
