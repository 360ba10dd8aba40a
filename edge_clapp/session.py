"""A learning session: feed a source's blocks to the learner, checkpoint, write metrics.

The session is the part ``edge-clapp learn`` and ``edge-clapp demo`` share. It reports
progress through a callback (the command line draws a bar; the library stays quiet).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.errors import CheckpointError
from edge_clapp.learner import OnlineLearner
from edge_clapp.sources import Source

log = logging.getLogger(__name__)


@dataclass
class Progress:
    audio_seconds: float  # consumed by this session
    wall_seconds: float
    layers: list[dict[str, float]]  # per layer means since the previous report

    @property
    def speed(self) -> float:
        """Audio seconds per wall second (a multiple of real time)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def metrics(
    learner: OnlineLearner, source: Source | None, audio_seconds: float, wall_seconds: float
) -> dict[str, Any]:
    """What a run reports: sizes, speed, counters and the per-layer rule statistics."""
    c = learner.counters
    return {
        "preset": learner.config.preset,
        "audio_seconds": audio_seconds,
        "wall_seconds": wall_seconds,
        "speed_x_realtime": audio_seconds / wall_seconds if wall_seconds > 0 else None,
        "total_audio_seconds": c.blocks_learned * learner.config.block_seconds,
        "state_bytes": learner.state_bytes,
        "parameters": learner.parameter_count(),
        "forward_macs_per_audio_second": learner.macs_per_second(),
        "counters": {k: v for k, v in c.__dict__.items() if k != "extra"},
        "source": source.stats.to_dict() if source is not None else None,
        "layers": [
            {"layer": i + 1, **meter.summary()} for i, meter in enumerate(learner.meters)
        ],
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(_finite_or_none(data), indent=2) + "\n")


def run(
    learner: OnlineLearner,
    source: Source,
    out_dir: Path,
    *,
    max_seconds: float | None = None,
    checkpoint_every: float | None = None,
    report_every: float = 1.0,
    on_progress: Callable[[Progress], None] | None = None,
    resume_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Learn from ``source`` until it ends, ``max_seconds`` of audio, or Ctrl-C.

    Writes ``out_dir/config.toml`` first, then checkpoints every ``checkpoint_every``
    audio seconds and at the end, and ``out_dir/metrics.json`` at the end. Returns the
    metrics. An interrupted run still writes its checkpoint and metrics. ``resume_info`` is
    stored in the checkpoint for ``--resume``, with the count of samples consumed.
    """
    resume_info = resume_info or {}

    def checkpoint() -> None:
        info = {**resume_info, **_resume_info(learner, source)}
        save_checkpoint(learner, out_dir / "checkpoint", info)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(learner.config.to_toml())
    block_seconds = learner.config.block_seconds
    audio = 0.0
    next_checkpoint = checkpoint_every
    started = time.perf_counter()
    last_report = started
    interrupted = False
    try:
        for block in source.blocks():
            learner.step(block.samples, block.starts, block.overflows)
            audio += block_seconds
            now = time.perf_counter()
            if on_progress is not None and now - last_report >= report_every:
                on_progress(Progress(audio, now - started, learner.take_interval()))
                last_report = now
            if next_checkpoint is not None and audio >= next_checkpoint:
                checkpoint()
                next_checkpoint += checkpoint_every
            if max_seconds is not None and audio >= max_seconds - 1e-9:
                break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the checkpoint and metrics")
    finally:
        source.close()
    wall = time.perf_counter() - started
    if on_progress is not None:
        on_progress(Progress(audio, wall, learner.take_interval()))
    result = metrics(learner, source, audio, wall)
    result["interrupted"] = interrupted
    try:
        checkpoint()
    except CheckpointError:
        write_json(out_dir / "metrics.json", result)
        raise
    write_json(out_dir / "metrics.json", result)
    return result


def _resume_info(learner: OnlineLearner, source: Source) -> dict[str, Any]:
    """What --resume needs to continue the same stream: how many samples were consumed."""
    return {
        "source": source.description,
        "samples_consumed": learner.counters.blocks * learner.config.block_samples,
    }
