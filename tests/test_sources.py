"""Tests of edge_clapp.sources: real recordings, a format matrix, bad input, microphones.

References and tolerances:
- the format matrix compares a resampled tone with the same tone computed at 16 kHz, away
  from the first and last 50 ms where the resampler's filter starts and stops; inside, the
  resampler is within 3e-7, so the tolerance is set by the file's quantisation;
- streamed decoding (chunks, soxr stream, blocks, skips) is compared exactly with the same
  file decoded whole and resampled in one go: chunking must not change a single sample;
- the virtual microphone must return what was played within one int16 step.
"""

from __future__ import annotations

import importlib.abc
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr

from edge_clapp import sources
from edge_clapp.errors import SourceError
from edge_clapp.sources import SUPPORTED_EXTENSIONS, Block, list_input_devices, open_source
from tests.helpers import assert_close

RATE = 16000
KLETTRES = Path("/usr/share/klettres")


# ---------------------------------------------------------------------------------------
# Helpers


def read_all(spec: str, block: int, skip: int = 0) -> tuple[np.ndarray, list[int], object]:
    """The whole stream of `spec`: samples, recording starts as stream offsets, stats."""
    with open_source(spec, sample_rate=RATE, block_samples=block, skip_samples=skip) as src:
        blocks = list(src.blocks())
    for b in blocks:
        assert isinstance(b, Block)
        assert b.samples.shape == (block,) and b.samples.dtype == np.float32
    starts = [i * block + s for i, b in enumerate(blocks) for s in b.starts]
    samples = np.concatenate([b.samples for b in blocks]) if blocks else np.zeros(0)
    return samples, starts, src.stats


def two_tones(rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Left 440 Hz and right 1 kHz, both far below any Nyquist rate used here."""
    t = np.arange(round(rate * seconds)) / rate
    return 0.6 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t + 0.3)


def klettres_files(count: int, rate: int, channels: int, min_s: float, max_s: float) -> list:
    """The first `count` klettres recordings (in path order) of this kind and length."""
    if not KLETTRES.is_dir():
        pytest.skip("Debian's klettres-data is not installed (scripts/setup.sh installs it)")
    found = []
    for path in sorted(KLETTRES.rglob("*.ogg")):
        info = sf.info(path)
        if (info.samplerate, info.channels) == (rate, channels):
            if min_s <= info.duration <= max_s:
                found.append(path)
                if len(found) == count:
                    return found
    pytest.skip(f"klettres-data has no {count} recordings at {rate} Hz, {channels} channels")


def mono_16k(path: Path) -> np.ndarray:
    """A file decoded whole, averaged to mono and resampled in one go: the reference."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if rate == RATE else soxr.resample(mono, rate, RATE)


# ---------------------------------------------------------------------------------------
# Real recordings


def test_klettres_stereo_recording_decodes_to_16k_mono_blocks():
    (path,) = klettres_files(1, 44100, 2, 1.0, 4.0)
    info = sf.info(path)
    left_right, _ = sf.read(path, dtype="float32")
    assert np.abs(left_right[:, 0] - left_right[:, 1]).max() > 0.01  # channels differ

    samples, starts, stats = read_all(str(path), block=1000)

    assert samples.dtype == np.float32
    assert abs(len(samples) - info.duration * RATE) < 1000
    assert starts == [0]
    assert stats.files_read == 1 and stats.files_skipped == []
    assert stats.seconds_read == len(samples) / RATE
    expected = mono_16k(path)
    assert stats.dropped_tail_samples == len(expected) - len(samples)
    assert_close(samples, expected[: len(samples)], name=f"{path.name} streamed")


def test_folder_of_three_recordings_marks_each_start(tmp_path):
    # Three kinds of recording, named so that path order is a, b, c (in a subfolder too).
    kinds = [(44100, 2), (44100, 1), (22050, 1)]
    picked = [klettres_files(1, rate, ch, 0.3, 4.0)[0] for rate, ch in kinds]
    (tmp_path / "sub").mkdir()
    names = ["a.ogg", "b.ogg", "sub/c.ogg"]
    for src, name in zip(picked, names, strict=True):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "sounds.xml").write_text("<not audio/>")

    samples, starts, stats = read_all(str(tmp_path), block=1000)

    parts = [mono_16k(tmp_path / name) for name in names]
    total = sum(len(p) for p in parts)
    assert starts == [0, len(parts[0]), len(parts[0]) + len(parts[1])]
    assert len(samples) == total // 1000 * 1000
    assert stats.dropped_tail_samples == total % 1000
    assert stats.files_read == 3 and stats.files_ignored == 1 and stats.files_skipped == []
    assert_close(samples, np.concatenate(parts)[: len(samples)], name="folder stream")


