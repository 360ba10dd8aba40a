"""A device budget for the integer learner: memory plan, cycle model, real-time margin.

Memory: every buffer the integer twin and the C kernels hold (``kernels.py``,
``c/ec_kernels.c``), laid out per layer in SRAM (what learning writes) and flash (code,
the initial weights image, front-end tables), from the config alone. The front end
(log-mel) is outside the twin; its buffers are an estimate for a q15 implementation and
are marked so.

Cycles, per hop (one frame, 10 ms at 16 kHz) for audio, per camera frame at a frame
rate for vision: operation counts of each kernel from the config (multiply-accumulates
and per-element operations), times a per-core cost:

    Cortex-M7   1.0 cycle per int8 MAC, 12 cycles per element
    Cortex-M4F  2.0 cycles per int8 MAC, 16 cycles per element

The MAC costs come from the instruction timings of the Armv7E-M DSP inner loop used by
CMSIS-NN style int8 kernels: per 4 MACs two 32-bit loads, four SXTB16 (sign-extend two
bytes to halfwords) and two SMLAD (two 16 x 16 MACs each), 8 single-cycle instructions;
the Cortex-M4 issues one per cycle (2 cycles per MAC), the Cortex-M7 can dual-issue
them (taken as 1 cycle per MAC). The per-element cost covers a requantization or a
stochastic rounding (a 64-bit multiply, shifts, the 3-multiply hash, a saturation).
These are estimates; beside them ``--measure`` counts the instructions our plain C99
kernels execute under QEMU (Cortex-M7 ISA, ``qemu.py``), which do not use the DSP
instructions.

Vision (conv2d patch encoder, ``edge_clapp.vision``): there is no integer twin of it yet,
so its plan follows the audio plan's conventions for the same buffers an integer learner
would hold: int8 weights and prediction matrices, int32 biases and sums, uint8 codes, the
per-layer workspace of ``(1 + negatives) P`` patches (windows and outputs) rebuilt every
frame, the current frame and the replay pool as uint8 pixels. Its kernel code is an
estimate (no conv2d kernels exist to measure).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edge_clapp.config import Config, FrontendKind, Pool, Schedule, Variant
from edge_clapp.errors import EdgeClappError


@dataclass(frozen=True)
class Board:
    name: str
    core: str
    clock_hz: float
    sram_bytes: int
    flash_bytes: int
    source: str


KIB = 1024
BOARDS = {
    "stm32f746": Board(
        "STM32F746", "Cortex-M7", 216e6, 320 * KIB, 1024 * KIB,
        "ST DS10916, STM32F745xx/STM32F746xx datasheet: Cortex-M7 up to 216 MHz, 320 KB "
        "SRAM (including 64 KB DTCM), 1 MB flash",
    ),
    "stm32h743": Board(
        "STM32H743", "Cortex-M7", 480e6, 512 * KIB, 2048 * KIB,
        "ST DS12110, STM32H742xI/G STM32H743xI/G datasheet: Cortex-M7 up to 480 MHz, 2 MB "
        "flash, 1 MB SRAM of which 512 KB AXI SRAM, the largest contiguous region (used "
        "here)",
    ),
    "nrf52840": Board(
        "nRF52840", "Cortex-M4F", 64e6, 256 * KIB, 1024 * KIB,
        "Nordic nRF52840 Product Specification v1.7: Cortex-M4F at 64 MHz, 256 KB RAM, "
        "1 MB flash",
    ),
}  # fmt: skip

CYCLES = {  # core: (cycles per int8 MAC, cycles per element); see the module docstring
    "Cortex-M7": (1.0, 12.0),
    "Cortex-M4F": (2.0, 16.0),
}
STACK_BYTES = 8 * KIB  # an allowance for the stack and the C runtime
CODE_BYTES_ESTIMATE = 8 * KIB  # the kernels' flash when no toolchain measured it
PAIR_BYTES = 4 + 4 + 1 + 1 + 2  # per pair slot: context and candidate index, label, gates
DEFAULT_FPS = 10.0  # a vision run's frame rate when none is given (vtest.avi's)


class BudgetError(EdgeClappError):
    """The learner does not fit the board."""


@dataclass
class Buffer:
    name: str
    layer: int | None  # None: shared, the front end or the runtime
    region: str  # "sram" or "flash"
    bytes: int
    note: str = ""


def _learned_buffers(layer: int, C: int, D: int, config: Config) -> list[Buffer]:
    """What learning writes in one layer, in SRAM, and its initial image in flash:
    weights (C, D) int8, bias int32, P (and R) int8, the fixed-point constants."""
    K = config.rule.offsets
    matrices = (2 if config.rule.variant is Variant.CLAPP else 1) * K * C * C
    params = [
        ("weights (int8)", C * D),
        ("bias (int32)", 4 * C),
        ("prediction matrices (int8)", matrices),
        ("multipliers and thresholds", 8 * C + 16 * C + 8 + 8 * K),
    ]
    out = []
    for name, size in params:
        out.append(Buffer(name, layer, "sram", size))
        out.append(Buffer(f"initial {name}", layer, "flash", size))
    return out


def _code_buffer(code_bytes: int | None) -> Buffer:
    return Buffer(
        "kernel code",
        None,
        "flash",
        code_bytes if code_bytes is not None else CODE_BYTES_ESTIMATE,
        "arm-none-eabi-size" if code_bytes is not None else "estimate",
    )


def plan_memory(config: Config, code_bytes: int | None = None) -> list[Buffer]:
    """Every buffer of the integer learner, from the config. ``code_bytes``: the kernels'
    flash (text + data) from arm-none-eabi-size, or None for an estimate of 8 KiB."""
    if config.is_vision:
        return _plan_vision(config, code_bytes)
    K, F = config.rule.offsets, config.stream.block_frames
    g = config.positions_per_frame()
    fe = config.frontend
    out: list[Buffer] = []
    in_channels = fe.channels
    widest_rows = widest_row = 0
    for i, layer in enumerate(config.layers):
        C, k = layer.channels, layer.kernel
        D = in_channels * k
        rows = (K + 2 * F) * g[i + 1]
        carry = k - layer.stride
        out += _learned_buffers(i + 1, C, D, config)
        out += [
            Buffer("input with carry (codes)", i + 1, "sram", (carry + F * g[i]) * in_channels),
            Buffer(
                "negative input, zero carry (codes)",
                i + 1,
                "sram",
                (carry + F * g[i]) * in_channels,
            ),
            Buffer("patch workspace (codes)", i + 1, "sram", rows * D),
            Buffer("output workspace (codes)", i + 1, "sram", rows * C),
        ]
        widest_rows = max(widest_rows, rows * C)
        widest_row = max(widest_row, D, C)
        in_channels = C
    pairs = K * F
    out += [
        Buffer("frame errors (int64, shared)", None, "sram", 8 * widest_rows),
        Buffer("update row (int64, shared)", None, "sram", 8 * widest_row),
        Buffer("pairs: indices, labels, gates", None, "sram", pairs * PAIR_BYTES),
        Buffer(
            "replay pool (front-end codes)",
            None,
            "sram",
            config.stream.replay_capacity * (F * g[0] * fe.channels + 8),
        ),
    ]
    block = config.block_samples
    if fe.kind is FrontendKind.LOGMEL:
        bins = fe.n_fft // 2 + 1
        out += [
            Buffer("audio block and window carry (int16)", None, "sram",
                   2 * (block + fe.win_length - fe.frame_hop), "front end, estimate"),
            Buffer("FFT buffer (q15 complex)", None, "sram", 4 * fe.n_fft,
                   "front end, estimate"),
            Buffer("window, twiddles, mel weights (q15)", None, "flash",
                   2 * (fe.win_length + fe.n_fft + 2 * bins), "front end, estimate"),
        ]  # fmt: skip
    else:
        out.append(Buffer("audio block (int16)", None, "sram", 2 * block))
    out.append(Buffer("stack and runtime", None, "sram", STACK_BYTES, "allowance"))
    out.append(_code_buffer(code_bytes))
    return out


# -- vision ------------------------------------------------------------------------------
#
# Shape legend: P patches per frame (R rows x Q columns), n replayed frames per step,
# S = (1 + n) P patches in a layer's workspace, g_l = s_l^2 positions of a patch's map
# after layer l, D = C_in k^2 one input window, K offsets.


@dataclass(frozen=True)
class VisionGeometry:
    """What sizes a vision learner's buffers and work, from its config."""

    patches: int  # P
    negatives: int  # n: replayed frames per step (1 for the "either" schedule)
    workspace_patches: int  # S = (1 + n) P
    pair_slots: int  # K x M x candidates per context, as the learner's Pairs
    pairs: int  # the slots whose candidate lies inside the grid: scored every frame


