"""Vision sources on real footage and stills (Debian's opencv-doc) and on small videos and
images made here, whose every pixel is known."""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_clapp.errors import ConfigError, SourceError
from edge_clapp.vision_sources import (
    IMAGE_EXTENSIONS,
    CameraSource,
    FrameFormat,
    VideoSource,
    is_vision_spec,
    open_camera,
    open_vision_source,
)
from tests.helpers import assert_close

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is missing: run setup.sh")

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
needs_opencv_doc = pytest.mark.skipif(
    not (DATA / "vtest.avi").is_file(),
    reason=f"{DATA} is missing: install Debian's opencv-doc (scripts/setup.sh does)",
)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Writes (h, w, 3) uint8 BGR frames as MJPG in an .avi file."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), f"cv2.VideoWriter cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _level_video(path: Path, count: int, step: int = 6, fps: float = 25.0) -> Path:
    """A video whose frame i is flat grey at level i * step (so its index can be read
    back from its pixels)."""
    return _write_video(
        path, [np.full((48, 64, 3), i * step, np.uint8) for i in range(count)], fps
    )


def _level_index(frame, step: int = 6) -> int:
    return int(round(float(frame.image.mean()) * 255 / step))


def _read_all(source) -> list:
    with source:
        return list(source.frames())


# ---------------------------------------------------------------------------------------
# Real footage and stills


@needs_opencv_doc
def test_vtest_avi_is_one_continuous_shot_of_795_frames(capfd):
    source = open_vision_source(str(DATA / "vtest.avi"), height=32, width=32)
    assert (source.fps, source.total_frames) == (10.0, 795)
    assert "768x576" in source.description
    frames = _read_all(source)

    assert [f.index for f in frames] == list(range(795))
    assert [f.dropped for f in frames] == [0] * 795
    assert [f.index for f in frames if f.boundary] == [0]  # a fixed camera: no cut
    stack = np.stack([f.image for f in frames])  # (795, 32, 32, 1)
    assert stack.shape == (795, 32, 32, 1) and stack.dtype == np.float32
    assert 0.0 <= stack.min() and stack.max() <= 1.0
    assert stack.std() > 0.05, "the footage decoded to flat frames"
    assert np.abs(stack[1:] - stack[:-1]).max() > 0.1, "nothing moves between frames"
    stats = source.stats.to_dict()
    assert stats["frames_read"] == 795 and stats["scene_cuts"] == 0
    assert stats["files_read"] == 1 and stats["fps"] == 10.0
    assert capfd.readouterr().err == ""


@needs_opencv_doc
def test_megamind_trailer_cuts_are_found_where_the_shots_change():
    # Its shots change at frames 1 (from black), 98, 154 and 200; the largest change
    # inside a shot is below 0.02 and at a change 0.17 .. 0.19 (16 x 16 grey thumbnails).
    cut_at = open_vision_source(
        f"video:{DATA / 'Megamind.avi'}", height=24, width=32, color="rgb", scene_cut=0.1
    )
    frames = _read_all(cut_at)
    assert len(frames) == 270
    assert [f.index for f in frames if f.boundary] == [0, 1, 98, 154, 200]
    assert cut_at.stats.scene_cuts == 4

    # Resumed at a cut, the first frame is compared with the last skipped one: a boundary;
    # resumed inside a shot it is none.
    at_cut = open_vision_source(str(DATA / "Megamind.avi"), height=24, width=32,
                                skip_frames=98)  # fmt: skip
    inside = open_vision_source(str(DATA / "Megamind.avi"), height=24, width=32,
                                skip_frames=120)  # fmt: skip
    assert [f.index for f in _read_all(at_cut) if f.boundary] == [98, 154, 200]
    assert [f.index for f in _read_all(inside) if f.boundary] == [154, 200]

    # The default threshold (0.1) finds the same cuts; 0.3 is above every change here.
    default = open_vision_source(str(DATA / "Megamind.avi"), height=24, width=32)
    assert [f.index for f in _read_all(default) if f.boundary] == [0, 1, 98, 154, 200]
    high = open_vision_source(str(DATA / "Megamind.avi"), height=24, width=32, scene_cut=0.3)
    assert [f.index for f in _read_all(high) if f.boundary] == [0]
    assert high.stats.scene_cuts == 0


