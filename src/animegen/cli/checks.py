"""Checks before the model loads: everything cheap about a command line, all problems reported at once.

Loading a model takes seconds to minutes; a typo in a sampler name, a missing LoRA or an unwritable output
folder found after that (or, worse, after generating) wastes it and can lose the images. Commands that load
a model first collect every problem they can see without it in a `Problems` and raise them together, one
`--option value: what is wrong (did you mean ...)` per problem, joined with `; `, before any weights are read.

Names are checked against their one home: samplers and schedule types (`generate.sampler_names`, A1111's
aliases and pre-1.9 "NAME Schedule" forms accepted), presets (`prompts.presets`), dtypes and devices
(`models.loading`), hires upscalers (`generate.hires`: built-ins, and model files in `--upscaler-dir` by
stem, `hires.find_hires_upscaler`). Files: the model (path or hub id form,
`loading.classify_model_ref`), `--vae`, `--lora` files, `<lora:name>` tags in the prompt against
`--lora-dir`, `--embeddings-dir`, `--init-image`, `--mask` (an image; it and `--outpaint`, whose form is
checked, need `--init-image`); `--controlnet MODEL:IMAGE[:WEIGHT]` (the model a file or a name in
`--controlnet-dir`, `controlnet.available_controlnets`; the image a file; `--controlnet-module` a known
preprocessor, `generate.preprocessors`; the control mode and guidance range); the output folder is created and probed with a real file
(`core.files.writable_folder`), and an `--out` that is a file is named as such.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from animegen.cli.common import error_line, fail
from animegen.core.errors import AnimegenError
from animegen.generate.sampler_names import did_you_mean, resolve_sampler_name

#: What `--device` accepts, everywhere: "auto" (or nothing) is the best available device.
DEVICE_HELP = "Device: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."
#: What `--dtype` accepts, everywhere (`models.loading.dtype_by_name` is the home of the names).
DTYPE_HELP = "Weights dtype: auto (fp32 on CPU, bf16 or fp16 on GPU), fp32, fp16, bf16 (or float32, float16, bfloat16)."


class Problems:
    """Collects `--option value: message` lines; `raise_if_any()` fails once with all of them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, option: str, message: str) -> None:
        self.lines.append(f"{option}: {message}" if option else message)

    @contextlib.contextmanager
    def catch(self, option: str) -> Iterator[None]:
        """Record a user error raised inside the block against `option` instead of stopping."""
        try:
            yield
        except (AnimegenError, ValueError, OSError, KeyError) as exc:
            self.add(option, error_line(exc))

    def raise_if_any(self) -> None:
        if self.lines:
            fail("; ".join(self.lines))


def device_word(device: str | None) -> str | None:
    """`--device` as the library takes it: None for "auto" or nothing."""
    return None if device in (None, "", "auto") else device


def check_device_and_dtype(problems: Problems, device: str | None, dtype: str | None) -> None:
    """The same `--device` / `--dtype` words for every command (imports torch: only for model commands)."""
    from animegen.models.loading import check_device, dtype_by_name

    if device_word(device) is not None:
        with problems.catch(f"--device {device}"):
            check_device(device)
    if dtype not in (None, "auto"):
        with problems.catch(f"--dtype {dtype}"):
            dtype_by_name(dtype)


def check_model(problems: Problems, model: str, allow_pickle: bool, option: str = "--model") -> None:
    """A model reference that can load: an existing folder or file (pickles only with --allow-pickle), or
    a hub id of the form org/name."""
    from animegen.core.files import refuse_pickle_unless_allowed
    from animegen.models.loading import classify_model_ref

    with problems.catch(f"{option} {model}"):
        source = classify_model_ref(model)
        if source.kind == "single_file":
            refuse_pickle_unless_allowed(Path(source.location), allow_pickle)


def check_sampler(problems: Problems, option: str, sampler: str | None, schedule: str | None,
                  schedule_option: str) -> None:
    """A1111 sampler and schedule type names (aliases accepted, near misses get a "did you mean")."""
    from animegen.generate.sampler_names import find_schedule_name, resolve_schedule_name

    if find_schedule_name(schedule) is None:
        with problems.catch(f"{schedule_option} {schedule}"):
            resolve_schedule_name(schedule)
        schedule = None  # reported once; the sampler is checked on its own
    if sampler not in (None, ""):
        with problems.catch(f"{option} {sampler}"):
            resolve_sampler_name(sampler, schedule)


def check_preset(problems: Problems, preset: str, preset_file: Path | None) -> None:
    from animegen.prompts.presets import get_preset, list_presets

    if preset_file is not None and not preset_file.is_file():
        problems.add(f"--preset-file {preset_file}", "no such file")
        return
    if preset in ("", None):
        return
    try:
        get_preset(preset, preset_file)
    except (AnimegenError, ValueError, OSError) as exc:
        try:
            names = [p.name for p in list_presets(preset_file)]
        except (AnimegenError, ValueError, OSError):
            names = []
        problems.add(f"--preset {preset}", error_line(exc) + did_you_mean(preset, names))


