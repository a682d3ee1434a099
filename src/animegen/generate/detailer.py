"""ADetailer-style detailing (issue #15): find faces or hands with a detector, inpaint each one again, sharper.

Contract. A `DetailerUnit` is one ADetailer tab: a detector file and how its detections are re-drawn. After an
image is made, `run_detailer` runs every unit in order on the current image: `detect` finds boxes, they are
filtered (`filter_boxes`: size ratio, then the k largest), each becomes a white rectangle on a black mask
(`box_masks`, grown or shrunk by `dilate_erode`, an all-black one dropped), and each mask is one only-masked
inpainting request on the image so far (`GenerationRequest(init_image=, mask=, inpaint_full_res=True,
inpainting_fill="original")`, the request's own img2img path: `generate.inpaint` crops the padded box, samples it
at width x height, pastes it back with the blurred mask), so pixels outside every padded, blurred box are the
original's exactly. As ADetailer: mask j uses seed + j and subseed + j, the unit's prompt ("" = the image's;
"[PROMPT]" inserts it; "[SEP]" gives mask j the j-th part, the last part for the rest), its negative prompt,
denoising strength, mask blur and padding, and its own steps and CFG scale when set (None = the image's). A unit
with denoise 0, or whose detector finds nothing, leaves the image as it was.

The detector. ADetailer runs ultralytics YOLOv8 `.pt` files (face_yolov8n.pt, hand_yolov8n.pt); ultralytics is
AGPL-3.0 and needs torchvision, so animegen reads the same detectors exported to ONNX and runs them with
onnxruntime (MIT), already a dependency; this module is animegen's own code. Make the file once, where
ultralytics is installed: `yolo export model=face_yolov8n.pt format=onnx imgsz=640` (writes face_yolov8n.onnx),
or download an ONNX export of a YOLOv8 detector; the weights keep their own licence (Bing-su/adetailer's
face/hand models: AGPL-3.0, as ultralytics'). The file must have one input, 1 x 3 x S x S float RGB in [0, 1]
(S from the file, 640 where it is dynamic), and one output (1, 4 + classes, N): per candidate the box centre x,
centre y, width, height in input pixels, then one score per class. As ultralytics' predictor: the image is
letterboxed to S x S (`letterbox`: scaled by min(S / w, S / h), bilinear, centred on gray 114), a candidate's
confidence is its best class score, those > confidence are kept, boxes overlapping a better one of the same class
by IoU > 0.7 are dropped (`nms`), at most 300 are kept, and the boxes are mapped back to image pixels
(`unletterbox`) and clipped. ADetailer's mediapipe detectors and segmentation models' masks are not supported.
A detector is named by path, or by file name in a folder (`find_detector`: "face_yolov8n.pt" finds
face_yolov8n.onnx there, so A1111's ad_model names work).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from animegen.core.errors import AnimegenError

IOU_THRESHOLD = 0.7  # ultralytics' default `iou`
MAX_DETECTIONS = 300  # ultralytics' default `max_det`
LETTERBOX_GRAY = 114
DEFAULT_INPUT_SIZE = 640
FloatBox = tuple[float, float, float, float]  # (x1, y1, x2, y2) in image pixels


@dataclass(frozen=True)
class DetailerUnit:
    """One ADetailer unit (A1111's ad_* arguments in brackets).

    Attributes:
        model: the ONNX detector: a path, or a file name found by `find_detector` (ad_model).
        prompt: the prompt for the detected areas; "" = the image's; "[PROMPT]" inserts it, "[SEP]" separates
            one prompt per detection (ad_prompt).
        negative_prompt: the same for the negative prompt (ad_negative_prompt).
        confidence: detections scoring at most this are dropped, in [0, 1] (ad_confidence).
        mask_k_largest: keep only the k largest boxes; 0 = all (ad_mask_k_largest).
        mask_min_ratio: drop boxes smaller than this fraction of the image's area (ad_mask_min_ratio).
        mask_max_ratio: drop boxes larger than this fraction (ad_mask_max_ratio).
        dilate_erode: grow (> 0) or shrink (< 0) each box's mask by a square of this many pixels (ad_dilate_erode).
        mask_blur: the inpainting mask blur (ad_mask_blur).
        denoise: the inpainting denoising strength in [0, 1]; 0 = the unit does nothing (ad_denoising_strength).
        inpaint_only_masked: inpaint only the box (padded), at width x height (ad_inpaint_only_masked).
        padding: pixels around the box for only-masked inpainting (ad_inpaint_only_masked_padding).
        steps: the inpainting steps; None = the image's (ad_use_steps / ad_steps).
        cfg_scale: the inpainting CFG scale; None = the image's (ad_use_cfg_scale / ad_cfg_scale).
        width: the inpainting width; None = the request's (ad_use_inpaint_width_height / ad_inpaint_width).
        height: the inpainting height, as `width` (ad_inpaint_height).
    """

    model: str
    prompt: str = ""
    negative_prompt: str = ""
    confidence: float = 0.3
    mask_k_largest: int = 0
    mask_min_ratio: float = 0.0
    mask_max_ratio: float = 1.0
    dilate_erode: int = 4
    mask_blur: int = 4
    denoise: float = 0.4
    inpaint_only_masked: bool = True
    padding: int = 32
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and the range that works."""
        checks = [
            (bool(str(self.model).strip()), "a detailer unit needs a detector model (an .onnx file or its name)"),
            (0 <= self.confidence <= 1, f"detailer confidence must be in [0, 1], got {self.confidence}"),
            (self.mask_k_largest >= 0, f"detailer mask_k_largest must be ≥ 0 (0 = all), got {self.mask_k_largest}"),
            (0 <= self.mask_min_ratio <= self.mask_max_ratio <= 1, "detailer mask_min_ratio and mask_max_ratio must "
             f"satisfy 0 ≤ min ≤ max ≤ 1, got {self.mask_min_ratio} and {self.mask_max_ratio}"),
            (self.mask_blur >= 0, f"detailer mask_blur must be ≥ 0, got {self.mask_blur}"),
            (0 <= self.denoise <= 1, f"detailer denoise must be in [0, 1] (0 = off), got {self.denoise}"),
            (self.padding >= 0, f"detailer padding must be ≥ 0 pixels, got {self.padding}"),
            (self.steps is None or self.steps >= 1, f"detailer steps must be ≥ 1 (None = the image's), got {self.steps}"),
            (self.cfg_scale is None or self.cfg_scale >= 0, f"detailer cfg_scale must be ≥ 0, got {self.cfg_scale}"),
        ]
        for name in ("width", "height"):
            value = getattr(self, name)
            checks.append((value is None or (value >= 64 and value % 8 == 0),
                           f"detailer {name} must be a multiple of 8 and at least 64 (None = the request's), "
                           f"got {value}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ---- finding and running the detector --------------------------------------------------------------------------
def find_detector(ref: str | os.PathLike, dirs: list[Path] | tuple[Path, ...] = (), *, allow_path: bool = True) -> Path:
    """The ONNX detector a unit names: an existing file (`allow_path`, for trusted callers), else `<stem>.onnx` in
    one of `dirs`, so ADetailer's "face_yolov8n.pt" finds face_yolov8n.onnx. A name never reaches outside `dirs`."""
    path = Path(ref).expanduser()
    if allow_path and path.is_file():
        if path.suffix.lower() != ".onnx":
            raise AnimegenError(f"detector {path} is not an ONNX file; export it with `yolo export model={path.name} "
                                "format=onnx` (ultralytics) and name the .onnx file")
        return path
    stem = Path(Path(str(ref).replace("\\", "/")).name).stem
    for folder in dirs:
        candidate = Path(folder) / f"{stem}.onnx"
        if stem and candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in dirs) or "no detector folder given (adetailer_dir)"
    known = sorted({p.name for d in dirs if Path(d).is_dir() for p in Path(d).glob("*.onnx")})
    raise AnimegenError(f"detector {str(ref)!r} is not {'an .onnx file nor ' if allow_path else ''}{stem}.onnx in "
                        f"{where}; known detectors: {', '.join(known) or 'none'} (export a YOLOv8 .pt with "
                        "`yolo export format=onnx`)")


@lru_cache(maxsize=4)
def _session(path: str, mtime_ns: int):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise AnimegenError(f"cannot load detector {path}: {exc}; it must be an ONNX export of a YOLOv8 "
                            "detector (`yolo export format=onnx`)") from exc


def letterbox(image: Image.Image, size: int) -> tuple[Image.Image, float, tuple[int, int]]:
    """(size x size image, gain, (left, top) padding): ultralytics' LetterBox: scaled by min(size / w, size / h)
    to round(w * gain) x round(h * gain), centred on gray 114 with round(pad - 0.1) before."""
    gain = min(size / image.width, size / image.height)
    new_w, new_h = int(round(image.width * gain)), int(round(image.height * gain))
    left, top = int(round((size - new_w) / 2 - 0.1)), int(round((size - new_h) / 2 - 0.1))
    resized = image.convert("RGB")
    if (new_w, new_h) != image.size:
        resized = resized.resize((new_w, new_h), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (LETTERBOX_GRAY,) * 3)
    canvas.paste(resized, (left, top))
    return canvas, gain, (left, top)


def unletterbox(boxes: np.ndarray, gain: float, pad: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Letterboxed (x1, y1, x2, y2) boxes back in the original image's pixels, clipped to it (ultralytics'
    scale_boxes)."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - pad[0]) / gain
    out[:, [1, 3]] = (out[:, [1, 3]] - pad[1]) / gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1, y1, x2, y2) box with each of `others`."""
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = IOU_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first; a box is dropped when its IoU
    with a kept, better box is > threshold (torchvision.ops.nms's rule)."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep: list[int] = []
    while order:
        best, order = order[0], order[1:]
        keep.append(int(best))
        if order:
            overlaps = iou(boxes[best], boxes[order])
            order = [i for i, o in zip(order, overlaps) if o <= threshold]
    return keep


def decode_yolo(output: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (x1, y1, x2, y2) in input pixels, scores) of a YOLOv8 output (1, 4 + classes, N): scores > confidence,
    then per-class NMS at IoU 0.7, at most 300, best first (ultralytics' non_max_suppression)."""
    pred = np.asarray(output, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[0] != 1 or pred.shape[1] < 5:
        raise AnimegenError(f"detector output has shape {tuple(pred.shape)}; a YOLOv8 detector's is "
                            "(1, 4 + classes, candidates): export a detection (not segmentation/pose) model")
    pred = pred[0].T  # (N, 4 + classes)
    classes, scores = pred[:, 4:].argmax(1), pred[:, 4:].max(1)
    chosen = scores > confidence
    pred, classes, scores = pred[chosen], classes[chosen], scores[chosen]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    offset = classes[:, None] * 7680.0  # ultralytics' max_wh: classes never suppress each other
    keep = nms(boxes + offset, scores)[:MAX_DETECTIONS]
    return boxes[keep], scores[keep]


def detect(image: Image.Image, model: str | os.PathLike, confidence: float = 0.3) -> list[FloatBox]:
    """The boxes (x1, y1, x2, y2, image pixels) an ONNX YOLOv8 detector file finds in `image`, best first."""
    path = Path(model)
    session = _session(str(path.resolve()), path.stat().st_mtime_ns)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise AnimegenError(f"detector {path} has {len(inputs)} inputs; a YOLOv8 ONNX export has one (images)")
    side = inputs[0].shape[-1]
    size = side if isinstance(side, int) and side > 0 else DEFAULT_INPUT_SIZE
    boxed, gain, pad = letterbox(image, size)
    tensor = (np.asarray(boxed, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    output = session.run(None, {inputs[0].name: tensor})[0]
    boxes, _ = decode_yolo(output, confidence)
    return [tuple(float(v) for v in b) for b in unletterbox(boxes, gain, pad, image.width, image.height)]


# ---- detections to masks ---------------------------------------------------------------------------------------
def filter_boxes(boxes: list[FloatBox], image_size: tuple[int, int], *, min_ratio: float = 0.0, max_ratio: float = 1.0,
                 k_largest: int = 0) -> list[FloatBox]:
    """ADetailer's filters: boxes whose area / image area is in [min_ratio, max_ratio], then (k > 0) the k
    largest, largest first; the order is kept otherwise."""
    total = image_size[0] * image_size[1]
    kept = [b for b in boxes if min_ratio <= (b[2] - b[0]) * (b[3] - b[1]) / total <= max_ratio]
    if k_largest > 0:
        kept = sorted(kept, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)[:k_largest]
    return kept


def dilate_erode(mask: Image.Image, value: int) -> Image.Image:
    """cv2.dilate (value > 0) or cv2.erode (value < 0) with a |value| x |value| square of ones, anchored at its
    centre (|value| // 2): pixel (x, y) takes the max (min) of the square from x - anchor to x + |value| - 1 - anchor;
    outside the image counts as nothing."""
    if value == 0:
        return mask
    k = abs(value)
    grow = value > 0
    arr = np.asarray(mask.convert("L"))
    anchor = k // 2
    fill = 0 if grow else 255
    padded = np.pad(arr, ((anchor, k - 1 - anchor),) * 2, constant_values=fill)
    out = np.full_like(arr, fill)
    for dy in range(k):
        for dx in range(k):
            window = padded[dy:dy + arr.shape[0], dx:dx + arr.shape[1]]
            out = np.maximum(out, window) if grow else np.minimum(out, window)
    return Image.fromarray(out, "L")


def box_masks(boxes: list[FloatBox], image_size: tuple[int, int], dilate: int = 0) -> list[Image.Image]:
    """One L mask per box: the box filled white as ADetailer draws it (PIL's rectangle, edges included), then
    `dilate_erode`; a mask eroded to nothing is dropped."""
    masks = []
    for box in boxes:
        mask = Image.new("L", image_size, 0)
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        mask = dilate_erode(mask, dilate)
        if mask.getbbox() is not None:
            masks.append(mask)
    return masks


def unit_prompts(text: str, default: str) -> list[str]:
    """ADetailer's prompt for each detection: `text` split at [SEP], a blank part = `default`, [PROMPT] = it."""
    return [part.replace("[PROMPT]", default) if part.strip() else default
            for part in re.split(r"\s*\[SEP\]\s*", text)]


# ---- the detailer pass -----------------------------------------------------------------------------------------
def run_detailer(generator, request, image: Image.Image, units, *, seed: int, subseed: int | None = None,
                 detector_dirs: list[Path] | tuple[Path, ...] = (), interrupt=None) -> Image.Image:
    """`image` with every unit's detections inpainted again (the module docstring), through `generator`'s own
    img2img path. `request` is the image's `ResolvedRequest` (prompt, sampler, size, LoRAs, noise settings)."""
    from animegen.generate.request import GenerationRequest

    for unit in units:
        unit.validate()
        if unit.denoise == 0:
            continue
        path = find_detector(unit.model, detector_dirs)
        boxes = filter_boxes(detect(image, path, unit.confidence), image.size, min_ratio=unit.mask_min_ratio,
                             max_ratio=unit.mask_max_ratio, k_largest=unit.mask_k_largest)
        prompts = unit_prompts(unit.prompt, request.prompt)
        negatives = unit_prompts(unit.negative_prompt, request.negative_prompt)
        base = GenerationRequest(
            request.prompt, preset="none", sampler=request.sampler, schedule_type=request.schedule_type,
            steps=unit.steps or request.steps, cfg_scale=request.cfg_scale if unit.cfg_scale is None else unit.cfg_scale,
            width=unit.width or request.width, height=unit.height or request.height, clip_skip=request.clip_skip,
            loras=list(request.loras), rng=request.rng, eta_noise_seed_delta=request.eta_noise_seed_delta,
            subseed_strength=request.subseed_strength, guidance_rescale=request.guidance_rescale,
            emphasis=request.emphasis, strength=unit.denoise, mask_blur=unit.mask_blur, inpainting_fill="original",
            inpaint_full_res=unit.inpaint_only_masked, inpaint_full_res_padding=unit.padding)
        for j, mask in enumerate(box_masks(boxes, image.size, unit.dilate_erode)):
            if interrupt is not None and interrupt.is_set():
                return image
            sub = replace(base, prompt=prompts[min(j, len(prompts) - 1)],
                          negative_prompt=negatives[min(j, len(negatives) - 1)], seed=seed + j,
                          subseed=-1 if subseed is None else subseed + j, init_image=image, mask=mask)
            image = generator(sub, interrupt=interrupt)[0].image
    return image


def detailer_fields(units) -> dict[str, object]:
    """The infotext fields ADetailer writes for `units` (the first plain, then " 2nd", " 3rd", ...), each only
    when it is not its default, as ADetailer's `extra_params`; a unit with denoise 0 still records itself."""
    fields: dict[str, object] = {}
    for n, unit in enumerate(units):
        suffix = "" if n == 0 else f" {_ordinal(n + 1)}"
        only_masked = unit.inpaint_only_masked
        sized = unit.width is not None or unit.height is not None
        entries = {
            "ADetailer model": Path(str(unit.model)).name,
            "ADetailer prompt": unit.prompt or None,
            "ADetailer negative prompt": unit.negative_prompt or None,
            "ADetailer confidence": unit.confidence,
            "ADetailer mask only top k largest": unit.mask_k_largest or None,
            "ADetailer mask min ratio": unit.mask_min_ratio or None,
            "ADetailer mask max ratio": unit.mask_max_ratio if unit.mask_max_ratio != 1.0 else None,
            "ADetailer dilate erode": unit.dilate_erode,
            "ADetailer mask blur": unit.mask_blur,
            "ADetailer denoising strength": unit.denoise,
            "ADetailer inpaint only masked": True if only_masked else None,
            "ADetailer inpaint padding": unit.padding if only_masked else None,
            "ADetailer use inpaint width height": True if sized else None,
            "ADetailer inpaint width": (unit.width or 512) if sized else None,
            "ADetailer inpaint height": (unit.height or 512) if sized else None,
            "ADetailer use separate steps": True if unit.steps is not None else None,
            "ADetailer steps": unit.steps,
            "ADetailer use separate CFG scale": True if unit.cfg_scale is not None else None,
            "ADetailer CFG scale": unit.cfg_scale,
        }
        fields.update({key + suffix: value for key, value in entries.items()})
    return fields


def _ordinal(n: int) -> str:
    tail = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{tail}"


_UNIT_FIELDS = {  # infotext name -> (DetailerUnit field, type)
    "ADetailer model": ("model", str), "ADetailer prompt": ("prompt", str),
    "ADetailer negative prompt": ("negative_prompt", str), "ADetailer confidence": ("confidence", float),
    "ADetailer mask only top k largest": ("mask_k_largest", int), "ADetailer mask min ratio": ("mask_min_ratio", float),
    "ADetailer mask max ratio": ("mask_max_ratio", float), "ADetailer dilate erode": ("dilate_erode", int),
    "ADetailer mask blur": ("mask_blur", int), "ADetailer denoising strength": ("denoise", float),
    "ADetailer inpaint padding": ("padding", int), "ADetailer steps": ("steps", int),
    "ADetailer CFG scale": ("cfg_scale", float), "ADetailer inpaint width": ("width", int),
    "ADetailer inpaint height": ("height", int),
}
_SWITCHES = {"ADetailer inpaint only masked": "inpaint_only_masked", "ADetailer use separate steps": "steps",
             "ADetailer use separate CFG scale": "cfg_scale", "ADetailer use inpaint width height": "width"}
INFOTEXT_KEYS = frozenset(_UNIT_FIELDS) | frozenset(_SWITCHES) | {"ADetailer version"}
"""ADetailer's infotext names (without the " 2nd", ... suffix) that `units_from_params` reads."""


def infotext_key(key: str) -> str | None:
    """An ADetailer infotext key without its unit suffix, if it is one `units_from_params` reads; else None."""
    base = re.sub(r" \d+(st|nd|rd|th)$", "", key)
    return base if base in INFOTEXT_KEYS else None


def units_from_params(params: dict[str, object]) -> tuple[DetailerUnit, ...]:
    """The units a parsed infotext records (`detailer_fields`' inverse); ADetailer's defaults for what is absent,
    and its "inpaint only masked" absent = False."""
    units = []
    for n in range(100):
        suffix = "" if n == 0 else f" {_ordinal(n + 1)}"
        if f"ADetailer model{suffix}" not in params:
            break
        values: dict[str, object] = {"inpaint_only_masked": False}
        for key, (name, kind) in _UNIT_FIELDS.items():
            if key + suffix in params:
                raw = str(params[key + suffix]).strip()
                try:
                    values[name] = kind(float(raw)) if kind is int else kind(raw)
                except ValueError:
                    raise AnimegenError(f"infotext {key + suffix}: {raw!r} is not a number") from None
        for key, name in _SWITCHES.items():
            on = str(params.get(key + suffix, "False")).strip() == "True"
            if name == "inpaint_only_masked":
                values[name] = on
            elif not on:
                values.pop(name, None)
                if name == "width":
                    values.pop("height", None)
        units.append(DetailerUnit(**values))  # type: ignore[arg-type]
    return tuple(units)


# ---- ADetailer's API arguments ---------------------------------------------------------------------------------
_API_FIELDS = {  # ad_* name -> DetailerUnit field
    "ad_model": "model", "ad_prompt": "prompt", "ad_negative_prompt": "negative_prompt", "ad_confidence": "confidence",
    "ad_mask_k_largest": "mask_k_largest", "ad_mask_min_ratio": "mask_min_ratio", "ad_mask_max_ratio":
    "mask_max_ratio", "ad_dilate_erode": "dilate_erode", "ad_mask_blur": "mask_blur", "ad_denoising_strength":
    "denoise", "ad_inpaint_only_masked": "inpaint_only_masked", "ad_inpaint_only_masked_padding": "padding",
}
_API_SWITCHED = {"ad_steps": ("ad_use_steps", "steps"), "ad_cfg_scale": ("ad_use_cfg_scale", "cfg_scale"),
                 "ad_inpaint_width": ("ad_use_inpaint_width_height", "width"),
                 "ad_inpaint_height": ("ad_use_inpaint_width_height", "height")}
_API_DEFAULTS = {  # ADetailer settings animegen does not have: accepted only at these values
    "ad_model_classes": "", "ad_x_offset": 0, "ad_y_offset": 0, "ad_mask_merge_invert": "None",
    "ad_use_checkpoint": False, "ad_use_vae": False, "ad_use_sampler": False, "ad_use_noise_multiplier": False,
    "ad_use_clip_skip": False, "ad_restore_face": False, "ad_controlnet_model": "None",
}
_API_IGNORED = {"ad_tap_enable", "ad_use_steps", "ad_use_cfg_scale", "ad_use_inpaint_width_height", "ad_checkpoint",
                "ad_vae", "ad_sampler", "ad_scheduler", "ad_noise_multiplier", "ad_clip_skip", "ad_controlnet_module",
                "ad_controlnet_weight", "ad_controlnet_guidance_start", "ad_controlnet_guidance_end", "is_api"}


def units_from_api_args(args) -> tuple[DetailerUnit, ...]:
    """ADetailer's `alwayson_scripts.ADetailer.args` as units: `[enabled, skip_img2img, {ad_model: ...}, ...]` (the
    leading booleans optional; enabled False = none), one unit per dict whose ad_model is not "None" and whose
    ad_tap_enable is not False. ad_steps / ad_cfg_scale / ad_inpaint_width, height count only with their ad_use_*
    switch, as in ADetailer. A setting animegen lacks (another checkpoint, VAE or sampler, offsets, mask merging,
    ControlNet, mediapipe models) is refused unless at its default; an unknown key is refused, as ADetailer does."""
    if not isinstance(args, list | tuple):
        raise AnimegenError(f"ADetailer args must be a list [enabled, skip_img2img, {{ad_model: ...}}, ...], got "
                            f"{type(args).__name__}")
    if args and isinstance(args[0], bool):
        if not args[0]:
            return ()
        args = args[2:] if len(args) > 1 and isinstance(args[1], bool) else args[1:]
    units = []
    for n, entry in enumerate(args):
        if not isinstance(entry, dict):
            raise AnimegenError(f"ADetailer args[{n}] must be an object {{ad_model: ...}}, got {entry!r}")
        unknown = sorted(set(entry) - set(_API_FIELDS) - set(_API_SWITCHED) - set(_API_DEFAULTS) - _API_IGNORED)
        if unknown:
            raise AnimegenError(f"ADetailer args[{n}]: unknown keys {', '.join(unknown)}; ADetailer's are "
                                f"{', '.join(sorted(_API_FIELDS))}, ...")
        for key, default in _API_DEFAULTS.items():
            if key in entry and entry[key] != default:
                raise AnimegenError(f"ADetailer args[{n}].{key} = {entry[key]!r} is not supported by animegen; send "
                                    f"{default!r} or leave it out")
        model = str(entry.get("ad_model", "None"))
        if model == "None" or entry.get("ad_tap_enable", True) is False:
            continue
        if model.lower().startswith("mediapipe"):
            raise AnimegenError(f"ADetailer args[{n}].ad_model {model!r}: mediapipe detectors are not supported; "
                                "use a YOLOv8 detector exported to ONNX (face_yolov8n.onnx)")
        values = {field: entry[key] for key, field in _API_FIELDS.items() if key in entry}
        values.update({field: entry[key] for key, (switch, field) in _API_SWITCHED.items()
                       if key in entry and entry.get(switch) is True})
        try:
            unit = DetailerUnit(**values)
            unit.validate()
        except (TypeError, ValueError) as exc:
            raise AnimegenError(f"ADetailer args[{n}]: {exc}") from None
        units.append(unit)
    return tuple(units)
