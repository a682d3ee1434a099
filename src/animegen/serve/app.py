"""`create_app`: one FastAPI app serving the A1111-compatible API, its OpenAPI docs and the web UI;
`uvicorn_options`: how `animegen serve` runs it (the guards of a listening socket)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from animegen import __version__
from animegen.serve.api import build_router, validation_error_response
from animegen.serve.config import ServeConfig, is_loopback
from animegen.serve.docs import install_offline_docs
from animegen.serve.jobs import ModelBackend
from animegen.serve.security import (
    AuthMiddleware,
    BodySizeLimitMiddleware,
    LoopbackHostMiddleware,
    RequestLimitMiddleware,
    with_header_timeout,
)
from animegen.serve.service import ServeService


def create_app(config: ServeConfig, *, backend: ModelBackend | None = None) -> FastAPI:
    """Load `config.model`, start the model worker and return the app (API at /sdapi/v1, UI at /).

    `backend` replaces the real Generator-based worker (tests of queueing use a fast stand-in).
    The worker thread stops when the app's lifespan ends or `app.state.service.close()` is called.
    """
    service = ServeService(config, backend)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="animegen",
        version=__version__,
        description="AUTOMATIC1111-compatible image generation API (SD1.x / SDXL) and web UI.",
        docs_url=None,  # /docs and /redoc come from install_offline_docs: FastAPI's own load from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    install_offline_docs(app)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.state.service = service
    app.include_router(build_router(service))
    from animegen.serve.api_controlnet import build_controlnet_router

    app.include_router(build_controlnet_router(service))  # A1111's extension routes live outside /sdapi/v1

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True, "model": service.queue.selected.name}

    if config.ui:
        import gradio as gr

        from animegen.serve.ui import build_ui

        blocks = build_ui(service)
        app = gr.mount_gradio_app(app, blocks, path="/", max_file_size=config.limits.max_body_bytes,
                                  show_error=True, footer_links=["api"])
    # Added last = outermost: the size limit and credentials guard everything, UI included.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.limits.max_body_bytes)
    if config.api_auth or config.api_token:
        app.add_middleware(AuthMiddleware, credentials=config.credentials, token=config.api_token)
    return app


def uvicorn_options(app, config: ServeConfig) -> dict:
    """The keyword arguments of `uvicorn.run` / `uvicorn.Config` for `app` as `config` serves it.

    Around the app: at most `limits.max_requests` requests in progress (idle connections do not count, unlike
    uvicorn's `limit_concurrency`, which 64 silent sockets used to fill) and, on a loopback address without
    credentials, DNS-rebinding protection (only loopback `Host` names). On the socket: a connection must send
    its headers within `limits.header_timeout` seconds of connecting or of its previous response, and h11
    buffers at most 64 KiB of an incomplete request head. These guard the listening socket, not the app:
    `create_app`'s app under a test client (Host: testserver) has them not.
    """
    limits = config.limits
    served = RequestLimitMiddleware(app, limits.max_requests)
    if is_loopback(config.host) and not (config.api_auth or config.api_token):
        served = LoopbackHostMiddleware(served)
    return {
        "app": served, "host": config.host, "port": config.port, "log_level": "info",
        "http": with_header_timeout(limits.header_timeout), "timeout_keep_alive": min(5.0, limits.header_timeout),
        "h11_max_incomplete_event_size": 64 * 1024, "limit_concurrency": None,
    }
