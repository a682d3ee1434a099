"""Inference speed-ups for a loaded diffusers pipeline, each one switchable on its own.

Why a separate module: every optimisation here trades something (compile time, memory, a little
numerical drift, a constraint on LoRA merging), so each is a named switch with a device-dependent
default, and `bench/generate.py` measures each on/off. Defaults: on CPU nothing is changed (the
loaded pipeline is exactly diffusers'); on CUDA the cheap, result-preserving ones are on
(channels_last, fused QKV; SDPA is already diffusers' default) and the ones that cost minutes of
warm-up (torch.compile, CUDA graphs) or change large images (VAE tiling) are opt-in.

LoRA and fused QKV: `fuse_qkv` copies `to_q/to_k/to_v` into one `to_qkv` (`to_k/to_v` into `to_kv`
for cross-attention) and the fused processor reads only the copy. `animegen.models.lora.apply_loras`
and `remove_loras` refresh those copies in place after every merge (`models/lora/fused.py`), so
callers need no sync step and compiled graphs / CUDA graphs keep working.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from animegen.core.files import cache_root

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_FUSED_ATTR = "_animegen_fused_qkv"


@dataclass
class SpeedupConfig:
    """Which optimisations to apply; None means "the default for this device" (see `resolve`).

    The field names are the TOML keys and, with `-` for `_`, the CLI flags (`--channels-last`).
    """

    channels_last: bool | None = None
    fuse_qkv: bool | None = None
    sdpa: bool | None = None  # None: keep the loaded processors (diffusers' default is SDPA)
    compile: bool | None = None
    compile_mode: str | None = None  # None: "reduce-overhead" with cuda_graphs, else "default"
    compile_fullgraph: bool = False
    compile_cache_dir: str | None = None
    vae_tiling: bool | None = None
    vae_slicing: bool | None = None
    cuda_graphs: bool | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> SpeedupConfig:
        """Build from a TOML table / dict, naming any unknown key and the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown speed-up option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, table: str | None = "speed") -> SpeedupConfig:
        import tomllib

        data = tomllib.loads(Path(path).read_text())
        if table is not None:
            data = data.get(table, {})
        return cls.from_mapping(data)

    def resolve(self, device: torch.device | str) -> SpeedupConfig:
        """Fill every None with the default for `device` and reject contradictory choices."""
        cuda = torch.device(device).type == "cuda"
        c = SpeedupConfig(**asdict(self))
        if c.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs a CUDA device; turn it off (--no-cuda-graphs) on this machine")
        if c.cuda_graphs and c.compile is False:
            raise ValueError("cuda_graphs are captured by torch.compile(mode='reduce-overhead'); "
                             "turn compile on or cuda_graphs off")
        if c.fuse_qkv and c.sdpa is False:
            raise ValueError("fuse_qkv uses diffusers' fused SDPA processor, so it cannot run with sdpa off; "
                             "turn one of them off")
        if c.compile_mode is not None and c.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {c.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        c.channels_last = cuda if c.channels_last is None else c.channels_last
        c.fuse_qkv = (cuda and c.sdpa is not False) if c.fuse_qkv is None else c.fuse_qkv
        c.cuda_graphs = bool(c.cuda_graphs)
        c.compile = c.cuda_graphs if c.compile is None else c.compile
        if c.compile and c.compile_mode is None:
            c.compile_mode = "reduce-overhead" if c.cuda_graphs else "default"
        if c.cuda_graphs and c.compile_mode in ("default", "max-autotune-no-cudagraphs"):
            raise ValueError(f"compile_mode {c.compile_mode!r} does not capture CUDA graphs; use "
                             "'reduce-overhead' or 'max-autotune', or turn cuda_graphs off")
        c.vae_tiling = bool(c.vae_tiling)
        c.vae_slicing = bool(c.vae_slicing)
        return c


@dataclass
class SpeedupReport:
    """What `apply_speedups` did: the resolved switches and a note per skipped or adjusted one."""

    device: str
    dtype: str
    config: SpeedupConfig
    applied: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        on = [k for k, v in self.applied.items() if v]
        text = f"speed-ups on {self.device} ({self.dtype}): {', '.join(on) if on else 'none'}"
        return text + "".join(f"\n  - {n}" for n in self.notes)


def _pipe_device_dtype(pipe) -> tuple[torch.device, torch.dtype]:
    param = next(pipe.unet.parameters())
    return param.device, param.dtype


def _vae(pipe):
    vae = getattr(pipe, "vae", None)
    return vae if isinstance(vae, torch.nn.Module) else None


def set_compile_cache(cache_dir: str | os.PathLike) -> Path:
    """Make inductor keep compiled kernels and FX graphs in `cache_dir` across processes."""
    import torch._inductor.config as inductor_config

    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read lazily by inductor's cache_dir()
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    inductor_config.fx_graph_cache = True
    return path


def default_compile_cache_dir() -> Path:
    return cache_root() / "inductor"


def apply_speedups(pipe, *, channels_last: bool | None = None, fuse_qkv: bool | None = None,
                   sdpa: bool | None = None, compile: bool | None = None, compile_mode: str | None = None,
                   compile_fullgraph: bool = False, compile_cache_dir: str | os.PathLike | None = None,
                   vae_tiling: bool | None = None, vae_slicing: bool | None = None,
                   cuda_graphs: bool | None = None) -> SpeedupReport:
    """Apply the chosen optimisations to `pipe` in place (None = this device's default).

    Call once, after loading and before generating. With every switch off (or all defaults on
    CPU) the pipeline is left untouched, so results are bit-identical to plain diffusers.
    """
    config = SpeedupConfig(channels_last=channels_last, fuse_qkv=fuse_qkv, sdpa=sdpa, compile=compile,
                           compile_mode=compile_mode, compile_fullgraph=compile_fullgraph,
                           compile_cache_dir=None if compile_cache_dir is None else str(compile_cache_dir),
                           vae_tiling=vae_tiling, vae_slicing=vae_slicing, cuda_graphs=cuda_graphs)
    return apply_speedup_config(pipe, config)


def apply_speedup_config(pipe, config: SpeedupConfig) -> SpeedupReport:
    """`apply_speedups` for a `SpeedupConfig` (e.g. one read from TOML)."""
    device, dtype = _pipe_device_dtype(pipe)
    c = config.resolve(device)
    report = SpeedupReport(str(device), str(dtype).removeprefix("torch."), c)
    vae = _vae(pipe)

    if c.sdpa is not None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        processor = AttnProcessor2_0 if c.sdpa else AttnProcessor
        for module in (pipe.unet, vae):
            if module is not None:
                module.set_attn_processor(processor())
    report.applied["sdpa"] = bool(c.sdpa) if c.sdpa is not None else _uses_sdpa(pipe.unet)

    if c.channels_last:
        for module in (pipe.unet, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    report.applied["channels_last"] = bool(c.channels_last)

    report.applied["fuse_qkv"] = False
    if c.fuse_qkv:
        if _has_added_kv(pipe.unet):
            report.notes.append("fuse_qkv skipped: this UNet has added KV projections diffusers cannot fuse")
        else:
            pipe.fuse_qkv_projections(unet=True, vae=vae is not None)
            object.__setattr__(pipe, _FUSED_ATTR, True)
            report.applied["fuse_qkv"] = True

    if vae is not None and c.vae_tiling:
        vae.enable_tiling()
    report.applied["vae_tiling"] = bool(vae is not None and c.vae_tiling)
    if vae is not None and c.vae_slicing:
        vae.enable_slicing()
    report.applied["vae_slicing"] = bool(vae is not None and c.vae_slicing)

    report.applied["compile"] = False
    report.applied["cuda_graphs"] = False
    if c.compile:
        cache = set_compile_cache(c.compile_cache_dir or default_compile_cache_dir())
        if device.type == "cuda":
            import torch._inductor.config as inductor_config

            inductor_config.conv_1x1_as_mm = True  # 1x1 convs as GEMMs: faster in channels_last
        # Module.compile keeps the module (and its parameter names) in place, so LoRA merging by
        # module path and saving still work; weights changed in place are seen by the graph.
        pipe.unet.compile(mode=c.compile_mode, fullgraph=c.compile_fullgraph, dynamic=False)
        report.applied["compile"] = True
        report.applied["cuda_graphs"] = c.cuda_graphs
        report.notes.append(f"compile: mode={c.compile_mode}, cache {cache}; the first image of each new shape "
                            "pays the compile time")
    return report


def _uses_sdpa(module: torch.nn.Module) -> bool:
    names = {type(p).__name__ for p in module.attn_processors.values()}
    return bool(names) and all("2_0" in n for n in names)


def _has_added_kv(unet: torch.nn.Module) -> bool:
    return any("Added" in type(p).__name__ for p in unet.attn_processors.values())


def is_qkv_fused(pipe) -> bool:
    return bool(pipe.__dict__.get(_FUSED_ATTR, False))
