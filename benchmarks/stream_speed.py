"""Streaming speed of the learner, side by side with an autograd learner doing the same work.

    .venv/bin/python benchmarks/stream_speed.py [--preset raw] [--seconds 120] [--repeats 3]

Both learners stream the same klettres speech (training split, 16 kHz, in blocks) from
the same initial state. The explicit learner is edge_clapp's: the rule's updates are
written out (edge_clapp.rule.clapp_step). The baseline (edge_clapp.baselines.
AutogradLearner) replaces only that function by an autograd one: it re-runs the layer's
forward with a graph (an autograd learner needs one), builds the same two-hinge loss and
takes its gradient; everything else (front end, pairs, replay, rings) is shared code.
Printed: audio seconds per wall second (x real time) of each, their ratio, and the
largest relative difference of the weights after one block and at the end, which shows
that the two did the same work. Runs alternate, best of --repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from edge_clapp.baselines import AutogradLearner
from edge_clapp.config import PRESETS, resolve_config
from edge_clapp.corpus import (
    blocks_with_starts,
    klettres_recordings,
    read_until,
    split_recordings,
)
from edge_clapp.learner import OnlineLearner


def stream(learner: OnlineLearner, blocks: list[tuple[np.ndarray, list[int]]]) -> float:
    started = time.perf_counter()
    for samples, starts in blocks:
        learner.step(samples, starts)
    return time.perf_counter() - started


def make_blocks(block_samples: int, seconds: float) -> list[tuple[np.ndarray, list[int]]]:
    train, _ = split_recordings(klettres_recordings())
    # every language, spread over the corpus
    pieces = read_until(train[::5], 16000, int(seconds * 16000))
    return blocks_with_starts(pieces, block_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="raw", choices=sorted(PRESETS))
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = resolve_config(args.preset, overrides={"seed": 0})
    blocks = make_blocks(config.block_samples, args.seconds)
    audio = len(blocks) * config.block_seconds
    print(
        f"preset {args.preset}: {audio:.0f} s of klettres speech in {len(blocks)} blocks, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    def run(name: str, some_blocks) -> tuple[OnlineLearner, float]:
        learner = (AutogradLearner if name == "autograd" else OnlineLearner)(config)
        return learner, stream(learner, some_blocks)

    best = {"explicit": float("inf"), "autograd": float("inf")}
    finals: dict[str, OnlineLearner] = {}
    for _ in range(args.repeats):
        for name in ("explicit", "autograd"):
            finals[name], wall = run(name, blocks)
            best[name] = min(best[name], wall)
    first = {name: run(name, blocks[:1])[0] for name in ("explicit", "autograd")}

    explicit, autograd = best["explicit"], best["autograd"]
    print(f"{'learner':<10} {'wall s':>8} {'x real time':>12}")
    for name, wall in best.items():
        print(f"{name:<10} {wall:>8.2f} {audio / wall:>12.1f}")
    print(f"explicit / autograd speed: {autograd / explicit:.2f}x")
    for label, pair in (("after the first block", first), ("at the end", finals)):
        diffs = []
        for name, tensor in pair["explicit"].tensors().items():
            if name.endswith((".weight", ".pred", ".retro")):
                other = pair["autograd"].tensors()[name]
                diffs.append(float((tensor - other).norm() / tensor.norm()))
        print(f"largest relative difference of the weights {label}: {max(diffs):.2e}")
    print("(float32; rounding differences compound over the stream)")


if __name__ == "__main__":
    main()
