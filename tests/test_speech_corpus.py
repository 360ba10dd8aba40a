"""`edge-clapp data speech`: a tiny corpus built for real with espeak-ng, flite and
klettres-data, checked against its files, against the synthesisers' own phoneme events
and against the energy of the audio; determinism, cache and refusals."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_clapp import speech_corpus as sc
from edge_clapp import synthesis as synth
from edge_clapp.cli import main
from edge_clapp.corpus import klettres_recordings, split_recordings
from edge_clapp.errors import SourceError
from edge_clapp.speech_corpus import (
    SpeechRecipe,
    Utterance,
    build_speech_corpus,
    espeak_synthesise,
    flite_synthesise,
    frame_phonemes,
    load_corpus,
)


def _missing_synthesiser() -> str | None:
    try:
        sc.espeak_version()
    except SourceError as exc:
        return str(exc)
    if shutil.which("flite") is None:
        return "flite is not installed: run `bash scripts/setup.sh`"
    return None


MISSING = _missing_synthesiser()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"needs espeak-ng and flite: {MISSING}"
)
HAVE_KLETTRES = any(Path("/usr/share/klettres").glob("*/*/*.ogg"))
TINY = {"max_speakers": 4, "words": 3, "repeats": 1}
RATE = 16000


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def energy_ratio(audio: np.ndarray, phonemes, rate: int) -> tuple[float, float]:
    """(RMS over the phoneme rows, RMS over the silence rows) of one utterance."""
    parts = {True: [], False: []}
    for name, start, end in phonemes:
        parts[name == "sil"].append(audio[int(start * rate) : int(end * rate)])
    speech, silence = (np.concatenate(parts[k] or [np.zeros(0)]) for k in (False, True))
    return rms(speech), rms(silence)


def build(out: Path, **recipe) -> tuple[dict, str | None]:
    return sc.build_or_reuse(out, SpeechRecipe(**recipe), show_progress=False)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_clapp.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """4 speakers (2 espeak-ng, 2 flite) × 3 words × 1, and klettres-data when installed."""
    out = tmp_path_factory.mktemp("speech") / "corpus"
    build_speech_corpus(out, SpeechRecipe(**TINY, klettres=HAVE_KLETTRES), show_progress=False)
    return out


def test_manifest_matches_the_files(tiny):
    corpus = load_corpus(tiny)
    manifest = corpus.manifest
    synth = corpus.utterances("synth")
    recipe_json = json.dumps(manifest["recipe"], sort_keys=True, separators=(",", ":"))
    assert manifest["recipe_hash"] == hashlib.sha256(recipe_json.encode()).hexdigest()

    # 4 speakers × 3 words × 1 repeat, each a 16 kHz mono 16-bit file of the stated length.
    assert len(synth) == 4 * 3 * 1
    assert {u.word for u in synth} == {"zero", "one", "two"}
    entries = {e["id"]: e for e in manifest["utterances"]}
    for u in synth:
        info = sf.info(str(u.path))
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16"), u.id
        assert info.frames / RATE == pytest.approx(u.seconds, abs=1e-6), u.id
        assert hashlib.sha256(u.path.read_bytes()).hexdigest() == entries[u.id]["sha256"]
        assert u.path.is_relative_to(tiny / "audio")

    # Totals and label sets agree with the utterance list.
    for split in ("train", "test"):
        chosen = corpus.utterances("synth", split)
        total = manifest["totals"]["synth"][split]
        assert total["utterances"] == len(chosen)
        assert total["seconds"] == pytest.approx(sum(u.seconds for u in chosen), abs=1e-3)
        assert manifest["labels"]["speakers"][split] == sorted({u.speaker for u in chosen})
    for name in ("espeak", "flite"):
        seen = {p[0] for u in synth if u.phoneme_set == name for p in u.phonemes}
        assert manifest["labels"]["phonemes"][name] == sorted(seen)
        assert "sil" in seen

    # Split by speaker: disjoint, and each synthesiser has a train and a test speaker.
    train = set(manifest["labels"]["speakers"]["train"])
    test = set(manifest["labels"]["speakers"]["test"])
    assert not train & test
    for prefix in ("espeak:", "flite:"):
        assert any(s.startswith(prefix) for s in train)
        assert any(s.startswith(prefix) for s in test)
    for u in synth:
        assert u.split == ("test" if u.speaker in test else "train"), u.id
        assert u.phoneme_set == ("espeak" if u.speaker.startswith("espeak:") else "flite")


@pytest.mark.skipif(not HAVE_KLETTRES, reason="klettres-data is not installed")
def test_klettres_is_referenced_and_split_by_recording(tiny):
    corpus = load_corpus(tiny)
    recordings = klettres_recordings()
    train, held_out = split_recordings(recordings)
    assert [u.path for u in corpus.utterances("klettres", "train")] == [r.path for r in train]
    assert [u.path for u in corpus.utterances("klettres", "test")] == [r.path for r in held_out]
    languages = {r.path: r.language for r in recordings}
    for u in corpus.utterances("klettres"):
        assert u.path.is_absolute() and u.language == languages[u.path]
        assert u.phonemes == () and u.speaker is None
    assert corpus.manifest["labels"]["languages"] == sorted(set(languages.values()))
    first = corpus.manifest["utterances"][-len(recordings)]
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert not list(tiny.rglob("*.ogg"))  # referenced, not copied


def test_espeak_event_struct_layout():
    # speak_lib.h (1.51): six 4-byte fields, a pointer, then the 8-byte id union.
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("layout checked for 64-bit platforms")
    assert ctypes.sizeof(synth._Event) == 40
    assert synth._Event.id.offset == 32
    assert synth._Event.audio_position.offset == 16


@pytest.mark.parametrize(
    ("word", "voice", "rate", "pitch"),
    [("backward", "en-us+m3", 160, 50), ("seven", "en-gb-scotland+f2", 200, 65)],
)
def test_espeak_labels_come_from_its_events(word, voice, rate, pitch):
    synthesis = espeak_synthesise(word, voice, rate, pitch)
    audio = synthesis.samples.astype(np.float64) / 32768
    seconds = len(audio) / synthesis.sample_rate
    times = [t for _, t in synthesis.events]

    # The events span the audio: in order, from its start to at most one espeak buffer
    # (about 50 ms, where a variant's echo fades out) before its end.
    assert times == sorted(times) and times[0] < 0.05
    assert 0 <= seconds - times[-1] < 0.06, (seconds, times[-1])
    assert synthesis.events[-1][0].startswith("_")

    # The rows tile the audio and every boundary is an event time.
    rows = synthesis.phonemes
    assert rows[0][1] == 0 and rows[-1][2] == seconds
    assert all(a[2] == b[1] for a, b in zip(rows[:-1], rows[1:], strict=True))
    assert {start for _, start, _ in rows[1:]} <= set(times)
    spoken = [synth._espeak_name(n) for n, _ in synthesis.events]
    assert [n for n, _, _ in rows if n != "sil"] == [n for n in spoken if n != "sil"]

    # Silence rows fall on quiet audio, phoneme rows on loud audio.
    speech, silence = energy_ratio(audio, rows, synthesis.sample_rate)
    assert speech > 8 * silence, (speech, silence)

    # frame_phonemes gives each row's name just inside both of its ends.
    utterance = Utterance(
        id="x", corpus="synth", path=Path("x"), split="train", seconds=seconds,
        phonemes=tuple(map(tuple, rows)),
    )  # fmt: skip
    inside = np.array([t for _, s, e in rows for t in (s + 5e-4, e - 5e-4)])
    assert frame_phonemes(utterance, inside) == [n for n, _, _ in rows for _ in (0, 1)]


def test_flite_labels_come_from_psdur(tmp_path):
    synthesis = flite_synthesise("forward", "awb", 1.1, 110, tmp_path / "f.wav")
    audio = synthesis.samples.astype(np.float64) / 32768
    seconds = len(audio) / synthesis.sample_rate
    ends = [t for _, t in synthesis.events]
    assert ends == sorted(ends) and abs(ends[-1] - seconds) < 0.02, (ends[-1], seconds)
    assert [n for n, _ in synthesis.events][0] == "pau"
    rows = synthesis.phonemes
    assert rows[0][1] == 0 and rows[-1][2] == seconds
    assert [r[2] for r in rows[:-1]] == [t for t in ends[:-1] if t < seconds]
    speech, silence = energy_ratio(audio, rows, synthesis.sample_rate)
    assert speech > 8 * silence, (speech, silence)
    assert not (tmp_path / "f.wav").exists()  # the scratch file is gone


def test_stored_labels_tile_and_follow_the_energy(tiny):
    for u in load_corpus(tiny).utterances("synth"):
        rows = u.phonemes
        assert rows[0][1] == 0 and rows[-1][2] == u.seconds, u.id
        pairs = zip(rows[:-1], rows[1:], strict=True)
        assert all(a[2] == b[1] and a[1] < a[2] for a, b in pairs), u.id
        assert not any("'" in n or "," in n for n, _, _ in rows)
        speech, silence = energy_ratio(u.audio(), rows, RATE)
        assert speech > 4 * silence, (u.id, speech, silence)


def test_frame_phonemes_edges():
    u = Utterance(
        id="x", corpus="synth", path=Path("x"), split="train", seconds=0.3,
        phonemes=(("sil", 0.0, 0.1), ("a", 0.1, 0.25), ("sil", 0.25, 0.3)),
    )  # fmt: skip
    times = np.array([-0.1, 0.0, 0.0999, 0.1, 0.2499, 0.25, 0.3, 5.0])
    assert frame_phonemes(u, times) == ["sil", "sil", "sil", "a", "a", "sil", "sil", "sil"]
    with pytest.raises(ValueError, match="no phoneme labels"):
        frame_phonemes(Utterance("k", "klettres", Path("k"), "test", 1.0), times)


def test_same_seed_same_corpus_other_seed_other_draws(tmp_path):
    a, _ = build(tmp_path / "a", **TINY, klettres=False)
    b, _ = build(tmp_path / "b", **TINY, klettres=False)
    manifests = [(tmp_path / name / "manifest.json").read_bytes() for name in "ab"]
    assert manifests[0] == manifests[1]
    assert [u["sha256"] for u in a["utterances"]] == [u["sha256"] for u in b["utterances"]]

    c, _ = build(tmp_path / "c", **TINY, klettres=False, seed=1)
    assert c["recipe_hash"] != a["recipe_hash"]
    draws = [
        [(u["split"], u["labels"]["rate"], u["labels"]["pitch"]) for u in m["utterances"]]
        for m in (a, c)
    ]
    assert draws[0] != draws[1]


def test_cache_reuse_and_rebuilds(tmp_path, capsys):
    out = tmp_path / "corpus"
    args = ["data", "speech", "--out", str(out), "--quiet", "--no-klettres"]
    args += ["--max-speakers", "4", "--words", "3", "--repeats", "1"]
    assert main(args) == 0
    assert "built the speech corpus" in capsys.readouterr().out
    manifest = out / "manifest.json"
    stamp = manifest.stat().st_mtime_ns

    # Unchanged recipe and files: nothing is written.
    assert main(args) == 0
    assert "is up to date" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == stamp

    # A changed recipe rebuilds, and says what changed.
    _, reason = build(out, **{**TINY, "repeats": 2}, klettres=False)
    assert "repeats 1 -> 2" in reason
    assert len(load_corpus(out).utterances("synth")) == 4 * 3 * 2

    # A deleted file rebuilds, and says which.
    victim = load_corpus(out).utterances("synth")[5].path
    victim.unlink()
    _, reason = build(out, **{**TINY, "repeats": 2}, klettres=False)
    assert "missing" in reason and victim.name in reason
    assert victim.is_file()
    assert not list(out.glob(".building-*"))


def test_interrupted_build_leaves_no_manifest(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    build(out, **TINY, klettres=False)
    real_replace = sc.os.replace

    def interrupted(src, dst):
        if Path(dst).name == "manifest.json":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(sc.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(out, **TINY, klettres=False, seed=3)
    monkeypatch.undo()

    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".building-*"))
    with pytest.raises(SourceError, match="edge-clapp data speech --out"):
        load_corpus(out)
    _, reason = build(out, **TINY, klettres=False, seed=3)
    assert reason == "no corpus yet"
    assert load_corpus(out).manifest["recipe"]["seed"] == 3


def test_load_corpus_refuses_missing_or_damaged(tmp_path):
    with pytest.raises(SourceError, match="no manifest.json.*edge-clapp data speech --out"):
        load_corpus(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SourceError, match="unreadable"):
        load_corpus(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(SourceError, match="damaged"):
        load_corpus(tmp_path)


def test_cli_refusals(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        (["--out", str(a_file)], "is a file"),
        (["--out", str(foreign)], "holds other files and no speech corpus"),
        (["--out", str(tmp_path / "new"), "--max-speakers", "2"], "--max-speakers"),
        (["--out", str(tmp_path / "new"), "--words", "31"], "1..30"),
    ]
    for extra, message in cases:
        result = run_cli("data", "speech", "--quiet", *extra)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_missing_tools_and_data_say_what_to_install(tmp_path, monkeypatch):
    # flite not on PATH (this interpreter is called by its full path).
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_cli("data", "speech", "--quiet", "--out", str(tmp_path / "a"), env=env)
    assert result.returncode == 2
    assert "flite is not installed: run `bash scripts/setup.sh`" in result.stderr
    assert not (tmp_path / "a").exists()

    # No klettres-data: install it, or leave it out.
    monkeypatch.setattr(sc, "KLETTRES_ROOT", tmp_path / "no-klettres")
    with pytest.raises(SourceError, match="klettres-data.*--no-klettres"):
        build(tmp_path / "b", **TINY)
    assert not (tmp_path / "b").exists()


def test_load_refuses_changed_files_and_bad_labels(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    entry = next(u for u in json.loads((copy / "manifest.json").read_text())["utterances"]
                 if u["corpus"] == "synth")  # fmt: skip
    wav = copy / entry["path"]
    data = bytearray(wav.read_bytes())
    data[-1] ^= 0xFF  # one sample's low byte
    wav.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="changed since it was built"):
        load_corpus(copy)
    assert len(load_corpus(copy, verify=False).utterances("synth")) > 0

    for key, value, needle in [
        ("word", None, "label word"),
        ("word", 5, "label word"),
        ("phonemes", [], "no phoneme labels"),
    ]:
        manifest = json.loads((tiny / "manifest.json").read_text())
        first = next(u for u in manifest["utterances"] if u["corpus"] == "synth")
        first["labels"][key] = value
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(SourceError, match=needle):
            load_corpus(copy, verify=False)