# ---------------------------------------------------------------------------------------
# Formats


FORMATS = [
    ("WAV", "PCM_16", 1e-4),
    ("WAV", "PCM_24", 5e-6),
    ("WAV", "FLOAT", 5e-6),
    ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 5e-6),
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [44100, 22050, 8000])
@pytest.mark.parametrize(("container", "subtype", "atol"), FORMATS)
def test_format_matrix_matches_tones_made_at_16k(
    tmp_path, container, subtype, atol, rate, channels
):
    left, right = two_tones(rate, 1.0)
    data = np.stack([left, right], axis=1) if channels == 2 else (left + right) / 2
    path = tmp_path / f"tone.{container.lower()}"
    sf.write(path, data, rate, subtype=subtype, format=container)

    samples, starts, stats = read_all(str(path), block=1000)

    # One second at any rate is 16000 samples at 16 kHz: 16 whole blocks, nothing left.
    assert len(samples) == RATE and stats.dropped_tail_samples == 0 and starts == [0]
    left16, right16 = two_tones(RATE, 1.0)
    edge = RATE // 20
    assert_close(
        samples[edge:-edge],
        ((left16 + right16) / 2)[edge:-edge].astype(np.float32),
        atol=atol,
        name=f"{container} {subtype} {rate} Hz x{channels}",
    )


def test_16k_int16_noise_arrives_bit_exact(tmp_path):
    rng = np.random.default_rng(7)
    stereo = np.clip(rng.normal(0, 0.3, (8000, 2)), -1, 1)
    path = tmp_path / "noise.wav"
    sf.write(path, stereo, RATE, subtype="PCM_16")
    stored = sf.read(path, dtype="int16")[0].astype(np.float32) / 32768  # (8000, 2)

    samples, _, _ = read_all(str(path), block=500)

    assert_close(samples, (stored[:, 0] + stored[:, 1]) / 2, name="16 kHz noise")


def test_non_finite_and_out_of_range_samples_pass_through(tmp_path):
    data = np.linspace(-0.5, 0.5, 4000, dtype=np.float32)
    data[[100, 2000, 3000, 3500]] = [np.nan, np.inf, -np.inf, 3.5]
    path = tmp_path / "broken.wav"
    sf.write(path, data, RATE, subtype="FLOAT")

    samples, _, _ = read_all(str(path), block=1000)

    assert np.isnan(samples[100]) and np.isnan(samples).sum() == 1
    assert samples[2000] == np.inf and samples[3000] == -np.inf and samples[3500] == 3.5
    finite = np.isfinite(data)
    assert np.array_equal(samples[finite], data[finite])


# ---------------------------------------------------------------------------------------
# Resuming


