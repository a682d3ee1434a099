"""ADetailer-style detailing (issue #15): the detector's maths against hand-computed boxes, a tiny ONNX detector
built here (its output known), and the detailer on the tiny SD1.5 (outside the blurred boxes nothing changes)."""

from __future__ import annotations

import numpy as np
import pytest
from detector_testutils import tiny_detector, yolo_output
from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest, Generator
from animegen.generate.detailer import (
    DetailerUnit,
    box_masks,
    decode_yolo,
    detailer_fields,
    detect,
    dilate_erode,
    filter_boxes,
    find_detector,
    letterbox,
    nms,
    run_detailer,
    unit_prompts,
    units_from_params,
    unletterbox,
)
from animegen.generate.infotext import format_infotext, parse_infotext
from animegen.generate.request import request_from_infotext, resolve


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- the detector's maths --------------------------------------------------------------------------------------
def test_letterbox_scales_to_fit_and_centres_on_gray_and_unletterbox_maps_boxes_back():
    canvas, gain, pad = letterbox(noise_image(200, 100), 64)
    assert canvas.size == (64, 64) and gain == 0.32 and pad == (0, 16)  # 200x100 -> 64x32, 16 gray rows above
    pixels = np.asarray(canvas)
    assert (pixels[:16] == 114).all() and (pixels[48:] == 114).all()
    back = unletterbox(np.array([[10, 20, 30, 40], [-5, 0, 70, 70]]), gain, pad, 200, 100)
    assert np.allclose(back[0], [10 / 0.32, 4 / 0.32, 30 / 0.32, 24 / 0.32])
    assert np.allclose(back[1], [0, 0, 200, 100])  # clipped to the image
    # 100x60 -> 64 x round(38.4) = 38 rows, (64 - 38) / 2 = 13 above
    assert letterbox(noise_image(100, 60), 64)[1:] == (0.64, (0, 13))


def test_nms_drops_a_box_overlapping_a_better_one_by_more_than_the_threshold():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 9], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # IoU(0, 1) = 81 / 119 = 0.68: kept at 0.7; IoU(0, 2) = 90 / 100 = 0.9: dropped
    assert nms(boxes, scores, 0.7) == [0, 1, 3]
    assert nms(boxes, scores, 0.5) == [0, 3]
    assert nms(boxes[::-1], scores[::-1], 0.7) == [3, 2, 0]  # best score first, whatever the order


def test_decode_yolo_keeps_scores_above_confidence_and_suppresses_only_within_a_class():
    out = yolo_output([(20, 20, 10, 10, [0.9, 0.0]), (21, 20, 10, 10, [0.0, 0.8]), (20, 21, 10, 10, [0.7, 0.1]),
                       (50, 50, 4, 4, [0.5, 0.2])])
    boxes, scores = decode_yolo(out, 0.5)
    assert np.allclose(scores, [0.9, 0.8])  # the third overlaps the first (class 0) by 0.82; 0.5 is not > 0.5
    assert np.allclose(boxes, [[15, 15, 25, 25], [16, 15, 26, 25]])
    assert len(decode_yolo(out, 0.95)[0]) == 0
    with pytest.raises(AnimegenError, match=r"\(1, 4 \+ classes"):
        decode_yolo(np.zeros((1, 3, 8)), 0.3)


def test_detect_runs_an_onnx_detector_on_the_letterboxed_image(tmp_path):
    path = tiny_detector(tmp_path / "face.onnx", yolo_output([(32, 32, 16, 8, [0.9]), (10, 40, 4, 4, [0.5])]))
    # 128x64 -> gain 0.5, 16 gray rows above: input (24, 28, 40, 36) is image (48, 24, 80, 40)
    boxes = detect(noise_image(128, 64), path, confidence=0.3)
    assert np.allclose(boxes, [(48, 24, 80, 40), (16, 44, 24, 52)])
    assert np.allclose(detect(noise_image(128, 64), path, confidence=0.6), [(48, 24, 80, 40)])


