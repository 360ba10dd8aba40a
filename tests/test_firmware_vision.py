"""The device budget of a vision (conv2d patch) learner: memory plan, cycle model per
frame at a frame rate, and the ``simulate`` command on vision runs.

References: a hand count of every buffer of a tiny config (the numbers written out below
from its geometry), and the learner's own buffers (``VisionLearner``) for the sizes the
plan shares with it. Integers, compared exactly.
"""

from __future__ import annotations

import json

import pytest

from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.cli import main
from edge_clapp.config import resolve_config
from edge_clapp.export.vision import VTEST_AVI, read_video_frames
from edge_clapp.firmware_sim import budget
from edge_clapp.learner import OnlineLearner
from edge_clapp.vision import VisionLearner, patch_pairs

# A 16 x 20 grey frame, 8-pixel patches every 4: a 3 x 4 grid (P = 12). One offset (rows
# 3 >= skip 1 + offset 1 + 1), the "either" schedule: one replayed frame, so the
# workspace holds S = 2 x 12 = 24 patches. Layer 1: 4 channels, 3 x 3, stride 1, avg
# (8 x 8 maps, g = 64); layer 2: 6 channels, 3 x 3, stride 2, max (4 x 4 maps, g = 16).
TINY = {
    "vision": {"height": 16, "width": 20, "patch": 8, "patch_stride": 4},
    "layers": [
        {"kind": "conv2d", "channels": 4, "kernel": 3, "stride": 1, "pool": "avg"},
        {"kind": "conv2d", "channels": 6, "kernel": 3, "stride": 2, "pool": "max"},
    ],
    "rule": {"offsets": 1, "variant": "clapp", "schedule": "either"},
    "stream": {"replay_capacity": 3},
}

# Hand count, bytes. Layer 1: D = 1 x 3 x 3 = 9; layer 2: D = 4 x 3 x 3 = 36.
TINY_SRAM = {
    ("weights (int8)", 1): 4 * 9,
    ("bias (int32)", 1): 4 * 4,
    ("prediction matrices (int8)", 1): 2 * 1 * 4 * 4,  # P and R, one offset
    ("multipliers and thresholds", 1): 8 * 4 + 16 * 4 + 8 + 8 * 1,
    ("window workspace (codes)", 1): 24 * 64 * 9,
    ("output workspace (codes)", 1): 24 * 64 * 4,
    ("patch vectors (int32 sums)", 1): 4 * 24 * 4,
    ("weights (int8)", 2): 6 * 36,
    ("bias (int32)", 2): 4 * 6,
    ("prediction matrices (int8)", 2): 2 * 1 * 6 * 6,
    ("multipliers and thresholds", 2): 8 * 6 + 16 * 6 + 8 + 8 * 1,
    ("window workspace (codes)", 2): 24 * 16 * 36,
    ("output workspace (codes)", 2): 24 * 16 * 6,
    ("patch maxima (codes) and argmax", 2): 24 * 6 * (1 + 1),  # g = 16: a uint8 index
    ("patch errors (int64, shared)", None): 8 * 24 * 6,  # the wider layer's S x C
    ("update row (int64, shared)", None): 8 * 36,  # the longest window
    ("pairs: indices, labels, gates", None): 1 * (3 - 1 - 1) * 4 * 12,  # K x M slots
    ("current frame (uint8)", None): 16 * 20,
    ("replay pool (uint8 frames)", None): 3 * (16 * 20 + 8),
    ("stack and runtime", None): 8 * 1024,
}
TINY_FLASH = {
    ("initial weights (int8)", 1): 36,
    ("initial bias (int32)", 1): 16,
    ("initial prediction matrices (int8)", 1): 32,
    ("initial multipliers and thresholds", 1): 112,
    ("initial weights (int8)", 2): 216,
    ("initial bias (int32)", 2): 24,
    ("initial prediction matrices (int8)", 2): 72,
    ("initial multipliers and thresholds", 2): 160,
    ("kernel code", None): 8 * 1024,
}


def _by_name(buffers, region):
    return {(b.name, b.layer): b.bytes for b in buffers if b.region == region}