@needs_opencv_doc
def test_truncated_real_video_keeps_the_frames_that_decode(caplog):
    # tree.avi's header announces 444 frames; the file holds the first 68.
    source = open_vision_source(str(DATA / "tree.avi"), height=16, width=16)
    assert source.total_frames == 444
    with caplog.at_level(logging.WARNING, logger="edge_clapp.vision_sources"):
        frames = _read_all(source)
    assert [f.index for f in frames] == list(range(68))
    [(path, reason)] = source.stats.files_skipped
    assert path == str(DATA / "tree.avi")
    assert "decoding stopped at frame 68 of the 444 its header announces" in reason
    assert "tree.avi" in caplog.text and "frame 68 of the 444" in caplog.text


@needs_opencv_doc
def test_folder_of_real_stills_gives_one_scene_per_image(capfd):
    files = [p for p in sorted(DATA.rglob("*")) if p.is_file()]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    assert len(images) >= 80, f"expected the opencv-doc stills in {DATA}"
    assert is_vision_spec(str(DATA))

    source = open_vision_source(f"images:{DATA}", height=24, width=32, color="rgb")
    assert (source.total_frames, source.fps) == (len(images), None)
    frames = _read_all(source)
    assert [f.index for f in frames] == list(range(len(images)))
    assert all(f.boundary and f.dropped == 0 for f in frames)
    for f in frames:
        assert f.image.shape == (24, 32, 3) and f.image.dtype == np.float32
        assert 0.0 <= f.image.min() and f.image.max() <= 1.0
    assert source.stats.files_read == len(images)
    assert source.stats.files_ignored == len(files) - len(images)  # .avi, .xml, .txt ...
    assert source.stats.scene_cuts == 0 and source.stats.files_skipped == []
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------
# Synthetic videos


def test_two_scenes_give_exactly_one_cut_at_the_change(tmp_path):
    # Scene A: a white square sliding over dark grey; scene B: bright with a dark bar.
    frames = []
    for i in range(24):
        if i < 13:
            frame = np.full((60, 80, 3), 40, np.uint8)
            frame[20:40, 2 * i : 2 * i + 20] = 255
        else:
            frame = np.full((60, 80, 3), 220, np.uint8)
            frame[:, 2 * i : 2 * i + 10] = 10
        frames.append(frame)
    path = _write_video(tmp_path / "two_scenes.avi", frames)

    source = open_vision_source(str(path), height=30, width=40)
    got = _read_all(source)
    assert len(got) == 24
    assert [f.index for f in got if f.boundary] == [0, 13]
    assert source.stats.scene_cuts == 1

    # With detection off, only the start of the stream is a boundary.
    off = open_vision_source(str(path), height=30, width=40, scene_cut=0)
    assert [f.index for f in _read_all(off) if f.boundary] == [0]
    assert off.stats.scene_cuts == 0


def test_skip_frames_resumes_at_that_frame(tmp_path):
    path = _level_video(tmp_path / "levels.avi", 30)

    source = open_vision_source(f"video:{path}", height=8, width=8, skip_frames=7)
    assert source.total_frames == 23
    frames = _read_all(source)
    assert [f.index for f in frames] == list(range(7, 30))
    assert [_level_index(f) for f in frames] == list(range(7, 30))
    # A resumed stream continues its scene: no boundary unless the first frame is a cut
    # against the last skipped one (the levels change gradually: none here).
    assert not any(f.boundary for f in frames)

    last = _read_all(open_vision_source(str(path), height=8, width=8, skip_frames=29))
    assert [(f.index, _level_index(f)) for f in last] == [(29, 29)]
    with pytest.raises(SourceError, match=r"skip_frames = 30 is past the end of .* 30 frames"):
        open_vision_source(str(path), height=8, width=8, skip_frames=30)


def test_frames_that_fail_to_decode_are_counted_as_dropped(tmp_path, capfd):
    path = _level_video(tmp_path / "levels.avi", 40)

    # Overwrite frames 10, 11 and 20 (each a JPEG image, start to end marker) with zeros.
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == 40, "expected one JPEG start marker per frame"
    for k in (10, 11, 20):
        end = data.index(b"\xff\xd9", starts[k]) + 2
        data[starts[k] : end] = bytes(end - starts[k])
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))

    source = open_vision_source(str(broken), height=8, width=8)
    frames = _read_all(source)
    expected = [i for i in range(40) if i not in (10, 11, 20)]
    assert [f.index for f in frames] == expected
    assert [_level_index(f) for f in frames] == expected
    assert {f.index: f.dropped for f in frames if f.dropped} == {12: 2, 21: 1}
    assert source.stats.frames_dropped == 3 and source.stats.frames_read == 37
    assert capfd.readouterr().err == "", "FFmpeg's decode errors reached stderr"

    # skip_frames counts stream positions, failed frames included (a resumed run records
    # the index after its last frame): resuming at 13 or 21 starts exactly there.
    for skip, first in ((13, 13), (21, 21), (10, 12), (11, 12)):
        resumed = _read_all(open_vision_source(str(broken), height=8, width=8,
                                               skip_frames=skip))  # fmt: skip
        assert resumed[0].index == first and _level_index(resumed[0]) == first
        assert resumed[0].dropped == first - skip
    assert capfd.readouterr().err == ""


