"""Benchmark (not a test): `animegen data` ingest and tagging throughput.

    python bench/data.py                      # 200 synthetic 512x512 JPEGs, tiny tagger, CPU
    python bench/data.py --images 1000 --size 1024
    python bench/data.py --real-size          # + a wd-vit-tagger-v3-sized ViT-B/16 @ 448 px (random weights)

Per-core figures (`*_per_core_s`: images per CPU second of this process, one decoding worker) compare
ingest and tagging with a plain PIL loop decoding the same files (`Image.open(...).convert("RGB")`); the
tiny tagger's model costs next to nothing, so its figure is the tagging path's own decode + preprocess +
manifest work: what has to keep up with a GPU tagger.

The real-size tagger is a ViT-B/16 (12 blocks, width 768, 448 px input, 10,861 tags) written directly as an
ONNX graph with random weights, so the onnxruntime path is timed on the true amount of compute without
downloading a model. onnxruntime picks the CUDA provider when `onnxruntime-gpu` is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Smooth random pictures (JPEG-compressible like illustrations, no two alike)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size * 3 // 2 if i % 3 == 0 else size), Image.BICUBIC)
        img.save(folder / f"img_{i:05d}.jpg", quality=92)


def per_cpu_second(n: int, work: Callable[[], object]) -> float:
    """Images per CPU second (all threads of this process) for `work`, which handles `n` images."""
    t = time.process_time()
    work()
    return n / (time.process_time() - t)


def plain_pil_decode(paths: list[Path]) -> None:
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB")


def build_vit_tagger(folder: Path, *, size: int = 448, patch: int = 16, width: int = 768, depth: int = 12,
                     heads: int = 12, n_tags: int = 10861, seed: int = 0) -> None:
    """A WD14-v3-sized ViT as raw ONNX (NHWC BGR 0..255 in, sigmoid probabilities out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def param(name, shape, scale=0.02):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def layer_norm(x, name):
        inits.append(numpy_helper.from_array(np.ones(width, np.float32), f"{name}.g"))
        inits.append(numpy_helper.from_array(np.zeros(width, np.float32), f"{name}.b"))
        return node("LayerNormalization", [x, f"{name}.g", f"{name}.b"], f"{name}.out", axis=-1)

    def linear(x, name, fan_in, fan_out):
        y = node("MatMul", [x, param(f"{name}.w", (fan_in, fan_out))], f"{name}.mm")
        return node("Add", [y, param(f"{name}.b", (fan_out,), 0.0)], f"{name}.out")

    tokens, hd = (size // patch) ** 2, width // heads
    x = node("Transpose", ["input"], "nchw", perm=[0, 3, 1, 2])
    x = node("Div", [x, const("c255", 255.0, np.float32)], "scaled")
    x = node("Conv", [x, param("patch.w", (width, 3, patch, patch)), param("patch.b", (width,), 0.0)],
             "patches", strides=[patch, patch])
    x = node("Reshape", [x, const("s_flat", [0, width, tokens])], "flat")
    x = node("Transpose", [x], "seq", perm=[0, 2, 1])
    x = node("Add", [x, param("pos", (1, tokens, width))], "x0")
    heads_shape = const("s_heads", [0, tokens, heads, hd])
    merge_shape = const("s_merge", [0, tokens, width])
    scale = const("scale", 1.0 / np.sqrt(hd), np.float32)
    for i in range(depth):
        p = f"b{i}"
        h = layer_norm(x, f"{p}.ln1")
        q, k, v = (node("Reshape", [linear(h, f"{p}.{n}", width, width), heads_shape], f"{p}.{n}.r")
                   for n in "qkv")
        q = node("Transpose", [q], f"{p}.qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}.kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}.vt", perm=[0, 2, 1, 3])
        att = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.qks")
        att = node("Softmax", [att], f"{p}.att", axis=-1)
        o = node("Transpose", [node("MatMul", [att, v], f"{p}.av")], f"{p}.o", perm=[0, 2, 1, 3])
        o = linear(node("Reshape", [o, merge_shape], f"{p}.om"), f"{p}.proj", width, width)
        x = node("Add", [x, o], f"{p}.x1")
        h = layer_norm(x, f"{p}.ln2")
        h = node("Gelu", [linear(h, f"{p}.fc1", width, 4 * width)], f"{p}.gelu")
        x = node("Add", [x, linear(h, f"{p}.fc2", 4 * width, width)], f"{p}.x2")
    x = layer_norm(x, "final")
    x = node("ReduceMean", [x, const("axis1", [1])], "pooled", keepdims=0)
    x = node("Sigmoid", [linear(x, "head", width, n_tags)], "output")
    graph = helper.make_graph(
        nodes, "wd_vit_v3_sized",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_tags])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    cats = [9] * 4 + [4] * 2000 + [0] * (n_tags - 2004)
    lines = ["tag_id,name,category,count"] + [f"{i},tag_{i},{c},0" for i, c in enumerate(cats)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--real-size", action="store_true", help="also time a ViT-B/16 448 px tagger")
    ap.add_argument("--real-size-images", type=int, default=16)
    args = ap.parse_args()

    from datakit import write_tiny_tagger

    from animegen.data.ingest import ingest
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tagging import tag_dataset

    from animegen.data.tagger import preprocess

    results: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "src", args.images, args.size)
        paths = sorted((tmp / "src").iterdir())
        plain_pil_decode(paths)  # the page cache warm for every reader alike
        results["plain_pil_decode_per_core_s"] = per_cpu_second(len(paths), lambda: plain_pil_decode(paths))
        t = time.perf_counter()
        ingest([tmp / "src"], tmp / "ds", progress=False)
        results["ingest_images_per_s"] = args.images / (time.perf_counter() - t)
        results["ingest_per_core_s"] = per_cpu_second(
            len(paths), lambda: ingest([tmp / "src"], tmp / "ds1", progress=False, workers=1))

        write_tiny_tagger(tmp / "tiny")
        tagger = WD14Tagger.from_pretrained(tmp / "tiny")
        t = time.perf_counter()
        tag_dataset(tmp / "ds", tagger, batch_size=args.batch_size, progress=False)
        results["tag_tiny_images_per_s"] = args.images / (time.perf_counter() - t)
        results["tag_tiny_per_core_s"] = per_cpu_second(
            len(paths), lambda: tag_dataset(tmp / "ds1", tagger, batch_size=args.batch_size, progress=False))
        decoded = [Image.open(p).convert("RGB") for p in paths[:50]]
        results["tagger_preprocess_448_per_core_s"] = per_cpu_second(
            len(decoded), lambda: [preprocess(im, 448) for im in decoded])
        results["providers"] = ",".join(tagger.providers)

        if args.real_size:
            build_vit_tagger(tmp / "vit")
            tagger = WD14Tagger.from_pretrained(tmp / "vit")
            n = args.real_size_images
            imgs = [Image.open(p).convert("RGB") for p in sorted((tmp / "src").iterdir())[:n]]
            tagger.tag(imgs[:1])  # warm-up (graph optimisation, allocator)
            t = time.perf_counter()
            for i in range(0, n, args.batch_size):
                tagger.tag(imgs[i:i + args.batch_size])
            results["tag_vit_b16_448_images_per_s"] = n / (time.perf_counter() - t)
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