def test_memory_plan_of_a_tiny_config_equals_the_hand_count():
    config = resolve_config("vision", overrides=TINY)
    plan = budget.plan_memory(config)
    assert _by_name(plan, "sram") == TINY_SRAM
    assert _by_name(plan, "flash") == TINY_FLASH
    summary = budget.summarize(plan, budget.BOARDS["nrf52840"])
    assert summary["sram_bytes"] == 48_420 == sum(TINY_SRAM.values())
    assert summary["flash_bytes"] == 8_860 == sum(TINY_FLASH.values())
    # The "both" schedule with two negatives: S = 3 x 12 = 36 patches, and every context
    # has 1 + 2 candidates.
    both = resolve_config(
        "vision", overrides={**TINY, "rule": {**TINY["rule"], "schedule": "both",
                                              "num_negatives": 2}}
    )  # fmt: skip
    sram = _by_name(budget.plan_memory(both), "sram")
    assert sram["window workspace (codes)", 1] == 36 * 64 * 9
    assert sram["patch maxima (codes) and argmax", 2] == 36 * 6 * 2
    assert sram["pairs: indices, labels, gates", None] == 1 * 4 * 3 * 12


@pytest.mark.parametrize("overrides", [{}, TINY], ids=["preset", "tiny"])
def test_memory_plan_matches_the_learner_buffers(overrides):
    """Element for element, the buffers the plan shares with the float learner."""
    learner = VisionLearner(resolve_config("vision", overrides=overrides))
    sram = _by_name(budget.plan_memory(learner.config), "sram")
    for i, layer in enumerate(learner.layers, start=1):
        assert sram["weights (int8)", i] == layer.weight.numel()
        assert sram["bias (int32)", i] == 4 * layer.bias.numel()
        assert sram["prediction matrices (int8)", i] == layer.pred.numel() + layer.retro.numel()
        assert sram["window workspace (codes)", i] == layer.x_rows.numel()
        assert sram["output workspace (codes)", i] == layer.z_rows.numel()
    capacity = learner.config.stream.replay_capacity
    assert sram["replay pool (uint8 frames)", None] == learner.pool.data.numel() + 8 * capacity
    assert sram["current frame (uint8)", None] == learner.frames[0].numel()
    v = learner.config.vision
    pairs = patch_pairs(learner.config.rule, v.grid, v.skip_rows, learner.generator, True)
    assert sram["pairs: indices, labels, gates", None] == 12 * pairs.context.numel()


def test_cycle_model_counts_per_frame_and_scales_with_fps():
    config = resolve_config("vision", overrides=TINY)
    board = budget.BOARDS["stm32f746"]
    work = {(w.kernel, w.layer): w for w in budget.count_work(config)}
    # Layer 1 forward: 24 x 64 outputs, each a 9-window dot product and one pool add,
    # and one requantization.
    assert work["forward", 1].macs_per_block == 24 * 64 * 4 * 9 + 24 * 64 * 4
    assert work["forward", 1].elements_per_block == 24 * 64 * 4
    # Layer 2 rule: offset 1 pairs grid row 0 with row 2 (row 1 skipped), 4 columns: 4
    # pairs, each 2 (2 C^2 + 2 C) MACs under CLAPP.
    assert work["scores and P/R updates", 2].macs_per_block == 4 * 2 * (2 * 36 + 2 * 6)
    assert work["weight gradient", 2].elements_per_block == 6 * 36 + 6
    ten = budget.cycle_model(config, board)  # the default: 10 fps
    twenty = budget.cycle_model(config, board, fps=20)
    assert ten["per"] == "frame" and ten["frames_per_second"] == 10
    assert ten["cycles_per_frame"] == twenty["cycles_per_frame"] > 0
    assert ten["cycles_available_per_frame"] == 216e6 / 10
    assert twenty["cycles_available_per_frame"] == 216e6 / 20
    assert twenty["realtime_margin"] == pytest.approx(ten["realtime_margin"] / 2, rel=1e-12)
    expected = sum(
        w.macs_per_block * 1.0 + w.elements_per_block * 12.0 for w in work.values()
    )  # Cortex-M7: 1 cycle per MAC, 12 per element
    assert ten["cycles_per_frame"] == expected
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(budget.BudgetError, match="frames per second"):
            budget.cycle_model(config, board, fps=bad)
    with pytest.raises(budget.BudgetError, match="audio run"):
        budget.cycle_model(resolve_config("mcu"), board, fps=10)


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    """A checkpoint of the vision preset after 15 frames of vtest.avi, and one of the tiny
    config."""
    if not VTEST_AVI.is_file():
        pytest.skip(f"{VTEST_AVI} is missing: install Debian's opencv-doc (scripts/setup.sh)")
    pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in (("vision", {}), ("tiny", TINY)):
        learner = VisionLearner(resolve_config("vision", overrides=overrides))
        for frame in read_video_frames(VTEST_AVI, learner.config, 15, every=2, first=100):
            assert learner.step(frame)
        save_checkpoint(learner, root / name / "checkpoint")
    return root