def lora_names(lora_dir: Path | None) -> dict[str, Path]:
    """The names `<lora:name:w>` tags resolve to: every .safetensors under `--lora-dir`, by file stem, as the
    engine lists them (`Generator.available_loras`)."""
    if lora_dir is None or not lora_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(lora_dir.rglob("*.safetensors")):
        found.setdefault(path.stem, path)
    return found


def check_loras(problems: Problems, specs: Iterable[tuple[str, object]], prompts: Iterable[str],
                lora_dir: Path | None, allow_pickle: bool, also_known: Iterable[str] = ()) -> None:
    """`--lora PATH_OR_NAME[:W]` files or names, and every `<lora:name>` tag in the prompts, by name (from
    `--lora-dir`, or `also_known`: the stems of files the command registers itself)."""
    from animegen.core.files import refuse_pickle_unless_allowed
    from animegen.prompts.parser import parse_extra_networks

    if lora_dir is not None and not lora_dir.is_dir():
        problems.add(f"--lora-dir {lora_dir}", "not a folder")
    known = lora_names(lora_dir)
    known.update({name: Path(name) for name in also_known})
    where = f"in --lora-dir {lora_dir}" if lora_dir else "(no --lora-dir given)"
    for ref, _ in specs:
        path = Path(ref).expanduser()
        if path.is_file():
            with problems.catch(f"--lora {ref}"):
                refuse_pickle_unless_allowed(path, allow_pickle)
        elif ref not in known:
            hint = did_you_mean(ref, known) or did_you_mean(path.name, [p.name for p in path.parent.glob("*")]
                                                          if path.parent.is_dir() else [])
            problems.add(f"--lora {ref}", f"no such file, and no LoRA of that name {where}{hint}")
    for prompt in prompts:
        try:
            tags = parse_extra_networks(prompt).loras
        except (AnimegenError, ValueError):
            continue  # the prompt parser reports its own errors with the whole prompt
        for tag in tags:
            if tag.name not in known:
                names = ", ".join(sorted(known)) or "none"
                problems.add(f"<lora:{tag.name}>", f"no LoRA of that name {where}{did_you_mean(tag.name, known)}; "
                             f"known LoRAs: {names}")


def check_hires_upscaler(problems: Problems, name: str, upscaler_dir: Path | None, allow_pickle: bool) -> None:
    """`--hires-upscaler`: a built-in, a model file's stem in `--upscaler-dir`, or a model file's path."""
    from animegen.generate.hires import HIRES_UPSCALERS, find_hires_upscaler

    if upscaler_dir is not None and not upscaler_dir.is_dir():
        problems.add(f"--upscaler-dir {upscaler_dir}", "not a folder" if upscaler_dir.exists() else "no such folder")
    if name in HIRES_UPSCALERS:
        return  # no folder needs listing (and torch need not load) for a built-in
    with problems.catch(f"--hires-upscaler {name}"):
        find_hires_upscaler(name, [upscaler_dir], allow_pickle=allow_pickle)


def check_folder(problems: Problems, option: str, folder: Path | None) -> None:
    if folder is not None and not folder.is_dir():
        problems.add(f"{option} {folder}", "not a folder" if folder.exists() else "no such folder")


def check_file(problems: Problems, option: str, path: Path | str | None) -> None:
    if path is not None and not Path(path).expanduser().exists():
        problems.add(f"{option} {path}", "no such file or folder")


CONTROLNET_FORM = "MODEL:IMAGE[:WEIGHT] (a ControlNet file or a name in --controlnet-dir, the control image, weight ≥ 0)"


def parse_controlnet_spec(spec: str) -> tuple[str, str, float]:
    """`--controlnet MODEL:IMAGE[:WEIGHT]` as (model, image, weight); WEIGHT defaults to 1, a ValueError with the
    expected form otherwise (an IMAGE path may hold ':' itself: a last part that is no number belongs to it)."""
    model, _, rest = spec.partition(":")
    image, weight = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep:
        with contextlib.suppress(ValueError):
            image, weight = head, float(tail)
    if not model.strip() or not image.strip():
        raise ValueError(f"give {CONTROLNET_FORM}")
    return model, image, weight


