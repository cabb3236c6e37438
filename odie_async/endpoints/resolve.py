"""Which endpoint a command talks to, decided once: a URL, the in-process mock, or the embedded model.

``resolve_endpoint`` is a context manager (``with`` or ``async with``) that yields an
``Endpoint``: with a URL nothing is started (the model is found at ``/models`` when
asked to discover it); with ``mock`` a loopback mock server runs for the scope; with
nothing, vLLM serves the embedded model (or ``serve_model`` and its adapters) on a
free loopback port until the scope ends. Keys come from the environment only.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..exceptions import ConfigError
from .embedded import EMBEDDED

MOCK = "mock"
MOCK_MODEL = "mock-model"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class Endpoint:
    """Where to send chat completions: base URL, model name, key and served adapters."""

    base_url: str
    model: str | None
    api_key: str | None = None
    adapters: tuple[str, ...] = ()


def discover_model(base_url: str, api_key: str | None) -> str | None:
    """The first model an endpoint lists at ``/models`` (None when it lists none)."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            models = json.load(response).get("data") or []
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"no model is set and {base_url}/models did not answer ({exc})") from exc
    return models[0].get("id") if models else None


class EndpointScope:
    """Context manager (sync or async) yielding an ``Endpoint``; made by ``resolve_endpoint``."""

    def __init__(self, endpoint: Endpoint, server=None, mock: bool = False,
                 mock_responder: Callable[[dict], str] | None = None, discover: bool = False) -> None:
        self._endpoint, self._server, self._discover = endpoint, server, discover
        self._mock, self._responder, self._mock_server = mock, mock_responder, None

    def _with_model(self, endpoint: Endpoint) -> Endpoint:
        if endpoint.model or not self._discover:
            return endpoint
        return replace(endpoint, model=discover_model(endpoint.base_url, endpoint.api_key))

    def _served(self) -> Endpoint:
        s = self._server
        return Endpoint(s.base_url, self._endpoint.model or s.model_name, s.api_key, tuple(s.settings.loras))

    def __enter__(self) -> Endpoint:
        if self._mock:
            raise ConfigError("the mock endpoint runs inside an event loop: use `async with`")
        if self._server is None:
            return self._with_model(self._endpoint)
        self._server.start()
        return self._served()

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()

    async def __aenter__(self) -> Endpoint:
        if self._mock:
            from .mock_server import MockServer

            self._mock_server = MockServer(responder=self._responder)
            await self._mock_server.__aenter__()
            return Endpoint(self._mock_server.base_url, self._endpoint.model or MOCK_MODEL)
        if self._server is None:
            return await asyncio.to_thread(self._with_model, self._endpoint)
        await self._server.__aenter__()
        return self._served()

    async def __aexit__(self, *exc) -> None:
        if self._mock_server is not None:
            mock, self._mock_server = self._mock_server, None
            await mock.__aexit__(*exc)
        if self._server is not None:
            await self._server.__aexit__(*exc)


def resolve_endpoint(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    *,
    discover: bool = False,
    mock_responder: Callable[[dict], str] | None = None,
    serve_model: str = EMBEDDED,
    loras: dict[str, str] | None = None,
    max_model_len: int | None = None,
    expected_output_tokens: int | None = None,
) -> EndpointScope:
    """An endpoint to call: the configured URL, the loopback mock, or a vLLM server started for the scope.

    - ``base_url`` a URL: nothing starts; with ``discover`` and no ``model`` the first model
      the endpoint lists at ``/models`` is used.
    - ``base_url == "mock"``: the loopback mock answers (through ``mock_responder`` when given).
    - no ``base_url``: ``serve_model`` (the embedded model by default) and ``loras`` are served
      on a free loopback port; the yielded ``model`` is the served base model's name unless
      ``model`` names another, and each adapter is requested by its name in ``adapters``.
      ``expected_output_tokens`` (the job's size) lets a short job start vLLM in eager mode.
    """
    if base_url == MOCK:
        return EndpointScope(Endpoint(MOCK, model), mock=True, mock_responder=mock_responder)
    if base_url:
        return EndpointScope(Endpoint(base_url, model, api_key), discover=discover)
    from .serve import ServeSettings, VLLMServer

    settings = ServeSettings(model=serve_model, loras=dict(loras or {}), max_model_len=max_model_len,
                             expected_output_tokens=expected_output_tokens)
    return EndpointScope(Endpoint("", model), server=VLLMServer(settings))

