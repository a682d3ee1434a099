"""A tiny ONNX "detector" with a known output, for the ADetailer tests (tests/generate, tests/cli, tests/serve)."""

from __future__ import annotations

import numpy as np


def yolo_output(candidates: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """A YOLOv8 output (1, 4 + classes, N) from (cx, cy, w, h, class scores) rows."""
    return np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in candidates], dtype=np.float32).T[None]


def tiny_detector(path, output: np.ndarray, size: int = 64):
    """An ONNX "detector": images (1, 3, size, size) -> `output` + 0 * mean(images), so its result is known."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(output.astype(np.float32))),
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "tiny_yolo",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
