"""Linear probes on frozen features: the paper's evaluation protocol.

A multinomial logistic regression (L2-regularised, full-batch L-BFGS) on standardised
features from the training split, accuracy on the held-out split. Autograd is used here
only to fit the probe; the encoder is frozen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ProbeResult:
    accuracy: float
    chance: float  # accuracy of always answering the training split's most common class
    classes: int
    train_count: int
    test_count: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: list[str],
    test_x: np.ndarray,
    test_y: list[str],
    l2: float = 1e-3,
    steps: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Train on (train_x (N, D), train_y), report accuracy on (test_x, test_y)."""
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(test_y) - set(classes))
    if unseen:
        raise ValueError(f"held-out labels {unseen} never occur in the training split")
    xtr = torch.as_tensor(train_x, dtype=torch.float64)
    xte = torch.as_tensor(test_x, dtype=torch.float64)
    mean, std = xtr.mean(0), xtr.std(0).clamp(min=1e-8)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ytr = torch.tensor([index[c] for c in train_y])
    yte = torch.tensor([index[c] for c in test_y])

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(xtr.shape[1], len(classes), generator=gen, dtype=torch.float64) * 0.01
    weight.requires_grad_(True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xtr @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, ytr) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = (xte @ weight + bias).argmax(1)
    majority = Counter(train_y).most_common(1)[0][0]
    return ProbeResult(
        accuracy=float((predicted == yte).double().mean()),
        chance=float(np.mean([y == majority for y in test_y])),
        classes=len(classes),
        train_count=len(train_y),
        test_count=len(test_y),
    )


def utterance_features(frames: list[torch.Tensor]) -> list[np.ndarray]:
    """Per layer, the mean over time of the frame vectors: [(T, C_l)] -> [(C_l,)]."""
    return [f.mean(0).numpy() if len(f) else np.zeros(f.shape[1], np.float32) for f in frames]
