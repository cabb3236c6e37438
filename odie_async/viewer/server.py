"""The viewer's HTTP server (aiohttp): a JSON API over the given runs, and the page's static files.

Runs and files are addressed by their number and name in the list the server
was started with; no parameter is ever joined to a path, so nothing outside
those files can be read. Bound beyond loopback, every request needs the
server's random token (in the URL it prints, then a cookie); on loopback the
``Host`` header must name loopback, which defeats DNS rebinding.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from importlib import resources

from aiohttp import web

from . import api
from .runs import Run

STATIC = {  # name -> content type; the only static files served
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "bench.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
COOKIE = "odie_view_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
TOKEN = web.AppKey("token", str)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def guard(request: web.Request, handler):
    """Token (beyond loopback) or loopback ``Host``; security headers on every answer."""
    token = request.app[TOKEN]
    if token:
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPForbidden(text="a valid token is required: use the URL odie view printed")
    elif request.host.rsplit(":", 1)[0] not in LOOPBACK_NAMES:
        raise web.HTTPForbidden(text="this server answers only requests for 127.0.0.1 or localhost")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    if token and request.query.get("token"):
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
    if isinstance(response, web.HTTPException):
        raise response
    return response


async def static(request: web.Request) -> web.Response:
    """One of the page's files, from the package."""
    name = request.match_info.get("name", "index.html")
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("odie_async.viewer").joinpath("static", name).read_bytes()
    return web.Response(body=body, headers={"Content-Type": STATIC[name]})


def make_app(runs: list[Run], token: str = "") -> web.Application:
    """The viewer's application over ``runs``; ``token`` empty on loopback."""
    app = web.Application(middlewares=[guard])
    app[TOKEN] = token
    app.router.add_get("/", static)
    app.router.add_get("/static/{name}", static)
    api.add_routes(app, runs)
    return app


async def serve(runs: list[Run], host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving; ``(runner, URL to open)``. A random token guards any address beyond loopback."""
    token = "" if is_loopback(host) else secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(runs, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    return runner, url


async def serve_forever(runs: list[Run], host: str, port: int, on_ready=print) -> None:
    """Serve until cancelled."""
    runner, url = await serve(runs, host, port)
    on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