def vision_geometry(config: Config) -> VisionGeometry:
    """P, n, S and the pair counts of a vision config, as ``VisionLearner`` has them."""
    rows, cols = config.vision.grid
    skip, K = config.vision.skip_rows, config.rule.offsets
    n = config.replayed_frames
    candidates = 1 if config.rule.schedule is Schedule.EITHER else 1 + n
    contexts = (rows - skip - 1) * cols  # M: contexts of offset 1
    inside = sum((rows - skip - k) * cols for k in range(1, K + 1))
    return VisionGeometry(
        patches=rows * cols,
        negatives=n,
        workspace_patches=(1 + n) * rows * cols,
        pair_slots=K * contexts * candidates,
        pairs=inside * candidates,
    )


def _plan_vision(config: Config, code_bytes: int | None) -> list[Buffer]:
    """Every buffer of an integer vision learner (see the module docstring)."""
    v = config.vision
    geometry = vision_geometry(config)
    S = geometry.workspace_patches
    sizes = config.patch_sizes()
    out: list[Buffer] = []
    in_channels = v.channels
    widest_errors = widest_row = 0
    for i, layer in enumerate(config.layers):
        C, D, g = layer.channels, in_channels * layer.kernel**2, sizes[i + 1] ** 2
        out += _learned_buffers(i + 1, C, D, config)

        # The workspace: every window and output code of the S patches. The next layer's
        # windows are cut from these outputs, so no layer needs an input buffer of its own.
        out += [
            Buffer("window workspace (codes)", i + 1, "sram", S * g * D),
            Buffer("output workspace (codes)", i + 1, "sram", S * g * C),
        ]
        if layer.pool is Pool.AVG:
            out.append(Buffer("patch vectors (int32 sums)", i + 1, "sram", 4 * S * C))
        else:  # the maximum code and where it is (the rule routes through it)
            where = 1 if g <= 256 else 2
            out.append(
                Buffer("patch maxima (codes) and argmax", i + 1, "sram", S * C * (1 + where))
            )
        widest_errors = max(widest_errors, S * C)
        widest_row = max(widest_row, D, C)
        in_channels = C
    pixels = v.height * v.width * v.channels
    out += [
        Buffer("patch errors (int64, shared)", None, "sram", 8 * widest_errors,
               "spread to positions row by row"),
        Buffer("update row (int64, shared)", None, "sram", 8 * widest_row),
        Buffer("pairs: indices, labels, gates", None, "sram", geometry.pair_slots * PAIR_BYTES),
        Buffer("current frame (uint8)", None, "sram", pixels, "at the config's size"),
        Buffer("replay pool (uint8 frames)", None, "sram",
               config.stream.replay_capacity * (pixels + 8),
               "+ stamp and scene (int32) per frame; replayed frames are read in place"),
        Buffer("stack and runtime", None, "sram", STACK_BYTES, "allowance"),
    ]  # fmt: skip
    code = _code_buffer(code_bytes)
    if code_bytes is None:
        code.note = "estimate (no conv2d kernels yet)"
    out.append(code)
    return out


