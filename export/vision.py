"""The camera encoder's inference graph as ONNX (float32, opset 17), and its check.

Shape legend:
    N      frames (dynamic)                   Ci     image channels (1 grey, 3 RGB)
    H, W   frame height and width             R, Q   patch rows and columns, P = R * Q
    p      patch side in pixels               C_l    channels of layer l
    s_l    side of a patch's map after layer l

Graph:

    images     (N, Ci, H, W) float32, values in [0, 1], at the config's size and colour
      -> Gather rows (axis 2, indices (R, p))        -> (N, Ci, R, p, W)
      -> Gather columns (axis 4, indices (Q, p))     -> (N, Ci, R, p, Q, p)
      -> Transpose (0, 2, 4, 1, 3, 5)                -> (N, R, Q, Ci, p, p)
      -> Reshape                                     -> (N * P, Ci, p, p), row-major grid
      -> per layer: Conv (pads kernel // 2, strides s), Relu -> (N * P, C_l, s_l, s_l)
    patches_l  (N, P, C_l) float32 for each exported layer l: ReduceMean or ReduceMax over
               each patch's map (as the layer pools), as ``VisionLearner.encode`` returns

The patches are cut by indexing, not arithmetic: two Gathers copy the pixels, so the cut
is exact by construction (no kernel sums exact zeros, as a one-hot Conv would, at
(Ci p^2)^2 multiply-adds per patch), the index tables are small (R p + Q p integers), and
the node count does not grow with the grid (Slice + Concat needs a node per patch).

Reference: ``VisionLearner.encode`` in torch. Tolerance: ``TOLERANCE`` (1e-4 absolute,
shared with the audio export) over every patch vector of every exported layer.

Not exported: int8 (quantisation-aware learning is not available for the image front end,
so a vision run has no int8 scales) and a streaming graph (each frame is encoded on its
own; there is no carry from one frame to the next).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edge_clapp import __version__
from edge_clapp.config import Config
from edge_clapp.export.model import OPSET, TOLERANCE, ExportError, _Graph, max_abs_error
from edge_clapp.image_data import OPENCV_DATA
from edge_clapp.vision import VisionLearner

# A real scene for the export check: pedestrians filmed by a fixed camera, 768 x 576,
# 10 frames per second, 795 frames (installed by Debian's opencv-doc).
VTEST_AVI = OPENCV_DATA / "vtest.avi"
CHECK_FRAMES = 8  # frames the export check runs
CHECK_EVERY = 10  # of the video's frames, every tenth (a second apart)


def _check_exportable(
    learner: VisionLearner, layers: int | None, streaming: bool, int8: bool
) -> int:
    """The number of layers to export; refuses what a vision graph cannot be."""
    if int8:
        raise ExportError(
            "--int8 needs a run learned with quantisation, and quantisation-aware learning "
            "is not available for the image front end: a vision run has no int8 scales. "
            "Export without --int8 (float32)"
        )
    if streaming:
        raise ExportError(
            "--streaming exports the carries a stream passes from one piece to the next; a "
            "vision graph encodes every frame on its own (a frame has no carry): export "
            "without --streaming, with as many frames per call as you like"
        )
    count = len(learner.layers) if layers is None else layers
    if not 1 <= count <= len(learner.layers):
        raise ExportError(
            f"--layers {layers} is out of range: the encoder has {len(learner.layers)} layers"
        )
    return count


def _cut_patches(graph: _Graph, images: str, config: Config) -> str:
    """(N, Ci, H, W) -> (N * P, Ci, p, p): every frame's patches in row-major grid order,
    as ``edge_clapp.vision.cut_patches`` cuts them."""
    v = config.vision
    rows, cols = v.grid
    p, step = v.patch, v.patch_stride
    row_index = np.arange(rows)[:, None] * step + np.arange(p)  # (R, p) pixel rows
    col_index = np.arange(cols)[:, None] * step + np.arange(p)  # (Q, p) pixel columns
    x = graph.op("Gather", [images, graph.const("rows", row_index)], "patch_rows", axis=2)
    x = graph.op("Gather", [x, graph.const("cols", col_index)], "patch_cols", axis=4)
    x = graph.op("Transpose", [x], "patch_grid", perm=[0, 2, 4, 1, 3, 5])  # (N,R,Q,Ci,p,p)
    shape = graph.const("shape", np.array([-1, v.channels, p, p], dtype=np.int64))
    return graph.op("Reshape", [x, shape], "patches")  # (N * P, Ci, p, p)


def build_vision_model(
    learner: VisionLearner,
    layers: int | None = None,
    *,
    streaming: bool = False,
    int8: bool = False,
) -> onnx.ModelProto:
    """The float32 inference graph of the first ``layers`` layers (default: all) of a
    vision run. ``streaming`` and ``int8`` are refused with the reason (ExportError)."""
    count = _check_exportable(learner, layers, streaming, int8)
    config = learner.config
    v = config.vision
    P = learner.patches_per_frame
    graph = _Graph()
    maps = _cut_patches(graph, "images", config)
    outputs = []
    for i, layer in enumerate(learner.layers[:count]):
        k = layer.kernel
        weight = layer.weight.numpy().reshape(layer.channels, layer.in_channels, k, k)
        maps = graph.op(
            "Conv",
            [maps, graph.const("weight", weight), graph.const("bias", layer.bias.numpy())],
            "conv",
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            strides=[layer.stride] * 2,
        )
        maps = graph.op("Relu", [maps], "relu")  # (N * P, C_l, s_l, s_l)
        reduce = "ReduceMean" if layer.pool == "avg" else "ReduceMax"
        pooled = graph.op(reduce, [maps], "pool", axes=[2, 3], keepdims=0)  # (N * P, C_l)
        name = f"patches_{i + 1}"
        shape = graph.const("shape", np.array([-1, P, layer.channels], dtype=np.int64))
        graph.nodes.append(helper.make_node("Reshape", [pooled, shape], [name], name=name))
        outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", P, layer.channels])
        )

    images = helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["N", v.channels, v.height, v.width]
    )
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, "edge_clapp_vision_encoder", [images], outputs, graph.initializers
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge_clapp",
        producer_version=__version__,
        doc_string=(
            f"edge_clapp patch encoder. Input images: (N, {v.channels}, {v.height}, "
            f"{v.width}) float32 in [0, 1] ({v.color.value}, channels first). Each frame "
            f"is cut into a {v.grid[0]} x {v.grid[1]} grid of {v.patch}-pixel patches every "
            f"{v.patch_stride} pixels (row-major). Outputs patches_L: (N, {P}, C_L), layer "
            "L's vector of every patch."
        ),
    )
    model.ir_version = 8  # what onnxruntime releases of 2024 and later all read
    metadata = {
        "edge_clapp_version": __version__,
        "preset": config.preset,
        "frontend": config.frontend.kind.value,
        "height": str(v.height),
        "width": str(v.width),
        "color": v.color.value,
        "fit": v.fit.value,
        "patch": str(v.patch),
        "patch_stride": str(v.patch_stride),
        "grid": json.dumps(list(v.grid)),
        "layers": json.dumps(config.to_dict()["layers"][:count]),
        "frames_learned": str(learner.counters.blocks_learned),
        "precision": "float32",
        "streaming": "false",
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


# -- frames for the check ------------------------------------------------------------------


def read_video_frames(
    path: str | Path, config: Config, count: int, every: int = 1, first: int = 0
) -> np.ndarray:
    """``count`` frames of a video, every ``every``-th from frame ``first``, at the
    config's size and colour, read through the same source ``edge-clapp learn`` uses:
    (count, H, W, Ci) float32 in [0, 1]. ExportError when the file cannot be read or the
    video is shorter."""
    from edge_clapp.errors import SourceError
    from edge_clapp.vision_sources import open_vision_source

    v = config.vision
    frames: list[np.ndarray] = []
    try:
        with open_vision_source(
            f"video:{path}", height=v.height, width=v.width, color=v.color.value,
            fit=v.fit.value, skip_frames=first,
        ) as source:  # fmt: skip
            for frame in source.frames():
                if (frame.index - first) % every == 0:
                    frames.append(frame.image)
                    if len(frames) == count:
                        break
    except SourceError as exc:
        raise ExportError(str(exc)) from None
    if len(frames) < count:
        raise ExportError(
            f"'{path}' has too few frames for {count} frames every {every} from frame {first}"
        )
    return np.stack(frames)


def synthetic_frames(config: Config, count: int) -> np.ndarray:
    """A deterministic stand-in for a camera when vtest.avi cannot be read: drifting
    bars and a bright disc over noise, (count, H, W, Ci) float32 in [0, 1]."""
    v = config.vision
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : v.height, 0 : v.width] / max(v.height, v.width)
    frames = np.empty((count, v.height, v.width, v.channels), np.float32)
    for t in range(count):
        bars = 0.5 + 0.4 * np.sin(2 * np.pi * (3 * x + 2 * y - 0.1 * t))
        disc = ((x - 0.3 - 0.05 * t) ** 2 + (y - 0.5) ** 2 < 0.03).astype(np.float64)
        for c in range(v.channels):
            noise = 0.05 * rng.standard_normal((v.height, v.width))
            frames[t, ..., c] = np.clip(bars * (1 - disc) + disc + noise - 0.1 * c, 0, 1)
    return frames


def check_frames(config: Config, count: int = CHECK_FRAMES) -> tuple[np.ndarray, str]:
    """The frames the export check runs, (count, H, W, Ci), and what they are: frames a
    second apart of vtest.avi, or synthetic frames when OpenCV or the video is missing."""
    try:
        return (
            read_video_frames(VTEST_AVI, config, count, every=CHECK_EVERY),
            f"{count} frames of {VTEST_AVI.name}",
        )
    except ExportError:
        return synthetic_frames(config, count), f"{count} synthetic frames"


def run_vision_model(model: onnx.ModelProto, frames: np.ndarray) -> list[np.ndarray]:
    """The graph in onnxruntime on (N, H, W, Ci) frames: every output, (N, P, C_l) each."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    images = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32)
    return session.run(None, {"images": images})