def test_filters_keep_the_size_ratio_range_then_the_k_largest():
    boxes = [(0, 0, 10, 10), (0, 0, 50, 50), (0, 0, 30, 30), (0, 0, 2, 2)]  # areas 100, 2500, 900, 4 of 10000
    assert filter_boxes(boxes, (100, 100), k_largest=2) == [(0, 0, 50, 50), (0, 0, 30, 30)]
    assert filter_boxes(boxes, (100, 100), min_ratio=0.005, max_ratio=0.1) == [(0, 0, 10, 10), (0, 0, 30, 30)]
    assert filter_boxes(boxes, (100, 100)) == boxes


def test_dilate_erode_grows_and_shrinks_a_box_as_cv2_with_a_centred_square():
    mask = Image.new("L", (40, 40))
    mask.paste(255, (10, 10, 20, 20))  # pixels 10..19
    def extent(m):
        ys, xs = np.nonzero(np.asarray(m))
        return xs.min(), xs.max(), ys.min(), ys.max()
    assert extent(dilate_erode(mask, 4)) == (9, 21, 9, 21)  # anchor 2: window x-2..x+1 -> 1 before, 2 after
    assert extent(dilate_erode(mask, 3)) == (9, 20, 9, 20)
    assert extent(dilate_erode(mask, -3)) == (11, 18, 11, 18)
    assert dilate_erode(mask, 0) is mask
    masks = box_masks([(2, 3, 5, 6), (30, 30, 31, 31)], (40, 40), dilate=-3)  # the second erodes to nothing
    assert len(masks) == 1 and extent(masks[0]) == (3, 4, 4, 5)  # drawn 2..5 x 3..6 (edges in), then eroded


def test_unit_prompts_fill_blanks_and_prompt_and_split_at_sep():
    assert unit_prompts("", "1girl") == ["1girl"]
    assert unit_prompts("[PROMPT], detailed face", "1girl") == ["1girl, detailed face"]
    assert unit_prompts("smile [SEP]  [SEP] angry", "1girl") == ["smile", "1girl", "angry"]


def test_find_detector_finds_ad_model_names_as_onnx_files_in_the_folder(tmp_path):
    path = tiny_detector(tmp_path / "face_yolov8n.onnx", yolo_output([(1, 1, 1, 1, [0.9])]))
    assert find_detector("face_yolov8n.pt", [tmp_path]) == path
    assert find_detector("face_yolov8n", [tmp_path]) == path
    assert find_detector(path) == path
    with pytest.raises(AnimegenError, match="known detectors: face_yolov8n.onnx"):
        find_detector("hand_yolov8n.pt", [tmp_path])
    with pytest.raises(AnimegenError, match="not face_yolov8n.onnx in"):
        find_detector(str(path), [], allow_path=False)  # a name from a client never opens a path
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(AnimegenError, match="yolo export"):
        find_detector(tmp_path / "x.pt")


def test_units_are_checked():
    with pytest.raises(ValueError, match="confidence"):
        DetailerUnit("face.onnx", confidence=1.5).validate()
    with pytest.raises(ValueError, match="denoise"):
        DetailerUnit("face.onnx", denoise=-0.1).validate()
    with pytest.raises(ValueError, match="detailers"):
        GenerationRequest("x", detailers=("face.onnx",)).validate()  # type: ignore[arg-type]


