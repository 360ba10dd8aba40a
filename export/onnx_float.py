"""The encoder's inference graph as float ONNX, built node by node with onnx.helper.

Graph (opset 17), batch 1, time dynamic:

    samples  (1, S) float32, mono at the config's sample rate; S a multiple of frame_hop
      -> front end: raw (the waveform as one channel) or log-mel (in float64: frames
         by Reshape, a MatMul with the windowed DFT basis, power, mel matrix,
         (ln(mel + 1e-6) + 6) / 3, then float32)
      -> per layer: left zero pad of kernel - stride positions (the stream's first
         carry), Conv, Relu
    frames_L (1, S / frame_hop, C_L) float32 for each exported layer L: its positions
         averaged per 10 ms frame (AveragePool), as ``OnlineLearner.encode`` returns them

Reference: ``OnlineLearner.encode`` in torch (the whole recording from zero state).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_clapp import __version__
from edge_clapp.config import FrontendKind
from edge_clapp.errors import EdgeClappError
from edge_clapp.learner import OnlineLearner

OPSET = 17


class ExportError(EdgeClappError):
    """The model cannot be exported or written."""


class _Graph:
    """Collects nodes and initializers; names are unique by construction."""

    def __init__(self, streaming: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.streaming = streaming
        self.state_inputs: list[onnx.ValueInfoProto] = []
        self.state_outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, **attrs) -> str:
        out = self.name(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _carry(graph: _Graph, x: str, rows: int, channels: int, name: str) -> str:
    """Puts the ``rows`` positions before (1, C, T) in front of it: zeros in the whole-
    sequence graph (a stream's start); in the streaming graph an input ``name``, with the
    last ``rows`` positions of the result as the output ``name`` + "_out"."""
    if rows == 0:
        return x
    if not graph.streaming:
        pads = graph.const("pads", np.array([0, 0, rows, 0, 0, 0], dtype=np.int64))
        return graph.op("Pad", [x, pads], "pad")
    shape = [1, channels, rows]
    graph.state_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    joined = graph.op("Concat", [name, x], "join", axis=2)
    starts = graph.const("starts", np.array([-rows], dtype=np.int64))
    ends = graph.const("ends", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    axes = graph.const("axes", np.array([2], dtype=np.int64))
    graph.nodes.append(
        helper.make_node("Slice", [joined, starts, ends, axes], [name + "_out"], name=name)
    )
    graph.state_outputs.append(
        helper.make_tensor_value_info(name + "_out", TensorProto.FLOAT, shape)
    )
    return joined


def _logmel(graph: _Graph, x: str, learner: OnlineLearner) -> str:
    """(1, 1, S) -> (1, n_mels, S / hop), as LogMelFrontend.sequence computes it, in
    float64 like it: frames cut by Reshape (each window widened with leading zeros to a
    whole number of hops) and a DFT by MatMul with the windowed basis."""
    fe = learner.frontend
    config = fe.config
    hop, win = config.frame_hop, config.win_length
    hops = -(-win // hop)  # hops per widened window
    lead = hops * hop - win  # zero columns in front of the window
    bins = config.n_fft // 2 + 1
    t = np.arange(win)
    angle = 2 * np.pi * t[:, None] * np.arange(bins) / config.n_fft  # (win, B)
    window = fe.window.double().numpy()[:, None]
    basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window], axis=1)
    basis = np.concatenate([np.zeros((lead, 2 * bins)), basis])  # (hops * hop, 2B)

    x = _carry(graph, x, win - hop, 1, "carry_frontend")  # (1, 1, win - hop + S)
    if lead:
        pads = graph.const("pads", np.array([0, 0, lead, 0, 0, 0], dtype=np.int64))
        x = graph.op("Pad", [x, pads], "lead")
    rows = graph.op(
        "Reshape", [x, graph.const("shape", np.array([-1, hop], dtype=np.int64))], "hops"
    )  # (hops - 1 + T, hop)
    pieces = []
    for i in range(hops):  # rows i .. i + T - 1: the i-th hop of every frame
        end = i - (hops - 1) if i < hops - 1 else np.iinfo(np.int64).max
        pieces.append(
            graph.op(
                "Slice",
                [
                    rows,
                    graph.const("starts", np.array([i], dtype=np.int64)),
                    graph.const("ends", np.array([end], dtype=np.int64)),
                    graph.const("axes", np.array([0], dtype=np.int64)),
                ],
                "hop",
            )
        )
    frames = graph.op("Concat", pieces, "frames", axis=1) if hops > 1 else pieces[0]
    frames = graph.op("Cast", [frames], "frames64", to=TensorProto.DOUBLE)  # (T, hops*hop)
    spectrum = graph.op("MatMul", [frames, graph.const("dft", basis)], "dft")  # (T, 2B)
    split = graph.const("split", np.array([bins, bins], dtype=np.int64))
    real, imag = graph.name("real"), graph.name("imag")
    graph.nodes.append(
        helper.make_node("Split", [spectrum, split], [real, imag], name=real, axis=1)
    )
    power = graph.op(
        "Add",
        [graph.op("Mul", [real, real], "re2"), graph.op("Mul", [imag, imag], "im2")],
        "power",
    )  # (T, B)
    filters = graph.const("mel", fe.filters.double().numpy())  # (B, n_mels)
    mel = graph.op("MatMul", [power, filters], "mel")  # (T, n_mels)
    floor = graph.const("floor", np.array(1e-6))
    log = graph.op("Log", [graph.op("Add", [mel, floor], "mel_floor")], "log")
    shifted = graph.op("Add", [log, graph.const("shift", np.array(6.0))], "shifted")
    scaled = graph.op("Div", [shifted, graph.const("three", np.array(3.0))], "logmel")
    scaled = graph.op("Cast", [scaled], "logmel32", to=TensorProto.FLOAT)
    scaled = graph.op("Transpose", [scaled], "logmel_t", perm=[1, 0])  # (n_mels, T)
    return graph.op("Unsqueeze", [scaled, graph.const("axis", np.array([0]))], "logmel_b")


def build_model(
    learner: OnlineLearner, layers: int | None = None, *, streaming: bool = False
) -> onnx.ModelProto:
    """The float inference graph of the first ``layers`` layers (default: all).

    streaming: one piece of a stream per call; every carry (the samples or positions a
    window still needs from the previous piece) is an input ``carry_*`` and an output
    ``carry_*_out``, to feed back with the next piece; zeros start a stream."""
    config = learner.config
    count = len(learner.layers) if layers is None else layers
    if not 1 <= count <= len(learner.layers):
        raise ExportError(
            f"--layers {layers} is out of range: the encoder has {len(learner.layers)} layers"
        )
    graph = _Graph(streaming)
    x = graph.op("Unsqueeze", ["samples", graph.const("axis", np.array([1]))], "wave")
    if config.frontend.kind is FrontendKind.LOGMEL:
        x = _logmel(graph, x, learner)
    elif config.frontend.kind is not FrontendKind.RAW:
        raise ExportError(f"front end {config.frontend.kind!r} cannot be exported")

    g = config.positions_per_frame()
    outputs = []
    for i, layer in enumerate(learner.layers[:count]):
        weight = layer.weight.numpy().reshape(layer.channels, layer.in_channels, layer.kernel)
        x = _carry(graph, x, layer.carry_rows, layer.in_channels, f"carry_{i + 1}")
        x = graph.op(
            "Conv",
            [x, graph.const("weight", weight), graph.const("bias", layer.bias.numpy())],
            "conv",
            strides=[layer.stride],
            kernel_shape=[layer.kernel],
        )
        x = graph.op("Relu", [x], "relu")  # (1, C, T_l)
        pooled = graph.op(
            "AveragePool", [x], "pool", kernel_shape=[g[i + 1]], strides=[g[i + 1]]
        )
        name = f"frames_{i + 1}"
        graph.nodes.append(
            helper.make_node("Transpose", [pooled], [name], name=name, perm=[0, 2, 1])
        )
        outputs.append(
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [1, "frames", layer.channels]
            )
        )

    samples = helper.make_tensor_value_info("samples", TensorProto.FLOAT, [1, "S"])
    onnx_graph = helper.make_graph(
        graph.nodes,
        "edge_clapp_encoder",
        [samples, *graph.state_inputs],
        outputs + graph.state_outputs,
        graph.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge_clapp",
        producer_version=__version__,
        doc_string=(
            "edge_clapp frame encoder. Input samples: (1, S) float32 mono at "
            f"{config.frontend.sample_rate} Hz, S a multiple of {config.frontend.frame_hop}. "
            "Outputs frames_L: (1, S / frame_hop, C_L), layer L's frame vectors."
            + (
                " Streaming: feed each carry_*_out back as carry_* with the next piece "
                "(zeros at the start of a stream)."
                if streaming
                else ""
            )
        ),
    )
    model.ir_version = 8  # what onnxruntime releases of 2024 and later all read
    metadata = {
        "edge_clapp_version": __version__,
        "preset": config.preset,
        "sample_rate": str(config.frontend.sample_rate),
        "frame_hop": str(config.frontend.frame_hop),
        "frontend": config.frontend.kind.value,
        **(
            {
                "n_mels": str(config.frontend.n_mels),
                "n_fft": str(config.frontend.n_fft),
                "win_length": str(config.frontend.win_length),
            }
            if config.frontend.kind is FrontendKind.LOGMEL
            else {}
        ),
        "layers": json.dumps(
            [
                {
                    "kind": lc.kind.value,
                    "channels": lc.channels,
                    "kernel": lc.kernel,
                    "stride": lc.stride,
                }  # fmt: skip
                for lc in config.layers[:count]
            ]
        ),
        "blocks_learned": str(learner.counters.blocks_learned),
        "precision": "float32",
        "streaming": "true" if streaming else "false",
        "samples_multiple_of": str(config.frontend.frame_hop),
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Writes ``model`` to ``path`` through a temporary file: nothing half-written stays."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(
            f"cannot write to '{path.parent}' ({exc.strerror}): choose a writable folder"
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"cannot write '{path}' ({exc.strerror})") from None
    except BaseException:  # Ctrl-C included: nothing half-written stays
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# Parity bound of the export check, float32 through different kernels. Measured on
# klettres speech (tests/test_export.py): raw 1.5e-6, mcu 2.9e-6 (the log-mel front end
# is float64 on both sides). Ten times the 1e-5 here, because the check runs on
# whatever weights a run learned, whose activations may be far larger than the test
# learners'; a wrong graph shows as O(1).
TOLERANCE = 1e-4


def test_signal(sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """A deterministic stand-in for speech: a gliding tone with harmonics and noise, with
    a near-silent stretch in the middle (where the log-mel floor matters)."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    pitch = 120 + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(h * phase) / h for h in range(1, 8))
    noise = np.random.default_rng(0).standard_normal(len(t))
    signal = 0.2 * voice + 0.01 * noise
    quiet = slice(len(t) * 2 // 5, len(t) * 3 // 5)
    signal[quiet] = 1e-5 * noise[quiet]
    return signal.astype(np.float32)


def check_in_onnxruntime(model: onnx.ModelProto, learner: OnlineLearner) -> tuple[float, float]:
    """Runs ``model`` in onnxruntime on the test signal and compares every output with
    ``learner.encode``. Returns (max abs error, seconds of signal); raises past TOLERANCE."""
    import onnxruntime

    config = learner.config
    hop = config.frontend.frame_hop
    seconds = max(2.0, 2.5 * config.block_seconds)  # a streaming check needs whole pieces
    samples = frames_for(test_signal(config.frontend.sample_rate, seconds), hop)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    expected = learner.encode(samples[0])
    if any(i.name != "samples" for i in model.graph.input):  # streaming: start from zeros
        # Pieces of 1 and 7 frames in turn: shorter and longer than the carries.
        outputs = run_stream(session, model, samples, [hop, 7 * hop])
    else:
        outputs = session.run(None, {"samples": samples})
    error = max(
        max_abs_error(o[0], e.numpy()[: o.shape[1]])
        for o, e in zip(outputs, expected, strict=False)
    )
    if not error <= TOLERANCE:
        raise ExportError(
            f"onnxruntime disagrees with torch by {error:.2e} (bound {TOLERANCE:.0e}): the "
            "graph is wrong; nothing was written"
        )
    return error, samples.shape[1] / config.frontend.sample_rate


def run_stream(
    session, model: onnx.ModelProto, samples: np.ndarray, pieces: int | list[int]
) -> list:
    """Feeds ``samples`` (1, S) to a streaming graph in pieces of ``pieces`` samples (one
    size, or sizes taken in turn; each a multiple of frame_hop) from zero carries; returns
    each frames output joined over the pieces (a tail shorter than the next piece is left
    out)."""
    sizes = [pieces] if isinstance(pieces, int) else list(pieces)
    frames = [o.name for o in model.graph.output if o.name.startswith("frames_")]
    carries = {
        i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
        for i in model.graph.input
        if i.name != "samples"
    }
    joined: list[list[np.ndarray]] = [[] for _ in frames]
    lo, turn = 0, 0
    while lo + sizes[turn % len(sizes)] <= samples.shape[1]:
        piece = sizes[turn % len(sizes)]
        out = session.run(None, {"samples": samples[:, lo : lo + piece], **carries})
        lo, turn = lo + piece, turn + 1
        named = dict(zip([o.name for o in model.graph.output], out, strict=True))
        for k, name in enumerate(frames):
            joined[k].append(named[name])
        carries = {name: named[name + "_out"] for name in carries}
    if not turn:
        raise ExportError(f"{samples.shape[1]} samples do not fill one piece of {sizes[0]}")
    return [np.concatenate(parts, axis=1) for parts in joined]


def frames_for(samples: np.ndarray, frame_hop: int) -> np.ndarray:
    """The input a graph takes: (1, S) float32, cut to a whole number of frames."""
    usable = len(samples) // frame_hop * frame_hop
    if usable == 0:
        raise ExportError(f"need at least {frame_hop} samples, got {len(samples)}")
    return np.ascontiguousarray(samples[:usable], dtype=np.float32)[None]


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


__all__ = [
    "OPSET",
    "TOLERANCE",
    "ExportError",
    "build_model",
    "check_in_onnxruntime",
    "frames_for",
    "max_abs_error",
    "run_stream",
    "save_model",
    "test_signal",
]
