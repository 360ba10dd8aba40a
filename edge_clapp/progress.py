"""What the commands show: a progress bar on stderr, result tables on stdout."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edge_clapp.session import Progress


def _num(value: float | None, fmt: str = "+.2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "  -  "
    return format(value, fmt)


class ProgressBar:
    """Audio seconds (or frames) consumed, speed as a multiple of real time (or frames
    per second), and per layer the hinge loss with the mean positive / negative scores
    since the last refresh."""

    def __init__(
        self, total_seconds: float | None, label: str = "learning", unit: str = "s audio"
    ) -> None:
        self.unit = unit
        options = dict(
            total=round(total_seconds, 1) if total_seconds else None,
            desc=label,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc}: {n:.0f}/{total_fmt} " + unit + " |{bar:20}| {elapsed} {postfix}"
            if total_seconds
            else "{desc}: {n:.0f} " + unit + " {elapsed} {postfix}",
        )
        try:
            self.bar = tqdm(**options)
        except OSError:  # stderr closed (e.g. piped into `head`): learn without a bar
            self.bar = tqdm(**options, disable=True)

    def update(self, progress: Progress) -> None:
        if self.bar.disable:
            return
        layers = " ".join(
            f"L{i + 1} {_num(m['loss'], '.2f')} {_num(m['pos_score'])}/{_num(m['neg_score'])}"
            for i, m in enumerate(progress.layers)
        )
        try:
            self.bar.n = round(progress.audio_seconds, 1)
            speed = (
                f"{progress.speed:.1f} frames/s"
                if self.unit == "frames"
                else f"{progress.speed:.1f}x RT"
            )
            self.bar.set_postfix_str(f"{speed} | loss +pos/-neg: {layers}")
        except OSError:  # stderr closed (e.g. piped into `head`): learning goes on
            self.bar.disable = True

    def close(self) -> None:
        try:
            self.bar.close()
        except OSError:
            pass


# The learners share their counters; a camera learner's count frames and pixels.
_FRAME_COUNTERS = {
    "blocks_skipped_nonfinite": "frames refused (NaN or Inf)",
    "nonfinite_samples": "non-finite pixel values",
    "out_of_range_samples": "pixel values outside [0, 1] (clamped)",
    "saturated_samples": "pixel values at 1.0",
    "negatives_unavailable_blocks": "frames without a replayed frame (positives only)",
    "overflows": "frames dropped by the source",
}


def print_metrics(result: dict[str, Any], out: Path) -> None:
    if "frames" in result:
        print(
            f"learned from {result['frames']:,} frame{'s' * (result['frames'] != 1)} in "
            f"{result['wall_seconds']:.1f} s "
            f"({_num(result['frames_per_second'], '.1f')} frames/s); state "
            f"{result['state_bytes']:,} bytes"
        )
        stats = result.get("source") or {}
        if stats:
            fps = stats.get("fps")
            print(
                f"source: {stats.get('frames_read', 0):,} frames read"
                + (f" at {fps:.2f} fps" if fps else "")
                + f", {stats.get('frames_dropped', 0):,} dropped, "
                f"{stats.get('scene_cuts', 0):,} scene cuts; "
                f"{result['counters']['boundaries']:,} "
                f"scene{'s' * (result['counters']['boundaries'] != 1)} learned"
            )
    else:
        speed = result.get("speed_x_realtime")
        print(
            f"learned from {result['audio_seconds']:.1f} s of audio in "
            f"{result['wall_seconds']:.1f} s ({_num(speed, '.1f')}x real time); state "
            f"{result['state_bytes']:,} bytes"
        )
    print(f"{'layer':>5} {'loss':>7} {'pos':>7} {'neg':>7} {'gate open':>9}")
    for row in result["layers"]:
        print(
            f"{row['layer']:>5} {_num(row['loss'], '7.3f')} {_num(row['pos_score'], '+7.3f')} "
            f"{_num(row['neg_score'], '+7.3f')} {_num(row['gate_open_fraction'], '9.2f')}"
        )
    counters = result["counters"]
    names = _FRAME_COUNTERS if "frames" in result else {}
    notes = [
        f"{names.get(k, k.replace('_', ' '))}: {v}"
        for k, v in counters.items()
        if k not in ("blocks", "blocks_learned", "boundaries") and v
    ]
    if notes:
        print("; ".join(notes))
    print(f"wrote {out / 'metrics.json'}, {out / 'config.toml'}, {out / 'checkpoint'}")


def print_demo(result: dict[str, Any], out: Path) -> None:
    probe = result["probe"]
    print(
        f"\nlanguage probe on {result['held_out_recordings']} held-out recordings "
        f"({result['languages']} languages; chance = majority class {probe['chance']:.3f})"
    )
    print(f"{'layer':>5} {'init':>7} {'learned':>8} {'gap init':>9} {'gap learned':>12}")
    gaps = result["score_gap"]
    for init, learned, g0, g1 in zip(
        probe["init"], probe["learned"], gaps["init"], gaps["learned"], strict=True
    ):
        mark = "  <- headline" if learned["layer"] == probe["headline_layer"] else ""
        print(
            f"{learned['layer']:>5} {init['accuracy']:>7.3f} {learned['accuracy']:>8.3f} "
            f"{g0['gap']:>+9.3f} {g1['gap']:>+12.3f}{mark}"
        )
    params = result["parameters"]
    print(
        f"preset {result['preset']}, seed {result['seed']}: {params['encoder']:,} encoder + "
        f"{params['prediction']:,} rule parameters, {result['state_bytes']:,} bytes of state, "
        f"{_num(result['speed_x_realtime'], '.1f')}x real time; "
        f"total {result['total_wall_seconds']:.0f} s"
    )
    print(f"wrote {out / 'demo.json'}")