def test_video_files_that_cannot_be_read_are_refused_with_the_reason(tmp_path, capfd):
    text = tmp_path / "notes.avi"
    text.write_text("these are notes, not a video\n")
    empty_file = tmp_path / "empty.mp4"
    empty_file.write_bytes(b"")
    no_frames = tmp_path / "no_frames.avi"
    writer = cv2.VideoWriter(str(no_frames), cv2.VideoWriter_fourcc(*"MJPG"), 25, (8, 8))
    writer.release()

    cases = [
        (str(tmp_path / "missing.mp4"), r"missing.mp4' does not exist: pass a video file"),
        (f"video:{tmp_path}", r"is a folder, not a file: pass a video file"),
        (str(text), r"notes.avi' .*is not a video OpenCV can decode.*convert it"),
        (str(empty_file), r"empty.mp4' is empty \(0 bytes\)"),
        (str(no_frames), r"no_frames.avi' .*holds no frame that decodes"),
    ]
    for spec, message in cases:
        with pytest.raises(SourceError, match=message):
            open_vision_source(spec, height=8, width=8)
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------
# Image folders: geometry, colour and depth on images with known pixels


def _bands(horizontal: bool) -> np.ndarray:
    """A 2:1 BGR image: red, green, blue bands of 1/4, 1/2, 1/4 along its long side."""
    image = np.zeros((40, 80, 3), np.uint8)  # (h, w, BGR)
    image[:, :20, 2] = 255
    image[:, 20:60, 1] = 255
    image[:, 60:, 0] = 255
    return image if horizontal else np.ascontiguousarray(image.transpose(1, 0, 2))


@pytest.mark.parametrize("horizontal", [True, False], ids=["wide", "tall"])
def test_crop_keeps_the_centre_and_resize_keeps_everything(tmp_path, horizontal):
    cv2.imwrite(str(tmp_path / "bands.png"), _bands(horizontal))
    red, green, blue = (np.array(c, np.float32) for c in ([1, 0, 0], [0, 1, 0], [0, 0, 1]))

    # crop: the centred 1:1 window lies inside the green band.
    [cropped] = _read_all(open_vision_source(str(tmp_path), height=10, width=10, color="rgb"))
    assert_close(cropped.image, np.broadcast_to(green, (10, 10, 3)), name="cropped")

    # resize: all three bands, squeezed into 10 x 10; the ends keep their pure colours.
    [stretched] = _read_all(
        open_vision_source(str(tmp_path), height=10, width=10, color="rgb", fit="resize")
    )
    along = stretched.image if horizontal else stretched.image.transpose(1, 0, 2)
    assert_close(along[:, :2], np.broadcast_to(red, (10, 2, 3)), name="first band")
    assert_close(along[:, 3:7], np.broadcast_to(green, (10, 4, 3)), name="middle band")
    assert_close(along[:, 8:], np.broadcast_to(blue, (10, 2, 3)), name="last band")


def test_red_is_red_in_rgb_and_luma_in_gray(tmp_path):
    red_bgr = np.zeros((12, 16, 3), np.uint8)
    red_bgr[:, :, 2] = 255
    cv2.imwrite(str(tmp_path / "red.png"), red_bgr)

    [rgb] = _read_all(open_vision_source(f"images:{tmp_path}", height=6, width=8, color="rgb"))
    assert_close(rgb.image, np.broadcast_to(np.float32([1, 0, 0]), (6, 8, 3)), name="rgb")
    [gray] = _read_all(open_vision_source(f"images:{tmp_path}", height=6, width=8))
    # ITU-R BT.601 luma: 0.299 R, rounded to 8 bits (76 / 255).
    assert_close(gray.image, np.full((6, 8, 1), 76 / 255, np.float32), atol=1e-6, name="gray")


