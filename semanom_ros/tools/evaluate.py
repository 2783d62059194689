"""semanom-eval: score labelled frames with a bank and write a report people can read.

    semanom-eval --bank banks/highway --data ../shared/data/highway/test -o eval/highway
    semanom-eval --bank banks/highway --images DIR --masks DIR --labels labels.csv -o OUT
    semanom-eval --bank banks/highway --bag drive/ --topic /camera/image_raw --labels ranges.csv -o OUT

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
from semanom_ros.workflows.settings import config_from_bank

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
    p.add_argument("--bank", required=True, help="bank directory (its manifest gives the pipeline settings)")
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
    args, sink, overrides = parse_command_line(build_parser(), argv)
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
        return "n/a" if v is None else f"{v:.4f}"

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


if __name__ == "__main__":
    sys.exit(main())
