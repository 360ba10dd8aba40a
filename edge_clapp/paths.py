"""Checks on a file a command is about to write, made before any work is done."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edge_clapp.errors import EdgeClappError

# Files that mark a folder whose contents must stay as they are: a run's checkpoint
# (edge_clapp.checkpoint.META) and a speech corpus (edge_clapp.speech_corpus).
PROTECTED_MARKERS = {
    "meta.json": "a run's checkpoint folder",
    ".speech-corpus.lock": "a corpus",
}


def check_output_file(
    path: str | Path, what: str, error: type[EdgeClappError] = EdgeClappError
) -> Path:
    """``path`` if a command may write its ``what`` there: a regular file or a new name,
    in an existing, writable folder that is neither a checkpoint nor a corpus. Raises
    ``error`` saying what is wrong otherwise."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise error(
                f"'{path}' exists and is not a regular file: choose a file name for the {what}"
            )
        parent = path.parent
        if not parent.is_dir():
            raise error(
                f"'{parent}' is not a folder: create it, or choose another place for the {what}"
            )
        for marker, kind in PROTECTED_MARKERS.items():
            if (parent / marker).exists():
                raise error(
                    f"'{parent}' is {kind}: write the {what} elsewhere (its files must stay "
                    "as they are)"
                )
        if not os.access(parent, os.W_OK):
            raise error(
                f"cannot write into '{parent}': choose a writable folder for the {what}"
            )
    except OSError as exc:
        raise error(f"'{str(path)[:200]}' cannot be used ({exc.strerror or exc})") from None
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
