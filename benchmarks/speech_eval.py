"""What CLAPP learns from speech, next to backprop: linear probes on frozen features.

    .venv/bin/python benchmarks/speech_eval.py [--data runs/speech] [--preset raw]
        [--seed 0] [--epochs 1] [--methods ...] [--out runs/speech-eval]
        [--max-train-seconds S]

The corpus comes from `edge-clapp data speech --out DATA` (built here with the default
recipe if DATA holds none). Every method learns the same architecture (--preset) from the
same initial weights on the same audio: the training speakers' synthesised speech and the
training split of klettres-data, joined in an order drawn from --seed (the supervised
baseline: the synthesised part only, which has word labels). Held-out speakers and
recordings are never learned from. Then, per method, task and layer: a linear probe
(edge_clapp.probe) on the frozen features.

    random        the initial weights (the floor)
    clapp         edge_clapp's online learner, batch 1, streaming, the preset's rule
    clapp-s       the same with the symmetric variant (R = P^T)
    clapp-batch   the CLAPP losses per layer by autograd, Adam, batches of 8 windows
    clapp-s-batch the same with the symmetric variant
    gim           layer-local InfoNCE (Greedy InfoMax style), backprop inside each layer
    hinge-cpc     end-to-end Hinge-CPC, backprop through every layer
    supervised    end-to-end cross-entropy on the word (the word probe's ceiling)

Prints a table per task (accuracy per layer, chance), writes eval.json, probes.png
(accuracy per layer per method) and online.png (loss and held-in score gap per layer
during online learning) into --out, and each method's checkpoint into --out/METHOD/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_clapp.baselines import TrainSettings, train_baseline
from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.config import PRESETS, resolve_config
from edge_clapp.corpus import blocks_with_starts
from edge_clapp.errors import EdgeClappError
from edge_clapp.learner import OnlineLearner
from edge_clapp.probe import TASKS, encode_utterances, probe_task, task_split
from edge_clapp.session import write_json
from edge_clapp.speech_corpus import SpeechRecipe, build_speech_corpus, load_corpus

METHODS = (
    "random",
    "clapp",
    "clapp-s",
    "clapp-batch",
    "clapp-s-batch",
    "gim",
    "hinge-cpc",
    "supervised",
)
ONLINE_REPORT_SECONDS = 30.0  # audio seconds between points of the online curves


def stream_online(
    learner: OnlineLearner, audio: list[np.ndarray], label: str, quiet: bool
) -> list[dict]:
    """Streams the recordings end to end, block by block (a new recording starts a new
    segment); returns the per-layer interval means every ONLINE_REPORT_SECONDS."""
    blocks = blocks_with_starts(audio, learner.config.block_samples)
    every = max(1, round(ONLINE_REPORT_SECONDS / learner.config.block_seconds))
    curve = []
    learner.take_interval()
    for b, (samples, starts) in enumerate(
        tqdm(blocks, desc=label, disable=quiet, unit="block", leave=False)
    ):
        learner.step(samples, starts)
        if (b + 1) % every == 0 or b + 1 == len(blocks):
            curve.append(
                {
                    "audio_seconds": (b + 1) * learner.config.block_seconds,
                    "layers": learner.take_interval(),
                }
            )
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/speech")
    parser.add_argument("--preset", default="raw", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1, help="passes over the audio")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--out", default="runs/speech-eval")
    parser.add_argument("--max-train-seconds", type=float, help="learn from less audio")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="only combine the eval.json of earlier runs (same data, preset and seed; e.g. "
        "methods split over two processes) into --out's tables and plots",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    if args.epochs < 1:
        parser.error("--epochs must be 1 or more")
    if args.max_train_seconds is not None and not 0 < args.max_train_seconds < float("inf"):
        parser.error("--max-train-seconds must be a finite number of seconds > 0")
    started = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    data = Path(args.data)
    if not (data / "manifest.json").exists():
        build_speech_corpus(data, SpeechRecipe(), show_progress=not args.quiet)
    corpus = load_corpus(data)
    config = resolve_config(args.preset, overrides={"seed": args.seed})
    rate = config.frontend.sample_rate

    # The learning material: every training recording, in an order drawn from the seed.
    learn_from = corpus.utterances("synth", "train") + corpus.utterances("klettres", "train")
    order = np.random.default_rng(args.seed).permutation(len(learn_from))
    learn_from = [learn_from[i] for i in order]
    if args.max_train_seconds:
        kept, total = [], 0.0
        for utt in learn_from:
            if total >= args.max_train_seconds:
                break
            kept.append(utt)
            total += utt.seconds
        learn_from = kept
    audio = [
        u.audio(rate)
        for u in tqdm(learn_from, desc="decoding", disable=args.quiet, leave=False)
    ]
    synth = [(a, u.word) for a, u in zip(audio, learn_from, strict=True) if u.corpus == "synth"]
    seconds = sum(len(a) for a in audio) / rate
    print(
        f"{args.preset} preset, seed {args.seed}: learning from {len(audio)} recordings, "
        f"{seconds / 60:.1f} min ({len(synth)} synthesised), {args.epochs:g} pass(es)"
    )

    splits = {task: task_split(corpus, task) for task in args.tasks}
    needed = {u.id: u for train, test in splits.values() for u in train + test}
    report: dict = {
        "preset": args.preset,
        "seed": args.seed,
        "epochs": args.epochs,
        "learn_seconds": seconds,
        "learn_recordings": len(audio),
        "data": str(data),
        "recipe_hash": corpus.manifest.get("recipe_hash"),
        "methods": {},
    }
    for method in args.methods:
        t0 = time.perf_counter()
        curve = None
        if method == "random":
            learner = OnlineLearner(config)
        elif method in ("clapp", "clapp-s"):
            variant = "clapp-s" if method == "clapp-s" else config.rule.variant.value
            cfg = resolve_config(
                args.preset, overrides={"seed": args.seed, "rule": {"variant": variant}}
            )
            learner = OnlineLearner(cfg)
            curve = []
            for epoch in range(args.epochs):
                curve += stream_online(learner, audio, f"{method} pass {epoch + 1}", args.quiet)
        else:
            if method == "supervised":
                material, words = [a for a, _ in synth], [w for _, w in synth]
            else:
                material, words = audio, None
            base, cfg = method, config
            if method == "clapp-s-batch":
                base = "clapp-batch"
                cfg = resolve_config(
                    args.preset, overrides={"seed": args.seed, "rule": {"variant": "clapp-s"}}
                )
            settings = TrainSettings(base, epochs=args.epochs, seed=args.seed)
            bar = tqdm(desc=method, disable=args.quiet, unit="step", leave=False)

            def on_step(step: int, steps: int, loss: float, bar=bar) -> None:
                bar.total = steps
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.3f}")

            learner, losses = train_baseline(cfg, material, settings, words, on_step)
            bar.close()
            curve = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
        train_wall = time.perf_counter() - t0
        save_checkpoint(learner, out / method / "checkpoint", extra={"method": method})

        encoded = encode_utterances(learner, list(needed.values()), not args.quiet)
        results = {}
        for task, (train, test) in splits.items():
            results[task] = probe_task(learner.config, encoded, train, test, task, seed=0)
        del encoded
        report["methods"][method] = {
            "train_wall_seconds": train_wall,
            "probe": results,
            "curve": curve,
        }
        last = {t: r[-1]["accuracy"] for t, r in results.items()}
        print(
            f"  {method:<13} learned in {train_wall:6.0f} s; last layer: "
            + ", ".join(f"{t} {a:.3f}" for t, a in last.items()),
            flush=True,
        )

    print_tables(report, args.tasks)
    report["total_wall_seconds"] = time.perf_counter() - started
    write_json(out / "eval.json", report)
    plot(report, args.tasks, out)
    print(f"wrote {out / 'eval.json'}, {out / 'probes.png'}, {out / 'online.png'}")


def merge(folders: list[str], out: Path) -> None:
    reports = [json.loads((Path(f) / "eval.json").read_text()) for f in folders]
    keys = ("preset", "seed", "epochs", "recipe_hash", "learn_seconds")
    for other in reports[1:]:
        differ = [k for k in keys if other.get(k) != reports[0].get(k)]
        if differ:
            raise SystemExit(f"speech_eval: error: the runs differ in {', '.join(differ)}")
    merged = dict(reports[0], methods={}, merged_from=folders)
    for report in reports:
        merged["methods"].update(report["methods"])
    merged["methods"] = {m: merged["methods"][m] for m in METHODS if m in merged["methods"]}
    tasks = list(next(iter(merged["methods"].values()))["probe"])
    out.mkdir(parents=True, exist_ok=True)
    print_tables(merged, tasks)
    write_json(out / "eval.json", merged)
    plot(merged, tasks, out)
    print(f"wrote {out / 'eval.json'}, {out / 'probes.png'}, {out / 'online.png'}")


def print_tables(report: dict, tasks: list[str]) -> None:
    for task in tasks:
        rows = {m: r["probe"][task] for m, r in report["methods"].items()}
        first = next(iter(rows.values()))
        n_layers = len(first)
        print(
            f"\n{task}: {first[0]['classes']} classes, {first[0]['train_count']:,} train / "
            f"{first[0]['test_count']:,} held-out, chance {first[0]['chance']:.3f}"
        )
        print(f"{'method':<14}" + "".join(f"{'L' + str(i + 1):>7}" for i in range(n_layers)))
        for method, layers in rows.items():
            print(f"{method:<14}" + "".join(f"{r['accuracy']:>7.3f}" for r in layers))


def plot(report: dict, tasks: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method, r in report["methods"].items():
            accs = [x["accuracy"] for x in r["probe"][task]]
            ax.plot(range(1, len(accs) + 1), accs, "o-", label=method)
        ax.axhline(r["probe"][task][0]["chance"], color="grey", ls=":", label="chance")
        ax.set_title(task)
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=100)
    plt.close(fig)

    online = {m: r["curve"] for m, r in report["methods"].items() if m in ("clapp", "clapp-s")}
    fig, axes = plt.subplots(
        2, max(1, len(online)), figsize=(6 * max(1, len(online)), 6), squeeze=False
    )
    for col, (method, curve) in enumerate(online.items()):
        xs = [p["audio_seconds"] / 60 for p in curve]
        for li in range(len(curve[0]["layers"])):
            loss = [p["layers"][li]["loss"] for p in curve]
            gap = [p["layers"][li]["pos_score"] - p["layers"][li]["neg_score"] for p in curve]
            axes[0][col].plot(xs, loss, label=f"layer {li + 1}")
            axes[1][col].plot(xs, gap, label=f"layer {li + 1}")
        axes[0][col].set_title(f"{method}: hinge loss while learning")
        axes[1][col].set_title(f"{method}: mean positive - negative score")
        axes[1][col].set_xlabel("audio learned (min)")
        for row in axes:
            row[col].grid(alpha=0.3)
            row[col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "online.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except EdgeClappError as exc:
        raise SystemExit(f"speech_eval: error: {exc}") from None
