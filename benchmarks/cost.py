"""What learning costs: the explicit rule, the rule through autograd, end-to-end backprop.

    .venv/bin/python benchmarks/cost.py [--preset raw] [--blocks 30] [--repeats 3]
        [--no-scaling] [--out runs/cost]

Side by side in one run, on the same klettres speech (1 s blocks at the raw preset):
    explicit      edge_clapp's learner (edge_clapp.learner.OnlineLearner), batch 1
    autograd      the same learner with the rule computed by autograd, every layer's input
                  detached (edge_clapp.baselines.AutogradLearner, the reference code's way);
                  it runs the learner's forward pass (no graph) and then the layer's
                  whole workspace again with a graph: one forward more than it would need
                  if it were written from scratch around autograd
    backprop      end-to-end Hinge-CPC at batch 1 on the same blocks, pairs and negatives,
                  gradients through every layer (edge_clapp.baselines.BackpropStreamer;
                  the loss on the last layer only, so it has fewer score products)
    backprop-b8   end-to-end Hinge-CPC as the evaluation trains it: Adam, batches of 8
                  windows of 1.28 s (edge_clapp.baselines.train_baseline)
Each runs in its own process, alternating, best of --repeats. Time: wall seconds per
second of audio learned. Memory: the process's peak resident memory while it builds its
state and learns, above what it held before (Linux VmHWM, reset through clear_refs):
state, temporaries and optimiser state together.

Also: the explicit learner's multiply-accumulates per second (the matmuls of its forward
passes and of the rule, counted from the shapes) against this machine's peak, measured in
the same run by a 2048 x 2048 float32 matrix product; and per-step time and peak memory
against width and depth (explicit and backprop), plotted. Prints tables; writes
cost.json and cost.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_clapp.config import PRESETS, Schedule, Variant, resolve_config

METHODS = ("explicit", "autograd", "backprop", "backprop-b8")


# -- the child: one method, one config, fresh process ------------------------------------


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(method: str, config_json: str, blocks_path: str) -> dict:
    from edge_clapp.baselines import (
        AutogradLearner,
        BackpropStreamer,
        TrainSettings,
        train_encoder,
    )
    from edge_clapp.config import Config
    from edge_clapp.learner import OnlineLearner

    config = Config.from_dict(json.loads(config_json))
    blocks = np.load(blocks_path)  # (n, block_samples) float32
    # Warm up: the same method on the tiny preset, so that lazily loaded code and the
    # autograd engine's first-use costs are in neither the time nor the peak.
    tiny = resolve_config("tiny")
    warm = np.random.default_rng(0).standard_normal((4, tiny.block_samples)) * 0.1
    make = {"explicit": OnlineLearner, "autograd": AutogradLearner}
    warm_learner = make.get(method, BackpropStreamer)(tiny)
    for block in warm.astype(np.float32):
        warm_learner.step(block)
    del warm_learner
    exact_peak = _reset_peak()
    before = _status("VmRSS") if exact_peak else _status("VmHWM")
    started = time.perf_counter()
    missing = 0
    if method == "backprop-b8":
        settings = TrainSettings("hinge-cpc", epochs=1.0, batch=8, window_frames=128)
        _, losses = train_encoder(config, list(blocks), settings)
        window = settings.window_frames * config.frontend.frame_hop
        seconds = len(losses) * settings.batch * window / config.frontend.sample_rate
    else:
        if method == "explicit":
            learner = OnlineLearner(config)
        elif method == "autograd":
            learner = AutogradLearner(config)
        else:
            learner = BackpropStreamer(config)
        for block in blocks:
            learner.step(block)
        seconds = len(blocks) * config.block_seconds
        if method == "explicit":
            missing = learner.counters.negatives_unavailable_blocks
    wall = time.perf_counter() - started
    return {
        "blocks_without_negatives": missing if method == "explicit" else None,
        "method": method,
        "wall_seconds": wall,
        "audio_seconds": seconds,
        "seconds_per_audio_second": wall / seconds,
        "peak_bytes": _status("VmHWM") - before,
        "peak_exact": exact_peak,
    }


# -- the parent ---------------------------------------------------------------------------


def run_child(method: str, config, blocks_path: str) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--child",
        method,
        json.dumps(config.to_dict()),
        blocks_path,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def learner_macs_per_block(config) -> tuple[int, int]:
    """Multiply-accumulates of the explicit learner's matmuls in one block, (with a
    replayed negative block, without one): forward of the block (and of the replayed
    block), the weight update over the workspace, and the K x M score, prediction and
    retrodiction products."""
    from edge_clapp.learner import OnlineLearner

    learner = OnlineLearner(config)
    K, F = learner.K, learner.F
    rule = config.rule
    M = F if rule.schedule is Schedule.EITHER else F * (1 + rule.num_negatives)
    products = 4 if rule.variant is Variant.CLAPP else 3
    without = replay = 0
    for layer in learner.layers:
        C, D = layer.weight.shape
        without += F * layer.g * C * D  # forward of the block
        replay += F * layer.g * C * D  # forward of the replayed block
        without += (K + 2 * F) * layer.g * C * D  # weight update over the workspace
        without += products * K * M * C * C
    return without + replay, without


def matmul_peak(repeats: int = 10, n: int = 2048) -> float:
    """Best multiply-accumulates per second of an n x n float32 matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return n**3 / best