def test_the_adetailer_infotext_fields_read_back_to_the_same_units():
    units = (DetailerUnit("/models/face_yolov8n.onnx", prompt="smile, (detailed face:1.2)", confidence=0.5,
                          mask_k_largest=2, dilate_erode=-2, denoise=0.35, padding=16, steps=12, cfg_scale=5.0),
             DetailerUnit("hand_yolov8n.onnx", inpaint_only_masked=False, width=512, height=768))
    params = detailer_fields(units)
    assert params["ADetailer model"] == "face_yolov8n.onnx" and params["ADetailer model 2nd"] == "hand_yolov8n.onnx"
    text = format_infotext("1girl", "", {"Steps": 4, "Sampler": "Euler", "CFG scale": 7, "Seed": 1,
                                         "Size": "64x64", **params})
    assert "ADetailer confidence: 0.5, ADetailer mask only top k largest: 2, ADetailer dilate erode: -2" in text
    assert "ADetailer inpaint padding 2nd" not in text and "ADetailer use separate steps: True" in text
    back = units_from_params(parse_infotext(text))
    assert back == (units[0].__class__(**{**units[0].__dict__, "model": "face_yolov8n.onnx"}), units[1])
    assert request_from_infotext(text).detailers == back
    # an A1111 + ADetailer infotext: its .pt name and version, the defaults for what it leaves out
    a1111 = ("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ADetailer model: face_yolov8n.pt, "
             "ADetailer confidence: 0.3, ADetailer dilate erode: 4, ADetailer mask blur: 4, ADetailer denoising "
             "strength: 0.4, ADetailer inpaint only masked: True, ADetailer inpaint padding: 32, ADetailer version: "
             "24.9.0")
    assert request_from_infotext(a1111).detailers == (DetailerUnit("face_yolov8n.pt"),)


# ---- the detailer pass on the tiny SD1.5 ----------------------------------------------------------------------
STEPS = {"steps": 3, "cfg_scale": 7.0, "sampler": "Euler", "width": 64, "height": 64}


@pytest.fixture(scope="module")
def engine(tiny_sd15_dir):
    return Generator(tiny_sd15_dir, device="cpu")


@pytest.fixture()
def face(tmp_path):
    """A detector finding one box, pixels 16..32 of a 64 x 64 image (no letterbox at input size 64)."""
    return tiny_detector(tmp_path / "face.onnx", yolo_output([(24, 24, 16, 16, [0.9])]))


def _resolved(engine, **kw):
    return resolve(GenerationRequest("1girl", seed=3, **STEPS, **kw), engine.default_size)


def test_run_detailer_changes_the_box_and_keeps_every_pixel_outside_its_blurred_mask(engine, face):
    image = noise_image(64, 64, 1)
    unit = DetailerUnit(str(face), dilate_erode=0, mask_blur=4, padding=8, denoise=0.9)
    out = np.asarray(run_detailer(engine, _resolved(engine), image, [unit], seed=3)).astype(int)
    original = np.asarray(image).astype(int)
    outside = np.ones((64, 64), bool)
    outside[16 - 10:33 + 10, 16 - 10:33 + 10] = False  # the box 16..32 and the blur's 10-pixel reach (sigma 4)
    assert (out[outside] == original[outside]).all()
    assert np.abs(out[18:31, 18:31] - original[18:31, 18:31]).mean() > 10


def test_denoise_0_or_no_detection_leaves_the_image_identical(engine, face):
    image = noise_image(64, 64, 2)
    for unit in (DetailerUnit(str(face), denoise=0), DetailerUnit(str(face), confidence=0.95)):
        assert np.array_equal(np.asarray(run_detailer(engine, _resolved(engine), image, [unit], seed=3)),
                              np.asarray(image))


def test_a_request_with_detailers_runs_them_after_each_image_and_records_them(engine, face):
    unit = DetailerUnit(str(face), prompt="smile", dilate_erode=0, denoise=0.8)
    plain = engine(GenerationRequest("1girl", seed=5, n=2, **STEPS))
    detailed = engine(GenerationRequest("1girl", seed=5, n=2, detailers=(unit,), **STEPS))
    for before, after in zip(plain, detailed):
        expected = run_detailer(engine, _resolved(engine), before.image, [unit], seed=before.seed)
        assert np.array_equal(np.asarray(after.image), np.asarray(expected))
        assert not np.array_equal(np.asarray(after.image), np.asarray(before.image))
        assert np.array_equal(after.array, np.asarray(after.image, dtype=np.float32) / 255)
        assert "ADetailer model: face.onnx, ADetailer prompt: smile, ADetailer confidence: 0.3" in after.infotext
        assert "ADetailer" not in before.infotext
    assert request_from_infotext(detailed[0].infotext).detailers == (DetailerUnit("face.onnx", prompt="smile",
                                                                                  dilate_erode=0, denoise=0.8),)
