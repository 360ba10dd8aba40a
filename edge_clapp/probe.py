"""Linear probes on frozen features: the paper's evaluation protocol.

A multinomial logistic regression (L2-regularised, full-batch L-BFGS) on standardised
features from the training split, accuracy on the held-out split. Autograd is used here
only to fit the probe; the encoder is frozen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge_clapp.config import Config
from edge_clapp.errors import ConfigError, SourceError
from edge_clapp.learner import OnlineLearner
from edge_clapp.speech_corpus import SpeechCorpus, Utterance, frame_phonemes


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


def time_average(frames: np.ndarray) -> np.ndarray:
    """The mean over time of frame vectors (T, C) -> (C,); zeros when T = 0."""
    return frames.mean(0) if len(frames) else np.zeros(frames.shape[1], np.float32)


def utterance_features(frames: list[torch.Tensor]) -> list[np.ndarray]:
    """Per layer, the mean over time of the frame vectors: [(T, C_l)] -> [(C_l,)]."""
    return [time_average(f.numpy()) for f in frames]


# -- the evaluation tasks on the labelled speech corpus (edge-clapp data speech) ----------

TASKS = ("phoneme", "word", "speaker", "language")
# Frames of the phoneme probe's training split are subsampled to at most this many (the
# held-out split is used whole): L-BFGS on all of them would take minutes per layer.
MAX_TRAIN_FRAMES = 40000


def frame_centres(config: Config, layer: int, frames: int) -> np.ndarray:
    """Seconds at the centre of the audio that frame 0..frames-1 of ``layer`` (0-based)
    pools: frame i spans the samples from ``i * frame_hop - (field - jump)`` to
    ``(i + 1) * frame_hop``."""
    field, jump = config.receptive_fields()[layer]
    hop = config.frontend.frame_hop
    i = np.arange(frames)
    start = i * hop - (field - jump)
    return (start + (i + 1) * hop) / 2 / config.frontend.sample_rate


def task_split(corpus: SpeechCorpus, task: str) -> tuple[list[Utterance], list[Utterance]]:
    """(probe train, probe test) recordings of a task.

    phoneme, word: synthesised speech; train on the training speakers, test on held-out
        speakers (never streamed, never in probe training). The phoneme task uses the
        espeak-ng recordings only: flite names phonemes from another set.
    speaker: the held-out speakers only (never streamed); every fourth word (sorted) is
        tested, the other words train the probe: which voice says a word it was never
        heard saying.
    language: klettres-data recordings, split by recording.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} unknown; available: {', '.join(TASKS)}")
    if task == "language":
        train, test = (
            corpus.utterances("klettres", "train"),
            corpus.utterances("klettres", "test"),
        )
    elif task == "speaker":
        held = corpus.utterances("synth", "test")
        words = sorted({u.word for u in held})
        tested = set(words[3::4])
        train = [u for u in held if u.word not in tested]
        test = [u for u in held if u.word in tested]
    else:
        train, test = corpus.utterances("synth", "train"), corpus.utterances("synth", "test")
        if task == "phoneme":
            train = [u for u in train if u.phoneme_set == "espeak"]
            test = [u for u in test if u.phoneme_set == "espeak"]
    if not train or not test:
        need = {
            "language": "build it without --no-klettres",
            "speaker": "it needs 4 words or more (--words) and several repeats",
            "phoneme": "it needs espeak-ng speakers in both splits (a larger --max-speakers)",
            "word": "it needs speakers in both splits (a larger --max-speakers)",
        }[task]
        raise SourceError(
            f"the corpus at {corpus.root} has no recordings for the {task} task's "
            f"{'training' if not train else 'held-out'} split: {need}; rebuild it with "
            "`edge-clapp data speech --out DIR`"
        )
    return train, test


def encode_utterances(
    learner: OnlineLearner, utterances: list[Utterance], show_progress: bool = False
) -> dict[str, list[np.ndarray]]:
    """Per recording id, every layer's frame vectors (T, C_l) as float32 arrays."""
    rate = learner.config.frontend.sample_rate
    out = {}
    for utt in tqdm(utterances, desc="encoding", disable=not show_progress, leave=False):
        out[utt.id] = [f.numpy() for f in learner.encode(utt.audio(rate))]
    return out


def _label(utt: Utterance, task: str) -> str:
    return {"word": utt.word, "speaker": utt.speaker, "language": utt.language}[task]


def probe_task(
    config: Config,
    encoded: dict[str, list[np.ndarray]],
    train: list[Utterance],
    test: list[Utterance],
    task: str,
    layers: list[int] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per layer (1-based numbers in ``layers``, default all): the probe's result.
    Utterance tasks use the time average of the frame vectors; the phoneme task one
    example per frame, labelled with the phoneme at the frame's centre."""
    layers = layers or list(range(1, len(config.layers) + 1))
    results = []
    for number in layers:
        li = number - 1
        if task == "phoneme":
            xs, ys = [], []
            for split in (train, test):
                feats, labels = [], []
                for utt in split:
                    f = encoded[utt.id][li]
                    feats.append(f)
                    labels += frame_phonemes(utt, frame_centres(config, li, len(f)))
                xs.append(np.concatenate(feats))
                ys.append(np.array(labels))
            rng = np.random.default_rng(seed)
            if len(ys[0]) > MAX_TRAIN_FRAMES:
                keep = np.sort(rng.choice(len(ys[0]), MAX_TRAIN_FRAMES, replace=False))
                xs[0], ys[0] = xs[0][keep], ys[0][keep]
            seen = np.isin(ys[1], np.unique(ys[0]))
            dropped = int((~seen).sum())
            xs[1], ys[1] = xs[1][seen], ys[1][seen]
            train_x, train_y, test_x, test_y = xs[0], list(ys[0]), xs[1], list(ys[1])
        else:
            dropped = 0
            train_x = np.stack([time_average(encoded[u.id][li]) for u in train])
            test_x = np.stack([time_average(encoded[u.id][li]) for u in test])
            train_y = [_label(u, task) for u in train]
            test_y = [_label(u, task) for u in test]
        probe = fit_linear_probe(train_x, train_y, test_x, test_y, seed=seed)
        results.append({"layer": number, **probe.to_dict(), "test_dropped_unseen": dropped})
    return results
