"""Pure-ASGI guards wrapped around the whole app (API, docs and web UI alike).

They are ASGI middlewares rather than FastAPI dependencies so that nothing mounted later (the
Gradio UI, its websockets and file routes) can be reached around them.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets


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
            except (binascii.Error, UnicodeDecodeError):
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
