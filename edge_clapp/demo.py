"""The main job: learn from real speech, then probe what was learned.

1. Split Debian's klettres-data recordings (20 languages) by recording: every fourth file
   of each language is held out and never streamed.
2. Encode every recording with the encoder at initialisation (frozen copy of the state).
3. Stream the training recordings, file after file, through the online learner.
4. Encode again; fit a linear probe (language of a recording, from the time-averaged
   frame vectors of one layer) on the training files, test it on the held-out ones, for
   every layer, before and after learning. Also the held-out score gap per layer.
5. Print a table and write ``demo.json`` (and the run's ``metrics.json``, config and
   checkpoint) into the output folder.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_clapp.config import resolve_config
from edge_clapp.corpus import Recording, klettres_recordings, read_mono, split_recordings
from edge_clapp.evaluate import score_gap
from edge_clapp.learner import OnlineLearner
from edge_clapp.probe import fit_linear_probe, utterance_features
from edge_clapp.progress import ProgressBar
from edge_clapp.session import run, write_json
from edge_clapp.sources import open_files

log = logging.getLogger(__name__)


def probe_languages(
    learner: OnlineLearner,
    audio: dict[Path, np.ndarray],
    train: list[Recording],
    held_out: list[Recording],
    show_progress: bool,
    label: str,
) -> list[dict[str, Any]]:
    """Per layer: the language probe's held-out accuracy for the learner's current state."""
    items = train + held_out
    features = [
        utterance_features(learner.encode(audio[rec.path]))
        for rec in tqdm(
            items, desc=f"encoding ({label})", disable=not show_progress, leave=False
        )
    ]
    results = []
    for layer in range(len(learner.layers)):
        x = np.stack([f[layer] for f in features])
        probe = fit_linear_probe(
            x[: len(train)],
            [r.language for r in train],
            x[len(train) :],
            [r.language for r in held_out],
        )
        results.append({"layer": layer + 1, **probe.to_dict()})
    return results


def run_demo(
    out: Path,
    preset: str = "raw",
    seed: int = 0,
    max_seconds: float | None = None,
    show_progress: bool = True,
    quant: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the demo into ``out``; returns (demo result, the learning run's metrics).
    quant: quantisation-aware learning; the learned encoder is probed on its int8 grid
    (the initial one in float: no activation range has been observed before learning)."""
    started = time.perf_counter()
    overrides: dict[str, Any] = {"seed": seed}
    if quant:
        overrides["quant"] = {"enabled": True}
    config = resolve_config(preset, overrides=overrides)
    train, held_out = split_recordings(klettres_recordings())
    rate = config.frontend.sample_rate
    audio = {
        rec.path: read_mono(rec.path, rate)
        for rec in tqdm(
            train + held_out, desc="decoding klettres", disable=not show_progress, leave=False
        )
    }

    learner = OnlineLearner(config)
    initial = copy.deepcopy(learner)
    held_audio = [audio[r.path] for r in held_out]
    probe_init = probe_languages(initial, audio, train, held_out, show_progress, "init")
    gap_init = score_gap(initial, held_audio, seed=seed)

    source = open_files(
        [r.path for r in train], sample_rate=rate, block_samples=config.block_samples
    )
    total = sum(len(audio[r.path]) for r in train) / rate
    bar = ProgressBar(min(total, max_seconds or total)) if show_progress else None
    try:
        metrics = run(
            learner,
            source,
            out,
            max_seconds=max_seconds,
            on_progress=bar.update if bar else None,
            resume_info={"source_spec": None},
        )
    finally:
        if bar:
            bar.close()

    probe_learned = probe_languages(learner, audio, train, held_out, show_progress, "learned")
    gap_learned = score_gap(learner, held_audio, seed=seed)
    languages = sorted({r.language for r in train})
    result = {
        "preset": preset,
        "seed": seed,
        "quant": quant,
        "languages": len(languages),
        "train_recordings": len(train),
        "held_out_recordings": len(held_out),
        "audio_seconds": metrics["audio_seconds"],
        "learn_wall_seconds": metrics["wall_seconds"],
        "speed_x_realtime": metrics["speed_x_realtime"],
        "state_bytes": learner.state_bytes,
        "parameters": learner.parameter_count(),
        "forward_macs_per_audio_second": learner.macs_per_second(),
        "probe": {
            "task": "language of a held-out recording from time-averaged frame vectors",
            "chance": probe_init[0]["chance"],
            "headline_layer": len(learner.layers),
            "init": probe_init,
            "learned": probe_learned,
        },
        "score_gap": {"init": gap_init, "learned": gap_learned},
        "total_wall_seconds": time.perf_counter() - started,
    }
    write_json(out / "demo.json", result)
    return result, metrics
