"""What the patch encoder learns from images: online CLAPP next to a random encoder and
end-to-end Hinge-CPC trained by backprop, measured by linear probes per layer.

Protocol (after the published vision evaluation, scaled down): a labelled digit set is
split by class-stratified draw into train and test images. Encoders learn from the train
images without labels, one image per step (online CLAPP, each image its own scene, so
every earlier image may serve as a negative) or in mini-batches (Hinge-CPC). Each layer's
patch vectors are averaged over the patch grid into one vector per image (the published
classifier's average pool), and a linear probe (``probe.fit_linear_probe``) is fitted on
the train images and scored on the test images.

End-to-end Hinge-CPC (the backprop baseline of CLAPP.md): the last layer's patch vectors,
the same pairs as the rule (a patch predicts the patch skip_rows + k rows below; the
negative is a patch of another image of the batch, where the config's
``vision.negatives`` puts it), one hinge per pair, no R, gradients through every layer,
Adam.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from edge_clapp.config import Config
from edge_clapp.learner import initial_parameters
from edge_clapp.probe import fit_linear_probe
from edge_clapp.vision import VisionLearner, conv_forward, cut_patches, pool_maps

METHODS = ("random", "clapp", "hinge-cpc")


def learn_online(
    config: Config,
    frames: np.ndarray,
    passes: int,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[VisionLearner, list[dict]]:
    """Online CLAPP over ``passes`` shuffled passes of (N, H, W, Ci) frames. Returns the
    learner and its loss curve (per layer, the mean over each tenth of a pass)."""
    learner = VisionLearner(config)
    rng = np.random.default_rng(seed)
    total, done, curve = passes * len(frames), 0, []
    every = max(1, len(frames) // 10)
    for _ in range(passes):
        for i in rng.permutation(len(frames)):
            learner.step(frames[i], boundary=True)
            done += 1
            if done % every == 0:
                layers = learner.take_interval()
                curve.append({"images": done, "loss": [m["loss"] for m in layers]})
            if on_step is not None:
                on_step(done, total)
    return learner, curve


def hinge_cpc_loss(
    config: Config,
    zhat: torch.Tensor,
    pred: torch.Tensor,
    shift: int,
    generator: torch.Generator | None = None,
):
    """Mean hinge over all (context, future) pairs of a batch's last-layer patch vectors
    (B, R, Q, C), each with a positive and a negative from image b - shift: at the same
    position, or (``vision.negatives = "other"``) at another position drawn per pair, as
    the online learner draws them."""
    skip = config.vision.skip_rows
    batch, rows, cols, channels = zhat.shape
    others = zhat.roll(shift, dims=0).reshape(batch, rows * cols, channels)
    losses = []
    for k in range(1, config.rule.offsets + 1):
        ahead = skip + k
        context = zhat[:, : rows - ahead]  # (B, R - ahead, Q, C)
        future = zhat[:, ahead:]
        if config.vision.negatives.value == "other":
            position = torch.arange(ahead * cols, rows * cols).view(rows - ahead, cols)
            drawn = torch.randint(1, rows * cols, (batch, *position.shape), generator=generator)
            flat = (position + drawn) % (rows * cols)  # (B, R - ahead, Q)
            negative = others.gather(1, flat.view(batch, -1, 1).expand(-1, -1, channels))
            negative = negative.view(batch, rows - ahead, cols, channels)
        else:
            negative = future.roll(shift, dims=0)
        predicted = context @ pred[k - 1].t()  # rows (P_k c)^T
        positive_score = (future * predicted).sum(-1)
        negative_score = (negative * predicted).sum(-1)
        losses.append(torch.relu(1 - positive_score).mean())
        losses.append(torch.relu(1 + negative_score).mean())
    return torch.stack(losses).mean()


def train_hinge_cpc(
    config: Config,
    frames: np.ndarray,
    passes: int,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[VisionLearner, list[dict]]:
    """End-to-end Hinge-CPC from the learner's initial weights; the trained weights are
    written into a ``VisionLearner(config)`` (for ``encode``). Returns it and the loss
    curve."""
    params, _ = initial_parameters(config)
    weights = [p["weight"].clone().requires_grad_(True) for p in params]
    biases = [p["bias"].clone().requires_grad_(True) for p in params]
    pred = params[-1]["pred"].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([*weights, *biases, pred], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    v = config.vision
    rows, cols = v.grid
    data = torch.as_tensor(frames).permute(0, 3, 1, 2)
    rng = np.random.default_rng(seed)
    steps_per_pass = len(frames) // batch
    total, curve, losses = passes * steps_per_pass, [], []
    for step in range(total):
        if step % steps_per_pass == 0:
            order = rng.permutation(len(frames))
        first = (step % steps_per_pass) * batch
        maps = cut_patches(data[order[first : first + batch]], v.patch, v.patch_stride)
        for layer, w, b in zip(config.layers, weights, biases, strict=True):
            maps = conv_forward(maps, w, b, layer.kernel, layer.stride)
        zhat = pool_maps(maps, config.layers[-1].pool.value).view(batch, rows, cols, -1)
        loss = hinge_cpc_loss(config, zhat, pred, int(rng.integers(1, batch)), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps_per_pass // 10) == 0:
            curve.append({"images": (step + 1) * batch, "loss": [float(np.mean(losses))]})
            losses = []
        if on_step is not None:
            on_step(step + 1, total)
    learner = VisionLearner(config)
    with torch.no_grad():
        for layer, w, b in zip(learner.layers, weights, biases, strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        learner.layers[-1].pred.copy_(pred)
    return learner, curve


def image_features(learner: VisionLearner, frames: np.ndarray) -> list[np.ndarray]:
    """Per layer (N, C_l): each image's patch vectors averaged over the grid. Encoded a
    chunk at a time, so that only the averages of all images are held."""
    chunk = learner.encode_chunk
    parts = [
        [z.mean(dim=1) for z in learner.encode(frames[i : i + chunk])]
        for i in range(0, len(frames), chunk)
    ]
    return [torch.cat([p[i] for p in parts]).numpy() for i in range(len(learner.layers))]


def probe_layers(
    learner: VisionLearner,
    frames: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int = 0,
) -> list[dict]:
    """Linear-probe accuracy of every layer: train on ``train`` images, score on ``test``."""
    out = []
    for i, features in enumerate(image_features(learner, frames)):
        result = fit_linear_probe(
            features[train],
            [str(y) for y in labels[train]],
            features[test],
            [str(y) for y in labels[test]],
            seed=seed,
        )
        out.append({"layer": i + 1, **result.to_dict()})
    return out


def evaluate(
    config: Config,
    frames: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    passes: int,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    on_step: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Per method: the probe results of every layer, the training curve and wall time.
    The encoders learn from the train images only."""
    out = {}
    for method in methods:
        started = time.perf_counter()

        def progress(done: int, total: int, method: str = method) -> None:
            if on_step is not None:
                on_step(method, done, total)

        if method == "random":
            learner, curve = VisionLearner(config), []
        elif method == "clapp":
            learner, curve = learn_online(config, frames[train], passes, seed, progress)
        elif method == "hinge-cpc":
            learner, curve = train_hinge_cpc(
                config, frames[train], passes, seed=seed, on_step=progress
            )
        else:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        trained = time.perf_counter() - started
        out[method] = {
            "layers": probe_layers(learner, frames, labels, train, test, seed),
            "curve": curve,
            "train_seconds": trained,
        }
    return out


