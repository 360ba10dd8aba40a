"""Audio sources that stream fixed-size mono blocks: a file, a folder or a live microphone.

Every source yields `Block`s of exactly `block_samples` float32 samples at `sample_rate`.
Files are decoded chunk by chunk (a long file is never held whole), mixed to mono by
averaging their channels and resampled by one soxr stream per file; a folder is its audio
files in path order joined into one stream. Sample values are not touched otherwise: NaN,
Inf and values outside [-1, 1] reach the consumer unchanged, because refusing them is the
learner's decision, not the reader's.

Shapes: F frames of one decoded chunk, C channels of a file, B = block_samples.
"""

from __future__ import annotations

import logging
import math
import os
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import SourceError

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga")

# Frames per soundfile read. Bounds the memory a file needs, and is also the most audio a
# decode error can cost: soundfile discards the whole read that failed.
DECODE_FRAMES = 8192

_SPEC_HELP = "pass an audio file, a folder of audio files, `mic` or `mic:NAME`"
_NO_INPUT = (
    "no audio input device found: connect a microphone or start an audio server "
    "(e.g. PulseAudio); `edge-clapp devices` lists the inputs"
)
_PA_INVALID_SAMPLE_RATE = -9997  # PortAudio's paInvalidSampleRate


@dataclass
class Block:
    """One block of the stream.

    samples:   (B,) float32, mono, at the source's sample rate; always exactly B long.
    starts:    offsets in `samples` where a new recording begins. The first block of a
               stream holds 0, except in a stream resumed inside a recording
               (skip_samples): its audio continues what the consumer saw before.
    overflows: input overflows the device reported while this block was recorded.
    """

    samples: np.ndarray
    starts: list[int]
    overflows: int = 0


@dataclass
class SourceStats:
    """What a source has read so far.

    files_read counts files whose audio entered the stream, completely or in part.
    files_skipped holds (path, reason) for each file left out or cut short: a file that
    failed to decode half-way is in both (its reason says how much was kept).
    files_ignored counts files of a folder without a supported extension.
    """

    files_read: int = 0
    files_skipped: list[tuple[str, str]] = field(default_factory=list)
    files_ignored: int = 0
    overflows: int = 0
    seconds_read: float = 0.0
    dropped_tail_samples: int = 0

    def to_dict(self) -> dict:
        return {
            "files_read": self.files_read,
            "files_skipped": [{"path": p, "reason": r} for p, r in self.files_skipped],
            "files_ignored": self.files_ignored,
            "overflows": self.overflows,
            "seconds_read": self.seconds_read,
            "dropped_tail_samples": self.dropped_tail_samples,
        }


class Source(ABC):
    """A stream of fixed-size blocks; `blocks()` can be iterated once per source."""

    sample_rate: int
    block_samples: int
    stats: SourceStats
    description: str

    _iterator: Iterator[Block] | None = None

    def blocks(self) -> Iterator[Block]:
        if self._iterator is not None:
            raise RuntimeError("blocks() can be iterated once per source; open it again")
        self._iterator = self._generate()
        return self._iterator

    @abstractmethod
    def _generate(self) -> Iterator[Block]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _BlockCutter:
    """Cuts a stream of variable-length chunks into fixed blocks of B samples.

    Skips the first `skip` samples of the stream, records where recordings begin, and
    copies each finished block out of its one preallocated buffer.
    """

    def __init__(self, block_samples: int, skip: int = 0):
        self.buffer = np.empty(block_samples, dtype=np.float32)  # (B,)
        self.fill = 0
        self.to_skip = skip
        self.resumed = skip > 0
        self.delivered = 0
        self.overflows = 0
        self._starts: list[int] = []
        self._start_pending = False

    def mark_start(self) -> None:
        """The next sample pushed begins a new recording."""
        self._start_pending = True

    def push(self, chunk: np.ndarray) -> Iterator[Block]:
        # Skip: a recording that began inside the skipped part has no boundary left.
        if self.to_skip:
            k = min(self.to_skip, len(chunk))
            chunk, self.to_skip = chunk[k:], self.to_skip - k
            if k:
                self._start_pending = False
        if len(chunk) == 0:
            return

        # Boundary: a new recording, or the first sample of a stream that is not resumed.
        first = self.delivered == 0 and self.fill == 0 and not self.resumed
        if self._start_pending or first:
            self._starts.append(self.fill)
            self._start_pending = False

        # Fill: copy into the buffer, hand out each full block.
        size = len(self.buffer)
        while len(chunk):
            k = min(len(chunk), size - self.fill)
            self.buffer[self.fill : self.fill + k] = chunk[:k]
            self.fill += k
            chunk = chunk[k:]
            if self.fill == size:
                block = Block(self.buffer.copy(), self._starts, self.overflows)
                self.delivered += 1
                self.fill, self._starts, self.overflows = 0, [], 0
                yield block


