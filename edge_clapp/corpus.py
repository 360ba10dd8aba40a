"""The demo's real speech: Debian's klettres-data recordings, labelled by language.

``/usr/share/klettres/<lang>/{alpha,syllab}/*.ogg``: letters and syllables spoken by one
person per language, 20 languages. The split is by recording and fixed (independent of
the learner's seed): within each language, files sorted by path, every fourth is held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from edge_clapp.errors import SourceError

KLETTRES_ROOT = Path("/usr/share/klettres")


@dataclass(frozen=True)
class Recording:
    path: Path
    language: str


def klettres_recordings(root: Path = KLETTRES_ROOT) -> list[Recording]:
    """All recordings, sorted by path. Raises SourceError if the package is missing."""
    files = sorted(root.glob("*/*/*.ogg"))
    if not files:
        raise SourceError(
            f"no klettres recordings under {root}: install Debian's klettres-data "
            "(`make demo` does) or pass --source with your own audio"
        )
    return [Recording(path=f, language=f.parent.parent.name) for f in files]


def split_recordings(
    recordings: list[Recording], every: int = 4
) -> tuple[list[Recording], list[Recording]]:
    """(train, held_out): per language, every ``every``-th recording is held out."""
    train, held_out = [], []
    by_language: dict[str, list[Recording]] = {}
    for rec in recordings:
        by_language.setdefault(rec.language, []).append(rec)
    for recs in by_language.values():
        for i, rec in enumerate(recs):
            (held_out if i % every == every - 1 else train).append(rec)
    return train, held_out


def read_mono(path: Path | str, sample_rate: int) -> np.ndarray:
    """A whole file as float32 mono at ``sample_rate`` (channels averaged, soxr resampled)."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise SourceError(f"cannot read {str(path)!r}: {exc}") from None
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def read_until(
    recordings: Sequence[Recording], sample_rate: int, samples: int
) -> list[np.ndarray]:
    """Whole recordings, in order, until at least ``samples`` samples are read (or all)."""
    pieces, total = [], 0
    for rec in recordings:
        if total >= samples:
            break
        pieces.append(read_mono(rec.path, sample_rate))
        total += len(pieces[-1])
    return pieces


def blocks_with_starts(
    pieces: Sequence[np.ndarray], block_samples: int
) -> list[tuple[np.ndarray, list[int]]]:
    """Recordings joined end to end and cut into whole blocks (the tail that fills no
    block is dropped), each with the offsets in it where a recording starts: what
    ``OnlineLearner.step`` takes."""
    joined = np.concatenate(list(pieces))
    bounds = np.cumsum([0] + [len(p) for p in pieces])[:-1]
    blocks = []
    for lo in range(0, len(joined) - block_samples + 1, block_samples):
        starts = bounds[(bounds >= lo) & (bounds < lo + block_samples)] - lo
        blocks.append((joined[lo : lo + block_samples], [int(s) for s in starts]))
    return blocks
