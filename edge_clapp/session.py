"""A learning session: feed a source's blocks to the learner, checkpoint, write metrics.

The session is the part ``edge-clapp learn`` and ``edge-clapp demo`` share. It reports
progress through a callback (the command line draws a bar; the library stays quiet).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.errors import HardInterrupt, SessionError
from edge_clapp.learner import LearnerBase, OnlineLearner

log = logging.getLogger(__name__)


@dataclass
class Progress:
    audio_seconds: float  # consumed by this session; for a camera learner, frames
    wall_seconds: float
    layers: list[dict[str, float]]  # per layer means since the previous report

    @property
    def speed(self) -> float:
        """Audio seconds (or frames) per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def metrics(
    learner: LearnerBase, source: Any, amount: float, wall_seconds: float
) -> dict[str, Any]:
    """What a run reports: sizes, speed, counters and the per-layer rule statistics.
    ``amount``: audio seconds, or for the camera learner frames, of this session."""
    c = learner.counters
    speed = amount / wall_seconds if wall_seconds > 0 else None
    if learner.config.is_vision:
        head = {
            "frames": int(amount),
            "wall_seconds": wall_seconds,
            "frames_per_second": speed,
            "total_frames": c.blocks_learned,
            "forward_macs_per_frame": learner.macs_per_frame(),
        }
    else:
        head = {
            "audio_seconds": amount,
            "wall_seconds": wall_seconds,
            "speed_x_realtime": speed,
            "total_audio_seconds": c.blocks_learned * learner.config.block_seconds,
            "forward_macs_per_audio_second": learner.macs_per_second(),
        }
    return {
        "preset": learner.config.preset,
        **head,
        "state_bytes": learner.state_bytes,
        "parameters": learner.parameter_count(),
        "counters": dict(c.__dict__),
        "source": source.stats.to_dict() if source is not None else None,
        "layers": [
            {"layer": i + 1, **meter.summary()} for i, meter in enumerate(learner.meters)
        ],
        "quant": _quant_summary(learner),
    }


def _quant_summary(learner: OnlineLearner) -> dict[str, Any] | None:
    """Whether the forward pass is on the int8 grid, and its activation scales."""
    if not learner.config.quant.enabled:
        return None
    scales = learner.quant_scales()
    return {
        "active": learner.quant_active,
        "input_scale": scales["input_scale"],
        "output_scales": [layer["output_scale"] for layer in scales["layers"]],
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
    """Writes ``data`` as JSON through a temporary file, so a reader never sees half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_finite_or_none(data), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise SessionError(f"cannot write {str(path)!r} ({exc.strerror})") from None


class _DeferInterrupt:
    """Ctrl-C (or SIGTERM) between blocks: the first asks the loop to stop after the block,
    so that a checkpoint never holds a half-applied step. A second one interrupts at once
    (``hard`` then tells whether it landed inside a step)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_step = False
        self.hard = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.hard = self.in_step
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupted: stopping after this block (Ctrl-C again to stop now)")

    def __enter__(self) -> _DeferInterrupt:
        if threading.current_thread() is threading.main_thread():
            # A signal ignored by the parent (a background job) stays ignored.
            self._previous = {
                sig: signal.signal(sig, self._handler)
                for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) not in (signal.SIG_IGN, None)
            }
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)


def run(
    learner: LearnerBase,
    source: Any,
    out_dir: Path,
    *,
    max_seconds: float | None = None,
    checkpoint_every: float | None = None,
    report_every: float = 1.0,
    on_progress: Callable[[Progress], None] | None = None,
    resume_info: dict[str, Any] | None = None,
    source_offset: int = 0,
) -> dict[str, Any]:
    """Learn from ``source`` until it ends, ``max_seconds`` of audio, or Ctrl-C.

    Writes ``out_dir/config.toml`` first, then checkpoints every ``checkpoint_every``
    audio seconds and at the end, and ``out_dir/metrics.json`` at the end. Returns the
    metrics. An interrupted run still writes its checkpoint and metrics. ``resume_info`` is
    stored in the checkpoint for ``--resume``, with the position in the source:
    ``source_offset`` (samples skipped at its start) plus the samples consumed here.

    A camera learner (a vision config) reads the source's frames instead of blocks; then
    every amount above counts frames instead of audio seconds or samples, and the position
    is the source's index after the last frame learned (frames that failed to decode
    included).
    """
    resume_info = resume_info or {}
    position = source_offset  # where a resumed run starts reading the source
    if learner.config.is_vision:
        items, per_step = source.frames(), 1.0

        def feed(frame: Any) -> None:
            nonlocal position
            learner.step(frame.image, frame.boundary, frame.dropped)
            position = frame.index + 1  # frames lost to decoding count: they are skipped
    else:
        items, per_step = source.blocks(), learner.config.block_seconds

        def feed(block: Any) -> None:
            nonlocal position
            learner.step(block.samples, block.starts, block.overflows)
            position += learner.config.block_samples

    blocks_here = 0

    def checkpoint() -> None:
        info = {
            **resume_info,
            "source": source.description,
            "samples_consumed": position,
        }
        save_checkpoint(learner, out_dir / "checkpoint", info)

    if out_dir.exists() and not out_dir.is_dir():
        raise SessionError(f"--out '{out_dir}' is a file: pass a folder for the run")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.toml").write_text(learner.config.to_toml())
    except OSError as exc:
        raise SessionError(
            f"cannot write the run folder '{out_dir}' ({exc.strerror})"
        ) from None
    next_checkpoint = checkpoint_every
    started = time.perf_counter()
    last_report = started
    guard = _DeferInterrupt()
    try:
        with guard:
            for item in items:
                guard.in_step = True
                feed(item)
                blocks_here += 1
                guard.in_step = False
                audio = blocks_here * per_step
                now = time.perf_counter()
                if on_progress is not None and now - last_report >= report_every:
                    on_progress(Progress(audio, now - started, learner.take_interval()))
                    last_report = now
                if next_checkpoint is not None and audio >= next_checkpoint:
                    checkpoint()
                    next_checkpoint += checkpoint_every
                if guard.requested:
                    break
                if max_seconds is not None and audio >= max_seconds - 1e-9:
                    break
    except KeyboardInterrupt:
        guard.requested = True
    finally:
        source.close()
    wall = time.perf_counter() - started
    audio = blocks_here * per_step
    if on_progress is not None:
        on_progress(Progress(audio, wall, learner.take_interval()))
    result = metrics(learner, source, audio, wall)
    result["interrupted"] = guard.requested
    if guard.hard:
        # Stopped inside a step: the learner is half-updated and must not be saved.
        result["checkpoint"] = "not written: interrupted inside a step"
        write_json(out_dir / "metrics.json", result)
        raise HardInterrupt(
            "stopped inside a learning step: the last checkpoint in "
            f"'{out_dir / 'checkpoint'}' (if any) is kept, this session's progress since "
            "then is not saved"
        )
    try:
        checkpoint()
    finally:  # the metrics also when the checkpoint cannot be written
        write_json(out_dir / "metrics.json", result)
    return result
