"""Checkpoints: tensors in safetensors, everything else in JSON; no pickle anywhere.

Layout of a checkpoint folder::

    meta.json                 format, resolved config, counters, meters, which state file
    state-<blocks>.safetensors every tensor of the learner, plus the RNG state

Writes are atomic: the state file is written under a temporary name, flushed and renamed;
then ``meta.json`` is replaced the same way, and only then are older state files removed.
A crash at any point leaves the previous ``meta.json`` and the state file it names intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edge_clapp.config import Config
from edge_clapp.errors import CheckpointError, ConfigError
from edge_clapp.learner import Counters, LayerMeter, LearnerBase, make_learner
from edge_clapp.paths import file_sha256

FORMAT = "edge_clapp.checkpoint/1"
STATE_NAME = re.compile(r"state-\d{9,}\.safetensors")
META = "meta.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """Write via ``write(tmp_path)`` then rename over ``path``; the tmp file never lingers."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    learner: LearnerBase, folder: str | Path, extra: dict | None = None
) -> Path:
    """Write the learner's full state into ``folder`` (created if needed)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
        tensors = {name: t.contiguous() for name, t in learner.tensors().items()}
        tensors["generator"] = learner.generator.get_state()
        state_name = f"state-{learner.counters.blocks:09d}.safetensors"
        state_path = folder / state_name
        _write_atomic(state_path, lambda p: save_file(tensors, str(p)))
        meta = {
            "format": FORMAT,
            "state_file": state_name,
            "sha256": file_sha256(state_path),
            "config": learner.config.to_dict(),
            "counters": dataclasses.asdict(learner.counters),
            "meters": [dataclasses.asdict(m) for m in learner.meters],
            "next_segment": learner.next_segment,
            "pending_boundary": learner.pending_boundary,
            "extra": extra or {},
        }
        text = json.dumps(meta, indent=2)
        _write_atomic(folder / META, lambda p: p.write_text(text))
        _fsync_dir(folder)
        for old in folder.glob("state-*.safetensors"):
            if old.name != state_name:
                old.unlink(missing_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write a checkpoint to {str(folder)!r}: {exc.strerror or exc}; "
            "choose a writable folder with free space"
        ) from None
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} is not an edge_clapp checkpoint (no {META}); "
            "pass the checkpoint folder a learn run wrote (DIR/checkpoint)"
        )
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise CheckpointError(
            f"{str(path)!r} is corrupt (not JSON: {str(exc)[:200]})"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{str(path)!r} cannot be read ({exc.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{str(path)!r} has format {found!r}, expected {FORMAT!r}: not a checkpoint "
            "this version of edge_clapp wrote"
        )
    return meta


def load_checkpoint(folder: str | Path) -> tuple[LearnerBase, dict[str, Any]]:
    """Rebuild the learner exactly as it was saved. Returns (learner, extra)."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        config = Config.from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the config in {str(folder)!r} is invalid: {exc}") from None
    state_file = meta.get("state_file")
    if not isinstance(state_file, str) or not STATE_NAME.fullmatch(state_file):
        raise CheckpointError(
            f"{META} in {str(folder)!r} names {str(state_file)[:80]!r}, not a state file"
        )
    state_path = folder / state_file
    if not state_path.is_file():
        raise CheckpointError(f"{str(state_path)!r} named by {META} is missing")
    if file_sha256(state_path) != meta.get("sha256"):
        raise CheckpointError(
            f"{str(state_path)!r} does not match the checksum in {META}: the file is corrupt"
        )
    try:
        tensors = load_file(str(state_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(state_path)!r}: {exc}") from None

    try:
        learner = make_learner(config)
    except (MemoryError, RuntimeError, TypeError, OverflowError) as exc:
        raise CheckpointError(
            f"the config in {str(folder)!r} cannot be built ({str(exc)[:200]})"
        ) from None
    expected = learner.tensors()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - {"generator"})
    if missing or unexpected:
        raise CheckpointError(
            f"{str(state_path)!r} does not fit its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, target in expected.items():
        source = tensors[name]
        if source.shape != target.shape or source.dtype != target.dtype:
            raise CheckpointError(
                f"{name}: checkpoint has {tuple(source.shape)} {source.dtype}, the config "
                f"needs {tuple(target.shape)} {target.dtype}"
            )
        target.copy_(source)
    if "generator" not in tensors:
        raise CheckpointError(f"{str(state_path)!r} lacks the random generator state")
    try:
        learner.generator.set_state(tensors["generator"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"the generator state in {str(state_path)!r} is invalid: {exc}"
        ) from None
    where = f"{META} in {str(folder)!r}"
    try:
        counters = dict(meta["counters"])
        counters.pop("extra", None)  # an unused field of early checkpoints
        for field in dataclasses.fields(Counters):  # counters added later start at 0
            counters.setdefault(field.name, 0)
        learner.counters = Counters(**_checked(counters, Counters, where, "counters"))
        learner.meters = [
            LayerMeter(**_checked(dict(m), LayerMeter, where, f"meters[{i}]"))
            for i, m in enumerate(meta["meters"])
        ]
        next_segment = meta["next_segment"]
        if type(next_segment) is not int or not 0 <= next_segment < 2**62:
            raise CheckpointError(f"{where}: next_segment = {next_segment!r} is not valid")
        learner.next_segment = next_segment
        pending = meta["pending_boundary"]
        if type(pending) is not bool:
            raise CheckpointError(f"{where}: pending_boundary = {pending!r} is not a boolean")
        learner.pending_boundary = pending
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} is incomplete: {exc}") from None
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{where}: extra must be an object, got {extra!r}")
    if len(learner.meters) != len(learner.layers):
        raise CheckpointError(f"{META} in {str(folder)!r} has meters for the wrong layers")
    weights_ok = all(
        torch.isfinite(t).all() for t in expected.values() if t.is_floating_point()
    )
    if not weights_ok:
        raise CheckpointError(f"{str(state_path)!r} holds non-finite values")
    for name, t in expected.items():
        # The replay pool's bookkeeping: slots hold a block (or frame) index and scene,
        # -1 when empty; a count of blocks offered.
        low = 0 if name == "replay.offered" else -1
        if name.startswith("replay.") and not t.is_floating_point() and int(t.min()) < low:
            raise CheckpointError(
                f"{str(state_path)!r}: {name} holds {int(t.min())}, below {low}: the file was "
                "edited or damaged"
            )
        if name.endswith("_range") and float(t) < 0:
            raise CheckpointError(
                f"{str(state_path)!r}: {name} = {float(t)!r} is negative (an activation "
                "range is a magnitude)"
            )
    return learner, extra


def _checked(values: dict[str, Any], cls: type, where: str, what: str) -> dict[str, Any]:
    """The fields of ``cls`` from ``values``, each of its declared type (int or float)."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    if set(values) != set(fields):
        raise CheckpointError(
            f"{where}: {what} has keys {sorted(values)}, expected {sorted(fields)}"
        )
    for name, kind in fields.items():
        value = values[name]
        # Counts are non-negative ints; sums of scores are numbers (NaN allowed: a
        # statistic of a diverged run, not state that learning depends on).
        if kind in (int, "int"):
            ok = type(value) is int and 0 <= value < 2**62
        else:
            ok = type(value) is float or (type(value) is int and abs(value) < 2**62)
        if not ok:
            raise CheckpointError(f"{where}: {what}.{name} = {value!r} is not valid")
    return values