def check_controlnets(problems: Problems, specs: Iterable[str], folder: Path | None, module: str,
                      control_mode: str, start: float, end: float) -> list[tuple[str, Path, Path, float]]:
    """Every `--controlnet` unit and the options all units share, without loading anything; returns
    (spec, model path, image path, weight) per good unit, the model's name resolved in `folder` (none when a
    shared option is bad: it is reported once here, not again by each unit's `ControlUnit.validate`)."""
    from animegen.generate.controlnet import available_controlnets, control_mode_name
    from animegen.generate.preprocessors import PREPROCESSORS, is_ip_adapter_module, preprocessor_spec

    specs = list(specs)
    if not specs:
        return []
    check_folder(problems, "--controlnet-dir", folder)
    before = len(problems.lines)
    try:
        if not is_ip_adapter_module(module):
            preprocessor_spec(module)
    except AnimegenError as exc:
        problems.add(f"--controlnet-module {module}", error_line(exc) + did_you_mean(module, PREPROCESSORS))
    with problems.catch(f"--control-mode {control_mode}"):
        control_mode_name(int(control_mode) if control_mode.strip().isdigit() else control_mode)
    if not 0 <= start <= end <= 1:
        problems.add(f"--controlnet-start {start:g} --controlnet-end {end:g}", f"ControlNet guidance_start {start:g} "
                     f"and guidance_end {end:g} must satisfy 0 <= start <= end <= 1")
    shared_ok = len(problems.lines) == before
    known = available_controlnets(folder)
    where = f"in --controlnet-dir {folder}" if folder else "(no --controlnet-dir given)"
    units = []
    for spec in specs:
        try:
            model, image, weight = parse_controlnet_spec(spec)
        except ValueError as exc:
            problems.add(f"--controlnet {spec}", str(exc))
            continue
        path, stem = Path(model).expanduser(), model.split(" [", 1)[0].strip()  # A1111's `name [hash]` too
        if not path.exists() and stem not in known:
            problems.add(f"--controlnet {spec}", f"no such ControlNet file, and none named {stem!r} {where}"
                         f"{did_you_mean(stem, known)}; known: {', '.join(sorted(known)) or 'none'}")
        if not Path(image).expanduser().is_file():
            problems.add(f"--controlnet {spec}", f"the control image {image} is no such file")
        if not 0 <= weight < float("inf"):
            problems.add(f"--controlnet {spec}", f"weight {weight:g} must be ≥ 0 (0 = the unit does nothing)")
        elif shared_ok and (path.exists() or stem in known) and Path(image).expanduser().is_file():
            units.append((spec, path if path.exists() else known[stem], Path(image).expanduser(), weight))
    return units


OUTPAINT_FORM = "LEFT,RIGHT,TOP,BOTTOM: four whole numbers of pixels to add, ≥ 0, at least one > 0 (e.g. 0,0,0,128)"


def parse_outpaint(text: str) -> tuple[int, int, int, int]:
    """`--outpaint LEFT,RIGHT,TOP,BOTTOM` as four pixel counts; a ValueError with the expected form otherwise."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(part.isdigit() for part in parts) or not any(int(part) for part in parts):
        raise ValueError(f"give {OUTPAINT_FORM}")
    left, right, top, bottom = (int(part) for part in parts)
    return left, right, top, bottom


def check_inpaint_sources(problems: Problems, init_image: Path | None, mask: Path | None,
                          outpaint: str | None) -> tuple[int, int, int, int] | None:
    """`--mask` and `--outpaint` each need `--init-image` and exclude each other (outpainting makes its own
    mask); returns the parsed `--outpaint` borders (None if not given or bad). The mask file itself is read,
    and so checked, with the init image (`cli.generate`)."""
    borders = None
    if outpaint is not None:
        with problems.catch(f"--outpaint {outpaint}"):
            borders = parse_outpaint(outpaint)
    for option, value in (("--mask", mask), ("--outpaint", outpaint)):
        if value is not None and init_image is None:
            problems.add(f"{option} {value}", "needs --init-image, the image to paint into; give --init-image too")
    if mask is not None and outpaint is not None:
        problems.add("--outpaint", "makes its own mask of the new border; give --outpaint or --mask, not both")
    return borders


def check_output_folder(problems: Problems, option: str, root: Path, folder: Path) -> None:
    """`root` (what the user gave) is not a file, and `folder` (under it) is created and takes a new file."""
    from animegen.core.files import writable_folder

    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == root else f"is inside {part}, which is a file"
                problems.add(f"{option} {root}", f"{what}; give an output folder")
                return
            break
    with problems.catch(f"{option} {root}"):
        writable_folder(folder)


def seed_or_random(seed: int, option: str = "--seed") -> int:
    """`--seed -1` means a random seed in every command (as in A1111); the one picked is printed so the run
    can be repeated. Below -1 is an error naming the option."""
    import secrets

    from animegen.generate.request import MAX_SEED

    if seed < -1 or seed > MAX_SEED:
        fail(f"{option} {seed}: give -1 (random) or 0..{MAX_SEED}")
    if seed == -1:
        seed = secrets.randbelow(MAX_SEED // 2)
        import typer

        typer.echo(f"{option} -1: using seed {seed}", err=True)
    return seed
