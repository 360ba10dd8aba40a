"""Checkpoints: round trip, atomic replacement, and clear refusals of bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch

from edge_clapp import checkpoint as ckpt
from edge_clapp.config import resolve_config
from edge_clapp.errors import CheckpointError
from edge_clapp.learner import OnlineLearner
from tests.helpers import assert_close


def _trained(seed=0, blocks=12):
    learner = OnlineLearner(resolve_config("tiny", overrides={"seed": seed}))
    rng = np.random.default_rng(seed)
    for _ in range(blocks):
        learner.step(rng.standard_normal(learner.config.block_samples).astype(np.float32) * 0.1)
    return learner


def test_round_trip_restores_every_tensor_and_counter(tmp_path):
    learner = _trained()
    ckpt.save_checkpoint(learner, tmp_path / "c", extra={"note": "x"})
    loaded, extra = ckpt.load_checkpoint(tmp_path / "c")
    assert extra == {"note": "x"}
    assert loaded.config == learner.config
    for name, t in learner.tensors().items():
        assert_close(loaded.tensors()[name], t, name=name)
    assert loaded.counters == learner.counters
    assert_close(loaded.generator.get_state(), learner.generator.get_state(), name="rng")


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    learner = _trained()
    folder = ckpt.save_checkpoint(learner, tmp_path / "c")
    saved_weight = learner.layers[0].weight.clone()
    learner.step(np.full(learner.config.block_samples, 0.05, np.float32))

    def crash_midway(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")  # half a file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(learner, folder)
    monkeypatch.undo()

    loaded, _ = ckpt.load_checkpoint(folder)
    assert_close(loaded.layers[0].weight, saved_weight, name="weight")
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(list(folder.glob("state-*.safetensors"))) == 1


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write a checkpoint"):
        ckpt.save_checkpoint(_trained(blocks=1), blocker / "c")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_meta", "not an edge_clapp checkpoint"),
        ("meta_not_json", "corrupt"),
        ("foreign_format", "expected 'edge_clapp.checkpoint/1'"),
        ("state_flipped", "does not match the checksum"),
        ("state_missing", "is missing"),
        ("wrong_shapes", "does not fit its config|needs"),
    ],
)
def test_damaged_checkpoints_are_refused(tmp_path, damage, message):
    folder = ckpt.save_checkpoint(_trained(blocks=2), tmp_path / "c")
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    state = folder / meta["state_file"]
    if damage == "no_meta":
        meta_path.unlink()
    elif damage == "meta_not_json":
        meta_path.write_text("{ truncated")
    elif damage == "foreign_format":
        meta["format"] = "someone-else/3"
        meta_path.write_text(json.dumps(meta))
    elif damage == "state_flipped":
        data = bytearray(state.read_bytes())
        data[-1] ^= 0xFF
        state.write_bytes(bytes(data))
    elif damage == "state_missing":
        state.unlink()
    elif damage == "wrong_shapes":
        tensors = safetensors.torch.load_file(str(state))
        tensors["layers.0.weight"] = tensors["layers.0.weight"][:, :3].contiguous()
        safetensors.torch.save_file(tensors, str(state))
        meta["sha256"] = ckpt.file_sha256(state)
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_checkpoint(folder)


def _edit_meta(folder, edit):
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _set(path, value):
    def edit(meta):
        *parents, last = path
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(["extra"], []), "extra must be an object"),
        (_set(["counters", "blocks"], "5"), "counters.blocks = '5' is not valid"),
        (_set(["counters", "silent_blocks"], -1), "counters.silent_blocks = -1"),
        (_set(["counters", "surprise"], 1), "counters has keys"),
        (_set(["meters", 0, "loss"], "x"), r"meters\[0\].loss = 'x' is not valid"),
        (_set(["next_segment"], 1e300), "next_segment = 1e\\+300 is not valid"),
        (_set(["next_segment"], 2**70), "next_segment"),
        (_set(["counters", "blocks_learned"], 10**400), "counters.blocks_learned"),
        (_set(["meters", 0, "loss"], 10**400), r"meters\[0\].loss"),
        (_set(["pending_boundary"], "false"), "pending_boundary = 'false' is not a boolean"),
        (_set(["state_file"], "../../etc/passwd"), "not a state file"),
        (_set(["state_file"], "a" * 300), "not a state file"),
    ],
    ids=[
        "extra-list",
        "count-str",
        "count-neg",
        "count-extra-key",
        "meter-str",
        "segment-float",
        "segment-huge",
        "count-huge",
        "meter-huge",
        "boundary-str",
        "state-path",
        "state-long",
    ],
)
def test_hand_edited_meta_fields_are_refused(tmp_path, edit, message):
    folder = ckpt.save_checkpoint(_trained(blocks=2), tmp_path / "c")
    _edit_meta(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_checkpoint(folder)


def test_bad_generator_state_is_refused(tmp_path):
    folder = ckpt.save_checkpoint(_trained(blocks=2), tmp_path / "c")
    meta = json.loads((folder / "meta.json").read_text())
    state = folder / meta["state_file"]
    tensors = safetensors.torch.load_file(str(state))
    tensors["generator"] = tensors["generator"][:3].contiguous()
    safetensors.torch.save_file(tensors, str(state))
    _edit_meta(folder, _set(["sha256"], ckpt.file_sha256(state)))
    with pytest.raises(CheckpointError, match="generator state .* is invalid"):
        ckpt.load_checkpoint(folder)


def test_early_checkpoints_with_an_extra_counter_still_load(tmp_path):
    learner = _trained(blocks=3)
    folder = ckpt.save_checkpoint(learner, tmp_path / "c")
    _edit_meta(folder, _set(["counters", "extra"], {}))  # as the first commits wrote it
    _edit_meta(
        folder, lambda meta: meta["counters"].pop("activations_overflowed")
    )  # added later
    loaded, _ = ckpt.load_checkpoint(folder)
    assert loaded.counters == learner.counters


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path):
    folder = ckpt.save_checkpoint(_trained(blocks=1), tmp_path / "c")
    stale = folder / ".meta.json.abc123.tmp"
    stale.write_text("left by a writer killed mid-write")
    ckpt.save_checkpoint(_trained(blocks=2), folder)
    assert not stale.exists()
    assert ckpt.load_checkpoint(folder)[0].counters.blocks == 2


def test_meta_json_that_breaks_the_parser_is_corrupt(tmp_path):
    folder = ckpt.save_checkpoint(_trained(blocks=1), tmp_path / "c")
    for text in ("[" * 100_000, '{"format": ' + "9" * 5000 + "}"):
        (folder / "meta.json").write_text(text)
        with pytest.raises(CheckpointError, match="is corrupt"):
            ckpt.load_checkpoint(folder)