def test_every_pixel_depth_and_layout_becomes_float_in_0_1(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 7  # blue, almost transparent
    deep_rgb = np.zeros((4, 4, 3), np.uint16)
    deep_rgb[..., 1] = 65535  # green
    written = {
        "a_gray8.png": np.full((4, 4), 51, np.uint8),
        "b_gray16.png": np.full((4, 4), 13107, np.uint16),  # 0.2 of 65535
        "c_rgba.png": bgra,
        "d_rgb16.tif": deep_rgb,
        "e_float.tif": np.full((4, 4, 3), 0.25, np.float32),
        "f_rgb.pgm": np.full((4, 4), 255, np.uint8),
    }
    for name, image in written.items():
        assert cv2.imwrite(str(tmp_path / name), image), f"cannot write {name}"

    expected_rgb = [[0.2] * 3, [0.2] * 3, [0, 0, 1], [0, 1, 0], [0.25] * 3, [1, 1, 1]]
    frames = _read_all(open_vision_source(str(tmp_path), height=2, width=2, color="rgb"))
    assert len(frames) == len(written)
    for frame, rgb, name in zip(frames, expected_rgb, written, strict=True):
        want = np.broadcast_to(np.float32(rgb), (2, 2, 3))
        assert_close(frame.image, want, atol=1e-6, name=name)

    gray = _read_all(open_vision_source(str(tmp_path), height=2, width=2))
    assert [f.image.shape for f in gray] == [(2, 2, 1)] * len(written)
    assert all(f.image.dtype == np.float32 for f in gray)


def test_unreadable_images_are_skipped_listed_and_counted(tmp_path, caplog, capfd):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((8, 8), 10, np.uint8))
    (tmp_path / "b_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "c_empty.jpg").write_bytes(b"")
    (tmp_path / "d_text.jpg").write_text("not a picture")
    (tmp_path / "e_readme.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "f.jpg"), np.full((8, 8, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "g_over.tif"), np.full((4, 4), 1.5, np.float32))

    source = open_vision_source(f"images:{tmp_path}", height=4, width=4)
    with caplog.at_level(logging.WARNING, logger="edge_clapp.vision_sources"):
        frames = _read_all(source)
    assert [(f.index, f.dropped) for f in frames] == [(0, 0), (5, 4)]
    assert [round(float(f.image.mean()) * 255) for f in frames] == [10, 200]
    reasons = dict(source.stats.files_skipped)
    assert list(reasons) == [
        str(tmp_path / n) for n in ("b_garbage.png", "c_empty.jpg", "d_text.jpg", "g_over.tif")
    ]
    assert "OpenCV cannot decode it" in reasons[str(tmp_path / "b_garbage.png")]
    assert reasons[str(tmp_path / "c_empty.jpg")] == "the file is empty (0 bytes)"
    assert "range over [1.5, 1.5], not [0, 1]" in reasons[str(tmp_path / "g_over.tif")]
    stats = source.stats
    assert (stats.files_read, stats.files_ignored, stats.frames_dropped) == (2, 1, 4)
    assert caplog.text.count("skipping '") == 4
    assert capfd.readouterr().err == "", "OpenCV's decoder warnings reached stderr"


def test_folders_without_a_readable_image_are_refused(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    (broken / "b.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match=r"none of its 2 image files can be read \(first: "):
        open_vision_source(f"images:{broken}", height=8, width=8)

    videos = tmp_path / "videos"
    videos.mkdir()
    _level_video(videos / "clip.avi", 2)
    (videos / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"holds no images.*2 other files.*1 videos with"):
        open_vision_source(f"images:{videos}", height=8, width=8)

    cv2.imwrite(str(videos / "one.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(SourceError, match=r"skip_frames = 1 is past the end of image folder"):
        open_vision_source(f"images:{videos}", height=8, width=8, skip_frames=1)
    with pytest.raises(SourceError, match=r"is a file, not a folder"):
        open_vision_source(f"images:{videos / 'one.png'}", height=8, width=8)


# ---------------------------------------------------------------------------------------
# Specs and arguments


def test_is_vision_spec_tells_vision_from_audio(tmp_path):
    stills, mixed, texts = tmp_path / "stills", tmp_path / "mixed", tmp_path / "texts"
    for folder in (stills, mixed, texts):
        folder.mkdir()
    (stills / "deep").mkdir()
    (stills / "deep" / "x.png").write_bytes(b"")
    (mixed / "x.png").write_bytes(b"")
    (mixed / "y.WAV").write_bytes(b"")
    (texts / "a.txt").write_text("")
    (tmp_path / "song.flac").write_bytes(b"")

    vision = ["camera", "camera:2", "video:x", "images:x", str(tmp_path / "clip.MKV"),
              str(stills)]  # fmt: skip
    audio = ["mic", "mic:1", "", str(mixed), str(texts), str(tmp_path / "song.flac"),
             "cameras", "x" * 5000, "a\0b"]  # fmt: skip
    assert [s for s in vision if not is_vision_spec(s)] == []
    assert [s for s in audio if is_vision_spec(s)] == []


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", r"the vision source is empty: pass camera, camera:INDEX, video:PATH"),
        ("camera:-1", r"'camera:-1': the camera index must be an integer 0..9999"),
        ("camera:front", r"the camera index must be an integer 0..9999"),
        ("camera:\u00b2", r"the camera index must be an integer 0..9999"),  # a Unicode digit
        ("camera:2147483648", r"the camera index must be an integer 0..9999"),
        ("video:", r"'video:' names no path"),
        ("webcam", r"'webcam' is not a vision source: pass camera, camera:INDEX"),
    ],
)
def test_bad_specs_name_the_accepted_forms(spec, message):
    with pytest.raises(SourceError, match=message):
        open_vision_source(spec, height=8, width=8)


@pytest.mark.parametrize(
    "argument, message",
    [
        ({"height": 0}, r"height = 0 must be an integer from 1 to 4096"),
        ({"width": 5000}, r"width = 5000 must be an integer from 1 to 4096"),
        ({"height": 8.0}, r"height = 8.0 must be an integer"),
        ({"width": True}, r"width = True must be an integer"),
        ({"color": "bgr"}, r"color = 'bgr' is not valid; allowed: gray, rgb"),
        ({"fit": "pad"}, r"fit = 'pad' is not valid; allowed: crop, resize"),
        ({"scene_cut": -0.1}, r"scene_cut = -0.1 must be a number in \[0, 1\]"),
        ({"scene_cut": 1.5}, r"scene_cut = 1.5 must be a number in \[0, 1\]"),
        ({"scene_cut": float("nan")}, r"scene_cut = nan must be a number in \[0, 1\]"),
        ({"skip_frames": -1}, r"skip_frames = -1 must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_allowed_values(argument, message):
    kwargs = {"height": 8, "width": 8, **argument}
    with pytest.raises(ConfigError, match=message):
        open_vision_source("camera", **kwargs)


def test_stats_are_json_and_a_source_iterates_once(tmp_path):
    source = open_vision_source(str(_level_video(tmp_path / "v.avi", 3)), height=4, width=4)
    with source:
        frames = source.frames()
        next(frames)
        with pytest.raises(RuntimeError, match="iterated once per source"):
            source.frames()
    assert json.loads(json.dumps(source.stats.to_dict())) == {
        "frames_read": 1,
        "frames_dropped": 0,
        "scene_cuts": 0,
        "files_read": 1,
        "files_skipped": [],
        "files_ignored": 0,
        "fps": 25.0,
    }
    with pytest.raises(SourceError, match=r"is closed: open the source again"):
        source.frames()


# ---------------------------------------------------------------------------------------
# Camera


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="this machine has a camera")
@pytest.mark.parametrize("spec, index", [("camera", 0), ("camera:3", 3)])
def test_no_camera_is_a_clear_error_and_opencv_stays_quiet(capfd, spec, index):
    with pytest.raises(SourceError) as error:
        open_vision_source(spec, height=8, width=8)
    assert str(error.value) == (
        f"no camera at index {index}: connect one (see /dev/video*) or learn from a file "
        "with --source video:PATH"
    )
    assert capfd.readouterr().err == ""


def _replayed(path: Path, fps: float, **kwargs) -> tuple[CameraSource, object]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    fmt = FrameFormat(8, 8, scene_cut=0)
    source = CameraSource(capture, fmt, description="replayed camera", pace_fps=fps, **kwargs)
    return source, capture


def test_a_slow_consumer_sees_overwritten_frames_counted(tmp_path):
    source, _ = _replayed(_level_video(tmp_path / "v.avi", 40), fps=100.0, replay=True)
    frames = []
    with source:
        for frame in source.frames():
            frames.append(frame)
            time.sleep(0.05)  # five camera frames arrive while this one is learned

    assert sum(f.dropped for f in frames) > 10, "a slow consumer lost no frames"
    assert frames[-1].index == 39  # the newest frame is never lost
    previous = -1
    for frame in frames:
        assert frame.index == previous + 1 + frame.dropped
        assert _level_index(frame) == frame.index, "the index names another frame"
        previous = frame.index
    assert source.stats.frames_read == len(frames)
    assert source.stats.frames_read + source.stats.frames_dropped == 40
    assert [f.boundary for f in frames] == [True] + [False] * (len(frames) - 1)


def test_closing_a_camera_stops_its_reader_thread(tmp_path):
    source, capture = _replayed(_level_video(tmp_path / "v.avi", 200, step=1), fps=50.0)
    frames = source.frames()
    taken = [next(frames), next(frames)]
    assert source.reader_alive
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 1.0
    assert not source.reader_alive
    assert not capture.isOpened(), "the capture was not released"
    assert "edge_clapp replayed camera" not in [t.name for t in threading.enumerate()]
    assert taken[0].boundary and taken[1].index > taken[0].index
    with pytest.raises(StopIteration):
        next(frames)


def test_a_camera_that_stops_delivering_is_an_error_a_replay_is_not(tmp_path):
    path = _level_video(tmp_path / "v.avi", 5)
    live, _ = _replayed(path, fps=200.0)
    with pytest.raises(SourceError, match=r"replayed camera stopped delivering frames after 5"):
        _read_all(live)
    assert not live.reader_alive

    replay, _ = _replayed(path, fps=200.0, replay=True)
    assert _read_all(replay)[-1].index == 4


class _SilentCapture:
    """A capture that opens but whose reads take half a second, then fail."""

    def __init__(self):
        self.released = threading.Event()

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        time.sleep(0.5)
        return False, None

    def release(self):
        self.released.set()


def test_a_camera_that_sends_nothing_times_out():
    capture = _SilentCapture()
    source = CameraSource(capture, FrameFormat(8, 8), description="camera 9", timeout_s=0.2)
    with pytest.raises(SourceError, match=r"camera 9 delivered no frame for 0.2 s: check"):
        _read_all(source)
    source.close()
    assert not source.reader_alive and capture.released.is_set()


def test_open_camera_uses_the_capture_factory(tmp_path):
    path = _level_video(tmp_path / "v.avi", 3)
    asked = []

    def factory(index):
        asked.append(index)
        return cv2.VideoCapture(str(path))

    source = open_camera(2, FrameFormat(8, 8), capture_factory=factory)
    assert asked == [2] and source.description == "camera 2 (FFMPEG)"
    assert source.fps == 25.0 and source.total_frames is None
    source.close()

    def nothing(index):
        return cv2.VideoCapture(str(tmp_path / "missing.avi"))

    with pytest.raises(SourceError, match=r"^no camera at index 4: connect one"):
        open_camera(4, capture_factory=nothing)


def test_video_source_accepts_a_path_object(tmp_path):
    path = _level_video(tmp_path / "v.avi", 4)
    frames = _read_all(VideoSource(path, FrameFormat(8, 8), skip_frames=1))
    assert [f.index for f in frames] == [1, 2, 3]


def test_fifos_and_oversized_images_are_refused_not_waited_on(tmp_path):
    """A FIFO named as a video is refused at once (reading it would block); one inside an
    image folder is not an image file; an image of more pixels than
    OPENCV_IO_MAX_IMAGE_PIXELS (2**26 here) is skipped with the reason."""
    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="is not a regular file"):
        open_vision_source(f"video:{fifo}", height=8, width=8)
    folder = tmp_path / "stills"
    folder.mkdir()
    os.mkfifo(folder / "a_pipe.png")
    cv2.imwrite(str(folder / "b_big.png"), np.zeros((9000, 8000), np.uint8))  # 72 M pixels
    cv2.imwrite(str(folder / "c_ok.png"), np.full((40, 40), 200, np.uint8))
    source = open_vision_source(f"images:{folder}", height=8, width=8)
    frames = _read_all(source)
    assert len(frames) == 1 and frames[0].dropped == 1
    assert source.stats.files_ignored == 1  # the FIFO
    ((path, reason),) = source.stats.files_skipped
    assert path.endswith("b_big.png") and "more than 67,108,864 pixels" in reason
