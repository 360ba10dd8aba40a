"""The C kernels cross-compiled for a Cortex-M7 and run under QEMU (``mps2-an500``), with
semihosting for file I/O and the exit status.

``run_cases`` writes the cases to ``vectors.bin`` in a fresh folder, runs the harness
(``firmware_sim/c/m7/harness.c``) there with ``-icount shift=0`` (one instruction per
virtual nanosecond), and reads ``results.bin`` back: each kernel's results and the SysTick
ticks it took. SysTick counts the 25 MHz processor clock of QEMU's MPS2 model, so under
``-icount shift=0`` one tick is 40 instructions (measured by ``calibrate``: a loop of
2 x 10^6 instructions reads 50,000 ticks).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_clapp.errors import EdgeClappError
from edge_clapp.firmware_sim.ckernels import C_DIR, _cache_dir, codes_buffer

M7_DIR = C_DIR / "m7"
ARM_GCC = "arm-none-eabi-gcc"
ARM_SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"
ARM_FLAGS = [
    "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=soft", "-std=c99", "-O2",
    "-Wall", "-Wextra", "-Werror",
]  # fmt: skip
INSTRUCTIONS_PER_TICK = 40  # 25 MHz SysTick clock, 1 ns per instruction (-icount shift=0)


class EmulatorError(EdgeClappError):
    """The cross-compiler or the emulator is missing or failed."""


def toolchain_missing() -> str | None:
    """Why the Cortex-M path cannot run here, or None."""
    missing = [tool for tool in (ARM_GCC, ARM_SIZE, QEMU) if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found: install gcc-arm-none-eabi, "
            "libnewlib-arm-none-eabi and qemu-system-arm (scripts/setup.sh does)"
        )
    return None


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise EmulatorError(f"{cmd[0]} failed ({result.returncode}):\n{result.stderr}")
    return result


def build_elf() -> Path:
    """The harness with the kernels, for Cortex-M7 (cached by source hash)."""
    why = toolchain_missing()
    if why:
        raise EmulatorError(why)
    sources = [M7_DIR / "startup.c", M7_DIR / "harness.c", C_DIR / "ec_kernels.c"]
    text = b"".join(p.read_bytes() for p in [*sources, C_DIR / "ec_kernels.h"])
    text += (M7_DIR / "mps2_an500.ld").read_bytes() + " ".join(ARM_FLAGS).encode()
    target = _cache_dir() / f"harness_m7_{hashlib.sha256(text).hexdigest()[:16]}.elf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        script = str(M7_DIR / "mps2_an500.ld")
        _run([ARM_GCC, *ARM_FLAGS, "-specs=rdimon.specs", "-nostartfiles",
              "-T", script, "-o", str(tmp), *map(str, sources)])  # fmt: skip
        tmp.replace(target)
    return target


def kernel_size() -> dict[str, int]:
    """Flash (text + data) and RAM (data + bss) of the kernels alone, from
    arm-none-eabi-size on their object file."""
    why = toolchain_missing()
    if why:
        raise EmulatorError(why)
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "ec_kernels.o"
        _run([ARM_GCC, *ARM_FLAGS, "-c", "-o", str(obj), str(C_DIR / "ec_kernels.c")])
        line = _run([ARM_SIZE, str(obj)]).stdout.splitlines()[1].split()
    text, data, bss = (int(v) for v in line[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}


@dataclass
class Case:
    kind: str  # "conv", "update", "round", "calibrate"
    args: tuple


def _encode(case: Case) -> bytes:
    i32 = lambda *v: struct.pack(f"<{len(v)}i", *v)  # noqa: E731
    if case.kind == "calibrate":
        return i32(4, case.args[0])
    if case.kind == "conv":
        x, w, bias, kernel, stride, m0, sh = case.args
        xb, signed = codes_buffer(x)
        head = i32(1, *np.shape(x), w.shape[0], kernel, stride, signed)
        return (head + xb.tobytes() + np.asarray(w).astype(np.int8).tobytes()
                + np.asarray(bias, np.int32).tobytes() + np.asarray(m0, np.int32).tobytes()
                + np.asarray(sh, np.int32).tobytes())  # fmt: skip
    if case.kind == "update":
        arrays, (x, z, context, candidate, label, valid, threshold), mult, seeds, bound = (
            case.args
        )
        xb, signed = codes_buffer(x)
        c, d = arrays["weight"].shape
        k, m = context.shape
        has_retro = arrays.get("retro") is not None
        head = i32(5, np.shape(x)[0], d, c, k, m, signed, int(has_retro), bound)
        body = xb.tobytes() + np.asarray(z).astype(np.uint8).tobytes()
        body += arrays["weight"].astype(np.int8).tobytes()
        body += arrays["bias"].astype(np.int32).tobytes()
        body += arrays["pred"].astype(np.int8).tobytes()
        if has_retro:
            body += arrays["retro"].astype(np.int8).tobytes()
        body += (
            np.asarray(context, np.int32).tobytes() + np.asarray(candidate, np.int32).tobytes()
        )
        body += np.asarray(label).astype(np.int8).tobytes()
        body += np.asarray(valid).astype(np.uint8).tobytes()
        body += np.asarray(threshold, np.int64).tobytes()
        for name in ("weight", "bias"):
            body += b"".join(np.asarray(v, np.int32).tobytes() for v in mult[name])
        body += i32(*(int(np.asarray(v).ravel()[0]) for v in mult["pred"]))
        body += struct.pack("<4Q", seeds["weight"], seeds["bias"], seeds["pred"],
                            seeds.get("retro", 0))  # fmt: skip
        return head + body
    if case.kind == "round":
        acc, m0, sh, seed = case.args
        acc, m0, sh = np.asarray(acc), np.asarray(m0).ravel(), np.asarray(sh).ravel()
        head = i32(3, acc.size, acc.size // m0.size, m0.size) + struct.pack("<Q", seed)
        return (head + acc.astype(np.int64).tobytes() + m0.astype(np.int32).tobytes()
                + sh.astype(np.int32).tobytes())  # fmt: skip
    raise ValueError(case.kind)


def _decode(case: Case, data: memoryview, at: int) -> tuple[dict, int]:
    def take(n_bytes: int, dtype, shape) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(data[at : at + n_bytes], dtype=dtype).reshape(shape).astype(np.int64)
        at += n_bytes
        return a

    out: dict = {}
    if case.kind == "conv":
        x, w, _, kernel, stride, *_ = case.args
        t_out = (np.asarray(x).shape[0] - kernel) // stride + 1
        out["out"] = take(t_out * w.shape[0], np.uint8, (t_out, w.shape[0]))
    elif case.kind == "update":
        arrays = case.args[0]
        c, d = arrays["weight"].shape
        k = arrays["pred"].shape[0]
        out["weight"] = take(c * d, np.int8, (c, d))
        out["bias"] = take(4 * c, np.int32, (c,))
        out["pred"] = take(k * c * c, np.int8, (k, c, c))
        if arrays.get("retro") is not None:
            out["retro"] = take(k * c * c, np.int8, (k, c, c))
        out["open_gates"] = int(take(8, np.int64, ())[()])
    elif case.kind == "round":
        acc = np.asarray(case.args[0])
        out["delta"] = take(8 * acc.size, np.int64, acc.shape)
    out["ticks"] = int(take(8, np.uint64, ())[()])
    out["instructions"] = out["ticks"] * INSTRUCTIONS_PER_TICK
    return out, at


def run_cases(cases: list[Case], timeout: float = 120.0) -> list[dict]:
    """Runs every case in one emulator boot; returns their results in order."""
    elf = build_elf()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vectors.bin").write_bytes(
            b"".join(map(_encode, cases)) + struct.pack("<i", 0)
        )
        cmd = [QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
               "-kernel", str(elf)]  # fmt: skip
        try:
            result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True,
                                    timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise EmulatorError(f"the emulator did not finish in {timeout:.0f} s") from None
        if result.returncode != 0:
            raise EmulatorError(
                f"the harness exited with {result.returncode} under QEMU: {result.stderr}"
            )
        data = memoryview((folder / "results.bin").read_bytes())
    results, at = [], 0
    for case in cases:
        out, at = _decode(case, data, at)
        results.append(out)
    if at != len(data):
        raise EmulatorError(f"results.bin has {len(data) - at} bytes more than expected")
    return results


def calibrate(iterations: int = 1_000_000) -> float:
    """Instructions per SysTick tick, from a loop of 2 x iterations instructions."""
    ticks = run_cases([Case("calibrate", (iterations,))])[0]["ticks"]
    return 2 * iterations / ticks
