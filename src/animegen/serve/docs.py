"""The API's interactive docs, `/docs` (Swagger UI) and `/redoc` (ReDoc), working with no internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so offline they are blank. Here the same pages
reference the JavaScript and CSS bundled in the `fastapi-offline` package (MIT; Swagger UI 5, which renders the
OpenAPI 3.1 FastAPI emits, and ReDoc 2), served from `ASSETS_URL`. Nothing on either page points off the server.

Use: create the app with `docs_url=None, redoc_url=None`, then `install_offline_docs(app)`; the pages sit behind the
same middlewares (credentials, body size) as every route.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"


def assets_folder() -> str:
    """The folder of the bundled Swagger UI / ReDoc files (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js)."""
    return str(files("fastapi_offline") / "static")


def install_offline_docs(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect, /redoc and the assets they load to `app` (made with docs_url=None)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the FastAPI app with docs_url=None and redoc_url=None: install_offline_docs "
                         "serves /docs and /redoc itself (FastAPI's own pages load from a CDN)")
    app.mount(ASSETS_URL, StaticFiles(directory=assets_folder()), name="docs-assets")
    oauth2_url = app.swagger_ui_oauth2_redirect_url

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_url}" if oauth2_url else None,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},  # no online validator
        )

    if oauth2_url:
        @app.get(oauth2_url, include_in_schema=False)
        def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False,
        )
