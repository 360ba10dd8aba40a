"""Per-block inference latency of the ONNX graphs (float, int8) against torch eager.

Also the model sizes.

    .venv/bin/python benchmarks/onnx_latency.py [--preset raw] [--repeats 1000]

Every runtime computes the same encoder: a learner of the preset (seed 0) with
quantisation-aware learning on, after 10 blocks of klettres speech (so that its int8
scales exist), on one block of other klettres speech at batch 1. torch eager runs
``OnlineLearner.encode`` on the float weights (no autograd); onnxruntime runs the float
graph and the int8 QDQ graph, each whole-block and streaming (one block with its carries).
Runs are interleaved; the median of --repeats (default 1000) is printed with the ratios
against torch, then the model sizes, the encoder's share apart (the log-mel front end's
DFT basis is float64 in both graphs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime
import torch

from edge_clapp.config import PRESETS, resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono
from edge_clapp.export.model import build_model, frames_for, zero_carries
from edge_clapp.learner import OnlineLearner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="raw", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args()

    overrides = {"seed": 0, "quant": {"enabled": True}}
    learner = OnlineLearner(resolve_config(args.preset, overrides=overrides))
    config = learner.config
    speech = np.concatenate([read_mono(r.path, 16000) for r in klettres_recordings()[:40]])
    n = config.block_samples
    for b in range(10):
        assert learner.step(speech[b * n : (b + 1) * n]), "learning block refused"
    block = frames_for(speech[10 * n : 11 * n], config.frontend.frame_hop)
    assert block.shape[1] == n, "need eleven full blocks of speech"

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # No spin-waiting between runs: interleaved with torch, spinning threads steal its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models = {
        "onnxruntime float": build_model(learner),
        "onnxruntime float streaming": build_model(learner, streaming=True),
        "onnxruntime int8": build_model(learner, int8=True),
        "onnxruntime int8 streaming": build_model(learner, streaming=True, int8=True),
    }
    sessions = {
        name: onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        for name, model in models.items()
    }
    feeds = {name: {"samples": block, **zero_carries(model)} for name, model in models.items()}
    runs = {"torch eager": lambda: learner.encode(block[0], float_weights=True)}
    for name in models:
        runs[name] = lambda name=name: sessions[name].run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            for _ in range(5):
                fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)

    print(
        f"preset {args.preset}: one block of {config.block_seconds:.1f} s "
        f"({config.block_samples} samples), batch 1, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    base = statistics.median(times["torch eager"])
    print(f"{'runtime':<28} {'ms/block':>9} {'vs torch':>9} {'x real time':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:<28} {median * 1e3:>9.3f} {base / median:>8.2f}x "
            f"{config.block_seconds / median:>12.0f}"
        )
    print(f"encoder: {learner.parameter_count()['encoder']:,} parameters")
    for name in ("onnxruntime float", "onnxruntime int8"):
        model = models[name]
        layer_bytes = sum(
            len(i.SerializeToString())
            for i in model.graph.initializer
            if i.name.split("_")[0] in ("weight", "bias", "w", "b")
        )
        print(
            f"{name.split()[1]} model: {len(model.SerializeToString()):,} bytes, of which "
            f"layer weights and biases {layer_bytes:,}"
        )


if __name__ == "__main__":
    main()
