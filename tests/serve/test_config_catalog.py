"""Security rules that need no model: exposure needs credentials; names never leave their folders."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from animegen.serve.catalog import (
    Catalog,
    NotFoundError,
    UnsafeNameError,
    check_relative_name,
    resolve_inside,
)
from animegen.serve.config import ServeConfig


def test_listen_without_credentials_is_refused():
    with pytest.raises(ValidationError, match="--api-auth"):
        ServeConfig(model="m", listen=True)
    with pytest.raises(ValidationError, match="without credentials"):
        ServeConfig(model="m", host="192.168.1.5")


def test_listen_with_credentials_binds_all_interfaces():
    cfg = ServeConfig(model="m", listen=True, api_auth="alice:s3cret,bob:pw")
    assert cfg.host == "0.0.0.0"
    assert cfg.credentials == [("alice", "s3cret"), ("bob", "pw")]
    assert ServeConfig(model="m", listen=True, api_token="a-long-token").host == "0.0.0.0"
    assert ServeConfig(model="m").host == "127.0.0.1"


@pytest.mark.parametrize("bad", ["alice", "alice:", ":pw", "a:b,broken"])
def test_malformed_api_auth_is_refused(bad):
    with pytest.raises(ValidationError, match="user:password"):
        ServeConfig(model="m", api_auth=bad)


def test_config_from_toml_with_cli_overrides(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('[serve]\nmodel = "a"\nport = 9000\nmax_queue = 3\n[serve.limits]\nmax_steps = 10\n')
    cfg = ServeConfig.from_toml(path, port=9100, model=None)
    assert (cfg.model, cfg.port, cfg.max_queue, cfg.limits.max_steps) == ("a", 9100, 3, 10)


def test_cli_listen_without_auth_exits_with_a_clear_error():
    from animegen.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--model", "whatever", "--listen"])
    assert result.exit_code == 2
    assert "--api-auth" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "..\\..\\x", "C:\\Windows\\x", "", "a\x00b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_relative_name(name)


def test_resolve_inside_refuses_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (root / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (root / "ok.safetensors").write_bytes(b"x")
    assert resolve_inside(root, "ok.safetensors") == (root / "ok.safetensors").resolve()
    with pytest.raises(UnsafeNameError):
        resolve_inside(root, "link.safetensors")


def test_catalog_lists_only_safe_checkpoints_inside_the_folder(serve_dirs):
    models = serve_dirs["models"]
    catalog = Catalog(str(models / "tiny-a"), models, serve_dirs["loras"])
    names = [entry.name for entry in catalog.checkpoints()]
    assert names == ["tiny-a", "tiny-b"]  # start model first; no .ckpt, no symlink escape, no components
    assert catalog.find_checkpoint("tiny-b").path == (models / "tiny-b").resolve()
    for name in ["evil.ckpt", "escape", "../outside/secret-model", str(models / "tiny-b")]:
        with pytest.raises((NotFoundError, UnsafeNameError)):
            catalog.find_checkpoint(name)


def test_catalog_lists_loras_by_stem_and_refuses_others(serve_dirs):
    catalog = Catalog("m", None, serve_dirs["loras"])
    assert [(e.name, e.path) for e in catalog.loras()] == [
        ("strong", (serve_dirs["loras"] / "sub" / "strong.safetensors").resolve())]
    assert catalog.find_lora("strong").name == "strong"
    for name in ["old", "leak", "../outside/outside-lora"]:
        with pytest.raises((NotFoundError, UnsafeNameError)):
            catalog.find_lora(name)
    with pytest.raises(NotFoundError, match="no --lora-dir"):
        Catalog("m", None, None).find_lora("strong")
