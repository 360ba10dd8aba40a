"""A labelled speech corpus, built once into a folder and reused while its recipe holds.

Two parts:

- ``synth``: the same words said by many synthetic speakers, espeak-ng voices × variants
  and flite voices, each utterance at its own rate and pitch drawn from the seed. Audio is
  16 kHz mono 16-bit WAV under ``DIR/audio/``. Phoneme labels come from the synthesiser
  itself: libespeak-ng's phoneme events (through ctypes, from the same synthesis as the
  samples) and flite's ``-psdur`` end times. Split by speaker: ``test`` holds every
  espeak-ng speaker of a quarter of the male and of the female variants (so a test
  voice's pitch and formants are never heard in training) and a quarter of the flite
  voices; none is in ``train``.
- ``klettres``: Debian's klettres-data recordings (real people, 20 languages), referenced
  where they lie, with their language and the fixed split of ``edge_clapp.corpus``.

``DIR/manifest.json`` holds the recipe (everything that determines the corpus), its
hash, totals, label sets and one entry per utterance with the sha256 of its file. A
build is skipped while the recipe hash and every file hash still match. A new build is
written beside the old one (``DIR/.building-<pid>``) and swapped in at the end;
``DIR/.speech-corpus.lock`` marks the folder as a corpus and keeps builds one at a time.

Phoneme lists are ``[name, start_s, end_s]`` rows that tile the whole audio; pauses are
``sil``. espeak and flite name phonemes differently (``phoneme_set``); nothing maps one
onto the other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import soundfile
import soxr
from tqdm import tqdm

from edge_clapp.corpus import (
    KLETTRES_ROOT,
    Recording,
    klettres_recordings,
    read_mono,
    split_recordings,
)
from edge_clapp.errors import ConfigError, EdgeClappError, SourceError
from edge_clapp.paths import file_sha256
from edge_clapp.synthesis import (
    Synthesis,
    espeak_synthesise,
    espeak_version,
    flite_synthesise,
    flite_version,
    tile_phonemes,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAMPLE_RATE = 16000
CORPORA = ("synth", "klettres")
SPLITS = ("train", "test")

WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "house", "tree", "happy", "bird", "dog", "cat", "learn", "follow", "forward", "backward",
)  # fmt: skip

# "en" is espeak-ng's British English: the library does not know the name "en-gb" (the
# command line falls back to a search by language, espeak_SetVoiceByName does not).
ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m5", "m7", "f1", "f2", "f4")
ESPEAK_RATE_WPM = (125, 205)  # espeakRATE, as -s
ESPEAK_PITCH = (30, 70)  # espeakPITCH 0..100, as -p; relative to the variant's own range
# kal16 is left out: it is kal's voice at 16 kHz (the same phone times, spectra alike),
# one speaker under two names, which a split by speaker would leak across.
FLITE_VOICES = ("kal", "awb", "rms", "slt")
FLITE_DURATION_STRETCH = (0.8, 1.25)  # > 1 is slower
# int_f0_target_mean in Hz, around each voice's own register. rms ignores it (measured
# with flite 2.2: identical samples for 80 and 160 Hz); its pitch label is then nominal.
FLITE_F0_HZ = {
    "kal": (90, 130),
    "awb": (85, 125),
    "rms": (85, 125),
    "slt": (150, 200),
}
TEST_FRACTION = 0.25
KLETTRES_HELD_OUT_EVERY = 4
MIN_SPEAKERS = 4  # one train and one test speaker per synthesiser

LABEL_UNITS = {
    "espeak-ng": {"rate": "words per minute (-s)", "pitch": "0..100 (-p)"},
    "flite": {"rate": "duration_stretch (>1 slower)", "pitch": "int_f0_target_mean, Hz"},
}


@dataclass(frozen=True)
class SpeechRecipe:
    """What to build; the defaults are the default corpus (44 speakers × 30 words × 3).

    seed:         draws the split and every utterance's rate and pitch (>= 0)
    repeats:      utterances per word and speaker, each with its own rate and pitch
    max_speakers: keep this many speakers, spread over both synthesisers (None: all)
    words:        the first N words of ``WORDS`` (None: all)
    klettres:     reference klettres-data's recordings too
    """

    seed: int = 0
    repeats: int = 3
    max_speakers: int | None = None
    words: int | None = None
    klettres: bool = True

    def __post_init__(self) -> None:
        total = len(ESPEAK_VOICES) * len(ESPEAK_VARIANTS) + len(FLITE_VOICES)
        checks = [
            ("seed", self.seed, 0, None),
            ("repeats", self.repeats, 1, 100),
            ("max_speakers", self.max_speakers, MIN_SPEAKERS, total),
            ("words", self.words, 1, len(WORDS)),
        ]
        for name, value, low, high in checks:
            if value is None and name in ("max_speakers", "words"):
                continue
            if type(value) is not int or value < low or (high is not None and value > high):
                allowed = f"an integer >= {low}" if high is None else f"{low}..{high}"
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name} ({flag}) = {value!r} is not allowed: use {allowed}")
        if not isinstance(self.klettres, bool):
            raise ConfigError(f"klettres = {self.klettres!r} must be True or False")


# ---------------------------------------------------------------------------------------
# The plan: speakers, split and per-utterance parameters, all drawn from the seed.


def _all_speakers() -> list[tuple[str, str]]:
    """(synthesiser, voice) for every speaker, in a fixed order."""
    espeak = [("espeak-ng", f"{v}+{x}") for v in ESPEAK_VOICES for x in ESPEAK_VARIANTS]
    return espeak + [("flite", v) for v in FLITE_VOICES]


def _speaker_label(synthesiser: str, voice: str) -> str:
    return f"{'espeak' if synthesiser == 'espeak-ng' else 'flite'}:{voice}"


def _select_speakers(max_speakers: int | None) -> list[tuple[int, str, str]]:
    """(index in the full list, synthesiser, voice); a cap keeps each synthesiser's share
    (two at least, for a train and a test speaker) spread evenly over its list."""
    everyone = list(enumerate(_all_speakers()))
    if max_speakers is None:
        return [(i, s, v) for i, (s, v) in everyone]
    espeak = [(i, s, v) for i, (s, v) in everyone if s == "espeak-ng"]
    flite = [(i, s, v) for i, (s, v) in everyone if s == "flite"]
    n_flite = min(len(flite), max(2, round(max_speakers * len(flite) / len(everyone))))
    chosen = []
    for group, n in ((espeak, max_speakers - n_flite), (flite, n_flite)):
        picks = np.linspace(0, len(group) - 1, n).round().astype(int)  # n distinct, n <= len
        chosen += [group[k] for k in picks]
    return chosen


def _test_speakers(speakers: list[tuple[int, str, str]], seed: int) -> set[int]:
    """Indices of the held-out speakers. espeak-ng: every speaker of a quarter of the
    male and of the female variants present (a variant sets the voice's pitch and
    formants, the base voice its accent: a test voice's sound is never heard in
    training); flite: a quarter of its voices. One at least and never all, per
    synthesiser."""
    rng = np.random.default_rng([seed, 0])
    held_out: set[int] = set()
    espeak = [(i, v.split("+", 1)[1]) for i, s, v in speakers if s == "espeak-ng"]
    variants = sorted({variant for _, variant in espeak}, key=ESPEAK_VARIANTS.index)
    if len(variants) > 1:
        # Per register (m..., f...) with two variants or more, a quarter (one at least).
        chosen: set[str] = set()
        for register in ("m", "f"):
            group = [v for v in variants if v.startswith(register)]
            if len(group) > 1:
                n_test = max(1, round(len(group) * TEST_FRACTION))
                chosen.update(rng.choice(group, n_test, replace=False).tolist())
        if not chosen:  # one variant per register: hold one out
            chosen = {str(rng.choice(variants))}
        held_out.update(i for i, variant in espeak if variant in chosen)
    else:  # one variant only (a small --max-speakers): split its speakers instead
        group = [i for i, _ in espeak]
        n_test = min(len(group) - 1, max(1, round(len(group) * TEST_FRACTION)))
        held_out.update(int(i) for i in rng.choice(group, n_test, replace=False))
    group = [i for i, s, _ in speakers if s == "flite"]
    n_test = min(len(group) - 1, max(1, round(len(group) * TEST_FRACTION)))
    held_out.update(int(i) for i in rng.choice(group, n_test, replace=False))
    return held_out


def _draw_parameters(synthesiser: str, voice: str, rng: np.random.Generator) -> tuple:
    """(rate, pitch) of one utterance; units in ``LABEL_UNITS``."""
    if synthesiser == "espeak-ng":
        rate = int(rng.integers(ESPEAK_RATE_WPM[0], ESPEAK_RATE_WPM[1] + 1))
        return rate, int(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1))
    stretch = round(float(rng.uniform(*FLITE_DURATION_STRETCH)), 3)
    low, high = FLITE_F0_HZ[voice]
    return stretch, int(rng.integers(low, high + 1))


def _plan(recipe: SpeechRecipe, out_root: Path) -> list[dict[str, Any]]:
    """One task per speaker: its utterances in order, with their parameters and split."""
    words = WORDS[: recipe.words]
    speakers = _select_speakers(recipe.max_speakers)
    held_out = _test_speakers(speakers, recipe.seed)
    tasks = []
    for index, synthesiser, voice in speakers:
        rng = np.random.default_rng([recipe.seed, 1, index])
        label = _speaker_label(synthesiser, voice)
        folder = label.replace(":", "_")
        items = []
        for word in words:
            for repeat in range(recipe.repeats):
                rate, pitch = _draw_parameters(synthesiser, voice, rng)
                items.append((word, repeat, rate, pitch, f"audio/{folder}/{word}_{repeat}.wav"))
        tasks.append(
            {
                "synthesiser": synthesiser,
                "voice": voice,
                "speaker": label,
                "split": "test" if index in held_out else "train",
                "root": str(out_root),
                "items": items,
            }
        )
    return tasks


# ---------------------------------------------------------------------------------------
# One speaker's utterances, written as 16 kHz wav files (runs in a worker process).


def _to_corpus_rate(synthesis: Synthesis) -> np.ndarray:
    """int16 [N] at SAMPLE_RATE: resampled in float, then rounded and clipped."""
    x = synthesis.samples.astype(np.float64) / 32768.0
    if synthesis.sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, synthesis.sample_rate, SAMPLE_RATE)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _synthesise_speaker(task: dict[str, Any]) -> list[dict[str, Any]]:
    root = Path(task["root"])
    entries = []
    for word, repeat, rate, pitch, relative in task["items"]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if task["synthesiser"] == "espeak-ng":
            synthesis = espeak_synthesise(word, task["voice"], rate, pitch)
        else:
            scratch = path.with_suffix(".flite.wav")
            synthesis = flite_synthesise(word, task["voice"], rate, pitch, scratch)
        samples = _to_corpus_rate(synthesis)
        seconds = len(samples) / SAMPLE_RATE

        # Resampling moves the end of the audio by less than one source sample: the rows
        # are tiled again onto the stored length (the starts are unchanged).
        phonemes = tile_phonemes(
            [(n, start) for n, start, _ in synthesis.phonemes], seconds, word
        )
        soundfile.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
        entries.append(
            {
                "id": f"{task['speaker']}/{word}/{repeat}",
                "corpus": "synth",
                "path": relative,
                "split": task["split"],
                "seconds": seconds,
                "sample_rate": SAMPLE_RATE,
                "sha256": file_sha256(path),
                "labels": {
                    "word": word,
                    "speaker": task["speaker"],
                    "synthesiser": task["synthesiser"],
                    "rate": rate,
                    "pitch": pitch,
                    "phoneme_set": "espeak" if task["synthesiser"] == "espeak-ng" else "flite",
                    "phonemes": phonemes,
                },
            }
        )
    return entries


def _klettres_recordings() -> list[Recording]:
    try:
        return klettres_recordings(KLETTRES_ROOT)
    except SourceError:
        raise SourceError(
            f"no klettres recordings under {KLETTRES_ROOT}: install Debian's klettres-data "
            "(`bash scripts/setup.sh` does) or pass --no-klettres"
        ) from None


def _klettres_entries(recordings: list[Recording]) -> list[dict[str, Any]]:
    train, held_out = split_recordings(recordings, every=KLETTRES_HELD_OUT_EVERY)
    split = {r.path: "train" for r in train} | {r.path: "test" for r in held_out}
    entries = []
    for rec in recordings:
        info = soundfile.info(str(rec.path))
        entries.append(
            {
                "id": f"klettres:{rec.path.relative_to(KLETTRES_ROOT)}",
                "corpus": "klettres",
                "path": str(rec.path),
                "split": split[rec.path],
                "seconds": round(info.frames / info.samplerate, 6),
                "sample_rate": info.samplerate,
                "sha256": file_sha256(rec.path),
                "labels": {"language": rec.language},
            }
        )
    return entries


# ---------------------------------------------------------------------------------------
# Recipe, manifest and cache.


def _recipe_dict(recipe: SpeechRecipe) -> dict[str, Any]:
    """Everything that determines the corpus (synthesiser versions included)."""
    speakers = _select_speakers(recipe.max_speakers)
    held_out = _test_speakers(speakers, recipe.seed)
    return {
        "format_version": FORMAT_VERSION,
        "seed": recipe.seed,
        "repeats": recipe.repeats,
        "max_speakers": recipe.max_speakers,
        "words": list(WORDS[: recipe.words]),
        "speakers": [_speaker_label(s, v) for _, s, v in speakers],
        "test_fraction": TEST_FRACTION,
        # The split itself, so that a change in how it is drawn changes the hash too.
        "test_speakers": [_speaker_label(s, v) for i, s, v in speakers if i in held_out],
        "sample_rate": SAMPLE_RATE,
        "espeak": {
            "version": espeak_version(),
            "voices": list(ESPEAK_VOICES),
            "variants": list(ESPEAK_VARIANTS),
            "rate_wpm": list(ESPEAK_RATE_WPM),
            "pitch": list(ESPEAK_PITCH),
        },
        "flite": {
            "version": flite_version(),
            "voices": list(FLITE_VOICES),
            "duration_stretch": list(FLITE_DURATION_STRETCH),
            "f0_hz": {v: list(r) for v, r in FLITE_F0_HZ.items()},
        },
        "klettres": (
            {"root": str(KLETTRES_ROOT), "held_out_every": KLETTRES_HELD_OUT_EVERY}
            if recipe.klettres
            else None
        ),
    }


def _hash_recipe(recipe: dict[str, Any]) -> str:
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _manifest(recipe: dict[str, Any], utterances: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, dict[str, dict[str, float]]] = {}
    for corpus in CORPORA:
        totals[corpus] = {}
        for split in (*SPLITS, "all"):
            chosen = [
                u for u in utterances if u["corpus"] == corpus and split in ("all", u["split"])
            ]
            totals[corpus][split] = {
                "utterances": len(chosen),
                "seconds": round(sum(u["seconds"] for u in chosen), 3),
            }
    speakers: dict[str, set[str]] = {split: set() for split in SPLITS}
    phonemes: dict[str, set[str]] = {"espeak": set(), "flite": set()}
    languages: set[str] = set()
    for u in utterances:
        labels = u["labels"]
        if u["corpus"] == "synth":
            speakers[u["split"]].add(labels["speaker"])
            phonemes[labels["phoneme_set"]].update(p[0] for p in labels["phonemes"])
        else:
            languages.add(labels["language"])
    labels = {
        "words": recipe["words"],
        "speakers": {split: sorted(names) for split, names in speakers.items()},
        "phonemes": {name: sorted(names) for name, names in phonemes.items()},
        "languages": sorted(languages),
    }
    return {
        "format_version": FORMAT_VERSION,
        "recipe": recipe,
        "recipe_hash": _hash_recipe(recipe),
        "label_units": LABEL_UNITS,
        "totals": totals,
        "labels": labels,
        "utterances": utterances,
    }


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf} for nested dicts, so that a change names the leaf that changed."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _stale_reason(out: Path, recipe: dict[str, Any], klettres: list[Recording]) -> str | None:
    """Why the corpus in ``out`` cannot be reused, or None when it can."""
    path = out / "manifest.json"
    if not path.exists():
        return "no corpus yet"
    try:
        old = json.loads(path.read_text())
        old_recipe = old["recipe"]
        files = [(u["corpus"], u["path"], u["sha256"]) for u in old["utterances"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest is unreadable ({exc.__class__.__name__})"
    if old.get("recipe_hash") != _hash_recipe(recipe) or not isinstance(old_recipe, dict):
        before, after = _flatten(old_recipe), _flatten(recipe)
        changed = [
            f"{key} {_short(before.get(key))} -> {_short(after.get(key))}"
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
        return "the recipe changed: " + "; ".join(changed or ["(hash only)"])
    listed = [relative for corpus, relative, _ in files if corpus == "klettres"]
    if listed != [str(r.path) for r in klettres]:
        return f"the klettres recordings changed ({len(listed)} listed, {len(klettres)} now)"
    missing, changed = [], []
    for _, relative, sha256 in files:
        file = out / relative
        if not file.is_file():
            missing.append(relative)
        elif file_sha256(file) != sha256:
            changed.append(relative)
    for kind, paths in (("missing", missing), ("changed since the build", changed)):
        if paths:
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            return f"{len(paths)} file(s) {kind}: {shown}"
    return None


def _open_folder(out: Path) -> TextIO:
    """Creates ``out`` if needed, refuses a folder that is not a corpus, and returns an
    open lock file that keeps a second build out until it is closed."""
    lock_path = out / ".speech-corpus.lock"
    try:
        if out.exists() and not out.is_dir():
            raise EdgeClappError(f"--out '{out}' is a file: pass a folder for the corpus")
        if out.is_dir() and any(out.iterdir()) and not lock_path.exists():
            raise EdgeClappError(
                f"'{out}' holds other files and no speech corpus: pass a new or empty folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")  # noqa: SIM115 (closed by the caller)
    except OSError as exc:
        raise EdgeClappError(
            f"cannot write the corpus into '{out}' ({exc.strerror or exc}): pass a folder "
            "you can write to"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EdgeClappError(f"another build is writing '{out}': wait for it") from None
    return lock


def _synthesise_all(tasks: list[dict[str, Any]], show_progress: bool) -> list[dict]:
    """Every speaker in a fresh worker process, two at a time (see _EspeakEngine)."""
    total = sum(len(t["items"]) for t in tasks)
    bar = tqdm(
        total=total, desc="synthesising", unit="utt", file=sys.stderr, disable=not show_progress
    )
    done: dict[str, list[dict]] = {}
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(2, os.cpu_count() or 1, len(tasks)))
    try:
        with context.Pool(workers, _worker_start, maxtasksperchild=1) as pool:
            for entries in pool.imap_unordered(_synthesise_speaker, tasks):
                done[entries[0]["labels"]["speaker"]] = entries
                try:
                    bar.update(len(entries))
                except OSError:  # stderr closed: the build goes on without a bar
                    bar.disable = True
    finally:
        try:
            bar.close()
        except OSError:
            pass
    return [e for t in tasks for e in done[t["speaker"]]]


def _worker_start() -> None:
    """Ctrl-C is the parent's to handle (it stops the pool); workers ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def build_or_reuse(
    out: Path, recipe: SpeechRecipe, show_progress: bool = True
) -> tuple[dict[str, Any], str | None]:
    """(manifest, why it was built) — the reason is None when the cached corpus held."""
    out = Path(out)
    recipe_dict = _recipe_dict(recipe)  # checks that both synthesisers are there
    recordings = _klettres_recordings() if recipe.klettres else []
    lock = _open_folder(out)
    try:
        reason = _stale_reason(out, recipe_dict, recordings)
        if reason is None:
            return json.loads((out / "manifest.json").read_text()), None
        if reason != "no corpus yet":
            log.warning("rebuilding the speech corpus in %s: %s", out, reason)
        klettres = _klettres_entries(recordings)

        # Build beside the old corpus; it stays valid until the swap below.
        for stale in out.glob(".building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = out / f".building-{os.getpid()}"
        scratch.mkdir()
        try:
            synth = _synthesise_all(_plan(recipe, scratch), show_progress)
            manifest = _manifest(recipe_dict, synth + klettres)
            _write_manifest(scratch / "manifest.json", manifest)

            # Swap: first no manifest, then the new audio, then the new manifest. An
            # interruption anywhere leaves no manifest that claims a complete corpus.
            (out / "manifest.json").unlink(missing_ok=True)
            if (out / "audio").exists():
                os.replace(out / "audio", scratch / "old-audio")
            os.replace(scratch / "audio", out / "audio")
            os.replace(scratch / "manifest.json", out / "manifest.json")
        except OSError as exc:
            raise EdgeClappError(
                f"cannot write the corpus into '{out}' ({exc.strerror or exc})"
            ) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return manifest, reason
    finally:
        lock.close()


def build_speech_corpus(
    out: Path, recipe: SpeechRecipe, show_progress: bool = True
) -> dict[str, Any]:
    """Builds the corpus into ``out`` unless the one there matches ``recipe`` and its files;
    returns the manifest."""
    return build_or_reuse(out, recipe, show_progress)[0]


# ---------------------------------------------------------------------------------------
# Reading a built corpus.


@dataclass(frozen=True)
class Utterance:
    """One recording. Synthesised ones have word, speaker, synthesiser, phoneme_set and
    phonemes ((name, start_s, end_s) tiling the audio); klettres ones have language."""

    id: str
    corpus: str
    path: Path
    split: str
    seconds: float
    word: str | None = None
    speaker: str | None = None
    synthesiser: str | None = None
    language: str | None = None
    phoneme_set: str | None = None
    phonemes: tuple[tuple[str, float, float], ...] = ()

    def audio(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """float32 [N] mono at ``sample_rate``."""
        return read_mono(self.path, sample_rate)


@dataclass(frozen=True)
class SpeechCorpus:
    """A built corpus: its folder, its manifest and its utterances."""

    root: Path
    manifest: dict[str, Any]
    _items: tuple[Utterance, ...]

    def utterances(self, corpus: str, split: str | None = None) -> list[Utterance]:
        if corpus not in CORPORA or split not in (*SPLITS, None):
            raise ValueError(
                f"corpus {corpus!r}, split {split!r}: use corpus in {CORPORA} and split in "
                f"{SPLITS} or None"
            )
        return [u for u in self._items if u.corpus == corpus and split in (None, u.split)]


def load_corpus(dir: Path, verify: bool = True) -> SpeechCorpus:
    """The corpus built into ``dir``; SourceError when there is none, it is damaged, or
    (``verify``) a file's sha256 is not the manifest's."""
    root = Path(dir).absolute()
    again = f"run `edge-clapp data speech --out {dir}` first"
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise SourceError(f"no speech corpus in '{dir}' (no manifest.json): {again}") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"the manifest in '{dir}' is unreadable ({exc}): {again}") from None
    try:
        if manifest["format_version"] != FORMAT_VERSION:
            raise SourceError(
                f"the corpus in '{dir}' has format {manifest['format_version']!r}, this "
                f"version reads {FORMAT_VERSION}: {again}"
            )
        if manifest["recipe_hash"] != _hash_recipe(manifest["recipe"]):
            raise SourceError(f"the manifest in '{dir}' was edited (recipe hash): {again}")
        items = tuple(_utterance(root, u) for u in manifest["utterances"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"the manifest in '{dir}' is damaged ({exc!r}): {again}") from None
    missing = [u.path for u in items if not u.path.is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} file(s) of the corpus in '{dir}' are missing (e.g. {missing[0]}): "
            f"{again}"
        )
    if verify:  # about 0.3 s for the default corpus
        hashes = {entry["id"]: entry.get("sha256") for entry in manifest["utterances"]}
        changed = [u.path for u in items if file_sha256(u.path) != hashes[u.id]]
        if changed:
            raise SourceError(
                f"{len(changed)} file(s) of the corpus in '{dir}' changed since it was built "
                f"(e.g. {changed[0]}): {again}"
            )
    return SpeechCorpus(root, manifest, items)


def _utterance(root: Path, entry: dict[str, Any]) -> Utterance:
    labels = entry["labels"]
    if entry["corpus"] not in CORPORA or entry["split"] not in SPLITS:
        raise ValueError(f"{entry['id']}: corpus {entry['corpus']!r}, split {entry['split']!r}")
    wanted = ("word", "speaker") if entry["corpus"] == "synth" else ("language",)
    for key in wanted:
        if not isinstance(labels.get(key), str) or not labels[key]:
            raise ValueError(f"{entry['id']}: label {key} = {labels.get(key)!r}")
    if entry["corpus"] == "synth" and not labels.get("phonemes"):
        raise ValueError(f"{entry['id']}: no phoneme labels")
    return Utterance(
        id=entry["id"],
        corpus=entry["corpus"],
        path=root / entry["path"],  # an absolute klettres path stays as it is
        split=entry["split"],
        seconds=float(entry["seconds"]),
        word=labels.get("word"),
        speaker=labels.get("speaker"),
        synthesiser=labels.get("synthesiser"),
        language=labels.get("language"),
        phoneme_set=labels.get("phoneme_set"),
        phonemes=tuple((str(n), float(s), float(e)) for n, s, e in labels.get("phonemes", ())),
    )


def frame_phonemes(utterance: Utterance, centres_seconds: np.ndarray) -> list[str]:
    """The phoneme whose [start, end) holds each time [T]; the last one at or after the end,
    the first one before the start."""
    if not utterance.phonemes:
        raise ValueError(f"{utterance.id} has no phoneme labels (only synthesised speech has)")
    starts = np.array([start for _, start, _ in utterance.phonemes])
    index = np.searchsorted(starts, np.asarray(centres_seconds, dtype=np.float64), "right") - 1
    names = [name for name, _, _ in utterance.phonemes]
    return [names[i] for i in np.clip(index, 0, len(names) - 1)]
