"""The viewer's HTTP server (aiohttp): a JSON API over the given runs, and the page's static files.

Runs and files are addressed by their number and name in the list the server
was started with; no parameter is ever joined to a path, so nothing outside
those files can be read. Bound beyond loopback, every request needs the
server's random token (in the URL it prints, then a cookie); on loopback the
``Host`` header must name loopback (``localhost`` or a loopback address), which
defeats DNS rebinding. A request whose ``Origin`` or ``Sec-Fetch-Site`` shows
another site is refused everywhere: no web page can send the viewer work.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from importlib import resources

from aiohttp import web

from . import json_api as api
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


def host_name(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _cross_site(request: web.Request) -> bool:
    """Whether the browser says another site sent this request."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin != f"{request.scheme}://{request.host}"


@web.middleware
async def guard(request: web.Request, handler):
    """Token (beyond loopback) or a loopback ``Host``; nothing another site sent."""
    token = request.app[TOKEN]
    if _cross_site(request):
        raise web.HTTPForbidden(text="requests from other sites are refused")
    if token:
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPForbidden(text="a valid token is required: use the URL odie view printed")
    elif not _loopback_name(host_name(request.host)):
        raise web.HTTPForbidden(text="this server answers only requests for localhost or a loopback address")
    return await handler(request)


def _loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address literal: names a DNS answer cannot rebind."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer (errors too), set before it is sent."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    token = request.app[TOKEN]
    if token and request.query.get("token") and hmac.compare_digest(request.query["token"].encode(), token.encode()):
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")


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
    app.on_response_prepare.append(_headers)
    app.router.add_get("/", static)
    app.router.add_get("/static/{name}", static)
    api.add_routes(app, runs)
    return app


def check_address(host: str, port: int) -> None:
    """``ValueError`` naming a bind address or port that cannot be served."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: not a port (0 to 65535; 0 picks a free one)")
    if host.lower() == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host {host!r}: not an IP address or localhost") from None


def url_for(host: str, port: int, token: str) -> str:
    """The URL a browser on this machine opens: an address that listens on all is reached through loopback."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


async def serve(runs: list[Run], host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving; ``(runner, URL to open)``. A random token guards any address beyond loopback."""
    check_address(host, port)
    token = "" if is_loopback(host) else secrets.token_urlsafe(24)
    runner = web.AppRunner(make_app(runs, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, url_for(host, runner.addresses[0][1], token)


async def serve_forever(runs: list[Run], host: str, port: int, on_ready=print) -> None:
    """Serve until cancelled."""
    runner, url = await serve(runs, host, port)
    on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
