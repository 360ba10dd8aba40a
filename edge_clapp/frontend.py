"""Front ends: turn a block of samples into the first layer's input, time-major.

Shapes: ``S`` samples in a block, ``T`` front-end positions, ``C`` channels.
Both front ends stream: they keep the samples their window still needs from the previous
block (``carry``), allocated once. ``fresh`` runs the same computation with a zero carry,
as at the start of a stream; the learner uses it for replayed negatives.
"""

from __future__ import annotations

import math

import torch

from edge_clapp.config import FrontendConfig, FrontendKind


class RawFrontend:
    """The waveform itself: (S,) -> (S, 1). No state."""

    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.channels = 1

    def buffers(self) -> dict[str, torch.Tensor]:
        return {}

    def stream(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.view(-1, 1)  # (S,) -> (S, 1)

    def fresh(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.view(-1, 1)

    def sequence(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.view(-1, 1)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, (n_fft // 2 + 1, n_mels), float32."""

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    mel_points = torch.linspace(
        0.0, hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64
    )
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LogMelFrontend:
    """Log mel energies, one vector per ``frame_hop`` samples: (S,) -> (S / hop, n_mels).

    Frame j of a block covers the ``win_length`` samples ending ``frame_hop`` samples into
    its own hop, so the first ``win_length - frame_hop`` samples come from the previous
    block (the carry). Values are ``(ln(mel + 1e-6) + 6) / 3``: roughly zero-centred for
    speech at a normal level, so that the first layer starts with both signs of input.
    """

    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.channels = config.n_mels
        self.hop = config.frame_hop
        self.win = config.win_length
        self.window = torch.hann_window(config.win_length, periodic=True)
        self.filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels)
        self.carry = torch.zeros(config.win_length - config.frame_hop)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {"carry": self.carry, "window": self.window, "filters": self.filters}

    def _frames(self, padded: torch.Tensor) -> torch.Tensor:
        # In float64, rounded to float32 once at the end: in float32 the FFT's rounding
        # noise from loud bins reaches quiet ones, and the log amplifies it (1e-4 apart
        # from float64 on speech). The exported graph computes in float64 as well, so the
        # two agree to float32 rounding whatever their summation order.
        frames = padded.double().unfold(0, self.win, self.hop) * self.window.double()
        power = torch.fft.rfft(frames, n=self.config.n_fft).abs().square()  # (T, n_fft/2+1)
        mel = power @ self.filters.double()  # (T, n_mels)
        return ((torch.log(mel + 1e-6) + 6.0) / 3.0).float()

    def stream(self, samples: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([self.carry, samples])
        self.carry.copy_(padded[padded.numel() - self.carry.numel() :])
        return self._frames(padded)

    def fresh(self, samples: torch.Tensor) -> torch.Tensor:
        return self._frames(torch.cat([torch.zeros_like(self.carry), samples]))

    def sequence(self, samples: torch.Tensor) -> torch.Tensor:
        return self.fresh(samples)


def make_frontend(config: FrontendConfig) -> RawFrontend | LogMelFrontend:
    if config.kind is FrontendKind.RAW:
        return RawFrontend(config)
    return LogMelFrontend(config)
