"""Does integer learning still learn? The integer twin against the float (fake-quant)
learner on the same speech stream, by the demo's language probe.

    .venv/bin/python benchmarks/twin_probe.py [--seed 0] [--calibrate-seconds 40]
        [--seconds 600]

A quantisation-aware learner of the mcu preset streams the first --calibrate-seconds of
the demo's training stream (klettres, file after file) in float; that state is probed,
then copied into the integer twin. Both then stream the next --seconds of the same
stream: the quantisation-aware learner in float (fake quantisation), the twin in
integers (its front end, log-mel, on the host). Both are probed (language of the 453
held-out recordings from the time-averaged frames of each layer, the demo's probe).
Printed: accuracy per layer for the starting point, the float learner and the twin,
and the twin's gap to the float learner; JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from edge_clapp.config import resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono, split_recordings
from edge_clapp.demo import probe_languages
from edge_clapp.firmware_sim.twin import IntegerLearner
from edge_clapp.learner import OnlineLearner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate-seconds", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--shadow-bits",
        type=int,
        default=0,
        help="integer bits kept below each weight / P / R code (0: int8 alone; 8: int16)",
    )
    args = parser.parse_args()

    overrides = {"seed": args.seed, "quant": {"enabled": True}}
    learner = OnlineLearner(resolve_config("mcu", overrides=overrides))
    train, held_out = split_recordings(klettres_recordings())
    audio = {r.path: read_mono(r.path, 16000) for r in train + held_out}
    stream = np.concatenate([audio[r.path] for r in train])
    n = learner.config.block_samples
    calibrate = int(args.calibrate_seconds * 16000) // n
    blocks = min(int(args.seconds * 16000) // n, len(stream) // n - calibrate)
    for b in range(calibrate):
        learner.step(stream[b * n : (b + 1) * n])

    def probe(model, label):
        return [
            r["accuracy"] for r in probe_languages(model, audio, train, held_out, False, label)
        ]

    start = probe(learner, "start")
    twin = IntegerLearner(learner, seed=args.seed, shadow_bits=args.shadow_bits)
    timing = {"float": 0.0, "twin": 0.0}
    for b in range(calibrate, calibrate + blocks):
        block = stream[b * n : (b + 1) * n]
        t = time.perf_counter()
        learner.step(block)
        timing["float"] += time.perf_counter() - t
        t = time.perf_counter()
        twin.step_samples(block)
        timing["twin"] += time.perf_counter() - t
    result = {
        "seed": args.seed,
        "shadow_bits": args.shadow_bits,
        "calibrate_seconds": calibrate * n / 16000,
        "seconds": blocks * n / 16000,
        "start": start,
        "float": probe(learner, "float"),
        "twin": probe(twin, "twin"),
        "chance": 0.287,
        "wall_seconds": timing,
    }
    print(
        f"mcu, seed {args.seed}: float (quantisation-aware) "
        f"{result['calibrate_seconds']:.0f} s, then {result['seconds']:.0f} s float vs "
        f"integer twin (shadow bits {args.shadow_bits}); language probe, 453 held-out "
        "recordings"
    )
    print(f"{'layer':>5} {'start':>7} {'float':>7} {'twin':>7} {'twin-float':>11}")
    columns = zip(result["start"], result["float"], result["twin"], strict=True)
    for i, (s, f, t) in enumerate(columns):
        print(f"{i + 1:>5} {s:>7.3f} {f:>7.3f} {t:>7.3f} {t - f:>+11.3f}")
    print(f"wall: float {timing['float']:.0f} s, twin {timing['twin']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
