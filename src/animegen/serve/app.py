"""`create_app`: one FastAPI app serving the A1111-compatible API, its OpenAPI docs and the web UI."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from animegen import __version__
from animegen.serve.api import build_router
from animegen.serve.config import ServeConfig
from animegen.serve.jobs import ModelBackend
from animegen.serve.security import AuthMiddleware, BodySizeLimitMiddleware
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
        docs_url="/docs",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(build_router(service))

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
