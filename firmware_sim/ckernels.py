"""The C99 kernels (``firmware_sim/c/ec_kernels.c``) built on the host and called through
ctypes, with the same signatures as ``kernels.py`` (the reference they must equal).

The shared library is compiled on first use with ``cc -std=c99 -O2 -Wall -Wextra
-Werror -pedantic`` into a cache folder keyed by the source's hash.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edge_clapp.errors import EdgeClappError
from edge_clapp.firmware_sim.kernels import UPDATE_BITS, check_multipliers

C_DIR = Path(__file__).parent / "c"
SOURCES = [C_DIR / "ec_kernels.c"]
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]

_i32 = ctypes.c_int32
_i64 = ctypes.c_int64
_p = ctypes.c_void_p


def codes_buffer(a: np.ndarray) -> tuple[np.ndarray, int]:
    """8-bit codes as the uint8 buffer the C kernels read, and whether they are signed
    (int8; codes in 0..127 read the same either way)."""
    a = np.asarray(a)
    signed = int(a.min(initial=0) < 0)
    return np.ascontiguousarray(
        a.astype(np.int8 if signed else np.uint8).view(np.uint8)
    ), signed


class KernelBuildError(EdgeClappError):
    """The C kernels could not be compiled."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge_clapp"


def build() -> Path:
    """Compiles the kernels into a shared library (once per source version)."""
    cc = compiler()
    if cc is None:
        raise KernelBuildError(
            "no C compiler found (cc or gcc): install gcc (scripts/setup.sh does)"
        )
    text = b"".join(p.read_bytes() for p in [*SOURCES, C_DIR / "ec_kernels.h"])
    digest = hashlib.sha256(text + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"ec_kernels_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *CFLAGS, "-fPIC", "-shared", "-o", str(out), *map(str, SOURCES)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelBuildError(f"compiling the C kernels failed:\n{result.stderr}")
        os.replace(out, target)
    return target


class CKernels:
    """ctypes bindings; arrays in and out as numpy, converted to the C types."""

    def __init__(self, path: Path | None = None) -> None:
        lib = ctypes.CDLL(str(path or build()))
        lib.ec_requantize.restype = _i64
        lib.ec_requantize.argtypes = [_i64, _i32, _i32, _i64, _i64]
        lib.ec_hash32.restype = ctypes.c_uint32
        lib.ec_hash32.argtypes = [ctypes.c_uint32]
        lib.ec_counter_hash.restype = ctypes.c_uint32
        lib.ec_counter_hash.argtypes = [ctypes.c_uint64]
        lib.ec_conv_forward.restype = _i32
        lib.ec_conv_forward.argtypes = [
            _p,
            _i32,
            _i32,
            _i32,
            _p,
            _p,
            _i32,
            _i32,
            _i32,
            _p,
            _p,
            _p,
        ]
        lib.ec_stochastic_round.restype = None
        lib.ec_stochastic_round.argtypes = [_p, _i64, _i64, _p, _p, ctypes.c_uint64, _p]
        u64 = ctypes.c_uint64
        lib.ec_clapp_update.restype = _i64
        lib.ec_clapp_update.argtypes = [_p, _i32, _i32, _i32, _p, _i32, _p, _p, _p, _p, _i32,
                                        _i32, _p, _p, _p, _p, _p, _p, _p, _p, _p, _i32, _i32,
                                        u64, u64, u64, u64, _i32, _p, _p, _p]  # fmt: skip
        self.lib = lib

    @staticmethod
    def _arr(a: np.ndarray, dtype) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(a).astype(dtype, casting="unsafe"))

    _codes = staticmethod(codes_buffer)

    def requantize(self, acc: int, m0: int, sh: int, lo: int, hi: int) -> int:
        return self.lib.ec_requantize(acc, m0, sh, lo, hi)

    def hash32(self, counter: int) -> int:
        return self.lib.ec_hash32(counter & 0xFFFFFFFF)

    def counter_hash(self, counter: int) -> int:
        return self.lib.ec_counter_hash(counter)

    def conv_forward(self, x, weight, bias, kernel, stride, m0, sh) -> np.ndarray:
        xb, signed = self._codes(x)
        t_in, c_in = np.asarray(x).shape
        c_out = weight.shape[0]
        t_out = (t_in - kernel) // stride + 1
        out = np.zeros((t_out, c_out), dtype=np.uint8)
        w = self._arr(weight, np.int8)
        b, m, s = self._arr(bias, np.int32), self._arr(m0, np.int32), self._arr(sh, np.int32)
        self.lib.ec_conv_forward(
            xb.ctypes.data, signed, t_in, c_in, w.ctypes.data, b.ctypes.data, c_out, kernel,
            stride, m.ctypes.data, s.ctypes.data, out.ctypes.data,
        )  # fmt: skip
        return out.astype(np.int64)

    def stochastic_round(self, acc, m0, sh, seed: int) -> np.ndarray:
        acc = self._arr(acc, np.int64)
        m0, sh = check_multipliers(m0, sh, UPDATE_BITS)
        row_len = acc.size // max(m0.size, 1)
        m, s = self._arr(m0.ravel(), np.int32), self._arr(sh.ravel(), np.int32)
        out = np.zeros_like(acc)
        self.lib.ec_stochastic_round(
            acc.ctypes.data, acc.size, row_len, m.ctypes.data, s.ctypes.data, seed,
            out.ctypes.data,
        )  # fmt: skip
        return out

    def clapp_update(
        self,
        arrays,
        x_rows,
        z,
        context,
        candidate,
        label,
        valid,
        threshold,
        mult,
        seeds,
        weight_bound: int = 127,
    ) -> tuple[dict[str, np.ndarray], int]:
        """The fused update in place on copies of ``arrays`` (weight, bias, pred, retro);
        returns (new arrays, open gates). mult: weight / bias (m0, sh) per channel, pred
        one (m0, sh); seeds per array."""
        xb, signed = self._codes(x_rows)
        n, d = np.asarray(x_rows).shape
        c = z.shape[1]
        k, m = context.shape
        w = self._arr(arrays["weight"], np.int8)
        b = self._arr(arrays["bias"], np.int32)
        p = self._arr(arrays["pred"], np.int8)
        has_retro = arrays.get("retro") is not None
        r = self._arr(arrays["retro"], np.int8) if has_retro else None
        zb = self._arr(z, np.uint8)
        ctx, cand = self._arr(context, np.int32), self._arr(candidate, np.int32)
        lab, val = self._arr(label, np.int8), self._arr(valid, np.uint8)
        thr = self._arr(threshold, np.int64)
        wm, ws = (self._arr(v, np.int32) for v in mult["weight"])
        bm, bs = (self._arr(v, np.int32) for v in mult["bias"])
        pm, ps = (int(np.asarray(v).ravel()[0]) for v in mult["pred"])
        err = np.zeros((n, c), np.int64)
        row = np.zeros(max(d, c), np.int64)
        thirds = np.zeros(2 * k * m, np.int8)
        open_gates = self.lib.ec_clapp_update(
            xb.ctypes.data, signed, n, d, zb.ctypes.data, c, w.ctypes.data, b.ctypes.data,
            p.ctypes.data, r.ctypes.data if has_retro else None, k, m, ctx.ctypes.data,
            cand.ctypes.data, lab.ctypes.data, val.ctypes.data, thr.ctypes.data,
            wm.ctypes.data, ws.ctypes.data, bm.ctypes.data, bs.ctypes.data, pm, ps,
            seeds["weight"], seeds["bias"], seeds["pred"], seeds.get("retro", 0),
            weight_bound, err.ctypes.data, row.ctypes.data, thirds.ctypes.data,
        )  # fmt: skip
        out = {"weight": w.astype(np.int64), "bias": b.astype(np.int64),
               "pred": p.astype(np.int64)}  # fmt: skip
        if has_retro:
            out["retro"] = r.astype(np.int64)
        return out, open_gates
