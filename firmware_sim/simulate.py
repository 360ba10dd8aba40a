"""``edge-clapp simulate RUN --board NAME``: the device budget of a run's learner, as a
table, JSON and a PNG chart of the memory layout; with ``--measure``, the instructions
the C kernels execute per hop under QEMU beside the cycle model. A vision run's cycles
are per camera frame at ``--fps`` frames per second (``measure`` is not available for it:
there is no integer twin of a conv2d layer yet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_clapp import __version__
from edge_clapp.firmware_sim import budget, qemu
from edge_clapp.firmware_sim.twin import check_geometry
from edge_clapp.learner import OnlineLearner


def measure(learner: OnlineLearner) -> dict[str, Any]:
    """Instructions per block of the forward and the fused update of every layer of the
    run's integer twin, counted under QEMU (Cortex-M7), on one block of its own state."""
    from edge_clapp.firmware_sim.twin import IntegerLearner

    twin = IntegerLearner(learner)
    rng = np.random.default_rng(0)
    F = twin.F
    features = rng.integers(-40, 40, (F, twin.pool.shape[2]))
    for _ in range(twin.min_age + 1):  # fill the workspaces, with negatives in use
        twin.step(features)
    cases, labels = [], []
    for i, layer in enumerate(twin.layers):
        conv = (layer.input, layer.weight, layer.bias, layer.kernel, layer.stride,
                layer.fwd_m0, layer.fwd_sh)  # fmt: skip
        cases.append(qemu.Case("conv", conv))
        labels.append(("forward", i + 1))
        context, candidate, label, valid = twin._pairs(True)
        data = (layer.x_rows, layer.z, context, candidate, label, valid, layer.threshold)
        mult = layer.multipliers()
        seeds = {"weight": 0, "bias": 0, "pred": 0, "retro": 0}
        cases.append(qemu.Case("update", (layer.arrays(), data, mult, seeds, 127)))
        labels.append(("update", i + 1))
    results = qemu.run_cases(cases)
    rows = []
    for (kernel, layer), result in zip(labels, results, strict=True):
        per_block = result["instructions"] * (2 if kernel == "forward" else 1)  # + negative
        rows.append({"kernel": kernel, "layer": layer, "instructions_per_hop": per_block / F})
    return {
        "kernels": rows,
        "instructions_per_hop": sum(r["instructions_per_hop"] for r in rows),
    }


def simulate(
    learner: OnlineLearner,
    board_name: str,
    measure_kernels: bool = False,
    fps: float | None = None,
) -> dict:
    """The budget report of ``learner`` on a board. ``fps``: a vision run's frame rate
    (default ``budget.DEFAULT_FPS``); refused for audio runs, whose budget is per hop."""
    key = board_name.lower()
    if key not in budget.BOARDS:
        raise budget.BudgetError(
            f"unknown board {board_name!r}; known: {', '.join(sorted(budget.BOARDS))}"
        )
    board = budget.BOARDS[key]
    config = learner.config
    if config.is_vision:
        if measure_kernels:
            raise budget.BudgetError(
                "--measure runs the integer twin's C kernels, and there is no integer twin "
                "of a conv2d layer yet, so a vision run cannot be measured: leave --measure "
                "out (the plan and the cycle model need the config only)"
            )
        code = None  # the C kernels have no conv2d: their measured size would mislead
    else:
        check_geometry(config)
        code = qemu.kernel_size()["flash"] if qemu.toolchain_missing() is None else None
    cycles = budget.cycle_model(config, board, fps)
    buffers = budget.plan_memory(config, code)
    report = {
        "edge_clapp_version": __version__,
        "board": board.__dict__,
        "preset": learner.config.preset,
        "blocks_learned": learner.counters.blocks_learned,
        "memory": budget.summarize(buffers, board),
        "buffers": [b.__dict__ for b in buffers],
        "cycles": cycles,
    }
    sram = report["memory"]["sram_bytes"]
    flash = report["memory"]["flash_bytes"]
    report["verdict"] = {
        "fits_memory": sram <= board.sram_bytes and flash <= board.flash_bytes,
        "realtime_by_cycle_model": report["cycles"]["realtime_margin"] >= 1,
        "realtime_margin_by_cycle_model": report["cycles"]["realtime_margin"],
    }
    if measure_kernels:
        if not learner.config.quant.enabled or learner.counters.blocks_learned == 0:
            raise budget.BudgetError(
                "--measure runs the run's integer twin, which needs a run learned with "
                "`edge-clapp learn --quant`; without --measure the plan needs the config only"
            )
        measured = measure(learner)
        measured["realtime_margin_at_one_instruction_per_cycle"] = (
            report["cycles"]["cycles_available_per_hop"] / measured["instructions_per_hop"]
        )
        report["measured"] = measured
    return report


