"""Whether to ask for structured outputs: the ``structured`` switch and the ``auto`` probe.

``auto`` sends one small request with a ``json_schema`` response format and a
prompt that would not produce that JSON by itself: an endpoint that answers
with matching JSON honours the field; an error or prose means prompt-and-parse.
The probe goes through the engine like any request, so a rerun reuses its answer.
"""

from __future__ import annotations

from ..engine.core import Engine
from .config import PipelineConfig
from .context import digest
from .parsers import load_json
from .schemas import PROBE_SCHEMA, response_format

PROBE_PROMPT = "Is the sky blue on a clear day? Reply in one sentence, and say how many words 'one two three' has."


def probe_body(config: PipelineConfig, model: str | None) -> dict:
    """The probe request."""
    body = {
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
        "temperature": 0.0,
        "max_tokens": 32,
        "response_format": response_format("odie_probe", PROBE_SCHEMA, config.endpoint),
    }
    if model:
        body["model"] = model
    return body


def honoured(content: str | None) -> bool:
    """Whether a probe answer is the JSON the schema asks for."""
    data = load_json(content or "")
    return isinstance(data, dict) and set(data) == {"answer", "count"} and data["answer"] in ("yes", "no") and data["count"] == 3


async def resolve_structured(engine: Engine, config: PipelineConfig, model: str | None) -> tuple[bool, str]:
    """``(use structured outputs, why)`` for the configured switch."""
    setting = config.endpoint.structured
    if setting != "auto":
        return setting == "on", f"structured: {setting} in the config"
    body = probe_body(config, model)
    result = await engine.call(f"probe:structured:{digest(body)}", body)
    if not result.ok:
        return False, f"auto: the endpoint refused response_format ({(result.error or {}).get('code', 'error')})"
    if honoured(result.content):
        return True, "auto: the endpoint honoured response_format"
    return False, "auto: the endpoint ignored response_format"