def _duration(samples: int, rate: int) -> str:
    return f"{samples / rate:.2f} s ({samples} samples at {rate} Hz)"


def _too_short(what: str, samples: int, skip: int, rate: int, block: int) -> SourceError:
    skipped = f" after skipping {skip} samples" if skip else ""
    return SourceError(
        f"{what} gives {_duration(samples, rate)}{skipped}, less than one block of "
        f"{_duration(block, rate)}: use a longer recording or a smaller block"
    )


# ---------------------------------------------------------------------------------------
# Files and folders


@dataclass
class _FileInfo:
    path: Path
    frames: int
    samplerate: int
    channels: int
    truncated: str = ""  # why the file is shorter than its header says; "" when complete


class _BadFile(Exception):
    """A file that cannot be used: `reason` says why, `advice` what to do instead."""

    def __init__(self, reason: str, advice: str):
        super().__init__(reason)
        self.reason, self.advice = reason, advice


# libsndfile's log line for a WAV data chunk that is shorter than its header announces.
_WAV_DATA_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Recorders that stream a WAV write a placeholder size near 2**31 or 2**32 and never fix
# it; such a file is unfinished, not truncated, and libsndfile reads all of it.
_WAV_PLACEHOLDER_BYTES = 0x7FFF0000


def _probe(path: Path) -> _FileInfo:
    """Opens `path` far enough to know it is decodable audio; raises _BadFile otherwise.

    A WAV file shorter than its header announces is returned with `truncated` set: libsndfile
    reads the part that is there. An OGG file cut short cannot be told from a complete one
    once its first pages are intact (the klettres recordings, complete, also lack the
    end-of-stream mark), so it reads as a shorter recording.
    """
    supported = ", ".join(SUPPORTED_EXTENSIONS)
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise _BadFile(
            f"its extension '{path.suffix}' is not supported (supported: {supported})",
            f"convert it to one of {supported} first",
        )
    any_audio = "pass a WAV, FLAC or OGG recording"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _BadFile(f"it cannot be opened ({exc.strerror})", any_audio) from exc
    if size == 0:
        raise _BadFile("the file is empty (0 bytes)", any_audio)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise _BadFile(f"it cannot be read ({exc.strerror})", "check its permissions") from exc
    try:
        with sf.SoundFile(path) as f:
            info = _FileInfo(path, f.frames, f.samplerate, f.channels)
            log_text = f.extra_info
    except (sf.SoundFileError, OSError) as exc:
        why = getattr(exc, "error_string", "") or str(exc)
        raise _BadFile(
            f"it is not audio that soundfile can decode (libsndfile: {why.strip()})",
            f"{any_audio}, or re-export this one",
        ) from exc
    if info.frames <= 0:
        raise _BadFile("it holds no audio frames (an empty or truncated recording)", any_audio)
    short = _WAV_DATA_SHORT.search(log_text)
    if short and _WAV_PLACEHOLDER_BYTES > int(short[1]) > int(short[2]):
        info.truncated = (
            f"it is truncated (its header announces {short[1]} bytes of audio, only "
            f"{short[2]} are present)"
        )
    return info