def format_report(report: dict) -> str:
    """The report as the table the command prints."""
    lines: list[str] = []
    board, memory, cycles = report["board"], report["memory"], report["cycles"]
    lines.append(
        f"{board['name']} ({board['core']}, {board['clock_hz'] / 1e6:.0f} MHz, "
        f"{board['sram_bytes']:,} B SRAM, {board['flash_bytes']:,} B flash)"
    )
    lines.append(f"{'buffer':<44} {'layer':>5} {'region':>6} {'bytes':>9}")
    for b in report["buffers"]:
        layer = "-" if b["layer"] is None else str(b["layer"])
        note = f"  ({b['note']})" if b["note"] else ""
        lines.append(f"{b['name']:<44} {layer:>5} {b['region']:>6} {b['bytes']:>9,}{note}")
    lines.append(
        f"SRAM {memory['sram_bytes']:,} B ({memory['sram_fraction']:.0%} of the board), "
        f"flash {memory['flash_bytes']:,} B ({memory['flash_fraction']:.0%})"
    )
    per = cycles.get("per", "hop")  # "frame" for a vision run
    rate = f" at {cycles['frames_per_second']:g} fps" if per == "frame" else ""
    lines.append(
        f"cycle model ({cycles['cycles_per_mac']} cycles/MAC, "
        f"{cycles['cycles_per_element']} cycles/element):"
    )
    for k in cycles["kernels"]:
        layer = "" if k["layer"] is None else f" layer {k['layer']}"
        lines.append(f"  {k['kernel']}{layer}: {k[f'cycles_per_{per}']:,.0f} cycles per {per}")
    lines.append(
        f"  total {cycles[f'cycles_per_{per}']:,.0f} of "
        f"{cycles[f'cycles_available_per_{per}']:,.0f} cycles per {per}{rate}: real-time "
        f"margin {cycles['realtime_margin']:.2f}x"
    )
    if "measured" in report:
        m = report["measured"]
        lines.append("measured under QEMU (plain C99 kernels, Cortex-M7 instructions):")
        for k in m["kernels"]:
            lines.append(
                f"  {k['kernel']} layer {k['layer']}: {k['instructions_per_hop']:,.0f} per hop"
            )
        lines.append(
            f"  total {m['instructions_per_hop']:,.0f} instructions per hop: margin "
            f"{m['realtime_margin_at_one_instruction_per_cycle']:.1f}x at one per cycle"
        )
    return "\n".join(lines)


def write_png(report: dict, path: Path) -> None:
    """A bar per region: the buffers stacked, the board's capacity as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = report["board"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 8))
    for ax, region in zip(axes, ("sram", "flash"), strict=True):
        left = 0
        buffers = sorted(
            (b for b in report["buffers"] if b["region"] == region), key=lambda b: -b["bytes"]
        )
        colours = plt.get_cmap("tab20").colors
        for n, b in enumerate(buffers):
            label = f"{b['name']}" + (f" (L{b['layer']})" if b["layer"] else "")
            ax.barh(0, b["bytes"], left=left, label=label, color=colours[n % len(colours)])
            left += b["bytes"]
        capacity = board[f"{region}_bytes"]
        ax.axvline(capacity, color="black", linestyle="--")
        ax.set_title(f"{region.upper()}: {left:,} of {capacity:,} bytes ({board['name']})")
        ax.set_yticks([])
        ax.set_xlabel("bytes (dashed: the board's capacity)")
        ax.ticklabel_format(axis="x", style="plain")
        ax.set_xlim(0, max(capacity, left) * 1.05)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_json(report: dict, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
