"""Typed configuration of `animegen serve`, loadable from TOML; option names match the CLI flags.

The security rules live here (not in the CLI) so that every way of starting the server obeys them:
a server reachable from other machines must have credentials.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ServeLimits(BaseModel):
    """Upper bounds on what one request may ask for, so a client cannot exhaust memory or the GPU."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="largest accepted request body")
    max_width: int = Field(2048, ge=64, description="largest image width in pixels")
    max_height: int = Field(2048, ge=64, description="largest image height in pixels")
    max_pixels: int = Field(2048 * 2048, ge=64 * 64, description="largest width x height (after hires fix)")
    max_steps: int = Field(150, ge=1, description="most sampling steps per pass")
    max_images: int = Field(16, ge=1, description="most images per request (n_iter x batch_size)")
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64, description="largest uploaded image (w x h)")
    # Text (issue #14): A1111 has no limit; every prompt parser is linear, this bounds the constant.
    max_prompt_chars: int = Field(32_768, ge=1, description="longest prompt, negative prompt, hires prompt or "
                                  "hires negative prompt, each, in characters")
    # Prompt schedules multiply text: `[a:b:N]` edits and `[a|b|c]` alternations give each step its own text, so
    # one 32K prompt at 150 steps is up to 150 distinct 32K texts for the text encoder (1.3-4.1 s of CPU to expand
    # before encoding). 8 prompts' worth lets a long prompt change 8 times (or a short one 150) per pass.
    max_schedule_chars: int = Field(8 * 32_768, ge=1, description="most characters of distinct scheduled texts "
                                    "(prompt and negative prompt) one sampling pass may encode")
    max_extra_networks: int = Field(32, ge=0, description="most <lora:...> / <name:...> tags in one prompt")
    # Time and connections.
    max_job_seconds: float = Field(600.0, gt=0, description="a job still running after this is interrupted "
                                   "(it returns the images finished so far)")
    max_requests: int = Field(64, ge=1, description="HTTP requests in progress at once, more → 503; idle "
                              "and half-open connections do not count")
    header_timeout: float = Field(10.0, gt=0, description="seconds a connection may take to send a request's "
                                  "headers (and may stay idle between requests) before it is closed")


class ServeConfig(BaseModel):
    """Everything `create_app` needs. `listen=True` (or a non-loopback `host`) requires `api_auth` or `api_token`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="checkpoint loaded at start: a diffusers folder or .safetensors file")
    model_dir: Path | None = Field(None, description="folder whose checkpoints the API may switch to")
    lora_dir: Path | None = Field(None, description="folder whose LoRAs prompts may use (<lora:name:w>)")
    embeddings_dir: Path | None = Field(None, description="folder of textual-inversion embeddings prompts may "
                                        "use by name (.safetensors; pickles are never read)")
    upscaler_dir: Path | None = Field(None, description="folder of model upscalers (ESRGAN / Real-ESRGAN / SRVGG "
                                      ".safetensors) the hires fix and the Extras routes may use by file name, "
                                      "besides --model-dir's ESRGAN/ and RealESRGAN/ folders")
    adetailer_dir: Path | None = Field(None, description="folder of ADetailer detectors (YOLOv8 exported to "
                                       ".onnx) that alwayson_scripts.ADetailer names by file name (A1111: "
                                       "models/adetailer; face_yolov8n.pt finds face_yolov8n.onnx)")
    controlnet_dir: Path | None = Field(None, description="folder of ControlNet models (.safetensors files, diffusers "
                                        "folders) that alwayson_scripts.controlnet names by file name (A1111: "
                                        "models/ControlNet; 'control_v11p_sd15_canny [d14c016b]' finds "
                                        "control_v11p_sd15_canny.safetensors)")
    vae: str | None = None
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    listen: bool = Field(False, description="bind 0.0.0.0 (needs api_auth or api_token)")
    api_auth: str | None = Field(None, description="HTTP basic credentials 'user:pass[,user2:pass2]'")
    api_token: str | None = Field(None, description="bearer token accepted instead of basic credentials")
    max_queue: int = Field(16, ge=1, description="waiting jobs beyond the running one; more → HTTP 429")
    ui: bool = Field(True, description="mount the Gradio web UI at /")
    outputs_dir: Path = Field(Path("outputs"), description="where the web UI saves its images, in A1111's layout "
                              "(txt2img-images/YYYY-MM-DD/NNNNN-SEED.png with infotext); relative to the "
                              "working directory, as A1111's outputs/")
    nan_check: bool = Field(True, description="refuse images with NaN/inf latents or pixels (A1111's NaN check)")
    limits: ServeLimits = Field(default_factory=ServeLimits)

    @field_validator("api_auth")
    @classmethod
    def _check_auth(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_credentials(value)
        return value

    @field_validator("api_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 8:
            raise ValueError("api_token must be at least 8 characters")
        return value

    @model_validator(mode="after")
    def _require_auth_when_exposed(self) -> ServeConfig:
        if self.listen:
            self.host = "0.0.0.0"
        if not is_loopback(self.host) and not (self.api_auth or self.api_token):
            raise ValueError(
                f"refusing to serve on {self.host} without credentials: add --api-auth user:pass "
                "(HTTP basic) or --api-token TOKEN, or drop --listen to bind 127.0.0.1 only"
            )
        return self

    @property
    def credentials(self) -> list[tuple[str, str]]:
        """The (user, password) pairs of `api_auth`."""
        return parse_credentials(self.api_auth) if self.api_auth else []

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> ServeConfig:
        """Read a `[serve]` table (or a top-level table) from TOML; keyword overrides win."""
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        data = dict(data.get("serve", data))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def parse_credentials(text: str) -> list[tuple[str, str]]:
    """Split 'user:pass,user2:pass2' (A1111's --api-auth syntax) into pairs; reject empty parts."""
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"api_auth entry {item.strip()!r} must look like user:password")
        pairs.append((user, password))
    return pairs


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
