"""A device budget for the integer learner: memory plan, cycle model, real-time margin.

Memory: every buffer the integer twin and the C kernels hold (``kernels.py``,
``c/ec_kernels.c``), laid out per layer in SRAM (what learning writes) and flash (code,
the initial weights image, front-end tables), from the config alone. The front end
(log-mel) is outside the twin; its buffers are an estimate for a q15 implementation and
are marked so.

Cycles, per hop (one frame, 10 ms at 16 kHz): operation counts of each kernel from the
config (multiply-accumulates and per-element operations), times a per-core cost:

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edge_clapp.config import Config, FrontendKind, Variant
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


class BudgetError(EdgeClappError):
    """The learner does not fit the board."""


@dataclass
class Buffer:
    name: str
    layer: int | None  # None: shared, the front end or the runtime
    region: str  # "sram" or "flash"
    bytes: int
    note: str = ""


def plan_memory(config: Config, code_bytes: int | None = None) -> list[Buffer]:
    """Every buffer of the integer learner, from the config. ``code_bytes``: the kernels'
    flash (text + data) from arm-none-eabi-size, or None for an estimate of 8 KiB."""
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
        matrices = (2 if config.rule.variant is Variant.CLAPP else 1) * K * C * C
        params = [
            ("weights (int8)", C * D),
            ("bias (int32)", 4 * C),
            ("prediction matrices (int8)", matrices),
            ("multipliers and thresholds", 8 * C + 16 * C + 8 + 8 * K),
        ]
        for name, size in params:
            out.append(Buffer(name, i + 1, "sram", size))
            out.append(Buffer(f"initial {name}", i + 1, "flash", size))
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
        Buffer("pairs: indices, labels, gates", None, "sram", pairs * (4 + 4 + 1 + 1 + 2)),
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
    out.append(
        Buffer(
            "kernel code",
            None,
            "flash",
            code_bytes if code_bytes is not None else 8 * KIB,
            "arm-none-eabi-size" if code_bytes is not None else "estimate",
        )
    )
    return out


@dataclass
class Work:
    """Operation counts per block of one kernel."""

    kernel: str
    layer: int | None
    macs_per_block: int
    elements_per_block: int


def count_work(config: Config) -> list[Work]:
    """MACs and per-element operations per block (F frames) of every kernel."""
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
        # Per pair, as ec_clapp_update loops: each branch a dendrite (C^2), its score and
        # error scatter (2C) and an outer product into its matrix (C^2); CLAPP-s has one
        # branch plus the transposed dendrite to the context (C^2 + C).
        per_pair = 2 * (2 * C * C + 2 * C) if clapp else 3 * C * C + 3 * C
        matrices = (2 if clapp else 1) * K * C * C
        update_macs = K * F * per_pair + rows * C * D + rows * C
        out.append(Work("update", i + 1, update_macs, C * D + C + matrices))
        in_channels = C
    return out


def cycle_model(config: Config, board: Board) -> dict[str, object]:
    """Cycles per hop of each kernel on ``board`` and the real-time margin."""
    per_mac, per_element = CYCLES[board.core]
    F = config.stream.block_frames
    rows = []
    for work in count_work(config):
        cycles = (work.macs_per_block * per_mac + work.elements_per_block * per_element) / F
        rows.append({**asdict(work), "cycles_per_hop": cycles})
    total = sum(r["cycles_per_hop"] for r in rows)
    budget = board.clock_hz * config.frame_seconds
    return {
        "cycles_per_mac": per_mac,
        "cycles_per_element": per_element,
        "kernels": rows,
        "cycles_per_hop": total,
        "cycles_available_per_hop": budget,
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
                "(fewer channels, offsets or block frames) or a larger board"
            )