def speech_blocks(block_samples: int, count: int) -> np.ndarray:
    from edge_clapp.corpus import klettres_recordings, read_until, split_recordings

    train, _ = split_recordings(klettres_recordings())
    # spread over the languages
    joined = np.concatenate(read_until(train[::7], 16000, block_samples * count))
    if len(joined) < block_samples * count:
        joined = np.resize(joined, block_samples * count)
    return joined[: block_samples * count].reshape(count, block_samples).astype(np.float32)


def compare(config, blocks_path: str, repeats: int, methods=METHODS) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for method in methods:
            result = run_child(method, config, blocks_path)
            old = best.get(method)
            if (
                old is None
                or result["seconds_per_audio_second"] < old["seconds_per_audio_second"]
            ):
                peak = max(result["peak_bytes"], old["peak_bytes"]) if old else None
                best[method] = result
                if peak is not None:
                    best[method]["peak_bytes"] = peak
            else:
                old["peak_bytes"] = max(old["peak_bytes"], result["peak_bytes"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="raw", choices=sorted(PRESETS))
    parser.add_argument("--blocks", type=int, default=30, help="blocks learned per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-scaling", action="store_true", help="skip width/depth sweep")
    parser.add_argument("--out", default="runs/cost")
    args = parser.parse_args()
    if args.blocks < 2 or args.repeats < 1:
        parser.error("--blocks must be >= 2 and --repeats >= 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    config = resolve_config(args.preset, overrides={"seed": 0})
    window = 128 * config.frame_seconds  # backprop-b8's window
    if args.blocks * config.block_seconds < window:
        parser.error(
            f"--blocks {args.blocks} gives {args.blocks * config.block_seconds:g} s of audio: "
            f"backprop-b8 needs at least one {window:g} s window"
        )
    with tempfile.TemporaryDirectory() as tmp:
        blocks_path = os.path.join(tmp, "blocks.npy")
        blocks = speech_blocks(config.block_samples, args.blocks)
        np.save(blocks_path, blocks)
        print(
            f"preset {args.preset}: {args.blocks} blocks of {config.block_seconds:g} s "
            f"klettres speech per run, best of {args.repeats}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        best = compare(config, blocks_path, args.repeats)
        ref = best["explicit"]
        print(
            f"{'method':<12} {'s / audio s':>12} {'x real time':>12} {'peak MB':>9} "
            f"{'time ratio':>11} {'memory ratio':>13}"
        )
        for method, r in best.items():
            # A peak can read 0 when a small learner fits in pages the process already had.
            memory = (
                f"{r['peak_bytes'] / ref['peak_bytes']:>12.2f}x"
                if ref["peak_bytes"] > 0
                else f"{'-':>13}"
            )
            print(
                f"{method:<12} {r['seconds_per_audio_second']:>12.4f} "
                f"{1 / r['seconds_per_audio_second']:>12.1f} {r['peak_bytes'] / 1e6:>9.1f} "
                f"{r['seconds_per_audio_second'] / ref['seconds_per_audio_second']:>10.2f}x "
                f"{memory}"
            )
        print("(ratios: the method's cost over the explicit learner's)")
        if ref["peak_bytes"] < 1e6:
            print(
                "note: the explicit learner's peak is under 1 MB, within the allocator's "
                "page granularity: memory ratios mean nothing at this size (use --preset raw)"
            )
        if not ref["peak_exact"]:
            print("note: clear_refs unavailable; peaks include the process's start-up peak")

        with_negatives, without = learner_macs_per_block(config)
        missing = ref["blocks_without_negatives"]
        macs = (args.blocks - missing) * with_negatives + missing * without
        rate = macs / (ref["seconds_per_audio_second"] * args.blocks * config.block_seconds)
        peak = matmul_peak()
        print(
            f"explicit learner: {with_negatives / 1e6:.0f} M MAC per block ({missing} of "
            f"{args.blocks} blocks without a replayed block: {without / 1e6:.0f} M), "
            f"{rate / 1e9:.2f} G MAC/s achieved; 2048x2048 float32 matmul peak "
            f"{peak / 1e9:.2f} G MAC/s; fraction {rate / peak:.1%}"
        )
        report = {
            "preset": args.preset,
            "blocks": args.blocks,
            "block_seconds": config.block_seconds,
            "threads": torch.get_num_threads(),
            "methods": best,
            "macs_per_block": with_negatives,
            "macs_per_block_without_negatives": without,
            "macs": macs,
            "achieved_mac_per_second": rate,
            "matmul_peak_mac_per_second": peak,
            "fraction_of_peak": rate / peak,
        }

        if not args.no_scaling:
            report["scaling"] = scaling(args.preset, blocks_path, max(1, args.repeats - 1))
            plot(report["scaling"], out / "cost.png")
            print(f"wrote {out / 'cost.png'}")
    (out / "cost.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'cost.json'}")


def scaling(preset: str, blocks_path: str, repeats: int) -> list[dict]:
    base = resolve_config(preset, overrides={"seed": 0}).to_dict()
    rows = []
    sweeps = [("width", w, 5) for w in (32, 64, 128, 256)] + [
        ("depth", 128, d) for d in (1, 2, 3, 4)
    ]
    print(
        f"{'sweep':<6} {'width':>5} {'depth':>5} {'method':<9} {'ms / step':>10} {'peak MB':>8}"
    )
    for sweep, width, depth in sweeps:
        data = json.loads(json.dumps(base))
        data["layers"] = [dict(layer, channels=width) for layer in data["layers"][:depth]]
        from edge_clapp.config import Config

        config = Config.from_dict(data)
        best = compare(config, blocks_path, repeats, methods=("explicit", "backprop"))
        for method, r in best.items():
            ms = 1000 * r["seconds_per_audio_second"] * config.block_seconds
            rows.append(
                {
                    "sweep": sweep,
                    "width": width,
                    "depth": depth,
                    "method": method,
                    "ms_per_step": ms,
                    "peak_bytes": r["peak_bytes"],
                }
            )
            print(
                f"{sweep:<6} {width:>5} {depth:>5} {method:<9} {ms:>10.1f} "
                f"{r['peak_bytes'] / 1e6:>8.1f}"
            )
    # depth 5 at width 128 is the width sweep's point
    for r in [r for r in rows if r["sweep"] == "width" and r["width"] == 128]:
        rows.append(dict(r, sweep="depth"))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for col, (sweep, key) in enumerate((("width", "width"), ("depth", "depth"))):
        for method, style in (("explicit", "o-"), ("backprop", "s--")):
            pts = sorted(
                (r[key], r) for r in rows if r["sweep"] == sweep and r["method"] == method
            )
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1]["ms_per_step"] for p in pts], style, label=method)
            axes[1][col].plot(xs, [p[1]["peak_bytes"] / 1e6 for p in pts], style, label=method)
        axes[0][col].set_title(f"per 1 s block, against {key}")
        axes[0][col].set_ylabel("ms per step")
        axes[1][col].set_ylabel("peak MB")
        axes[1][col].set_xlabel(
            key + (" (channels, 5 layers)" if key == "width" else " (128 ch)")
        )
        for row in axes:
            row[col].legend()
            row[col].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        main()
