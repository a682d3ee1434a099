"""Pure-ASGI guards wrapped around the whole app (API, docs and web UI alike), and the connection guard.

They are ASGI middlewares rather than FastAPI dependencies so that nothing mounted later (the
Gradio UI, its websockets and file routes) can be reached around them. Credentials and the body size
are `create_app`'s; the guards of a listening socket (loopback `Host` names, requests in progress, the
header timeout of `HeaderTimeoutProtocol`) are `app.uvicorn_options`'s, which `animegen serve` runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets

from uvicorn.protocols.http.h11_impl import H11Protocol


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": payload})


class AuthMiddleware:
    """Require HTTP basic credentials (`user:pass` pairs) or `Authorization: Bearer <token>`.

    Comparisons use `secrets.compare_digest` so response time does not leak the password.
    """

    def __init__(self, app, credentials: list[tuple[str, str]], token: str | None):
        self.app = app
        self.credentials = credentials
        self.token = token

    def _allowed(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.decode("latin-1").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return secrets.compare_digest(value.encode(), self.token.encode())
        if scheme.lower() == "basic" and self.credentials:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, ValueError):  # not base64 (non-ASCII text included), not UTF-8
                return False
            ok = False
            for good_user, good_password in self.credentials:
                ok |= secrets.compare_digest(user.encode(), good_user.encode()) & secrets.compare_digest(
                    password.encode(), good_password.encode())
            return ok
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization")
        if self._allowed(header):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        challenge = [(b"www-authenticate", b'Basic realm="animegen"')] if self.credentials else []
        await _send_json(send, 401, {"detail": "authentication required (HTTP basic or bearer token)"},
                         challenge)
        return None


class BodySizeLimitMiddleware:
    """Answer 413 to request bodies larger than `max_bytes`, by declared length or as they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        message = {"detail": f"request body larger than the server limit of {self.max_bytes} bytes"}
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await _send_json(send, 400, {"detail": "invalid Content-Length header"})
            if too_big:
                return await _send_json(send, 413, message)

        received = 0
        started = False
        rejected = False

        async def limited_receive():
            # Past the limit: answer 413 ourselves and tell the app the client left, so it stops reading.
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if not started:
                        await _send_json(send, 413, message)
                    return {"type": "http.disconnect"}
            return event

        async def tracking_send(event):
            nonlocal started
            if rejected:
                return  # the 413 is already the answer; drop whatever the app says afterwards
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        await self.app(scope, limited_receive, tracking_send)
        return None


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class LoopbackHostMiddleware:
    """DNS-rebinding protection: a loopback server without credentials answers only loopback `Host` names.

    A web page on another site can make the browser send requests to 127.0.0.1 under its own host name (its
    DNS answers 127.0.0.1); the `Host` header is then that name, and is refused with 421.
    """

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):  # the app's own attributes (`state`) through the guard
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_name(host) in LOOPBACK_NAMES:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        await _send_json(send, 421, {"detail": f"Host {host!r} refused (DNS rebinding protection): this server "
                                     "has no credentials and answers only 127.0.0.1, localhost and [::1]; "
                                     "to serve other names add --api-auth user:pass or --api-token TOKEN "
                                     "(and --listen or --host)"})
        return None


def host_name(host: str) -> str:
    """The name of a `Host` header without its port, lower case; IPv6 without brackets (`[::1]:80` → `::1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class RequestLimitMiddleware:
    """At most `max_requests` HTTP requests in progress (more → 503): connections that are idle or have not sent
    a whole request yet do not count (uvicorn's `limit_concurrency` counts every open connection)."""

    def __init__(self, app, max_requests: int):
        self.app = app
        self.max_requests = max_requests
        self.active = 0

    def __getattr__(self, name):  # the app's own attributes (`state`) through the guard
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.max_requests:
            return await _send_json(send, 503, {"detail": f"the server is handling {self.max_requests} requests "
                                                "(ServeLimits.max_requests); retry later"}, [(b"retry-after", b"5")])
        self.active += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active -= 1


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request's headers within
    `header_timeout` seconds of connecting or of its last response (uvicorn has no such timeout: a silent
    connection stayed open forever). `with_header_timeout` makes the class with a given timeout."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # the next request's headers get the same time (and an idle connection closes)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """A `HeaderTimeoutProtocol` class with its timeout set, for uvicorn's `http=` option."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": float(seconds)})