def check_vision_in_onnxruntime(
    model: onnx.ModelProto, learner: VisionLearner, frames: np.ndarray | None = None
) -> dict[str, object]:
    """Runs ``model`` in onnxruntime on ``frames`` (N, H, W, Ci) (default: ``check_frames``)
    against ``learner.encode`` in torch: every patch vector of every exported layer within
    TOLERANCE. Returns the figures; raises ExportError past the bound."""
    if frames is None:
        frames, described = check_frames(learner.config)
    else:
        described = f"{len(frames)} given frames"
    outputs = run_vision_model(model, frames)
    expected = learner.encode(frames)
    per_layer = [
        max_abs_error(got, want.numpy())
        for got, want in zip(outputs, expected[: len(outputs)], strict=True)
    ]
    error = max(per_layer)
    if not error <= TOLERANCE:
        largest = max(float(layer.weight.abs().max()) for layer in learner.layers)
        cause = (
            f"the run diverged (its largest weight is {largest:.1e}; float32 rounding of "
            "such values differs between runtimes): learn again with a lower --lr"
            if largest > 1e6
            else "the graph is wrong"
        )
        raise ExportError(
            f"onnxruntime disagrees with torch by {error:.2e} on {described} (bound "
            f"{TOLERANCE:.0e}; per layer {', '.join(f'{e:.1e}' for e in per_layer)}): "
            f"{cause}; nothing was written"
        )
    return {
        "frames": len(frames),
        "input": described,
        "max_abs_error": error,
        "max_abs_error_per_layer": per_layer,
    }


__all__ = [
    "CHECK_FRAMES",
    "VTEST_AVI",
    "build_vision_model",
    "check_frames",
    "check_vision_in_onnxruntime",
    "read_video_frames",
    "run_vision_model",
    "synthetic_frames",
]
