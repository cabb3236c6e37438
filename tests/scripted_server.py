"""A loopback server answering from a script of statuses, for fault tests."""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import web

OK = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class ScriptedServer:
    """Answers each request with the next ``(status, headers)`` of ``script``, then 200s."""

    def __init__(self, script=(), default: int = 200) -> None:
        self.script = deque(script)
        self.default = default
        self.seen: list[dict] = []
        self.times: list[float] = []

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": dict(request.headers), "body": await request.json()})
        self.times.append(asyncio.get_running_loop().time())
        status, headers = self.script.popleft() if self.script else (self.default, {})
        if status == 200:
            return web.json_response(OK, headers=headers)
        return web.json_response({"error": {"message": f"scripted {status}"}}, status=status, headers=headers)

    async def __aenter__(self) -> "ScriptedServer":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._runner.cleanup()
