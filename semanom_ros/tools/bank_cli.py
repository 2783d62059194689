"""semanom-bank: build, extend, inspect, recalibrate, merge and shrink nominal banks.

    semanom-bank build ../shared/data/highway/bag_mcap -o banks/highway --model ../shared/models/dinov2-small
    semanom-bank build drive2/ -o banks/highway --append --stride 2
    semanom-bank info banks/highway [--json] [--verify]
    semanom-bank upgrade banks/old_bank
    semanom-bank calibrate banks/highway --alpha 0.995 --window 25
    semanom-bank calibrate banks/highway --on drive2/      # threshold from a separate nominal drive
    semanom-bank merge banks/a banks/b -o banks/ab
    semanom-bank coreset banks/highway -o banks/highway_25 --fraction 0.25

Settings: defaults < the existing bank's (``--append``) < ``--config`` YAML (a PipelineConfig
mapping or the bank_builder_node parameter file) < flags. Errors print one line to stderr and
exit 1 (``--debug`` shows the traceback), so does ``info`` on a damaged bank; Ctrl-C or SIGTERM
exits 130 and leaves the bank at the output path as it was (every write is an atomic directory
swap).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from semanom_ros.core.errors import SemanomError

PROG = "semanom-bank"
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
    return value


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not TOP,BOTTOM,LEFT,RIGHT (four fractions of the frame)")
    return values


def _add_calibration_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--alpha", type=float,
                   help="threshold = alpha-quantile of leave-one-out nominal scores (default 0.999)")
    g.add_argument("--window", type=int, dest="calibration_window",
                   help="frames on each side of a nominal frame left out of its leave-one-out search (default 12)")
    g.add_argument("--holdout", choices=("auto", "source", "window"), dest="calibration_holdout",
                   help="what each nominal frame's leave-one-out search leaves out: its --window neighbours "
                   "(how a drive resembles itself), its whole source (how a new drive looks; needs >= 2 bags / "
                   "folders), or auto (default: source with >= 2 sources, else window)")
    g.add_argument("--k", type=_positive_int, help="nearest bank vectors averaged per patch (default 1)")
    g.add_argument("--level", choices=("patch", "image"), dest="calibration_level",
                   help="quantile over all patch scores (default) or over each frame's highest score")
    g.add_argument("--calibration-frames", type=_positive_int, dest="calibration_max_frames",
                   help="at most this many bank frames are scored (evenly spaced; default 300)")
    g.add_argument("--smoothing", type=float, dest="score_smoothing_sigma",
                   help="Gaussian smoothing of the patch score grid in patches (default 0)")
    g.add_argument("--score-normalization", choices=("none", "median"), dest="score_normalization",
                   help="per-frame normalisation of patch scores: median = score minus the median of the "
                   "frame's patch scores, clipped at 0 (a new car or camera lifts a whole frame; default none; "
                   "the monitor follows the bank's)")


_CAL_FIELDS = (
    "alpha", "calibration_window", "calibration_holdout", "k", "calibration_level", "calibration_max_frames",
    "score_smoothing_sigma", "score_normalization",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Build and manage nominal embedding banks for semanom_ros.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="embed nominal bags / image folders into a calibrated bank",
                       description="Embed the frames of nominal rosbag2 bags (directory, .mcap or .db3) or image "
                       "folders into a bank directory, calibrate it and save it atomically.")
    b.add_argument("sources", nargs="+", metavar="SOURCE", help="rosbag2 bag (directory or file) or image folder")
    b.add_argument("-o", "--output", required=True, metavar="BANK",
                   help="bank directory to write (or extend with --append)")
    b.add_argument("--config", metavar="YAML",
                   help="settings file (PipelineConfig keys and build keys, or the node's parameter file)")
    b.add_argument("--topic", help="image topic (default: the Image/CompressedImage topic with the most messages)")
    m = b.add_argument_group("model")
    m.add_argument("--model", help="DINOv2 hub id or local folder (default facebook/dinov2-small)")
    m.add_argument("--input-height", type=int, dest="input_height",
                   help="backbone input height in pixels (default 224)")
    m.add_argument("--feature-layer", type=int, dest="feature_layer",
                   help="backbone block whose output is the patch vector (default 0 = the last hidden state; "
                   "11 of DINOv2-S finds small road obstacles better)")
    m.add_argument("--crop-view", action="append", type=_box, dest="crop_views", metavar="TOP,BOTTOM,LEFT,RIGHT",
                   help="an extra view of each frame, a crop box in fractions of the frame (repeatable), e.g. "
                   "0.375,1,0.125,0.875 for the road ahead at a finer scale")
    m.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"))
    m.add_argument("--batch-size", type=_positive_int, dest="batch_size", help="frames per forward pass (default 8)")
    m.add_argument("--threads", type=int, dest="num_threads",
                   help="torch and faiss CPU threads (0 = OMP_NUM_THREADS if set, else all usable cores)")
    m.add_argument("--mode", choices=("patch", "instance"),
                   help="patch bank (default) or instance bank (OWLv2 + SAM 2)")
    x = b.add_argument_group("similarity index (kept in the bank; a monitor left at its defaults uses it as built)")
    x.add_argument("--index-type", dest="index_type", choices=("auto", "flat", "flat_fp16", "ivf", "ivfpq", "hnsw"),
                   help="auto (default): exact below 5e4 vectors; above, IVF and HNSW tuned and timed, the "
                   "fastest reaching recall@1 0.97 kept")
    x.add_argument("--nprobe", type=int,
                   help="IVF nprobe / HNSW efSearch (default 0: tuned at build on held-out frames)")
    s = b.add_argument_group("frame selection")
    s.add_argument("--start", type=float, dest="start_s", metavar="S",
                   help="first receive time: seconds from the bag's start, or an absolute Unix time (>= 1e9)")
    s.add_argument("--end", type=float, dest="end_s", metavar="S", help="end of the time range (exclusive), same units")
    s.add_argument("--stride", type=_positive_int, help="keep every n-th message")
    s.add_argument("--min-interval", type=float, dest="min_interval_s", metavar="S",
                   help="drop a message received sooner than S seconds after the previous kept one")
    s.add_argument("--dedup-similarity", type=float, dest="dedup_similarity", metavar="SIM",
                   help="skip a frame whose CLS cosine similarity to the last kept frame is >= SIM (e.g. 0.98)")
    s.add_argument("--max-frames", type=_positive_int, dest="max_frames",
                   help="at most this many frames go into the bank")
    s.add_argument("--fps", type=float, help="image folders: frame rate for time stamps (default 10)")
    s.add_argument("--ignore-mask", dest="ignore_mask", metavar="PNG",
                   help="image whose non-zero pixels (e.g. the ego bonnet) are left out of every frame")
    s.add_argument("--masks", metavar="DIR",
                   help="image folders: per-frame ignore masks, DIR/<image stem>.png, non-zero pixels (any "
                   "channel) left out of the bank, e.g. labelled anomalies or people; resized to the frame; a frame "
                   "without a mask file is used whole, one with an unreadable mask is skipped")
    s.add_argument("--stills", action="store_true", default=None,
                   help="image folders hold unrelated stills, not a video: each image is its own source, so "
                   "calibration never leaves a neighbouring file out as a near duplicate (without it a folder is "
                   "one sequence and --window drops each image's file-order neighbours)")
    o = b.add_argument_group("output")
    o.add_argument("--append", action="store_true", help="add to the existing bank at -o (same model and input size)")
    c = o.add_mutually_exclusive_group()
    c.add_argument("--coreset-fraction", type=float, dest="coreset_fraction", metavar="F",
                   help="greedy k-center coreset keeping this fraction (0, 1] of the vectors")
    c.add_argument("--coreset-size", type=_positive_int, dest="coreset_size", metavar="N",
                   help="greedy k-center coreset of N vectors")
    o.add_argument("--coreset-seed", type=int, dest="coreset_seed",
                   help="seed of the coreset's first centre and projection")
    o.add_argument("--no-calibrate", action="store_true", help="save without a threshold (calibrate later)")
    _add_calibration_flags(b)
    r = b.add_argument_group("fleet build on a Ray cluster (docs/fleet.md)")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="build one shard per source on Ray, then merge; ADDRESS: host:6379, ray://host:10001 or "
                   "auto (the cluster on this machine); none: RAY_ADDRESS, else a new local cluster")
    r.add_argument("--ray-workers", type=_positive_int, dest="ray_workers", metavar="N",
                   help="embedding actors (default: one per GPU, else one per 2 CPUs)")
    r.add_argument("--ray-gpus-per-worker", type=float, dest="ray_gpus_per_worker", metavar="G",
                   help="GPUs per actor, fractions share a GPU (default 1 where the cluster has GPUs, else 0)")
    r.add_argument("--shard-dir", dest="shard_dir", metavar="DIR",
                   help="shard banks, kept for resuming (default BANK.shards; shared storage on a multi-node cluster)")
    _add_output_flags(b)
    b.set_defaults(func=cmd_build)

    cal = sub.add_parser(
        "calibrate", help="recompute a bank's threshold (leave-one-out, or on a separate nominal drive)",
        description="Recompute a bank's threshold. Without --on: leave-one-out over the bank's own frames (--holdout "
        "says what each frame's search leaves out). With --on DRIVE: every frame of DRIVE, a nominal bag or image "
        "folder that is NOT in the bank (another day, route or car), is scored against the whole bank as the monitor "
        "scores it, and the threshold is the alpha-quantile of those scores at the bank's calibration level; the "
        "drive's path and frame count are recorded in the manifest. That is the way to a threshold that expects a new "
        "drive when the bank holds one drive only.",
    )
    cal.add_argument("bank", metavar="BANK")
    cal.add_argument("-o", "--output", metavar="OUT", help="write the recalibrated bank here (default: in place)")
    cal.add_argument("--on", metavar="DRIVE", dest="drive",
                     help="calibrate on this separate nominal drive (rosbag2 bag or image folder, read as build reads "
                     "it) instead of leave-one-out")
    d = cal.add_argument_group("drive frame selection (with --on)")
    d.add_argument("--topic", help="image topic (default: the Image/CompressedImage topic with the most messages)")
    d.add_argument("--start", type=float, dest="start_s", metavar="S", help="first receive time (as for build)")
    d.add_argument("--end", type=float, dest="end_s", metavar="S", help="end of the time range (exclusive)")
    d.add_argument("--stride", type=_positive_int, help="keep every n-th message")
    d.add_argument("--max-frames", type=_positive_int, dest="max_frames", help="score at most this many frames")
    d.add_argument("--masks", metavar="DIR", help="image folders: per-frame ignore masks DIR/<image stem>.png")
    d.add_argument("--batch-size", type=_positive_int, dest="batch_size", help="frames per forward pass")
    d.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    _add_calibration_flags(cal)
    _add_output_flags(cal)
    cal.set_defaults(func=cmd_calibrate)

    info = sub.add_parser("info", help="check a bank and print its manifest: model, sizes, sources, threshold",
                          description="Check a bank as a monitor's load does (exit 1 with one line if it is "
                          "damaged) and describe it.")
    info.add_argument("bank", metavar="BANK")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.add_argument("--verify", action="store_true",
                      help="re-hash every file (also of banks over 512 MB), check every vector is finite, and "
                      "print what was checked (under 'verified' with --json)")
    info.set_defaults(func=cmd_info)

    up = sub.add_parser("upgrade", help="re-save a bank in the current format (every file verified first)",
                        description="Verify every file of a bank and save it again in the current format (with "
                        "its manifest checksum); rebuilds a damaged index file. Vectors and calibration are kept.")
    up.add_argument("bank", metavar="BANK")
    up.add_argument("-o", "--output", metavar="OUT", help="write the upgraded bank here (default: in place)")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    up.set_defaults(func=cmd_upgrade)

    mg = sub.add_parser("merge", help="join banks of one model into one bank")
    mg.add_argument("banks", nargs="+", metavar="BANK")
    mg.add_argument("-o", "--output", required=True, metavar="OUT")
    mg.add_argument("--no-calibrate", action="store_true", help="save without a threshold")
    _add_calibration_flags(mg)
    _add_output_flags(mg)
    mg.set_defaults(func=cmd_merge)

    cs = sub.add_parser("coreset", help="shrink a bank by greedy k-center subsampling")
    cs.add_argument("bank", metavar="BANK")
    cs.add_argument("-o", "--output", required=True, metavar="OUT")
    g = cs.add_mutually_exclusive_group(required=True)
    g.add_argument("--fraction", type=float, help="keep this fraction (0, 1] of the vectors")
    g.add_argument("--size", type=_positive_int, help="keep this many vectors")
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--no-calibrate", action="store_true", help="save without a threshold")
    _add_calibration_flags(cs)
    _add_output_flags(cs)
    cs.set_defaults(func=cmd_coreset)
    return parser


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="always show progress bars")
    bar.add_argument("--no-progress", action="store_false", dest="progress", help="never show progress bars")


# ------------------------------------------------------------------------------------ commands
def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None}


# The workflows import torch: they are imported by the commands, so --help and usage errors stay instant.
def cmd_build(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.settings import resolve_build_settings

    pipeline = _overrides(
        args, ("model", "input_height", "feature_layer", "crop_views", "device", "dtype", "batch_size", "num_threads",
               "mode", "ignore_mask", "index_type", "nprobe", *_CAL_FIELDS)
    )
    options = _overrides(
        args, ("topic", "start_s", "end_s", "stride", "min_interval_s", "dedup_similarity", "max_frames", "fps",
               "masks", "stills", "coreset_fraction", "coreset_size", "coreset_seed")
    )
    if args.no_calibrate:
        options["calibrate"] = False
    options["progress"] = args.progress
    config, opts = resolve_build_settings(
        args.output, append=args.append, settings_file=args.config, pipeline_overrides=pipeline, build_overrides=options
    )
    fleet_flags = [f for f in ("ray_workers", "ray_gpus_per_worker", "shard_dir") if getattr(args, f) is not None]
    if args.ray is None and fleet_flags:
        raise ValueError(f"--{fleet_flags[0].replace('_', '-')} applies to fleet builds; add --ray")
    if args.ray is not None:
        from semanom_ros.workflows.fleet_build import FleetOptions, fleet_build

        fleet = FleetOptions(address=args.ray or None, workers=args.ray_workers,
                             gpus_per_worker=args.ray_gpus_per_worker, shard_dir=args.shard_dir)
        with _Interruptible(args.output, log):
            summary = fleet_build(args.sources, args.output, config, opts, fleet, logger=log)
    else:
        with _Interruptible(args.output, log):
            summary = build_bank(args.sources, args.output, config, opts, logger=log)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print(summary.format_text())
    return EXIT_ERROR if summary.calibration_error else 0


_DRIVE_OPTIONS = ("topic", "start_s", "end_s", "stride", "max_frames", "masks")


def cmd_calibrate(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.workflows.bank_ops import calibrate_on, calibration_brief, calibration_summary, recalibrate

    target = args.output or args.bank
    settings = _overrides(args, _CAL_FIELDS)
    if args.drive is None:
        given = [f"--{n.removesuffix('_s').replace('_', '-')}" for n in (*_DRIVE_OPTIONS, "batch_size", "device")
                 if getattr(args, n, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} select frames of a drive; add --on DRIVE or drop them")
        with _Interruptible(target, log):
            bank, cal = recalibrate(args.bank, args.output, progress=args.progress, **settings)
    else:
        from semanom_ros.workflows.settings import BuildOptions

        options = BuildOptions(progress=args.progress, **_overrides(args, _DRIVE_OPTIONS))
        with _Interruptible(target, log):
            bank, cal = calibrate_on(
                args.bank, args.drive, args.output, options=options, logger=log,
                **settings, **_overrides(args, ("batch_size", "device")),
            )
    brief = calibration_brief(cal)
    if args.json:
        print(json.dumps({"bank": str(Path(target).absolute()), "calibration": brief}, indent=2))
    else:
        print(f"calibrated {Path(target).absolute()}: {calibration_summary(cal)}")
        if cal.get("warning"):
            print(f"WARNING: {cal['warning']}")
    return 0


def cmd_info(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.core.bank import NominalBank
    from semanom_ros.workflows.bank_ops import check_bank, describe_bank

    bank = check_bank(args.bank, verify=args.verify)  # BankError (exit 1, one line) on any damage
    manifest = NominalBank.read_manifest(args.bank)
    if args.json:
        print(json.dumps(dict(manifest, verified=bank.checks) if args.verify else manifest, indent=2))
    else:
        print(describe_bank(args.bank, manifest))
        if args.verify:
            print("\n".join(f"{'verified' if i == 0 else '':13}{line}" for i, line in enumerate(bank.checks)))
    return 0


def cmd_upgrade(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.core.bank import BANK_FORMAT_VERSION
    from semanom_ros.workflows.bank_ops import upgrade_bank

    target = args.output or args.bank
    with _Interruptible(target, log):
        bank, old_version = upgrade_bank(args.bank, args.output)
    result = {
        "bank": str(Path(target).absolute()),
        "from_format": old_version,
        "to_format": BANK_FORMAT_VERSION,
        "frames": bank.num_frames,
        "vectors": len(bank),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"upgraded {result['bank']}: format {old_version} -> {BANK_FORMAT_VERSION}, {bank.num_frames} frames, "
            f"{len(bank)} vectors, every file verified and checksummed"
        )
    return 0


def cmd_merge(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.workflows.bank_ops import calibration_brief, merge_banks

    with _Interruptible(args.output, log):
        bank, cal = merge_banks(
            args.banks, args.output, calibrate=not args.no_calibrate, progress=args.progress,
            **_overrides(args, _CAL_FIELDS),
        )
    result = {
        "bank": str(Path(args.output).absolute()),
        "merged": [str(Path(b).absolute()) for b in args.banks],
        "frames": bank.num_frames,
        "vectors": len(bank),
        "calibration": calibration_brief(cal) if cal else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        text = f"merged {len(args.banks)} banks into {result['bank']}: {bank.num_frames} frames, {len(bank)} vectors"
        if cal:
            text += f"; threshold {cal['threshold']:.5f} at alpha {cal['alpha']}"
        print(text)
    return 0


def cmd_coreset(args: argparse.Namespace, log: logging.Logger) -> int:
    from semanom_ros.workflows.bank_ops import calibration_brief, coreset_existing_bank

    with _Interruptible(args.output, log):
        bank, result = coreset_existing_bank(
            args.bank, args.output, fraction=args.fraction, count=args.size, seed=args.seed,
            calibrate=not args.no_calibrate, progress=args.progress, **_overrides(args, _CAL_FIELDS),
        )
    info = dict(result.describe(), bank=str(Path(args.output).absolute()))
    if bank.calibration:
        info["calibration"] = calibration_brief(bank.calibration)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        text = (
            f"coreset {info['bank']}: {result.from_vectors} -> {result.to_vectors} vectors "
            f"({100 * result.kept_fraction:.1f} %, {result.shrink_factor:.2f}x smaller) in {result.seconds:.1f} s"
        )
        if bank.calibration:
            text += f"; threshold {bank.calibration['threshold']:.5f} at alpha {bank.calibration['alpha']}"
        print(text)
    return 0


# ------------------------------------------------------------------------------------ plumbing
class _Interruptible:
    """Turns Ctrl-C / SIGTERM during a command into a one-line report on the bank at ``output``."""

    def __init__(self, output: str | Path, log: logging.Logger) -> None:
        from semanom_ros.workflows.bank_ops import bank_state

        self.output = Path(output).expanduser().absolute()
        self.token = bank_state(self.output)
        self.log = log

    def __enter__(self) -> "_Interruptible":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
            return False
        from semanom_ros.workflows.bank_ops import bank_unchanged_since

        if bank_unchanged_since(self.output, self.token):
            where = (
                f"bank at {self.output} unchanged" if self.token is not None else f"no bank written at {self.output}"
            )
        else:
            where = f"the new bank at {self.output} had already been saved"
        raise _Interrupted(f"interrupted; {where}")


class _Interrupted(Exception):
    pass


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (main() may run many times in one process)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _logger() -> logging.Logger:
    log = logging.getLogger("semanom_ros.bank")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``semanom-bank``; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log = _logger()
    previous = None
    try:
        # SIGTERM (kill, systemd, a CI timeout) gets the same clean exit as Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    except ValueError:  # not the main thread (called from a test or another program's thread)
        pass
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[log]):
            return int(args.func(args, log))
    except _Interrupted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `semanom-bank info BANK | head`: the reader left, nothing to report
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stops the interpreter's flush error at exit
        except OSError:
            pass
        return 0
    except (SemanomError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback; --debug shows it
        if args.debug:
            raise
        print(f"{PROG} {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
