"""`/docs` and `/redoc` work with no internet: every URL the pages load is served by animegen itself (issue #14)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

_URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_SPEC_URL = re.compile(r"""url:\s*['"]([^'"]+)['"]""")


@pytest.fixture
def client(fake_backend_cls):
    with TestClient(create_app(ServeConfig(model="start-model", ui=False), backend=fake_backend_cls())) as c:
        yield c


def loaded_urls(page: str) -> list[str]:
    return _URL_ATTRIBUTE.findall(page) + _SPEC_URL.findall(page)


@pytest.mark.parametrize("page, kinds", [("/docs", {"javascript", "css"}), ("/redoc", {"javascript"})])
def test_doc_pages_load_only_local_assets_that_the_server_serves(client, page, kinds):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    urls = loaded_urls(html)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    served = set()
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        kind = next((k for k in ("javascript", "css", "json", "png") if k in asset.headers["content-type"]), None)
        assert kind is not None, (url, asset.headers["content-type"])
        if kind in ("javascript", "css"):
            assert len(asset.content) > 100_000, url  # the real bundles, not placeholders
        served.add(kind)
    assert kinds <= served


def test_swagger_bundle_is_version_5_which_renders_openapi_3_1(client):
    bundle = client.get(next(u for u in loaded_urls(client.get("/docs").text) if u.endswith(".js"))).text
    assert "SwaggerUIBundle" in bundle
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")  # Swagger UI 4 shows "Unable to render this definition" for 3.1
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)
    assert version and int(version.group(1)) >= 5 and "isOAS31" in bundle


def test_openapi_still_lists_the_a1111_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/sdapi/v1/txt2img", "/sdapi/v1/upscalers", "/sdapi/v1/extra-single-image", "/sdapi/v1/skip"):
        assert route in paths
    assert not any(path.startswith("/docs") or path == "/redoc" for path in paths)


def test_docs_and_their_assets_need_credentials_when_the_api_has_them(fake_backend_cls):
    config = ServeConfig(model="start-model", ui=False, api_auth="user:secretpass")
    with TestClient(create_app(config, backend=fake_backend_cls())) as c:
        assert c.get("/docs").status_code == 401
        html = c.get("/docs", auth=("user", "secretpass")).text
        asset = next(u for u in loaded_urls(html) if u.endswith(".js"))
        assert c.get(asset).status_code == 401
        assert c.get(asset, auth=("user", "secretpass")).status_code == 200