def test_skip_samples_gives_exactly_the_tail(tmp_path):
    for i, (rate, seconds) in enumerate([(22050, 0.43), (8000, 0.21), (44100, 0.37)]):
        left, right = two_tones(rate, seconds)
        sf.write(tmp_path / f"{i}.wav", np.stack([left, right], 1), rate, subtype="FLOAT")
    full, full_starts, full_stats = read_all(str(tmp_path), block=256)
    whole = np.concatenate([mono_16k(tmp_path / f"{i}.wav") for i in range(3)])
    total = len(full) + full_stats.dropped_tail_samples
    assert total == len(whole) and len(full) == total // 256 * 256
    assert_close(full, whole[: len(full)], name="unskipped stream")

    for skip in [1, 255, 256, 3000, len(full) - 256]:
        tail, starts, stats = read_all(str(tmp_path), block=256, skip=skip)
        assert len(tail) == (total - skip) // 256 * 256, skip
        assert_close(tail, whole[skip : skip + len(tail)], name=f"skip {skip}")
        # Resumed inside a recording: no boundary until the next recording begins.
        assert starts == [s - skip for s in full_starts if s >= skip], skip
        assert stats.dropped_tail_samples == (total - skip) % 256, skip

    with pytest.raises(SourceError, match="after skipping 99999 samples, less than one block"):
        open_source(str(tmp_path), sample_rate=RATE, block_samples=256, skip_samples=99999)


# ---------------------------------------------------------------------------------------
# Bad input


def write_tone(path: Path, seconds: float = 0.5, **kwargs) -> Path:
    left, right = two_tones(RATE, seconds)
    sf.write(path, np.stack([left, right], 1), RATE, **kwargs)
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_bad(kind: str, folder: Path) -> Path:
    if kind == "empty":
        path = folder / "empty.wav"
        path.write_bytes(b"")
    elif kind == "truncated_wav":
        path = cut(write_tone(folder / "cut.wav"), 0.4)
    elif kind == "truncated_ogg":
        path = cut(write_tone(folder / "cut.ogg"), 0.2)
    elif kind == "text_as_wav":
        path = folder / "notes.wav"
        path.write_text("these are meeting notes, not audio\n" * 20)
    elif kind == "no_frames":
        path = folder / "silent.wav"
        sf.write(path, np.zeros((0, 1)), RATE)
        assert path.stat().st_size > 0  # a header and nothing after it
    return path


