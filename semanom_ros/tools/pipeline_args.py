"""Command-line flags that override a bank's pipeline settings, shared by semanom-eval and semanom-replay."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from semanom_ros.workflows.eval_data import WarningSink


def add_pipeline_overrides(parser: argparse.ArgumentParser, model_help: str = "model folder or hub id") -> None:
    """The "pipeline overrides" group: every flag defaults to None = the bank's recorded setting."""
    ov = parser.add_argument_group("pipeline overrides (default: the bank's settings)")
    ov.add_argument("--model", help=model_help)
    thr = ov.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, help="fixed score threshold instead of the bank's calibration")
    thr.add_argument("--alpha", type=float, help="calibrated threshold at this alpha")
    ov.add_argument("--min-area", type=int, dest="min_area", help="minimum component area in pixels")
    ov.add_argument("--k", type=int, help="nearest neighbours per patch")
    ov.add_argument("--score-normalization", choices=("none", "median"), dest="score_normalization",
                    help="per-frame normalisation of patch scores (must match the bank's calibration)")
    ov.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    ov.add_argument("--input-height", type=int, help="backbone input height (must match the bank)")
    ov.add_argument("--num-threads", type=int,
                    help="torch and faiss CPU threads (0 = OMP_NUM_THREADS if set, else all cores)")
    ov.add_argument("--nprobe", type=int,
                    help="IVF nprobe / HNSW efSearch of the bank's saved index (0 = as tuned at build)")


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PipelineConfig fields set on the command line (unset flags left out)."""
    overrides = {
        "model": args.model,
        "threshold": args.threshold,
        "alpha": args.alpha,
        "min_component_area_px": args.min_area,
        "k": args.k,
        "score_normalization": args.score_normalization,
        "device": args.device,
        "input_height": args.input_height,
        "num_threads": args.num_threads,
        "nprobe": args.nprobe,
    }
    return {k: v for k, v in overrides.items() if v is not None}


def parse_command_line(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, WarningSink, dict[str, Any]]:
    """Parse ``argv``, set up logging; (arguments, warning sink, pipeline overrides) for the command."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args, stderr_warning_sink(), pipeline_overrides(args)


def stderr_warning_sink() -> WarningSink:
    """Warnings printed above the progress bar (tqdm.write), prefixed WARNING."""

    def emit(text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"WARNING: {text}", file=sys.stderr)

    return WarningSink(emit)


__all__ = ["add_pipeline_overrides", "parse_command_line", "pipeline_overrides", "stderr_warning_sink"]
