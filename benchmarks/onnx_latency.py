"""Per-block inference latency: the float ONNX graph in onnxruntime against torch eager.

    .venv/bin/python benchmarks/onnx_latency.py [--preset raw] [--repeats 1000]

Both run the same encoder (a fresh learner of the preset, seed 0) on the same block of
klettres speech at batch 1: torch eager through ``OnlineLearner.encode`` (no autograd),
onnxruntime through the exported whole-block graph and through the streaming graph (one
block with its carries). Runs are interleaved; the median of --repeats (default 1000) is
printed, with the ratios and the model sizes. Int8 is not built yet, so it is not
measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime
import torch

from edge_clapp.config import resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono
from edge_clapp.export.model import build_model, frames_for
from edge_clapp.learner import OnlineLearner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="raw")
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args()

    learner = OnlineLearner(resolve_config(args.preset, overrides={"seed": 0}))
    config = learner.config
    speech = np.concatenate([read_mono(r.path, 16000) for r in klettres_recordings()[:20]])
    block = frames_for(speech[: config.block_samples], config.frontend.frame_hop)
    assert block.shape[1] == config.block_samples, "need one full block of speech"

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # No spin-waiting between runs: interleaved with torch, spinning threads steal its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    whole_model = build_model(learner)
    stream_model = build_model(learner, streaming=True)
    sessions = {
        name: onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        for name, model in (("whole", whole_model), ("streaming", stream_model))
    }
    carries = {
        i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
        for i in stream_model.graph.input
        if i.name != "samples"
    }
    runs = {
        "torch eager": lambda: learner.encode(block[0]),
        "onnxruntime": lambda: sessions["whole"].run(None, {"samples": block}),
        "onnxruntime streaming": lambda: sessions["streaming"].run(
            None, {"samples": block, **carries}
        ),
    }
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
    print(f"{'runtime':<24} {'ms/block':>9} {'vs torch':>9} {'x real time':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:<24} {median * 1e3:>9.3f} {base / median:>8.2f}x "
            f"{config.block_seconds / median:>12.0f}"
        )
    size = len(whole_model.SerializeToString())
    print(f"float model: {size:,} bytes ({learner.parameter_count()['encoder']:,} parameters)")


if __name__ == "__main__":
    main()