BAD_FILES = {
    "empty": "the file is empty (0 bytes)",
    "truncated_wav": "it is truncated (its header announces 32000 bytes of audio, only",
    "truncated_ogg": "file is malformed",
    "text_as_wav": "Format not recognised",
    "no_frames": "holds no audio frames",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_single_file_is_refused_with_its_name_and_problem(tmp_path, kind):
    path = make_bad(kind, tmp_path)
    with pytest.raises(SourceError) as caught:
        open_source(str(path), sample_rate=RATE, block_samples=1000)
    message = str(caught.value)
    assert message.startswith(f"cannot read '{path}': ")
    assert BAD_FILES[kind] in message
    assert "\n" not in message


@pytest.mark.parametrize("suffix", [".mp4", ".txt"])
def test_unsupported_extension_names_the_supported_ones(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError) as caught:
        open_source(str(path), sample_rate=RATE, block_samples=1000)
    message = str(caught.value)
    assert f"'{path}'" in message and f"extension '{suffix}' is not supported" in message
    assert all(ext in message for ext in SUPPORTED_EXTENSIONS)


def test_missing_path_and_empty_spec_are_refused(tmp_path):
    missing = tmp_path / "nowhere.wav"
    with pytest.raises(SourceError, match=r"'.*nowhere\.wav' does not exist: pass an audio"):
        open_source(str(missing), sample_rate=RATE, block_samples=1000)
    with pytest.raises(SourceError, match="the audio source is empty"):
        open_source("  ", sample_rate=RATE, block_samples=1000)


def test_folder_with_nothing_readable_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(SourceError, match="no files with a supported extension .* 1 other"):
        open_source(str(tmp_path), sample_rate=RATE, block_samples=1000)
    make_bad("empty", tmp_path)
    make_bad("text_as_wav", tmp_path)
    with pytest.raises(SourceError) as caught:
        open_source(str(tmp_path), sample_rate=RATE, block_samples=1000)
    assert "holds no readable audio: none of its 2 audio files can be read" in str(caught.value)
    assert "empty.wav': the file is empty" in str(caught.value)


def test_too_short_stream_says_both_lengths(tmp_path):
    path = write_tone(tmp_path / "short.wav", seconds=0.25)
    with pytest.raises(SourceError) as caught:
        open_source(str(path), sample_rate=RATE, block_samples=8000)
    assert str(caught.value) == (
        f"file '{path}' gives 0.25 s (4000 samples at 16000 Hz), less than one block of "
        "0.50 s (8000 samples at 16000 Hz): use a longer recording or a smaller block"
    )


def test_folder_reads_good_files_and_lists_bad_ones(tmp_path, caplog):
    good = [write_tone(tmp_path / f"good{i}.wav", 0.5, subtype="FLOAT") for i in range(2)]
    bad = {kind: make_bad(kind, tmp_path) for kind in BAD_FILES}
    # A FLAC whose second half is missing fails mid-file: what decoded before stays.
    rng = np.random.default_rng(3)
    flac = tmp_path / "half.flac"
    sf.write(flac, rng.uniform(-0.5, 0.5, (3 * 8192, 1)), RATE, subtype="PCM_16")
    cut(flac, 0.6)
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8")

    samples, starts, stats = read_all(str(tmp_path), block=1000)

    skipped = dict(stats.files_skipped)
    assert sorted(skipped) == sorted([str(p) for p in bad.values()] + [str(flac)])
    for kind, reason in BAD_FILES.items():
        assert reason in skipped[str(bad[kind])], kind
    assert "decoding failed after 0.51 s" in skipped[str(flac)]
    assert "kept the audio before that point" in skipped[str(flac)]
    cut_wav = bad["truncated_wav"]
    kept = sf.info(cut_wav).frames  # a truncated WAV keeps the frames that are there
    assert 3000 < kept < 3300
    assert skipped[str(cut_wav)].endswith(f"; kept the {kept / RATE:.2f} s present")
    assert stats.files_read == 4 and stats.files_ignored == 1
    # Path order: cut.wav (part), good0, good1 (8000 samples each), half.flac (8192 kept).
    assert starts == [0, kept, kept + 8000, kept + 16000]
    assert len(samples) + stats.dropped_tail_samples == kept + 16000 + 8192
    expected = np.concatenate([mono_16k(cut_wav), mono_16k(good[0]), mono_16k(good[1])])
    assert_close(samples[: len(expected)], expected, name="good files among bad ones")
    assert f"skipping '{flac}'" in caplog.text
    assert f"reading part of '{cut_wav}'" in caplog.text


def test_truncated_flac_alone_keeps_what_decoded(tmp_path):
    flac = tmp_path / "half.flac"
    noise = np.random.default_rng(4).uniform(-0.5, 0.5, (3 * 8192, 1))
    sf.write(flac, noise, RATE, subtype="PCM_16")
    cut(flac, 0.6)

    samples, _, stats = read_all(str(flac), block=1024)

    assert len(samples) == 8192 and stats.files_read == 1
    assert stats.files_skipped[0][0] == str(flac)
    quantised = np.round(noise[:8192, 0] * 32768) / 32768
    assert_close(samples, quantised.astype(np.float32), name="decoded part of the FLAC")


def test_bad_arguments_raise_value_error(tmp_path):
    path = write_tone(tmp_path / "a.wav")
    with pytest.raises(ValueError, match="block_samples must be an integer >= 1, got 0"):
        open_source(str(path), sample_rate=RATE, block_samples=0)
    with pytest.raises(ValueError, match="skip_samples must be an integer >= 0, got -1"):
        open_source(str(path), sample_rate=RATE, block_samples=10, skip_samples=-1)


def test_blocks_can_be_iterated_once(tmp_path):
    src = open_source(str(write_tone(tmp_path / "a.wav")), sample_rate=RATE, block_samples=100)
    assert len(list(src.blocks())) == 80
    with pytest.raises(RuntimeError, match="once per source"):
        src.blocks()
    assert src.stats.to_dict() == {
        "files_read": 1,
        "files_skipped": [],
        "files_ignored": 0,
        "overflows": 0,
        "seconds_read": 0.5,
        "dropped_tail_samples": 0,
    }


# ---------------------------------------------------------------------------------------
# Microphones without a server, without PortAudio, and a fake device


def test_mic_without_any_audio_server_says_what_to_do(tmp_path, monkeypatch):
    # No sound card exists here; with PULSE_SERVER aimed at nothing, the ALSA `default`
    # is not redirected to PulseAudio and the `pulse` device cannot connect: PortAudio
    # lists no device at all. HOME and the runtime dir are private so libpulse writes
    # nothing of the user's while it looks for a server.
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-such-socket")
    for name in ("HOME", "XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH"):
        monkeypatch.setenv(name, str(tmp_path))

    assert list_input_devices() == []
    with pytest.raises(SourceError) as caught:
        open_source("mic", sample_rate=RATE, block_samples=1600)
    assert str(caught.value) == sources._NO_INPUT
    assert "no audio input device found" in str(caught.value)
    with pytest.raises(SourceError, match="no audio input device found"):
        open_source("mic:USB", sample_rate=RATE, block_samples=1600)


class _RefuseSoundDevice(importlib.abc.MetaPathFinder):
    """Stands in for a machine without libportaudio2: importing sounddevice fails."""

    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_missing_portaudio_says_to_install_libportaudio2(monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_RefuseSoundDevice(), *sys.meta_path])
    for attempt in (
        list_input_devices,
        lambda: open_source("mic", sample_rate=RATE, block_samples=160),
    ):
        with pytest.raises(SourceError, match="install Debian's libportaudio2"):
            attempt()


