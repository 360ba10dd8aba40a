"""Held-out checks of what the rule optimises: the gap between positive and negative scores.

For each layer and each offset k, the score of the true future ``z_{t+k}^T P_k z_t`` is
averaged over all frames of held-out recordings (positives), and the same score with the
candidate taken from a different recording (negatives). A learner that learns widens the
gap from its value at initialisation.
"""

from __future__ import annotations

import numpy as np
import torch

from edge_clapp.learner import OnlineLearner


@torch.no_grad()
def score_gap(
    learner: OnlineLearner, recordings: list[np.ndarray], seed: int = 0
) -> list[dict[str, float]]:
    """Per layer: mean positive score, mean negative score and their difference."""
    if len(recordings) < 2:
        raise ValueError(
            "score_gap needs at least two recordings (negatives come from another)"
        )
    gen = torch.Generator().manual_seed(seed)
    encoded = [learner.encode(r) for r in recordings]  # [recording][layer] -> (T, C)
    out = []
    for li, layer in enumerate(learner.layers):
        pos_sum = neg_sum = 0.0
        pos_n = neg_n = 0
        for ri, frames in enumerate(encoded):
            z = frames[li]  # (T, C)
            other = encoded[(ri + 1) % len(encoded)][li]  # (T', C)
            for k in range(1, layer.offsets + 1):
                if len(z) <= k or len(other) == 0:
                    continue
                pred = z[:-k] @ layer.pred[k - 1].t()  # (T-k, C): rows (P_k c)^T
                pos = (z[k:] * pred).sum(1)
                pick = torch.randint(0, len(other), (len(pred),), generator=gen)
                neg = (other[pick] * pred).sum(1)
                pos_sum += float(pos.sum())
                neg_sum += float(neg.sum())
                pos_n += len(pos)
                neg_n += len(neg)
        pos_mean = pos_sum / max(pos_n, 1)
        neg_mean = neg_sum / max(neg_n, 1)
        out.append({"pos_score": pos_mean, "neg_score": neg_mean, "gap": pos_mean - neg_mean})
    return out