def _find_audio_files(root: Path, stats: SourceStats) -> list[Path]:
    """All files under `root` with a supported extension, sorted by path; counts others."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in names:
            path = Path(folder, name)
            if path.suffix.lower() in SUPPORTED_EXTENSIONS:
                found.append(path)
            else:
                stats.files_ignored += 1
    return sorted(found)


class FileSource(Source):
    """One file, or the audio files of a folder, as one stream of blocks."""

    def __init__(
        self,
        files: list[_FileInfo],
        *,
        sample_rate: int,
        block_samples: int,
        skip_samples: int,
        stats: SourceStats,
        description: str,
    ):
        self.sample_rate, self.block_samples = sample_rate, block_samples
        self.stats, self.description = stats, description
        self._files, self._skip = files, skip_samples
        self._iterator: Iterator[Block] | None = None
        # Estimated from the headers (the resampled length may differ by a few samples).
        self.expected_samples = sum(i.frames * sample_rate // i.samplerate for i in files)
        self.total_seconds = max(self.expected_samples - skip_samples, 0) / sample_rate

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()  # closes the file being decoded, if any

    def _generate(self) -> Iterator[Block]:
        cutter = _BlockCutter(self.block_samples, self._skip)
        pushed = 0
        for info in self._files:
            cutter.mark_start()
            for chunk in self._decode(info):  # (F',) at the target rate
                pushed += len(chunk)
                for block in cutter.push(chunk):
                    self.stats.seconds_read = (
                        cutter.delivered * self.block_samples / self.sample_rate
                    )
                    yield block
        self.stats.dropped_tail_samples = cutter.fill
        if cutter.delivered == 0:
            if self.stats.files_skipped:
                path, reason = self.stats.files_skipped[-1]
                raise SourceError(
                    f"{self.description} gave less than one block of audio: '{path}': "
                    f"{reason}; use an intact copy of the recording"
                )
            raise _too_short(
                self.description, pushed, self._skip, self.sample_rate, self.block_samples
            )

    def _skip_file(self, path: Path, reason: str) -> None:
        log.warning("skipping '%s': %s", path, reason)
        self.stats.files_skipped.append((str(path), reason))

    def _decode(self, info: _FileInfo) -> Iterator[np.ndarray]:
        """Yields the file as mono float32 chunks at the target rate."""
        try:
            f = sf.SoundFile(info.path)
        except (sf.SoundFileError, OSError) as exc:
            self._skip_file(info.path, f"it can no longer be opened ({exc})")
            return
        resampler = None
        if f.samplerate != self.sample_rate:
            resampler = soxr.ResampleStream(f.samplerate, self.sample_rate, 1, "float32")
        decoded, failed = 0, False
        with f:
            while True:
                # Decode: a failure mid-file keeps what came before it.
                try:
                    frames = f.read(DECODE_FRAMES, dtype="float32", always_2d=True)  # (F, C)
                except sf.SoundFileError as exc:
                    self._skip_file(
                        info.path,
                        f"decoding failed after {decoded / f.samplerate:.2f} s "
                        f"(libsndfile: {exc}); kept the audio before that point",
                    )
                    failed = True
                    break
                if len(frames) == 0:
                    break
                decoded += len(frames)

                # Mix to mono, then resample.
                if frames.shape[1] == 1:
                    mono = np.ascontiguousarray(frames[:, 0])  # (F,)
                else:
                    mono = frames.mean(axis=1, dtype=np.float32)  # (F, C) -> (F,)
                yield mono if resampler is None else resampler.resample_chunk(mono)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if decoded:
            self.stats.files_read += 1
        elif not failed:
            self._skip_file(info.path, "it decoded to no audio at all")


def _probe_all(candidates: list[Path], stats: SourceStats) -> list[_FileInfo]:
    """The readable files among `candidates`; the others are listed in `stats`."""
    infos = []
    for candidate in candidates:
        try:
            info = _probe(candidate)
        except _BadFile as bad:
            log.warning("skipping '%s': %s", candidate, bad.reason)
            stats.files_skipped.append((str(candidate), bad.reason))
            continue
        if info.truncated:
            kept = f"{info.truncated}; kept the {info.frames / info.samplerate:.2f} s present"
            log.warning("reading part of '%s': %s", candidate, kept)
            stats.files_skipped.append((str(candidate), kept))
        infos.append(info)
    return infos


def _nothing_readable(what: str, stats: SourceStats) -> SourceError:
    found = len(stats.files_skipped)
    detail = (
        f"none of its {found} audio files can be read (first: "
        f"'{stats.files_skipped[0][0]}': {stats.files_skipped[0][1]})"
        if found
        else f"it has no files with a supported extension "
        f"({', '.join(SUPPORTED_EXTENSIONS)}; {stats.files_ignored} other files)"
    )
    return SourceError(f"{what} holds no readable audio: {detail}")


def _file_source(
    infos: list[_FileInfo],
    stats: SourceStats,
    description: str,
    rate: int,
    block: int,
    skip: int,
) -> FileSource:
    source = FileSource(
        infos,
        sample_rate=rate,
        block_samples=block,
        skip_samples=skip,
        stats=stats,
        description=description,
    )
    # Refuse early what cannot fill one block (the length is estimated from the headers;
    # the stream checks the exact count again at its end).
    if source.expected_samples - skip < block:
        raise _too_short(description, source.expected_samples, skip, rate, block)
    return source


def _open_files(path: Path, sample_rate: int, block: int, skip: int) -> FileSource:
    stats = SourceStats()
    if path.is_dir():
        infos = _probe_all(_find_audio_files(path, stats), stats)
        if not infos:
            raise _nothing_readable(f"folder '{path}'", stats)
        description = f"folder '{path}' ({len(infos)} audio files)"
    else:
        try:
            infos = [_probe(path)]
        except _BadFile as bad:
            raise SourceError(f"cannot read '{path}': {bad.reason}; {bad.advice}") from bad
        if infos[0].truncated:
            raise SourceError(
                f"cannot read '{path}': {infos[0].truncated}; use a complete copy of the "
                "recording, or put it in a folder to read the part that is there"
            )
        description = f"file '{path}'"
    return _file_source(infos, stats, description, sample_rate, block, skip)


def open_files(
    paths: list[Path], *, sample_rate: int, block_samples: int, skip_samples: int = 0
) -> FileSource:
    """A list of audio files, in the order given, as one stream (a folder's rules: files
    that cannot be read are skipped, logged and listed in the source's stats)."""
    stats = SourceStats()
    infos = _probe_all([Path(p) for p in paths], stats)
    if not infos:
        raise _nothing_readable(f"the list of {len(paths)} files", stats)
    description = f"{len(infos)} audio files"
    return _file_source(infos, stats, description, sample_rate, block_samples, skip_samples)


# ---------------------------------------------------------------------------------------
# Microphone

# PortAudio lists devices once, when it initialises. Re-initialising picks up an audio
# server started since; it would also end any stream that is open, so it is done only
# while no microphone source of this module holds one.
_sources_with_streams: weakref.WeakSet[MicSource] = weakref.WeakSet()


def _sounddevice():
    """Imports sounddevice and refreshes its device list; raises SourceError if absent."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise SourceError(
            f"the PortAudio library is missing ({exc}): install Debian's libportaudio2 "
            "(apt-get install libportaudio2) to record from a microphone"
        ) from exc
    except ImportError as exc:
        raise SourceError(
            f"the Python package sounddevice is missing ({exc}): run scripts/setup.sh "
            "or pip install sounddevice"
        ) from exc
    if not _sources_with_streams and hasattr(sd, "_terminate") and hasattr(sd, "_initialize"):
        try:
            sd._terminate()
            sd._initialize()
        except sd.PortAudioError as exc:
            raise SourceError(f"PortAudio failed to start again ({exc})") from exc
    return sd


def _input_devices(sd) -> list[dict]:
    default_input = sd.default.device[0]
    hostapis = sd.query_hostapis()
    found = []
    for index, dev in enumerate(sd.query_devices()):
        if dev["max_input_channels"] > 0:
            found.append(
                {
                    "index": index,
                    "name": dev["name"],
                    "hostapi": hostapis[dev["hostapi"]]["name"],
                    "max_input_channels": dev["max_input_channels"],
                    "default_samplerate": float(dev["default_samplerate"]),
                    "is_default": index == default_input,
                }
            )
    return found


def list_input_devices() -> list[dict]:
    """The input devices PortAudio sees now: index, name, hostapi, max_input_channels,
    default_samplerate, is_default. Empty when there are none."""
    return _input_devices(_sounddevice())


def _pick_device(name: str | None, inputs: list[dict]) -> dict:
    """The input device for `mic` (name None) or `mic:NAME` (index, exact name or a
    case-insensitive part of one)."""
    if not inputs:
        raise SourceError(_NO_INPUT)
    listing = "; ".join(f"{d['index']}: {d['name']}" for d in inputs)
    if name is None:
        for dev in inputs:
            if dev["is_default"]:
                return dev
        raise SourceError(
            f"there is no default audio input device: pick one with mic:NAME or mic:INDEX "
            f"(inputs: {listing})"
        )
    if name.strip().lstrip("-").isdigit():
        matches = [d for d in inputs if d["index"] == int(name)]
    else:
        matches = [d for d in inputs if d["name"] == name]
        matches = matches or [d for d in inputs if d["name"].lower() == name.lower()]
        matches = matches or [d for d in inputs if name.lower() in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several inputs" if matches else "is not an audio input"
    raise SourceError(
        f"'{name}' {problem}: pass mic:NAME or mic:INDEX with one of these inputs: {listing}"
    )


class MicSource(Source):
    """A live input device as an endless stream of blocks (stop by closing the source).

    Reads block by block with PortAudio's blocking reads. When the device refuses
    `sample_rate`, it records at the device's default rate and resamples with soxr.
    """

    def __init__(self, sd, device: dict, *, sample_rate: int, block_samples: int):
        self.sample_rate, self.block_samples = sample_rate, block_samples
        self.stats = SourceStats()
        self._sd = sd
        self._iterator: Iterator[Block] | None = None

        # Rate: the requested one if the device takes it, else its own and a resampler.
        self.device_rate = sample_rate
        try:
            sd.check_input_settings(
                device=device["index"], channels=1, dtype="float32", samplerate=sample_rate
            )
        except sd.PortAudioError as exc:
            if len(exc.args) < 2 or exc.args[1] != _PA_INVALID_SAMPLE_RATE:
                raise _portaudio_failure("cannot be configured", device, exc) from exc
            self.device_rate = int(device["default_samplerate"])
            log.info(
                "input '%s' refuses %d Hz; recording at %d Hz and resampling",
                device["name"],
                sample_rate,
                self.device_rate,
            )
        self._resampler = None
        if self.device_rate != sample_rate:
            self._resampler = soxr.ResampleStream(self.device_rate, sample_rate, 1, "float32")
        self._read_frames = math.ceil(block_samples * self.device_rate / sample_rate)
        self.description = (
            f"microphone '{device['name']}' ({device['hostapi']}, {self.device_rate} Hz)"
        )

        # Open now, so that a busy or broken device is reported before any work starts.
        try:
            self._stream = sd.InputStream(
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                device=device["index"],
                blocksize=self._read_frames,
                latency="high",
            )
        except sd.PortAudioError as exc:
            raise _portaudio_failure("cannot be opened", device, exc) from exc
        _sources_with_streams.add(self)
        self._device = device

    def close(self) -> None:
        """Stops recording. Call it from the thread that iterates the blocks."""
        if self._iterator is not None:
            self._iterator.close()
        self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close(ignore_errors=True)
            self._stream = None
            _sources_with_streams.discard(self)

    def _generate(self) -> Iterator[Block]:
        if self._stream is None:
            raise SourceError(f"{self.description} is closed: open the source again")
        cutter = _BlockCutter(self.block_samples)
        cutter.mark_start()
        try:
            self._stream.start()
            while True:
                # Record: a blocking read of one block's worth of device frames.
                try:
                    data, overflowed = self._stream.read(self._read_frames)  # (F, 1)
                except self._sd.PortAudioError as exc:
                    raise _portaudio_failure(
                        "stopped delivering audio", self._device, exc
                    ) from exc
                if overflowed:
                    cutter.overflows += 1
                    self.stats.overflows += 1

                # Resample if the device runs at its own rate, then cut into blocks.
                chunk = data[:, 0]  # (F,)
                if self._resampler is not None:
                    chunk = self._resampler.resample_chunk(np.ascontiguousarray(chunk))
                for block in cutter.push(chunk):
                    self.stats.seconds_read = (
                        cutter.delivered * self.block_samples / self.sample_rate
                    )
                    yield block
        except self._sd.PortAudioError as exc:
            raise _portaudio_failure("cannot be started", self._device, exc) from exc
        finally:
            self._close_stream()


def _portaudio_failure(problem: str, device: dict, exc: Exception) -> SourceError:
    advice = (
        "check that it is still connected and that the audio server still runs"
        if problem == "stopped delivering audio"
        else "check that it is connected and not held exclusively by another program"
    )
    return SourceError(
        f"audio input '{device['name']}' {problem} (PortAudio: {exc}): {advice}, or pick "
        "another with mic:NAME (`edge-clapp devices` lists the inputs)"
    )


def _open_mic(name: str | None, sample_rate: int, block_samples: int) -> MicSource:
    sd = _sounddevice()
    device = _pick_device(name, _input_devices(sd))
    return MicSource(sd, device, sample_rate=sample_rate, block_samples=block_samples)


# ---------------------------------------------------------------------------------------


def open_source(
    spec: str, *, sample_rate: int, block_samples: int, skip_samples: int = 0
) -> Source:
    """Opens `spec`: an audio file, a folder (searched recursively), `mic` (the default
    input) or `mic:NAME` (an input by index, exact name or part of its name).

    skip_samples drops that many samples from the start of a file or folder stream, to
    resume a run where it stopped; a live microphone has no position and ignores it.
    A file literally named `mic` is read by passing `./mic`.
    """
    for name, value, least in (
        ("sample_rate", sample_rate, 1),
        ("block_samples", block_samples, 1),
        ("skip_samples", skip_samples, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    sample_rate, block_samples, skip_samples = (
        int(sample_rate),
        int(block_samples),
        int(skip_samples),
    )
    if not spec.strip():
        raise SourceError(f"the audio source is empty: {_SPEC_HELP}")
    if spec == "mic" or spec.startswith("mic:"):
        if skip_samples:
            log.info("a live microphone has no position: skip_samples is ignored")
        return _open_mic(spec[4:] or None, sample_rate, block_samples)

    try:
        path = Path(spec).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:  # name too long, unknown ~user, ...
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SourceError(
            f"'{spec[:200]}' cannot be used as a path ({why}): {_SPEC_HELP}"
        ) from None
    if not exists:
        raise SourceError(f"'{spec[:200]}' does not exist: {_SPEC_HELP}")
    return _open_files(path, sample_rate, block_samples, skip_samples)
