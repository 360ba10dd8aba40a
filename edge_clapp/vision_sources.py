"""Vision sources that stream fixed-size frames: a camera, a video file or a folder of images.

Every source yields `Frame`s of exactly `height` x `width` pixels, float32 in [0, 1], grey
(one channel) or RGB (three, in that order). A frame is brought to that size by
centre-cropping it to the target aspect ratio and resizing ("crop"), or by stretching it
("resize"). Videos are decoded frame by frame and a camera is read into a single slot, so
no source ever holds more than a few frames.

A `Frame` marks where a new scene starts (`boundary`): the first frame of a stream (not
of a resumed video, whose scene goes on), every image of a folder, and a detected scene
cut. A cut is a mean absolute change above
`scene_cut` between consecutive frames, both reduced to a small grey thumbnail.

OpenCV writes its own warnings to stderr. This module silences them where they would only
repeat what its SourceErrors say: OpenCV's log (process-wide) during its calls and while a
camera's reader runs, and FFmpeg's log through OPENCV_FFMPEG_LOGLEVEL (read once, when
OpenCV first opens a video; a value the user has set is kept).

Shapes: H x W the target frame, h x w a decoded frame, C channels (1 grey, 3 RGB).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from .errors import ConfigError, SourceError
from .sources import SUPPORTED_EXTENSIONS as AUDIO_EXTENSIONS

# OPENCV_FFMPEG_LOGLEVEL and OPENCV_IO_MAX_IMAGE_PIXELS are set by edge_clapp/__init__.py,
# before anything imports OpenCV.

try:
    import cv2
except ImportError:  # reported by _opencv() when a vision source is opened
    cv2 = None

log = logging.getLogger(__name__)


VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
COLORS = ("gray", "rgb")
FITS = ("crop", "resize")
MAX_SIDE = 4096  # largest target height or width, in pixels
MAX_CAMERA_INDEX = 9999  # OpenCV takes a C int; no machine has more cameras
THUMBNAIL_SIDE = 16  # scene cuts compare frames reduced to at most 16 x 16 grey pixels
# Reads in a row that may fail before a video counts as ended: a damaged frame fails one
# read and the next frame decodes again; at the true end every read fails.
MAX_DECODE_FAILURES = 25
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # larger files in an image folder are skipped
CAMERA_TIMEOUT_S = 10.0  # longest wait for a camera's next frame
_JOIN_TIMEOUT_S = 2.0  # longest wait for the reader thread to stop (one camera read)

_SPEC_HELP = (
    "pass camera, camera:INDEX, video:PATH, images:DIR, a video file "
    f"({' '.join(VIDEO_EXTENSIONS)}) or a folder of images ({' '.join(IMAGE_EXTENSIONS)})"
)


@dataclass
class Frame:
    """One frame of the stream.

    image:    (H, W, C) float32 in [0, 1]; C = 1 for "gray", 3 for "rgb" (RGB order).
    boundary: a new scene starts here: the first frame of the stream (of a video resumed
              with skip_frames only if it is a cut against the last skipped frame), every
              image of a folder, or a detected scene cut.
    dropped:  frames lost just before this one: camera frames overwritten because the
              consumer was slower, video frames or images that failed to decode.
    index:    0-based position in the source's stream, counting dropped and skipped
              frames (the first frame of a stream resumed with skip_frames = N has N).
    """

    image: np.ndarray
    boundary: bool
    dropped: int
    index: int


@dataclass
class VisionStats:
    """What a source has read so far.

    frames_read counts frames handed out; frames_dropped the frames lost before them.
    files_skipped holds (path, reason) for each file left out or cut short; files_ignored
    counts files of a folder without an image extension. fps is the source's nominal
    frame rate (None for an image folder, or a camera that does not say).
    """

    frames_read: int = 0
    frames_dropped: int = 0
    scene_cuts: int = 0
    files_read: int = 0
    files_skipped: list[tuple[str, str]] = field(default_factory=list)
    files_ignored: int = 0
    fps: float | None = None

    def to_dict(self) -> dict:
        return {
            "frames_read": self.frames_read,
            "frames_dropped": self.frames_dropped,
            "scene_cuts": self.scene_cuts,
            "files_read": self.files_read,
            "files_skipped": [{"path": p, "reason": r} for p, r in self.files_skipped],
            "files_ignored": self.files_ignored,
            "fps": self.fps,
        }


def _opencv():
    if cv2 is None:
        raise SourceError(
            "the Python package opencv-python-headless is missing: run scripts/setup.sh "
            "or pip install opencv-python-headless"
        )
    return cv2


# OpenCV's log level is global to the process; nested and concurrent users (the camera's
# reader thread and the consumer) share one count, and the last one out restores it.
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved_level: int | None = None
_LOG_LEVEL_SILENT = 0  # cv::utils::logging::LOG_LEVEL_SILENT, the same in OpenCV 4 and 5


def _set_opencv_log_level(level: int | None) -> int | None:
    """Sets OpenCV's log level; returns the previous one (None where it cannot be set)."""
    api = getattr(getattr(cv2, "utils", None), "logging", None)
    setter = getattr(api, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    if setter is None or level is None:
        return None
    return setter(level)


@contextmanager
def _opencv_quiet():
    """Keeps OpenCV's own warnings off stderr while held."""
    global _quiet_depth, _quiet_saved_level
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved_level = _set_opencv_log_level(_LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                _set_opencv_log_level(_quiet_saved_level)


# ---------------------------------------------------------------------------------------
# Frame format: size, colour, fit and scene cuts


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    plain = value.value if isinstance(value, Enum) else value
    if not isinstance(plain, str) or plain not in allowed:
        raise ConfigError(f"{name} = {value!r} is not valid; allowed: {', '.join(allowed)}")
    return plain


def _integer(name: str, value, least: int, most: int | None = None) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < least or (most is not None and value > most):
        want = f"from {least} to {most}" if most is not None else f">= {least}"
        raise ConfigError(f"{name} = {value!r} must be an integer {want}")
    return int(value)


@dataclass(frozen=True)
class FrameFormat:
    """What every frame is brought to; validates itself.

    height, width: the frame size in pixels, 1 .. MAX_SIDE.
    color:         "gray" (one channel) or "rgb" (three, in RGB order).
    fit:           "crop" (centre-crop to the aspect ratio, then resize) or "resize"
                   (stretch).
    scene_cut:     mean absolute change of the grey thumbnail, in [0, 1], above which a
                   frame starts a new scene; 0 disables cut detection.
    """

    height: int
    width: int
    color: str = "gray"
    fit: str = "crop"
    scene_cut: float = 0.1

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            object.__setattr__(self, name, _integer(name, getattr(self, name), 1, MAX_SIDE))
        object.__setattr__(self, "color", _choice("color", self.color, COLORS))
        object.__setattr__(self, "fit", _choice("fit", self.fit, FITS))
        cut = self.scene_cut
        is_number = isinstance(cut, (int, float, np.floating, np.integer))
        if isinstance(cut, bool) or not is_number or not (0.0 <= float(cut) <= 1.0):
            raise ConfigError(
                f"scene_cut = {cut!r} must be a number in [0, 1] (a mean absolute change "
                "of pixel values; 0 disables scene-cut detection)"
            )
        object.__setattr__(self, "scene_cut", float(cut))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


class _BadImage(Exception):
    """An image that cannot be used; the message says why."""


class _FrameShaper:
    """Brings a decoded OpenCV image to the target format.

    Takes (h, w) grey or (h, w, 3|4) BGR(A) images of uint8, uint16 or float in [0, 1];
    alpha is ignored. Crop, resize and colour conversion run in the image's own depth,
    the scaling to float32 [0, 1] last, on the small frame.
    """

    def __init__(self, fmt: FrameFormat):
        self.fmt = fmt

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        H, W = self.fmt.height, self.fmt.width

        # Depth: the scale that maps the pixel type onto [0, 1].
        if raw.dtype == np.uint8:
            scale = 255.0
        elif raw.dtype == np.uint16:
            scale = 65535.0
        elif raw.dtype in (np.float32, np.float64):
            if not np.isfinite(raw).all() or raw.min() < 0.0 or raw.max() > 1.0:
                raise _BadImage(
                    f"its floating-point pixels range over [{raw.min()}, {raw.max()}], "
                    "not [0, 1]"
                )
            raw, scale = raw.astype(np.float32, copy=False), 1.0
        else:
            raise _BadImage(f"its pixel type {raw.dtype} is not supported (8 or 16 bit)")

        # Channels: grey (h, w) or BGR (h, w, 3); alpha is dropped.
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[:, :, 0]  # (h, w, 1) -> (h, w)
        elif raw.ndim == 3 and raw.shape[2] == 4:
            raw = raw[:, :, :3]  # (h, w, 4) -> (h, w, 3)
        if raw.ndim != 2 and not (raw.ndim == 3 and raw.shape[2] == 3):
            raise _BadImage(f"its shape {raw.shape} is neither grey nor colour")
        h, w = raw.shape[:2]
        if h == 0 or w == 0:
            raise _BadImage(f"it is empty ({w} x {h} pixels)")

        # Fit: the centred window with the target aspect ratio, or the whole image.
        if self.fmt.fit == "crop":
            if w * H > h * W:  # wider than the target: keep the middle columns
                keep = min(max((h * W + H // 2) // H, 1), w)
                left = (w - keep) // 2
                raw = raw[:, left : left + keep]
            else:  # taller (or equal): keep the middle rows
                keep = min(max((w * H + W // 2) // W, 1), h)
                top = (h - keep) // 2
                raw = raw[top : top + keep, :]
            h, w = raw.shape[:2]
        if (h, w) != (H, W):
            shrink = h >= H and w >= W
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            raw = cv2.resize(raw, (W, H), interpolation=interpolation)  # (H, W[, 3])

        # Colour, then scale to float32 [0, 1].
        if self.fmt.color == "gray" and raw.ndim == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)  # (H, W, 3) -> (H, W)
        elif self.fmt.color == "rgb":
            code = cv2.COLOR_BGR2RGB if raw.ndim == 3 else cv2.COLOR_GRAY2RGB
            raw = cv2.cvtColor(np.ascontiguousarray(raw), code)  # -> (H, W, 3)
        image = raw.astype(np.float32)
        if scale != 1.0:
            image /= np.float32(scale)
        else:  # interpolating floats can step past 1 by a rounding error
            np.clip(image, 0.0, 1.0, out=image)
        return image.reshape(H, W, self.fmt.channels)  # (H, W[, 3]) -> (H, W, C)


class _CutDetector:
    """Scene cuts: mean absolute difference of consecutive grey thumbnails, in [0, 1].

    Keeps only the previous thumbnail."""

    def __init__(self, fmt: FrameFormat):
        self.threshold = fmt.scene_cut
        self.size = (min(THUMBNAIL_SIDE, fmt.width), min(THUMBNAIL_SIDE, fmt.height))
        self.previous: np.ndarray | None = None

    def is_cut(self, image: np.ndarray) -> bool:
        """Whether `image` (H, W, C) differs from the frame before it by more than the
        threshold; False for the first frame and when detection is off."""
        if self.threshold <= 0.0:
            return False
        if image.shape[2] == 1:
            gray = image[:, :, 0]  # (H, W, 1) -> (H, W)
        else:  # the same luma weights as a "gray" frame
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # (H, W, 3) -> (H, W)
        thumb = cv2.resize(gray, self.size, interpolation=cv2.INTER_AREA)  # (16, 16)
        previous, self.previous = self.previous, thumb
        if previous is None:
            return False
        return float(np.abs(thumb - previous).mean()) > self.threshold


# ---------------------------------------------------------------------------------------
# Sources


class VisionSource(ABC):
    """A stream of fixed-size frames; `frames()` can be iterated once per source.

    total_frames: frames left to read (after skip_frames) when known, else None.
    fps:          the nominal frame rate, None where the source has none.
    """

    description: str
    stats: VisionStats
    total_frames: int | None = None
    fps: float | None = None

    _iterator: Iterator[Frame] | None = None
    _closed: bool = False

    def frames(self) -> Iterator[Frame]:
        """The frames, in stream order; ends at the end of a file or folder, and raises a
        SourceError when a source fails (a camera that stops delivering)."""
        if self._closed:
            raise SourceError(f"{self.description} is closed: open the source again")
        if self._iterator is not None:
            raise RuntimeError("frames() can be iterated once per source; open it again")
        self._iterator = self._generate()
        return self._iterator

    def close(self) -> None:
        """Stops the stream and frees what it holds; safe to call more than once."""
        self._closed = True
        if self._iterator is not None:
            self._iterator.close()
        self._release()

    @abstractmethod
    def _generate(self) -> Iterator[Frame]: ...

    @abstractmethod
    def _release(self) -> None: ...

    def __enter__(self) -> VisionSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_file(path: Path, kind: str, advice: str) -> None:
    """Raises a SourceError unless `path` is a non-empty, readable file."""
    if not path.exists():
        raise SourceError(f"{kind} '{path}' does not exist: {advice}")
    if path.is_dir():
        raise SourceError(f"{kind} '{path}' is a folder, not a file: {advice}")
    if not path.is_file():  # a FIFO would block the first read; a device never ends
        raise SourceError(f"{kind} '{path}' is not a regular file: {advice}")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as exc:
        raise SourceError(
            f"{kind} '{path}' cannot be read ({exc.strerror}): {advice}"
        ) from None
    if empty:
        raise SourceError(f"{kind} '{path}' is empty (0 bytes): {advice}")


class VideoSource(VisionSource):
    """A video file decoded frame by frame with OpenCV (FFmpeg).

    A frame that fails to decode costs one read and is counted in the next frame's
    `dropped`. A video that stops decoding before the frame count its header announces
    is read up to that point and listed in stats.files_skipped with the reason.
    """

    def __init__(self, path: str | os.PathLike, fmt: FrameFormat, *, skip_frames: int = 0):
        cv = _opencv()
        self.path = Path(path)
        self.stats = VisionStats()
        self.description = f"video '{self.path}'"
        self._shaper, self._cuts = _FrameShaper(fmt), _CutDetector(fmt)
        skip = _integer("skip_frames", skip_frames, 0)
        advice = f"pass a video file ({', '.join(VIDEO_EXTENSIONS)}) with video:PATH"
        _check_file(self.path, "video", advice)

        backend = cv.CAP_FFMPEG if cv.videoio_registry.hasBackend(cv.CAP_FFMPEG) else 0
        with _opencv_quiet():
            capture = cv.VideoCapture(str(self.path), backend)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"{self.description} is not a video OpenCV can decode (FFmpeg cannot open "
                f"it): {advice}, or convert it (e.g. to MJPG or H.264 in .avi or .mp4)"
            )
        self._capture = capture
        self._position = 0  # stream position of the next read, failed reads included
        self._resumed = skip > 0

        # Header facts: nominal rate and frame count (either may be missing).
        fps, count = capture.get(cv.CAP_PROP_FPS), capture.get(cv.CAP_PROP_FRAME_COUNT)
        self.fps = self.stats.fps = float(fps) if math.isfinite(fps) and fps > 0 else None
        self.header_frames = int(count) if math.isfinite(count) and count > 0 else None
        width = int(capture.get(cv.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv.CAP_PROP_FRAME_HEIGHT))
        facts = [f"{width}x{height}"]
        facts += [f"{self.fps:g} fps"] if self.fps else []
        facts += [f"{self.header_frames} frames"] if self.header_frames else []
        self.description += f" ({', '.join(facts)})"

        # Skip to where a resumed run stopped, then decode the first frame now, so that an
        # empty or undecodable video is reported before any work starts.
        try:
            if self.header_frames is not None and skip >= self.header_frames:
                raise self._past_end(skip, self.header_frames)
            trailing = self._skip_to(skip)
            self._pending = self._next(decode=True)
            if self._pending is None and skip:
                # _next stepped back over its own failed reads; those of the skip too.
                raise self._past_end(skip, self._position - trailing)
            if self._pending is None:
                raise SourceError(
                    f"{self.description} holds no frame that decodes (an empty or damaged "
                    f"file): {advice}"
                )
        except BaseException:
            capture.release()
            raise
        self.total_frames = self.header_frames - skip if self.header_frames else None

    def _skip_to(self, skip: int) -> int:
        """Advances to stream position ``skip``: one read per position, frames that fail
        to decode included (``Frame.index`` counts them, and a run records the index
        after its last frame). The last skipped frame is decoded: the cut detector
        compares the first frame against it, so a resumed stream continues its scene
        (the audio sources likewise start no recording when resuming inside one). Returns
        the failed reads it ended on (past the end of a video of unknown length)."""
        failures = 0  # failed reads in a row, up to now
        while self._position < skip:
            last = self._position == skip - 1
            with _opencv_quiet():
                try:
                    ok, image = self._capture.read() if last else (self._capture.grab(), None)
                except cv2.error:
                    ok, image = False, None
            self._position += 1
            failures = 0 if ok else failures + 1
            if failures >= MAX_DECODE_FAILURES:
                raise self._past_end(skip, self._position - failures)
            if ok and last:
                try:
                    self._cuts.is_cut(self._shaper(image))
                except _BadImage:
                    pass  # the first frame then starts a scene
        return failures

    def _past_end(self, skip: int, frames: int) -> SourceError:
        return SourceError(
            f"skip_frames = {skip} is past the end of {self.description}, which has "
            f"{frames} frames: start from 0, or resume with the run that used this video"
        )

    def _next(self, decode: bool) -> tuple[np.ndarray | None, int] | None:
        """Reads the next frame that decodes (decode=False: only advances past it).

        Returns (frame, frames that failed to decode just before it), or None at the end.
        """
        failures = 0
        while True:
            with _opencv_quiet():
                try:
                    if decode:
                        ok, image = self._capture.read()  # (h, w, 3) uint8 BGR
                    else:
                        ok, image = self._capture.grab(), None
                except cv2.error:
                    ok, image = False, None
            self._position += 1
            if ok:
                return image, failures
            failures += 1
            known_end = self.header_frames is not None and self._position >= self.header_frames
            if known_end or failures >= MAX_DECODE_FAILURES:
                self._position -= failures  # reads past the end are not frames
                return None

    def _generate(self) -> Iterator[Frame]:
        try:
            pending, self._pending = self._pending, None
            self.stats.files_read = 1
            first = not self._resumed
            while pending is not None:
                raw, dropped = pending
                index = self._position - 1

                # Shape, then look for a cut against the previous frame.
                try:
                    image = self._shaper(raw)
                except _BadImage as bad:
                    raise SourceError(f"{self.description}: frame {index}: {bad}") from None
                cut = self._cuts.is_cut(image)
                self.stats.scene_cuts += cut
                self.stats.frames_read += 1
                self.stats.frames_dropped += dropped
                yield Frame(image, first or cut, dropped, index)
                first = False
                pending = self._next(decode=True)

            # The end: note a video that stopped short of its announced length.
            if self.header_frames is not None and self._position < self.header_frames:
                reason = (
                    f"decoding stopped at frame {self._position} of the "
                    f"{self.header_frames} its header announces (a truncated or damaged "
                    "file); kept the frames before that point"
                )
                log.warning("reading part of '%s': %s", self.path, reason)
                self.stats.files_skipped.append((str(self.path), reason))
        finally:
            self._release()

    def _release(self) -> None:
        self._pending = None
        self._capture.release()


def _find_images(root: Path, stats: VisionStats) -> tuple[list[Path], int]:
    """Files under `root` with an image extension, sorted by path; counts the others in
    stats.files_ignored and returns how many of those are videos."""
    found, videos = [], 0
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in names:
            path = Path(folder, name)
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS and path.is_file():  # no FIFOs, devices
                found.append(path)
            else:
                stats.files_ignored += 1
                videos += suffix in VIDEO_EXTENSIONS
    return sorted(found), videos


def _read_image(path: Path) -> np.ndarray:
    """Decodes one image file: (h, w) grey or (h, w, 3) BGR, uint8, uint16 or float32."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise _BadImage(f"it is {size} bytes, more than {MAX_IMAGE_BYTES} for one image")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise _BadImage(f"it cannot be read ({exc.strerror})") from None
    if data.size == 0:
        raise _BadImage("the file is empty (0 bytes)")
    with _opencv_quiet():
        try:
            image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
        except cv2.error as exc:
            if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
                limit = int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
                raise _BadImage(
                    f"it has more than {limit:,} pixels, the most one image may have "
                    "(OPENCV_IO_MAX_IMAGE_PIXELS); shrink it first"
                ) from None
            first_line = str(exc).strip().splitlines()[-1][:200]
            raise _BadImage(f"OpenCV fails on it ({first_line})") from None
    if image is None:
        raise _BadImage(
            "OpenCV cannot decode it (a damaged or truncated image, or not an image "
            "despite its extension)"
        )
    return image


class ImageFolderSource(VisionSource):
    """The images of a folder, searched recursively, in path order; each is one frame and
    starts a new scene. Images that cannot be read are skipped, logged, listed in
    stats.files_skipped and counted in the next frame's `dropped`."""

    def __init__(self, root: str | os.PathLike, fmt: FrameFormat, *, skip_frames: int = 0):
        _opencv()
        self.root = Path(root)
        self.stats = VisionStats()
        self._shaper = _FrameShaper(fmt)
        skip = _integer("skip_frames", skip_frames, 0)
        advice = "pass a folder of images with images:DIR"
        if not self.root.exists():
            raise SourceError(f"image folder '{self.root}' does not exist: {advice}")
        if not self.root.is_dir():
            raise SourceError(
                f"'{self.root}' is a file, not a folder: {advice} (put a single image in a "
                "folder of its own)"
            )
        self._files, videos = _find_images(self.root, self.stats)
        self.description = f"image folder '{self.root}' ({len(self._files)} images)"
        if not self._files:
            hint = f"; pass each of its {videos} videos with video:PATH" if videos else ""
            raise SourceError(
                f"folder '{self.root}' holds no images: no files with the extensions "
                f"{', '.join(IMAGE_EXTENSIONS)} ({self.stats.files_ignored} other "
                f"files){hint}"
            )
        if skip >= len(self._files):
            raise SourceError(
                f"skip_frames = {skip} is past the end of {self.description}: start from 0, "
                "or resume with the run that used this folder"
            )

        # Decode the first readable image now, so that a folder of broken files is
        # reported before any work starts.
        self._position = skip  # index of the next file to read
        self._pending = self._next()
        if self._pending is None:
            skipped = self.stats.files_skipped
            after = f" after the first {skip}" if skip else ""
            raise SourceError(
                f"{self.description} holds no readable image: none of its "
                f"{len(self._files) - skip} image files{after} can be read (first: "
                f"'{skipped[0][0]}': {skipped[0][1]}); use intact copies"
            )
        self.total_frames = len(self._files) - skip

    def _next(self) -> tuple[np.ndarray, int] | None:
        """The next image that reads, shaped, with the count of files skipped before it."""
        skipped = 0
        while self._position < len(self._files):
            path = self._files[self._position]
            self._position += 1
            try:
                return self._shaper(_read_image(path)), skipped
            except _BadImage as bad:
                log.warning("skipping '%s': %s", path, bad)
                self.stats.files_skipped.append((str(path), str(bad)))
                skipped += 1
        self.stats.frames_dropped += skipped  # unreadable files after the last image
        return None

    def _generate(self) -> Iterator[Frame]:
        pending, self._pending = self._pending, None
        while pending is not None:
            image, dropped = pending
            self.stats.files_read += 1
            self.stats.frames_read += 1
            self.stats.frames_dropped += dropped
            yield Frame(image, True, dropped, self._position - 1)
            pending = self._next()

    def _release(self) -> None:
        self._pending = None


class CameraSource(VisionSource):
    """A live capture read by a background thread into one slot.

    `capture` is an opened object with OpenCV's VideoCapture interface (read, get,
    release); the source owns it and releases it. A frame the consumer has not taken when
    the next one arrives is overwritten and counted in the next Frame's `dropped`.

    pace_fps:  read no faster than this rate (a camera paces itself; a video file opened
               with cv2.VideoCapture(path) does not, and with this behaves like one).
    replay:    the capture may end (a recording); otherwise its end is a failure.
    timeout_s: the longest wait for the next frame before a SourceError.
    """

    def __init__(
        self,
        capture,
        fmt: FrameFormat,
        *,
        description: str = "camera",
        pace_fps: float | None = None,
        replay: bool = False,
        timeout_s: float = CAMERA_TIMEOUT_S,
    ):
        cv = _opencv()
        self.description = description
        self.stats = VisionStats()
        self._capture = capture
        self._shaper, self._cuts = _FrameShaper(fmt), _CutDetector(fmt)
        if pace_fps is not None and not (math.isfinite(pace_fps) and pace_fps > 0):
            raise ConfigError(f"pace_fps = {pace_fps!r} must be a positive frame rate")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s = {timeout_s!r} must be a positive number of seconds")
        self._period = 1.0 / pace_fps if pace_fps else 0.0
        self._replay, self._timeout_s = replay, timeout_s
        fps = capture.get(cv.CAP_PROP_FPS)
        self.fps = self.stats.fps = float(fps) if math.isfinite(fps) and fps > 0 else None

        # The slot and the reader's state, guarded by `_ready`.
        self._ready = threading.Condition()
        self._slot: np.ndarray | None = None  # (h, w, 3) the newest frame not yet taken
        self._slot_index = -1  # its position in the stream
        self._captured = 0  # frames read from the capture
        self._ended = False
        self._failure = ""  # why the reader stopped, when it failed
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._released = False

    def _read_loop(self) -> None:
        """The reader thread: capture into the slot until stopped or the capture ends."""
        failure = ""
        due = time.monotonic()
        try:
            with _opencv_quiet():
                while not self._stop.is_set():
                    # Pace: wait for the next frame's time (a real camera waits by itself).
                    if self._period:
                        if self._stop.wait(max(due - time.monotonic(), 0.0)):
                            break
                        due = max(due, time.monotonic()) + self._period

                    # Capture, then replace whatever the consumer has not taken.
                    ok, image = self._capture.read()
                    if not ok:
                        failure = "OpenCV's read failed"
                        break
                    with self._ready:
                        self._slot, self._slot_index = image, self._captured
                        self._captured += 1
                        self._ready.notify()
        except Exception as exc:  # reported to the consumer as a SourceError
            failure = f"OpenCV failed while reading ({type(exc).__name__}: {exc})"
        finally:
            self._capture.release()
            with self._ready:
                self._ended, self._failure = True, failure
                self._ready.notify()

    def _generate(self) -> Iterator[Frame]:
        self._reader = threading.Thread(
            target=self._read_loop, name=f"edge_clapp {self.description}", daemon=True
        )
        self._reader.start()
        try:
            taken = -1  # position of the last frame handed out
            first = True
            while True:
                # Take: wait for the slot to fill, or the reader to end.
                with self._ready:
                    deadline = time.monotonic() + self._timeout_s
                    while self._slot is None and not self._ended:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise SourceError(
                                f"{self.description} delivered no frame for "
                                f"{self._timeout_s:g} s: check that it is connected and "
                                "not used by another program"
                            )
                        self._ready.wait(left)
                    if self._slot is None:
                        break
                    raw, index = self._slot, self._slot_index
                    self._slot = None

                # Shape, look for a cut, and count what was overwritten since the last one.
                try:
                    image = self._shaper(raw)
                except _BadImage as bad:
                    raise SourceError(f"{self.description}: frame {index}: {bad}") from None
                cut = self._cuts.is_cut(image)
                dropped = index - taken - 1
                taken = index
                self.stats.scene_cuts += cut
                self.stats.frames_read += 1
                self.stats.frames_dropped += dropped
                yield Frame(image, first or cut, dropped, index)
                first = False

            # The reader ended: normal for a replayed recording, a failure for a camera.
            if self._failure and (not self._replay or self._captured == 0):
                raise SourceError(
                    f"{self.description} stopped delivering frames after {self._captured} "
                    f"({self._failure}): check that it is still connected, or learn from a "
                    "file with --source video:PATH"
                )
        finally:
            self._stop_reader()

    def _stop_reader(self) -> None:
        if self._reader is None or not self._reader.is_alive():
            return
        self._stop.set()
        self._reader.join(_JOIN_TIMEOUT_S)
        if self._reader.is_alive():  # stuck in a read: it releases the capture on its way out
            log.warning("%s did not stop within %g s", self.description, _JOIN_TIMEOUT_S)

    def _release(self) -> None:
        if self._reader is None and not self._released:
            self._capture.release()  # never started: no reader owns the capture
        self._released = True
        self._stop_reader()

    @property
    def reader_alive(self) -> bool:
        """Whether the background reader thread is still running."""
        return self._reader is not None and self._reader.is_alive()


def open_camera(
    index: int = 0,
    fmt: FrameFormat | None = None,
    *,
    capture_factory: Callable[[int], object] | None = None,
) -> CameraSource:
    """Opens camera `index` with cv2.VideoCapture (or `capture_factory(index)`)."""
    cv = _opencv()
    index = _integer("camera index", index, 0)
    fmt = fmt or FrameFormat(32, 32)
    with _opencv_quiet():
        capture = (capture_factory or cv.VideoCapture)(index)
        opened = capture.isOpened()
    if not opened:
        capture.release()
        raise SourceError(
            f"no camera at index {index}: connect one (see /dev/video*) or learn from a "
            "file with --source video:PATH"
        )
    try:
        backend = f" ({capture.getBackendName()})"
    except (AttributeError, cv.error):
        backend = ""
    return CameraSource(capture, fmt, description=f"camera {index}{backend}")


# ---------------------------------------------------------------------------------------
# Specs


def _folder_holds_images(root: Path) -> bool:
    """Whether a folder (searched recursively) holds images and no audio."""
    images = False
    for _folder, _subfolders, names in os.walk(root):
        for name in names:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in AUDIO_EXTENSIONS:
                return False
            images = images or suffix in IMAGE_EXTENSIONS
    return images


def is_vision_spec(spec: str) -> bool:
    """Whether `spec` names a vision source: camera, camera:N, video:PATH, images:DIR, a
    path with a video extension (existing or not, so that a missing video is reported as
    one), or a folder whose supported files are images and that holds no audio."""
    if not isinstance(spec, str) or not spec:
        return False
    if spec == "camera" or spec.startswith(("camera:", "video:", "images:")):
        return True
    try:
        path = Path(spec).expanduser()
        if path.is_dir():
            return _folder_holds_images(path)
        return path.suffix.lower() in VIDEO_EXTENSIONS
    except (OSError, RuntimeError, ValueError):  # name too long, unknown ~user, NUL byte
        return False


def _spec_path(spec: str, text: str) -> Path:
    if not text:
        raise SourceError(f"'{spec}' names no path: {_SPEC_HELP}")
    try:
        path = Path(text).expanduser()
        path.exists()
    except (OSError, RuntimeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SourceError(
            f"'{text[:200]}' cannot be used as a path ({why}): {_SPEC_HELP}"
        ) from None
    return path


def open_vision_source(
    spec: str,
    *,
    height: int,
    width: int,
    color: str = "gray",
    fit: str = "crop",
    scene_cut: float = 0.1,
    skip_frames: int = 0,
) -> VisionSource:
    """Opens `spec`: camera (index 0), camera:INDEX, video:PATH, images:DIR (searched
    recursively), a video file, or a folder of images.

    skip_frames drops that many frames from the start of a video or image folder, to
    resume a run where it stopped; a live camera has no position and ignores it. A file
    literally named `camera` is read by passing `video:camera`.
    """
    fmt = FrameFormat(height, width, color, fit, scene_cut)
    skip = _integer("skip_frames", skip_frames, 0)
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError(f"the vision source is empty: {_SPEC_HELP}")

    if spec == "camera" or spec.startswith("camera:"):
        text = spec[len("camera:") :] if spec != "camera" else "0"
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_CAMERA_INDEX:
            raise SourceError(
                f"'{spec}': the camera index must be an integer 0..{MAX_CAMERA_INDEX} "
                "(camera:0 is the first camera)"
            )
        if skip:
            log.info("a live camera has no position: skip_frames is ignored")
        return open_camera(int(text), fmt)
    if spec.startswith("video:"):
        return VideoSource(_spec_path(spec, spec[len("video:") :]), fmt, skip_frames=skip)
    if spec.startswith("images:"):
        path = _spec_path(spec, spec[len("images:") :])
        return ImageFolderSource(path, fmt, skip_frames=skip)

    # A bare path: a video file or a folder of images.
    path = _spec_path(spec, spec)
    if path.is_dir():
        if not _folder_holds_images(path):
            raise SourceError(
                f"folder '{path}' holds no images, or holds audio: {_SPEC_HELP} (images:DIR "
                "reads the images of a folder that also holds other files)"
            )
        return ImageFolderSource(path, fmt, skip_frames=skip)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoSource(path, fmt, skip_frames=skip)
    raise SourceError(f"'{spec[:200]}' is not a vision source: {_SPEC_HELP}")
