"""ONNX export of the camera encoder: the patch cut, parity with torch on real video
frames, ``--layers``, metadata, and the refusals (int8, streaming).

Reference: ``VisionLearner.encode`` (torch). Tolerance: 1e-4 absolute over every patch
vector of every exported layer (``TOLERANCE``, shared with the audio export); measured
2.4e-7 for the vision preset on held-out frames of vtest.avi. The patch cut is pure
indexing and is compared exactly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.cli import main
from edge_clapp.config import resolve_config
from edge_clapp.export import vision as export_vision
from edge_clapp.export.model import (
    OPSET,
    TOLERANCE,
    ExportError,
    _Graph,
    build_model,
    check_in_onnxruntime,
    max_abs_error,
)
from edge_clapp.export.vision import (
    VTEST_AVI,
    check_frames,
    read_video_frames,
    run_vision_model,
)
from edge_clapp.vision import VisionLearner, cut_patches
from tests.helpers import assert_close

assert TOLERANCE == 1e-4  # the bound this file states

# Max-pooled layers, a 5 x 5 kernel and a stride of 2 besides the preset's avg layers.
MAX_LAYERS = [
    {"kind": "conv2d", "channels": 16, "kernel": 3, "stride": 1, "pool": "max"},
    {"kind": "conv2d", "channels": 24, "kernel": 5, "stride": 2, "pool": "max"},
    {"kind": "conv2d", "channels": 24, "kernel": 3, "stride": 1, "pool": "avg"},
]
CONFIGS = {
    "avg": {},
    "max": {"layers": MAX_LAYERS},
    # Colour and a frame wider than tall: catches a transposed or channel-swapped cut.
    "rgb": {"layers": MAX_LAYERS[:2], "vision": {"color": "rgb", "height": 24, "width": 36}},
}


@pytest.fixture(scope="module")
def video_available():
    if not VTEST_AVI.is_file():
        pytest.skip(f"{VTEST_AVI} is missing: install Debian's opencv-doc (scripts/setup.sh)")
    pytest.importorskip("cv2")


def learned(name: str, frames: int = 24) -> tuple[VisionLearner, np.ndarray]:
    """A learner that has learned from ``frames`` frames of vtest.avi (negatives in use
    after the first ten), and held-out frames of the same video for the checks."""
    config = resolve_config("vision", overrides={"seed": 5, **CONFIGS[name]})
    learner = VisionLearner(config)
    initial = learner.layers[0].weight.clone()
    for frame in read_video_frames(VTEST_AVI, config, frames, every=3, first=40):
        assert learner.step(frame)
    assert learner.counters.negatives_unavailable_blocks < frames  # replay was used
    assert not torch.equal(learner.layers[0].weight, initial)  # it learned
    held_out = read_video_frames(VTEST_AVI, config, 6, every=25, first=500)
    return learner, held_out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_onnxruntime_matches_torch_on_video_frames(video_available, tmp_path, name):
    learner, held_out = learned(name)
    model = build_model(learner)
    path = tmp_path / "vision.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    outputs = run_vision_model(model, held_out)
    expected = learner.encode(held_out)
    P = learner.patches_per_frame
    assert [o.name for o in model.graph.output] == [
        f"patches_{i + 1}" for i in range(len(learner.layers))
    ]
    worst = 0.0
    for got, want, layer in zip(outputs, expected, learner.layers, strict=True):
        assert got.shape == (len(held_out), P, layer.channels)
        assert np.abs(got).max() > 0.05  # not a comparison of two silent outputs
        worst = max(worst, max_abs_error(got, want.numpy()))
    assert worst <= TOLERANCE, f"{name}: max abs error {worst:.2e}"
    figures = check_in_onnxruntime(model, learner)  # the export's own check
    assert figures["input"] == "8 frames of vtest.avi"
    assert figures["max_abs_error"] <= TOLERANCE


def test_patch_cut_is_exact(video_available):
    """The graph's Gathers cut exactly the pixels ``cut_patches`` cuts, in its order."""
    config = resolve_config("vision", overrides=CONFIGS["rgb"])
    frames = read_video_frames(VTEST_AVI, config, 3, every=50)
    graph = _Graph()
    cut = export_vision._cut_patches(graph, "images", config)
    graph.nodes.append(helper.make_node("Identity", [cut], ["cut"], name="cut"))
    v = config.vision
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "cut",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 24, 36])],
            [helper.make_tensor_value_info("cut", TensorProto.FLOAT, None)],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = 8
    (got,) = run_vision_model(model, frames)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2)
    want = cut_patches(images, v.patch, v.patch_stride).numpy()
    assert want.shape == (3 * 5 * 8, 3, 8, 8)
    assert_close(got, want, name="patches")  # floats, tolerance 0: the same pixels


def test_layers_subset_and_metadata(video_available):
    learner, held_out = learned("max", frames=12)
    model = build_model(learner, 2)
    assert [o.name for o in model.graph.output] == ["patches_1", "patches_2"]
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == ["images"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 32, 32]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["frontend"] == "image" and meta["precision"] == "float32"
    assert (meta["patch"], meta["patch_stride"], meta["grid"]) == ("8", "4", "[7, 7]")
    assert [lc["pool"] for lc in json.loads(meta["layers"])] == ["max", "max"]
    assert meta["frames_learned"] == "12"
    outputs = run_vision_model(model, held_out)
    expected = learner.encode(held_out)[:2]
    for got, want in zip(outputs, expected, strict=True):
        assert max_abs_error(got, want.numpy()) <= TOLERANCE
    for bad in (0, 4):
        with pytest.raises(ExportError, match=f"--layers {bad} is out of range"):
            build_model(learner, bad)


def test_export_command_on_a_vision_run(video_available, tmp_path, capsys):
    learner, _ = learned("avg", frames=12)
    save_checkpoint(learner, tmp_path / "run" / "checkpoint")
    out = tmp_path / "vision.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "float, opset 17, layers 1..3" in printed
    found = re.search(
        r"onnxruntime vs torch on 8 frames of vtest\.avi: patch vectors max abs error "
        r"(\S+)$",
        printed.strip(),
    )
    assert found, printed
    assert float(found.group(1)) <= TOLERANCE
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["patches_1", "patches_2", "patches_3"]
    two = tmp_path / "two.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(two), "--layers", "2"]) == 0
    assert "layers 1..2)" in capsys.readouterr().out
    assert len(onnx.load(str(two)).graph.output) == 2


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--int8", "quantisation-aware learning is not available for the image front end"),
        ("--streaming", "a frame has no carry"),
    ],
)
def test_int8_and_streaming_are_refused(tmp_path, capsys, flag, message):
    save_checkpoint(VisionLearner(resolve_config("vision")), tmp_path / "run" / "checkpoint")
    out = tmp_path / "refused.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-clapp: error: ") and message in err, err
    assert not out.exists()


def test_check_falls_back_to_synthetic_frames(monkeypatch):
    """Without the video the check still runs, on frames it says are synthetic."""
    monkeypatch.setattr(export_vision, "VTEST_AVI", VTEST_AVI.with_name("missing.avi"))
    config = resolve_config("vision", overrides={"layers": MAX_LAYERS[:1]})
    frames, described = check_frames(config, 4)
    assert described == "4 synthetic frames"
    assert frames.shape == (4, 32, 32, 1) and frames.dtype == np.float32
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0.1
    learner = VisionLearner(config)
    figures = check_in_onnxruntime(build_model(learner), learner)
    assert figures["input"] == "8 synthetic frames"
    assert figures["max_abs_error"] <= TOLERANCE