@torch.no_grad()
def score_gap(
    learner: VisionLearner, frames: np.ndarray, shift: int = 1, negatives: str = "same"
) -> list[float]:
    """Per layer, the mean score of true pairs minus that of negatives on ``frames``
    (N > shift): every context with its future k rows down, and with a patch of image
    i - shift (cyclically): at the future's position (``negatives = "same"``), or at
    the position half the grid before it (``"other"``). Scored with the layer's P_k: a
    layer that learned scores its true pairs higher; the gap is ~0 for prediction
    matrices it never used. From a static camera "same" negatives are near copies of
    the true futures: the gap is ~0 whatever the encoder."""
    if not 0 < shift < len(frames):
        raise ValueError(f"shift = {shift} needs 0 < shift < {len(frames)} (the frames)")
    if negatives not in ("same", "other"):
        raise ValueError(f"negatives = {negatives!r}: 'same' or 'other'")
    v, config = learner.config.vision, learner.config
    rows, cols = v.grid
    out = []
    for layer, z in zip(learner.layers, learner.encode(frames), strict=True):
        zhat = z.view(len(frames), rows, cols, -1)
        others = zhat.roll(shift, dims=0)  # image i - shift
        if negatives == "other":
            others = others.flatten(1, 2).roll(rows * cols // 2, dims=1).view_as(zhat)
        gaps = []
        for k in range(1, config.rule.offsets + 1):
            ahead = v.skip_rows + k
            predicted = zhat[:, : rows - ahead] @ layer.pred[k - 1].t()
            future = zhat[:, ahead:]
            positive = (future * predicted).sum(-1).mean()
            negative = (others[:, ahead:] * predicted).sum(-1).mean()
            gaps.append(float(positive - negative))
        out.append(float(np.mean(gaps)))
    return out