@dataclass
class Work:
    """Operation counts per block of one kernel (for vision, a block is one frame)."""

    kernel: str
    layer: int | None
    macs_per_block: int
    elements_per_block: int


def count_work(config: Config) -> list[Work]:
    """MACs and per-element operations per block (F frames; one frame for vision) of every
    kernel."""
    if config.is_vision:
        return _count_work_vision(config)
    K, F = config.rule.offsets, config.stream.block_frames
    g = config.positions_per_frame()
    clapp = config.rule.variant is Variant.CLAPP
    out = []
    fe = config.frontend
    if fe.kind is FrontendKind.LOGMEL:  # window, radix-2 real FFT, power, mel, log
        fft = 2 * fe.n_fft * math.log2(fe.n_fft)
        per_frame = fe.win_length + fft + 2 * (fe.n_fft // 2 + 1) * 2
        out.append(Work("front end (estimate)", None, int(F * per_frame), F * fe.n_mels * 4))
    in_channels = fe.channels
    for i, layer in enumerate(config.layers):
        C, D = layer.channels, in_channels * layer.kernel
        positions = 2 * F * g[i + 1]  # the block and its replayed negative
        out.append(Work("forward", i + 1, positions * C * D, positions * C))
        rows = (K + 2 * F) * g[i + 1]
        per_pair = _pair_macs(C, clapp)
        matrices = (2 if clapp else 1) * K * C * C
        update_macs = K * F * per_pair + rows * C * D + rows * C
        out.append(Work("update", i + 1, update_macs, C * D + C + matrices))
        in_channels = C
    return out


def _pair_macs(C: int, clapp: bool) -> int:
    """MACs of one (context, candidate) pair, as ec_clapp_update loops: each branch a
    dendrite (C^2), its score and error scatter (2C) and an outer product into its matrix
    (C^2); CLAPP-s has one branch plus the transposed dendrite to the context (C^2 + C)."""
    return 2 * (2 * C * C + 2 * C) if clapp else 3 * C * C + 3 * C


def _count_work_vision(config: Config) -> list[Work]:
    """MACs and per-element operations per frame of every kernel of a vision learner,
    with its negatives in use (the worst case: every frame once the pool is warm)."""
    geometry = vision_geometry(config)
    S, K = geometry.workspace_patches, config.rule.offsets
    clapp = config.rule.variant is Variant.CLAPP
    sizes = config.patch_sizes()
    out = []
    in_channels = config.vision.channels
    for i, layer in enumerate(config.layers):
        C, D, g = layer.channels, in_channels * layer.kernel**2, sizes[i + 1] ** 2
        rows = S * g  # output positions of the current and the replayed frames

        # Forward: a window times the weights per output, one add or compare per output
        # into its patch vector, a requantization per output.
        out.append(Work("forward", i + 1, rows * C * D + rows * C, rows * C))

        # The rule on patch vectors: scores, gates and the Hebbian P (and R) updates, then
        # a stochastic rounding per matrix entry.
        matrices = (2 if clapp else 1) * K * C * C
        out.append(
            Work("scores and P/R updates", i + 1, geometry.pairs * _pair_macs(C, clapp),
                 matrices)
        )  # fmt: skip

        # The weight gradient over the workspace: each patch error spread to its positions
        # through the pool and relu' (and summed for the bias), times the windows; then a
        # stochastic rounding per weight and bias.
        out.append(Work("weight gradient", i + 1, rows * C * D + rows * C, C * D + C))
        in_channels = C
    return out


def check_fps(fps: float) -> float:
    """A frame rate in [0.01, 1000] frames per second, or BudgetError naming it."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0.01 <= fps <= 1000:
        raise BudgetError(
            f"--fps {fps!r} must be a number of frames per second in 0.01..1000 (e.g. 10, "
            "vtest.avi's rate, or 30 for a typical camera)"
        )
    return float(fps)


def cycle_model(config: Config, board: Board, fps: float | None = None) -> dict[str, object]:
    """Cycles per hop (audio) or per frame (vision, at ``fps`` frames per second, default
    DEFAULT_FPS) of each kernel on ``board``, and the real-time margin. ``fps`` is refused
    for audio, whose time budget is its hop."""
    per_mac, per_element = CYCLES[board.core]
    if config.is_vision:
        fps = DEFAULT_FPS if fps is None else check_fps(fps)
        unit, blocks_per_unit, seconds = "frame", 1, 1.0 / fps
    elif fps is not None:
        raise BudgetError(
            f"--fps {fps} sets a camera's frame rate, and this is an audio run: its time "
            f"budget is one hop of {config.frame_seconds * 1000:g} ms; leave --fps out"
        )
    else:
        unit, blocks_per_unit, seconds = "hop", config.stream.block_frames, config.frame_seconds
    rows = []
    for work in count_work(config):
        cycles = work.macs_per_block * per_mac + work.elements_per_block * per_element
        rows.append({**asdict(work), f"cycles_per_{unit}": cycles / blocks_per_unit})
    total = sum(r[f"cycles_per_{unit}"] for r in rows)
    budget = board.clock_hz * seconds
    return {
        "per": unit,
        **({"frames_per_second": fps} if config.is_vision else {}),
        "cycles_per_mac": per_mac,
        "cycles_per_element": per_element,
        "kernels": rows,
        f"cycles_per_{unit}": total,
        f"cycles_available_per_{unit}": budget,
        "realtime_margin": budget / total,
    }


def summarize(buffers: list[Buffer], board: Board) -> dict[str, object]:
    sram = sum(b.bytes for b in buffers if b.region == "sram")
    flash = sum(b.bytes for b in buffers if b.region == "flash")
    per_layer: dict[str, dict[str, int]] = {}
    for b in buffers:
        key = f"layer {b.layer}" if b.layer is not None else "shared"
        per_layer.setdefault(key, {"sram": 0, "flash": 0})[b.region] += b.bytes
    return {
        "sram_bytes": sram,
        "flash_bytes": flash,
        "sram_fraction": sram / board.sram_bytes,
        "flash_fraction": flash / board.flash_bytes,
        "per_layer": per_layer,
        "largest_sram_buffer": max(
            (b for b in buffers if b.region == "sram"), key=lambda b: b.bytes
        ).__dict__,
    }


def check_fits(buffers: list[Buffer], board: Board) -> None:
    """Raises BudgetError saying how much is missing and which buffer dominates."""
    for region, capacity in (("sram", board.sram_bytes), ("flash", board.flash_bytes)):
        mine = [b for b in buffers if b.region == region]
        need = sum(b.bytes for b in mine)
        if need > capacity:
            largest = max(mine, key=lambda b: b.bytes)
            where = f"layer {largest.layer} " if largest.layer is not None else ""
            raise BudgetError(
                f"does not fit {board.name}: needs {need:,} bytes of {region.upper()}, the "
                f"board has {capacity:,} ({need - capacity:,} missing); the largest buffer "
                f"is {where}{largest.name}, {largest.bytes:,} bytes. Use a smaller config "
                "(fewer channels or offsets; audio: fewer block frames; vision: fewer "
                "patches or a smaller frame) or a larger board"
            )
