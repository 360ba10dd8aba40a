"""edge_clapp: on-device learning with the CLAPP rule (local, contrastive, predictive)."""

import os

# OpenCV reads these once, when it loads: set here, before any module of the package can
# import it. FFmpeg's own messages ("[mjpeg @ 0x...] No JPEG data found") would reach
# stderr; decode failures are counted and logged by edge_clapp.vision_sources instead.
# OpenCV's default pixel limit (2**30) lets a 3 MB PNG of 30000 x 30000 take 5.5 GB;
# 2**26 is 8192 x 8192. A value the user has set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**26))

__version__ = "0.1.0"
