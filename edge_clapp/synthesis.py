"""The synthesisers of the speech corpus: samples and phoneme times from one synthesis.

espeak-ng through libespeak-ng (ctypes; its phoneme events carry the phoneme's name and
its position in the audio) and flite through its command line (``-psdur`` prints every
phone's end time). Both give a ``Synthesis``: int16 samples at the synthesiser's rate and
``[name, start_s, end_s]`` rows that tile the audio, pauses named ``sil``.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile

from edge_clapp.errors import SourceError

SILENCE = "sil"
SETUP_HINT = "run `bash scripts/setup.sh` (it installs espeak-ng and flite)"


# ---------------------------------------------------------------------------------------
# espeak-ng through its library: samples and phoneme events from one synthesis.

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data folder ends the process
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_PARAM_RATE, _PARAM_PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),  # phoneme mnemonic, NUL-terminated unless 8 long
    ]


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h (1.51): 40 bytes on x86-64, ``id`` at offset 32."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    """The leading fields of espeak_VOICE (the rest is not read)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Synthesis:
    """One synthesised utterance at the synthesiser's own rate.

    samples: int16 [N]; events: (name, seconds) as the synthesiser reported them, espeak
    phoneme starts or flite phone ends; phonemes: [name, start, end] rows tiling the audio.
    """

    samples: np.ndarray
    sample_rate: int
    events: tuple[tuple[str, float], ...]
    phonemes: list[list]


@cache
def _espeak_library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libespeak-ng.so.1")
    except OSError:
        raise SourceError(f"libespeak-ng.so.1 is not installed: {SETUP_HINT}") from None
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
    return lib


def espeak_version() -> str:
    return _espeak_library().espeak_Info(None).decode()


class _EspeakEngine:
    """libespeak-ng in synchronous mode. The library is one global state per process,
    and that state carries over from one synthesis to the next (the same call gives
    other samples after other calls), so a corpus build uses a fresh process per speaker.
    """

    def __init__(self) -> None:
        self.lib = _espeak_library()
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options
        )
        if self.sample_rate <= 0:
            raise SourceError(f"libespeak-ng cannot start (no voice data?): {SETUP_HINT}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, float]] = []
        self._callback = _SynthCallback(self._receive)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self._callback)

    def _receive(self, wav, count, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                raw = ctypes.string_at(ctypes.addressof(event.id), 8).split(b"\0")[0]
                name = raw.decode("utf-8", "replace")
                self._events.append((name, event.audio_position / 1e3))
            i += 1
        return 0  # go on

    def synthesise(self, text: str, voice: str, rate: int, pitch: int) -> Synthesis:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SourceError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices=en)")
        # An unknown +variant is ignored without an error: check that it was taken.
        identifier = self.lib.espeak_GetCurrentVoice().contents.identifier or b""
        if "+" in voice and not identifier.decode().endswith("+" + voice.split("+", 1)[1]):
            raise SourceError(f"espeak-ng has no variant for {voice!r} (got {identifier!r})")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)

        self._chunks, self._events = [], []
        data = text.encode() + b"\0"
        status = self.lib.espeak_Synth(
            data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise SourceError(f"espeak-ng failed on {text!r} with {voice!r} (status {status})")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        seconds = len(samples) / self.sample_rate
        marks = [(SILENCE, 0.0)] + [(_espeak_name(n), t) for n, t in self._events]
        return Synthesis(
            samples, self.sample_rate, tuple(self._events), tile_phonemes(marks, seconds, text)
        )


def _espeak_name(raw: str) -> str:
    """Stress marks dropped; every pause (``_``, ``_:``, ``_!`` …) is silence."""
    name = raw.replace("'", "").replace(",", "")
    return SILENCE if name.startswith("_") else name


@cache
def _espeak_engine() -> _EspeakEngine:
    return _EspeakEngine()


def espeak_synthesise(text: str, voice: str, rate: int, pitch: int) -> Synthesis:
    """Synthesises with this process's libespeak-ng (rate in wpm, pitch 0..100)."""
    return _espeak_engine().synthesise(text, voice, rate, pitch)


# ---------------------------------------------------------------------------------------
# flite through its command line: a wav file and the phone end times (-psdur).

_PSDUR_ITEM = re.compile(r"^(\S+):(\d+(?:\.\d+)?)$")


def flite_version() -> str:
    text = _run_flite(["--version"], check=False).stdout  # flite 2.2 exits 1 here
    found = re.search(r"version:\s*(.+?)\s*(\(|$)", text, re.MULTILINE)
    return found.group(1) if found else text.strip().splitlines()[-1]


def _run_flite(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["flite", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SourceError(f"flite is not installed: {SETUP_HINT}") from None
    if check and result.returncode != 0:
        raise SourceError(f"flite {' '.join(args)} failed: {result.stderr.strip()[:200]}")
    return result


def flite_synthesise(text: str, voice: str, stretch: float, f0: int, wav: Path) -> Synthesis:
    """Synthesises with flite into ``wav`` (a scratch file, removed afterwards)."""
    result = _run_flite(
        ["-voice", voice, "--setf", f"duration_stretch={stretch}",
         "--setf", f"int_f0_target_mean={f0}", "-psdur", "-t", text, "-o", str(wav)]
    )  # fmt: skip
    try:
        samples, rate = soundfile.read(str(wav), dtype="int16")
    finally:
        wav.unlink(missing_ok=True)
    ends = [m.groups() for m in map(_PSDUR_ITEM.match, result.stdout.split()) if m]
    if not ends:
        raise SourceError(f"flite printed no phone times for {text!r}: {result.stdout[:200]!r}")
    events = tuple((name, float(end)) for name, end in ends)
    starts = [0.0] + [end for _, end in events[:-1]]
    marks = [
        (SILENCE if name == "pau" else name, start)
        for (name, _), start in zip(events, starts, strict=True)
    ]
    return Synthesis(samples, rate, events, tile_phonemes(marks, len(samples) / rate, text))


def tile_phonemes(marks: list[tuple[str, float]], seconds: float, text: str) -> list[list]:
    """[name, start, end] rows from (name, start) marks: each ends where the next starts,
    the last at the end of the audio. Empty rows are dropped, touching silences merged."""
    rows: list[list] = []
    ends = [start for _, start in marks[1:]] + [seconds]
    for (name, start), end in zip(marks, ends, strict=True):
        start, end = min(start, seconds), min(end, seconds)
        if end <= start:
            continue
        if rows and name == SILENCE and rows[-1][0] == SILENCE:
            rows[-1][2] = end
        else:
            rows.append([name, start, end])
    tiles = bool(rows) and rows[0][1] == 0 and rows[-1][2] == seconds
    if not tiles or any(a[2] != b[1] for a, b in zip(rows[:-1], rows[1:], strict=True)):
        raise SourceError(f"phoneme times for {text!r} do not tile its {seconds:.3f} s")
    if all(name == SILENCE for name, _, _ in rows):
        raise SourceError(f"the synthesiser produced no phoneme for {text!r}")
    return rows
