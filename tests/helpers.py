"""The one comparison helper the tests share: shape, dtype, then values."""

from __future__ import annotations

import numpy as np
import torch


def assert_close(
    actual, expected, *, rtol: float = 0.0, atol: float = 0.0, name: str = "value"
):
    """Exact for integers (tolerances must stay 0); floats within atol + rtol * |expected|.

    On a mismatch, says where and shows both values."""
    a = (
        actual.detach().cpu().numpy()
        if isinstance(actual, torch.Tensor)
        else np.asarray(actual)
    )
    e = (
        expected.detach().cpu().numpy()
        if isinstance(expected, torch.Tensor)
        else np.asarray(expected)
    )
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    assert a.dtype == e.dtype, f"{name}: dtype {a.dtype} != expected {e.dtype}"
    if np.issubdtype(e.dtype, np.integer) or e.dtype == bool:
        assert rtol == 0 and atol == 0, "integer results are compared exactly"
        bad = np.argwhere(a != e)
    else:
        bad = np.argwhere(~(np.abs(a - e) <= atol + rtol * np.abs(e)))
    if bad.size:
        where = tuple(bad[0])
        raise AssertionError(
            f"{name}: {len(bad)} of {e.size} elements differ; first at {where}: "
            f"got {a[where]!r}, expected {e[where]!r}"
        )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius), in float64."""
    diff = (actual.double() - expected.double()).norm()
    return float(diff / expected.double().norm().clamp(min=1e-300))