class FakeSoundDevice:
    """A sounddevice module with one input that only takes 48 kHz and plays `signal`."""

    class PortAudioError(Exception):
        pass

    class default:  # noqa: N801 - mirrors sounddevice.default
        device = [0, -1]

    def __init__(self, signal: np.ndarray, overflow_reads=(), fail_on_read=None):
        self.signal, self.position, self.reads = signal.astype(np.float32), 0, 0
        self.overflow_reads, self.fail_on_read = set(overflow_reads), fail_on_read
        self.opened: dict = {}
        self.closed = False

    def query_hostapis(self):
        return [{"name": "FakeAPI"}]

    def query_devices(self):
        return [
            {
                "name": "Fake USB Mic",
                "hostapi": 0,
                "max_input_channels": 1,
                "default_samplerate": 48000.0,
            },
            {
                "name": "Fake Speaker",
                "hostapi": 0,
                "max_input_channels": 0,
                "default_samplerate": 48000.0,
            },
        ]

    def check_input_settings(self, device, channels, dtype, samplerate):
        if samplerate != 48000:
            raise self.PortAudioError("Invalid sample rate", -9997)

    def InputStream(self, **kwargs):  # noqa: N802 - mirrors sounddevice.InputStream
        self.opened = kwargs
        return self

    def start(self):
        pass

    def read(self, frames):
        self.reads += 1
        if self.reads == self.fail_on_read:
            raise self.PortAudioError("Unanticipated host error", -9999)
        data = self.signal[self.position : self.position + frames, None]  # (F, 1)
        self.position += frames
        return data, self.reads in self.overflow_reads

    def close(self, ignore_errors=True):
        self.closed = True


def test_mic_that_refuses_the_rate_is_resampled_and_overflows_counted(monkeypatch):
    left, right = two_tones(48000, 2.0)
    fake = FakeSoundDevice(left + right, overflow_reads={3})
    monkeypatch.setitem(sys.modules, "sounddevice", fake)

    src = open_source("mic:usb", sample_rate=RATE, block_samples=1600, skip_samples=5)
    got = [b for _, b in zip(range(15), src.blocks(), strict=False)]
    src.close()

    assert fake.opened == {
        "samplerate": 48000,
        "channels": 1,
        "dtype": "float32",
        "device": 0,
        "blocksize": 4800,
        "latency": "high",
    }
    assert src.description == "microphone 'Fake USB Mic' (FakeAPI, 48000 Hz)" and fake.closed
    assert [b.starts for b in got[:2]] == [[0], []]
    assert sum(b.overflows for b in got) == 1 == src.stats.overflows
    assert src.stats.seconds_read == 15 * 0.1
    # The stream so far equals the start of a one-go resampling of what was recorded.
    expected = soxr.resample((left + right).astype(np.float32), 48000, RATE)
    assert_close(
        np.concatenate([b.samples for b in got]),
        expected[: 15 * 1600],
        name="resampled microphone",
    )