@pytest.mark.parametrize("board", ["stm32f746", "stm32h743", "nrf52840"])
def test_simulate_reports_the_vision_preset(vision_run, tmp_path, capsys, board):
    report = tmp_path / "report.json"
    code = main(["simulate", str(vision_run / "vision"), "--board", board, "--json",
                 str(report)])  # fmt: skip
    out, err = capsys.readouterr()
    data = json.loads(report.read_text())
    name = budget.BOARDS[board].name
    assert out.startswith(name)
    assert "window workspace (codes)" in out and "cycles per frame at 10 fps" in out
    plan = budget.plan_memory(resolve_config("vision"))
    assert data["memory"]["sram_bytes"] == sum(b.bytes for b in plan if b.region == "sram")
    assert data["cycles"]["cycles_available_per_frame"] == budget.BOARDS[board].clock_hz / 10
    assert [k["kernel"] for k in data["cycles"]["kernels"]] == [
        "forward", "scores and P/R updates", "weight gradient"
    ] * 3  # fmt: skip
    # The preset's workspaces (2 MB) fit none of the boards: refused with what is
    # missing and the largest buffer, after the table and the JSON.
    assert data["verdict"]["fits_memory"] is False and code == 2
    assert f"does not fit {name}" in err and "layer 3 window workspace (codes)" in err


def test_simulate_a_tiny_vision_run_fits_and_fps_scales_the_margin(
    vision_run, tmp_path, capsys
):
    reports = {}
    for fps in ("10", "30"):
        path = tmp_path / f"{fps}.json"
        argv = ["simulate", str(vision_run / "tiny"), "--board", "stm32h743", "--fps", fps]
        assert main([*argv, "--json", str(path)]) == 0
        out = capsys.readouterr().out
        assert "fits STM32H743 in memory" in out
        assert f"real time at {fps} fps by the cycle model" in out
        reports[fps] = json.loads(path.read_text())
    ten, thirty = reports["10"]["cycles"], reports["30"]["cycles"]
    assert ten["cycles_per_frame"] == thirty["cycles_per_frame"]
    assert thirty["realtime_margin"] == pytest.approx(ten["realtime_margin"] / 3, rel=1e-12)
    assert reports["10"]["memory"]["sram_bytes"] == sum(TINY_SRAM.values())


def test_simulate_refusals(vision_run, tmp_path, capsys):
    tiny = str(vision_run / "tiny")
    assert main(["simulate", tiny, "--board", "stm32h743", "--measure"]) == 2
    err = capsys.readouterr().err
    assert "no integer twin of a conv2d layer" in err and "leave --measure out" in err
    assert main(["simulate", tiny, "--board", "stm32h743", "--fps", "0"]) == 2
    assert "--fps 0.0 must be a number of frames per second" in capsys.readouterr().err
    # An audio run has a hop, not a frame rate.
    save_checkpoint(OnlineLearner(resolve_config("mcu")), tmp_path / "mcu" / "checkpoint")
    argv = ["simulate", str(tmp_path / "mcu"), "--board", "stm32h743"]
    assert main([*argv, "--fps", "10"]) == 2
    assert "this is an audio run" in capsys.readouterr().err
    assert main(argv) == 0
    assert "cycles per hop" in capsys.readouterr().out
