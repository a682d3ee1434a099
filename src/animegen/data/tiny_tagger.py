"""A tiny random-weight WD14-format tagger (`model.onnx` + `selected_tags.csv`), built offline.

Real WD14 taggers are 300 MB downloads; tests and `animegen demo` need the same file layout and
input/output contract (NHWC float 0-255 BGR in, per-tag sigmoid out) without network. The graph is
flatten → linear → sigmoid, so its output is easy to check by hand.

Its tags are noise, so anything measured with it must say so (as random FID weights do): the ONNX file
carries the metadata mark `TOY_MARK`, and `is_toy_tagger` finds it on a loaded tagger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from animegen.core.files import atomic_write

TOY_MARK = "animegen.toy_tagger"

# (name, category): 9 = rating, 0 = general, 4 = character — the categories of selected_tags.csv.
DEMO_TAGS: list[tuple[str, int]] = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("red_hair", 0), ("smile", 0), ("circle", 0), ("white_background", 0),
    ("^_^", 0), ("zxq_(character)", 4),
]


def write_tiny_tagger(folder: str | Path, tags: Sequence[tuple[str, int]] = DEMO_TAGS, *, size: int = 32,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the tagger into `folder`; returns its weights (W, b) so callers can recompute outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = size * size * 3
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((d, len(tags))) * 3 / (128 * np.sqrt(d))).astype(np.float32)
    b = rng.standard_normal(len(tags)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input_1:0", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["N", len(tags)])],
        initializer=[
            numpy_helper.from_array(np.array([-1, d], dtype=np.int64), "shape"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {TOY_MARK: "random weights: its tags are noise (tests and `animegen demo`)"})
    onnx.checker.check_model(model)
    atomic_write(folder / "model.onnx", model.SerializeToString())
    lines = ["tag_id,name,category,count"] + [f"{i},{n},{c},{1000 - i}" for i, (n, c) in enumerate(tags)]
    atomic_write(folder / "selected_tags.csv", "\n".join(lines) + "\n")
    return w, b


def is_toy_tagger(tagger) -> bool:
    """True for a tagger whose ONNX model carries `TOY_MARK` (one written by `write_tiny_tagger`)."""
    session = getattr(tagger, "session", None)
    try:
        props = session.get_modelmeta().custom_metadata_map
    except AttributeError:  # not an onnxruntime session: a stand-in with its own .tag()
        return False
    return TOY_MARK in props