def test_mic_read_failure_and_unknown_name_are_source_errors(monkeypatch):
    fake = FakeSoundDevice(np.zeros(48000 * 2), fail_on_read=2)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)

    with pytest.raises(SourceError) as caught:
        open_source("mic:Headset", sample_rate=RATE, block_samples=1600)
    assert str(caught.value) == (
        "'Headset' is not an audio input: pass mic:NAME or mic:INDEX with one of these "
        "inputs: 0: Fake USB Mic"
    )
    fake.default = SimpleNamespace(device=[-1, -1])
    with pytest.raises(SourceError, match="there is no default audio input device"):
        open_source("mic", sample_rate=RATE, block_samples=1600)

    src = open_source("mic:0", sample_rate=RATE, block_samples=1600)
    with pytest.raises(SourceError, match=r"'Fake USB Mic' stopped delivering audio \(Port"):
        list(src.blocks())
    assert fake.closed


# ---------------------------------------------------------------------------------------
# A real microphone path: PulseAudio's virtual microphone


def best_lag(recorded: np.ndarray, reference: np.ndarray) -> int:
    """The offset in `recorded` where `reference` fits best (FFT cross-correlation)."""
    n = len(recorded) + len(reference)
    spectrum = np.fft.rfft(recorded, n) * np.conj(np.fft.rfft(reference, n))
    correlation = np.fft.irfft(spectrum, n)[: len(recorded) - len(reference) + 1]
    return int(np.argmax(correlation))


def test_virtual_mic_records_a_played_recording_intact(virtual_mic, tmp_path):
    (path,) = klettres_files(1, 44100, 2, 1.5, 3.5)
    played = tmp_path / "played.wav"
    mono = mono_16k(path)
    sf.write(played, 0.5 * mono / np.abs(mono).max(), RATE, subtype="PCM_16")
    reference = sf.read(played, dtype="float32")[0]

    devices = list_input_devices()
    assert devices and sum(d["is_default"] for d in devices) == 1

    block = 1600
    wanted = (len(reference) + RATE) // block + 1  # the recording plus a second of margin
    with open_source("mic", sample_rate=RATE, block_samples=block) as src:
        blocks = src.blocks()
        recorded = [next(blocks)]  # the stream runs before anything is played
        player = virtual_mic.play(played)
        recorded += [next(blocks) for _ in range(wanted)]
    assert player.wait(timeout=10) == 0, player.stderr.read()

    samples = np.concatenate([b.samples for b in recorded])
    lag = best_lag(samples, reference)
    heard = samples[lag : lag + len(reference)]
    assert len(heard) == len(reference)
    similarity = heard @ reference / (np.linalg.norm(heard) * np.linalg.norm(reference))
    assert similarity >= 0.99, f"similarity {similarity:.4f} at lag {lag}"
    # int16 in, float32 through the sink and out: PulseAudio measured sample-exact here.
    assert_close(
        heard, reference, atol=1 / 32768, name="recording heard through the virtual mic"
    )
    assert src.stats.overflows == 0 and sum(b.overflows for b in recorded) == 0
    assert recorded[0].starts == [0] and all(b.starts == [] for b in recorded[1:])
    assert src.description.startswith("microphone 'default' (ALSA, 16000 Hz)")


def test_virtual_mic_found_by_name_after_the_server_started(virtual_mic):
    names = [d["name"] for d in list_input_devices()]
    assert "pulse" in names and "default" in names
    with open_source("mic:PULSE", sample_rate=RATE, block_samples=800) as src:
        first = next(src.blocks())
    assert first.samples.shape == (800,) and src.description.startswith("microphone 'pulse'")
    assert os.environ["PULSE_SERVER"].startswith("unix:")
