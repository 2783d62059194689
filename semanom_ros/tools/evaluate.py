"""semanom-eval: score labelled frames with a bank and write a report people can read.

    semanom-eval --bank banks/highway --data ../shared/data/highway/test -o eval/highway
    semanom-eval --bank banks/highway --images DIR --masks DIR --labels labels.csv -o OUT
    semanom-eval --bank banks/highway --bag drive/ --topic /camera/image_raw --labels ranges.csv -o OUT
    semanom-eval --bank banks/highway --nominal-drive ../shared/data/highway_b/frames -o OUT
    semanom-eval --road-anomaly DATA --folds 5 [--config pipeline.yaml] [--feature-layer 11] -o OUT

The pipeline settings are the bank's (its manifest records the configuration it was built
with); flags override single settings. Every frame goes through the same
:class:`~semanom_ros.core.monitor.Monitor` the ROS node uses, once; the threshold, alpha and
minimum-area sweeps re-derive the maps from each frame's kept patch score grid with
:mod:`semanom_ros.core.maps`, so they cost no second forward pass.

Output folder: ``report.json`` (keys documented in the README), ``report.md``, ``roc.png``,
``pr.png``, ``f1_vs_threshold.png``, ``min_area_sweep.png``, ``examples.png``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semanom_ros.core.errors import SemanomError
from semanom_ros.io.bags import is_bag_path
from semanom_ros.workflows.eval_data import (
    BagDataset,
    EvalDataError,
    FolderDataset,
    WarningSink,
    find_folder_layout,
)
from semanom_ros.workflows.evaluation import run_evaluation
from semanom_ros.workflows.report import DEFAULT_ALPHAS, DEFAULT_MIN_AREAS, DEFAULT_PIXEL_STRIDE, EvalOptions
from semanom_ros.core.config import PipelineConfig
from semanom_ros.workflows.cross_drive import run_cross_drive
from semanom_ros.workflows.road_benchmark import RoadBenchmarkOptions, run_road_benchmark
from semanom_ros.workflows.settings import config_from_bank, config_from_yaml

from .pipeline_args import add_pipeline_overrides, parse_command_line

__all__ = ["build_parser", "dataset_from_args", "main"]


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semanom-eval",
        description="Score labelled frames (image folder with masks/labels, or a bag with labelled stamp ranges) "
        "with a bank and write report.json, report.md and plots.",
    )
    p.add_argument("--bank", help="bank directory (its manifest gives the pipeline settings)")
    p.add_argument("-o", "--output", required=True, help="output folder for report.json, report.md and PNGs")
    src = p.add_argument_group("data (folder mode or bag mode)")
    src.add_argument("--data", help="folder with images/ [masks/] [labels.csv] (or images directly), or a bag")
    src.add_argument("--images", help="folder of frames")
    src.add_argument("--masks", help="folder of pixel masks (non-zero = anomalous), matched to frames by file stem")
    src.add_argument("--labels", help="folder mode: CSV with a frame column and a label column; "
                     "bag mode: CSV/YAML of stamp ranges (start_ns,end_ns[,scenario] or start_s,end_s[,scenario])")
    src.add_argument("--label-column", help="label column of the CSV (default: anomalous/label/is_anomalous)")
    src.add_argument("--group-column",
                     help="scenario/group column of the CSV (default: scenario/group/object/category)")
    src.add_argument("--frame-column", help="frame-name column of the CSV (default: frame/image/file/filename/name)")
    src.add_argument("--resize-masks", action="store_true", help="resize masks of another size than their frame "
                     "(nearest neighbour, warned) instead of stopping with an error")
    src.add_argument("--bag", help="rosbag2 bag (directory, .mcap or .db3)")
    src.add_argument("--topic", help="image topic of the bag (default: the one with most messages)")
    src.add_argument("--max-frames", type=int, help="evaluate at most this many frames")
    src.add_argument("--nominal-drive", help="cross-drive mode: folder of frames (or a bag) of another drive, all "
                     "nominal, never in the bank: reports how many frames the bank's monitor flags (false alarms)")
    road = p.add_argument_group("road-anomaly benchmark (no --bank: a bank per fold is built from the data)")
    road.add_argument("--road-anomaly", metavar="DATA", help="folder with images/ and labels_masks/ (0 = "
                      "in-distribution, 1 = anomaly, 255 = void): K-fold cross-image protocol, SMIYC metrics")
    road.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    road.add_argument("--bank-fraction", type=float, default=1.0,
                      help="random share of each image's bank patches (seeded; < 1 to save time, default 1)")
    road.add_argument("--config", help="pipeline settings YAML (default: the package defaults)")
    road.add_argument("--cache", metavar="DIR", help="keep embeddings and search tables here: a rerun that "
                      "changes only alpha, min area, normalisation or folds skips the backbone and the search")
    road.add_argument("--feature-layer", type=int, help="backbone block whose output is the patch vector "
                      "(0 = last hidden state)")
    road.add_argument("--crop-view", action="append", metavar="TOP,BOTTOM,LEFT,RIGHT",
                      type=_float_list, help="a crop view (fractions of the frame), repeatable, e.g. "
                      "0.375,1,0.125,0.875 for the road ahead")
    add_pipeline_overrides(p, "model folder or hub id (e.g. a local copy when the manifest names a hub id)")
    rp = p.add_argument_group("report")
    rp.add_argument("--pixel-stride", type=int, default=DEFAULT_PIXEL_STRIDE,
                    help="pixel metrics sample every n-th pixel in each direction (default 4)")
    rp.add_argument("--examples", type=int, default=4, help="frames per row in examples.png (default 4)")
    rp.add_argument("--thresholds", type=_float_list, help="threshold sweep values (default: 25 over the score range)")
    rp.add_argument("--min-areas", type=_int_list,
                    help=f"min-area sweep values (default {','.join(map(str, DEFAULT_MIN_AREAS))})")
    rp.add_argument("--alphas", type=_float_list,
                    help=f"alpha sweep values (default {','.join(map(str, DEFAULT_ALPHAS))})")
    rp.add_argument("--no-plots", action="store_true", help="write report.json and report.md only")
    rp.add_argument("--modes", action="store_true", help="also score scene-level modes (global embeddings: kNN, "
                    "k-NNN, k-Means, HDBSCAN; patch majority vote) and report their AUROC and ms/frame")
    rp.add_argument("--nominal", help="with --modes: folder or bag of nominal frames to fit the scene models on "
                    "(adds the CLS modes; default: the bank's per-frame patch means)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def dataset_from_args(args: argparse.Namespace, sink: WarningSink) -> FolderDataset | BagDataset:
    bag = args.bag
    if args.data and not (args.images or args.bag):
        data = Path(args.data)
        if not data.exists():
            raise EvalDataError(f"--data {data} does not exist")
        if is_bag_path(data):
            bag = str(data)
        else:
            layout = find_folder_layout(data)
            return FolderDataset(
                layout.images, args.masks or layout.masks, args.labels or layout.labels,
                label_column=args.label_column, group_column=args.group_column, frame_column=args.frame_column,
                resize_masks=args.resize_masks, max_frames=args.max_frames, sink=sink,
            )
    elif args.data:
        raise EvalDataError("--data cannot be combined with --images or --bag")
    if bag:
        if args.images or args.masks:
            raise EvalDataError("--bag cannot be combined with --images/--masks")
        if not args.labels:
            raise EvalDataError(f"bag {bag}: pass --labels with the stamp ranges of anomalous messages")
        return BagDataset(bag, args.labels, args.topic, max_frames=args.max_frames, sink=sink)
    if args.images:
        return FolderDataset(
            args.images, args.masks, args.labels,
            label_column=args.label_column, group_column=args.group_column, frame_column=args.frame_column,
            resize_masks=args.resize_masks, max_frames=args.max_frames, sink=sink,
        )
    raise EvalDataError(
        "no data: pass --data DIR, --images DIR [--masks DIR] [--labels CSV], or --bag BAG --labels FILE"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, sink, overrides = parse_command_line(parser, argv)
    if bool(args.bank) == bool(args.road_anomaly):
        parser.error("pass --bank BANK (evaluate a bank) or --road-anomaly DATA (K-fold benchmark), one of them")
    if args.nominal_drive and not args.bank:
        parser.error("--nominal-drive needs --bank (the bank built from another drive)")
    if args.road_anomaly:
        return road_anomaly_main(args, overrides)
    if args.nominal_drive:
        return cross_drive_main(args, overrides)
    output = Path(args.output)
    if output.exists() and not output.is_dir():  # found now, not after the whole evaluation ran
        print(f"semanom-eval: error: -o {output}: exists and is not a folder; pass a folder for report.json, "
              "report.md and the PNGs", file=sys.stderr)
        return 2
    try:
        options = EvalOptions(
            pixel_stride=args.pixel_stride,
            n_examples=args.examples,
            thresholds=args.thresholds,
            min_areas=args.min_areas or DEFAULT_MIN_AREAS,
            alphas=args.alphas or DEFAULT_ALPHAS,
            progress=not args.no_progress,
            plots=not args.no_plots,
            scene_modes=args.modes,
            nominal=args.nominal,
        ).validate()
        cfg = config_from_bank(args.bank, overrides)
        dataset = dataset_from_args(args, sink)
        report = run_evaluation(cfg, args.bank, dataset, args.output, options, sink=sink, overrides=overrides)
    except (SemanomError, EvalDataError) as exc:
        hint = ""
        if "cannot load model" in str(exc):
            hint = " (pass --model with a local model folder, e.g. ../shared/models/dinov2-small)"
        print(f"semanom-eval: error: {exc}{hint}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the output folder cannot be created or written
        print(f"semanom-eval: error: {exc}", file=sys.stderr)
        return 2
    img = report["image"]["overall"]
    px = (report["pixel"] or {}).get("overall") or {}

    def fmt(v: Any) -> str:
        return _number(v, 4)

    print(
        f"{report['meta']['n_frames']} frames: image AUROC {fmt(img['auroc'])}, AUPRC {fmt(img['auprc'])}, "
        f"F1 {fmt(img['f1'])} at threshold {img['threshold']:.4f} (min area {img['min_area_px']} px); "
        f"pixel AUROC {fmt(px.get('auroc'))}, AP {fmt(px.get('ap'))}, IoU {fmt(px.get('iou'))}; "
        f"{report['meta']['timings']['median_ms_per_frame']:.0f} ms/frame (median). "
        f"Report: {Path(args.output) / 'report.md'}"
    )
    if len(report["modes"]) > 1:
        print("mode                 image AUROC  ms/frame")
        for name, entry in report["modes"].items():
            print(f"{name:<20} {fmt(entry.get('image_auroc')):>11}  {entry.get('median_ms_per_frame') or 0:8.1f}")
    if report["warnings"]:
        print(f"{len(report['warnings'])} warning(s); see report.md", file=sys.stderr)
    return 0


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fail(exc: Exception) -> int:
    hint = ""
    if "cannot load model" in str(exc):
        hint = " (pass --model with a local model folder, e.g. ../shared/models/dinov2-small)"
    print(f"semanom-eval: error: {exc}{hint}", file=sys.stderr)
    return 2


def road_anomaly_main(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """semanom-eval --road-anomaly: the K-fold benchmark (workflows.road_benchmark)."""
    try:
        cfg = config_from_yaml(args.config) if args.config else PipelineConfig()
        changes = dict(overrides)
        if args.feature_layer is not None:
            changes["feature_layer"] = args.feature_layer
        if args.crop_view:
            changes["crop_views"] = args.crop_view
        cfg = cfg.replace(**changes).validate()
        options = RoadBenchmarkOptions(
            folds=args.folds, bank_fraction=args.bank_fraction, pixel_stride=args.pixel_stride,
            max_images=args.max_frames, progress=not args.no_progress, cache_dir=args.cache,
        )
        if args.alphas:
            options.alphas = tuple(args.alphas)
        if args.min_areas:
            options.min_areas = tuple(args.min_areas)
        report = run_road_benchmark(cfg, args.road_anomaly, args.output, options)
    except (SemanomError, EvalDataError, OSError) as exc:
        return _fail(exc)
    px, comp, fr = report["pixel"], report["components"], report["frames"]
    print(
        f"{fr['n_frames']} images, {args.folds} folds: pixel AP {_number(px['ap'])}, AUROC {_number(px['auroc'])}, "
        f"FPR95 {_number(px['fpr_at_95_tpr'])}; sIoU {_number(comp['siou'])}, PPV {_number(comp['ppv'])}, mean F1 "
        f"{_number(comp['mean_f1'])}; frames hit {fr['frames_hit']}/{fr['anomalous_frames']}, frames with a false "
        f"component {fr['frames_with_false_component']}/{fr['n_frames']}. Report: {Path(args.output) / 'report.md'}"
    )
    return 0


def cross_drive_main(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """semanom-eval --bank A --nominal-drive B: false alarms of a bank's monitor on another drive."""
    try:
        cfg = config_from_bank(args.bank, overrides)
        report = run_cross_drive(
            cfg, args.bank, args.nominal_drive, args.output, topic=args.topic, max_frames=args.max_frames,
            progress=not args.no_progress,
        )
    except (SemanomError, EvalDataError, OSError, ValueError) as exc:
        return _fail(exc)
    print(
        f"{report['n_frames']} frames of {args.nominal_drive}: {report['frames_flagged']} flagged "
        f"({100 * report['flagged_rate']:.1f} %), image score / threshold median "
        f"{report['score_over_threshold']['median']:.2f}, max {report['score_over_threshold']['max']:.2f}. "
        f"Report: {Path(args.output) / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
