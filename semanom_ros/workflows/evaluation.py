"""Evaluation of a bank on labelled frames.

Every frame goes once through the same :class:`~semanom_ros.core.monitor.Monitor` the ROS node
uses; the report, its sweeps and plots are made from what that pass keeps
(:mod:`semanom_ros.workflows.report`, :mod:`semanom_ros.workflows.report_files`).

Output folder: ``report.json`` (keys documented in the README), ``report.md``, ``roc.png``,
``pr.png``, ``f1_vs_threshold.png``, ``min_area_sweep.png``, ``examples.png``.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semanom_ros.core import Monitor, PipelineConfig
from semanom_ros.core.errors import SemanomError
from semanom_ros.io.frames import iter_frames

from . import report_files
from .eval_data import BagDataset, EvalDataError, FolderDataset, LabelledFrame, WarningSink
from .eval_metrics import IoUAccumulator
from .report import EvalOptions, EvalRun, Example, FrameRecord, build_report, median_or_none
from .scene_evaluation import evaluate_scene_modes

__all__ = ["ExampleCollector", "evaluate_frames", "run_evaluation", "scene_modes_report"]

_log = logging.getLogger("semanom_ros.eval")


class ExampleCollector:
    """Keeps the overlays of the few frames examples.png shows, rendering only those that qualify."""

    CATEGORIES = ("best_hits", "worst_misses", "false_alarms")

    def __init__(self, n: int, thumb_width: int = 480) -> None:
        self.n = n
        self.thumb_width = thumb_width
        self._heaps: dict[str, list[tuple[float, int, Example]]] = {c: [] for c in self.CATEGORIES}
        self._seq = itertools.count()

    def offer(self, frame: LabelledFrame, result: Any, monitor: Monitor) -> None:
        if self.n <= 0:
            return
        if frame.label == 1 and result.is_anomalous:
            category, key = "best_hits", result.score  # highest scores
        elif frame.label == 1:
            category, key = "worst_misses", -result.score  # lowest scores
        elif result.is_anomalous:
            category, key = "false_alarms", result.score
        else:
            return
        heap = self._heaps[category]
        if len(heap) >= self.n and key <= heap[0][0]:
            return
        overlay = cv2.cvtColor(monitor.overlay(frame.rgb, result), cv2.COLOR_BGR2RGB)
        h, w = overlay.shape[:2]
        if w > self.thumb_width:
            overlay = cv2.resize(overlay, (self.thumb_width, round(h * self.thumb_width / w)),
                                 interpolation=cv2.INTER_AREA)
        item = Example(frame.name, float(result.score), frame.label, frame.group, overlay)
        entry = (key, next(self._seq), item)
        if len(heap) < self.n:
            heapq.heappush(heap, entry)
        else:
            heapq.heapreplace(heap, entry)

    def selected(self) -> dict[str, list[Example]]:
        return {c: [e[2] for e in sorted(h, key=lambda e: (-e[0], e[1]))] for c, h in self._heaps.items()}


def evaluate_frames(
    monitor: Monitor, frames: Iterable[LabelledFrame], options: EvalOptions, total: int | None = None
) -> EvalRun:
    """One pass: every frame through ``monitor.process``; keep what metrics, sweeps and examples need."""
    from tqdm import tqdm

    stride = options.pixel_stride
    collector = ExampleCollector(options.n_examples)
    records: list[FrameRecord] = []
    keep_features = options.scene_modes and monitor.config.mode == "patch"
    features: list[Any] = []
    t_start = time.perf_counter()
    bar = tqdm(total=total, desc="semanom-eval", unit="frame", disable=not options.progress, file=sys.stderr)
    try:
        for frame in frames:
            t0 = time.perf_counter()
            try:
                if keep_features:
                    # Same work as monitor.process, with the backbone output kept for the scene modes.
                    feats = monitor.extractor.extract(frame.rgb)
                    t_feat = time.perf_counter()
                    result = monitor.score_features(feats, frame.rgb)
                    result.timings_ms = {"features": (t_feat - t0) * 1e3, **result.timings_ms}
                    features.append(feats)
                else:
                    result = monitor.process(frame.rgb)
            except SemanomError as exc:
                # A frame the monitor refuses would silently change every figure if skipped.
                raise EvalDataError(f"frame {frame.path or frame.name}: {exc}") from None
            ms = (time.perf_counter() - t0) * 1e3
            rec = FrameRecord(
                name=frame.name,
                label=int(frame.label),
                group=frame.group,
                score=float(result.score),
                is_anomalous=bool(result.is_anomalous),
                n_components=len(result.components),
                patch_scores=np.asarray(result.patch_scores, np.float32).copy(),
                image_size=tuple(result.score_map.shape[:2]),
                ms_total=ms,
                timings_ms=dict(result.timings_ms),
            )
            if frame.mask is not None:
                truth = np.asarray(frame.mask, bool)
                acc = IoUAccumulator()
                rec.iou = acc.add(result.mask, truth)
                rec.has_mask, rec.intersection, rec.union = True, acc.intersection, acc.union
                rec.px_scores = np.ascontiguousarray(result.score_map[::stride, ::stride], np.float32).ravel()
                rec.px_truth = np.ascontiguousarray(truth[::stride, ::stride]).ravel()
            collector.offer(frame, result, monitor)
            records.append(rec)
            bar.update(1)
            bar.set_postfix(score=f"{result.score:.3f}", refresh=False)
    finally:
        bar.close()
    return EvalRun(
        records=records,
        features=features if keep_features else None,
        examples=collector.selected(),
        threshold=float(monitor.threshold),
        min_area_px=int(monitor.config.min_component_area_px),
        wall_s=time.perf_counter() - t_start,
        pixel_stride=stride,
    )


def _threshold_source(cfg: PipelineConfig) -> str:
    if cfg.threshold is not None:
        return "threshold setting"
    return f"bank calibration at alpha {cfg.alpha} ({cfg.calibration_level} level)"


def run_evaluation(
    config: PipelineConfig,
    bank: str | Path,
    dataset: FolderDataset | BagDataset,
    output: str | Path,
    options: EvalOptions | None = None,
    *,
    sink: WarningSink | None = None,
    overrides: dict[str, Any] | None = None,
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """Evaluate ``dataset`` and write report.json, report.md and the PNGs into ``output``; return the report."""
    options = (options or EvalOptions()).validate()
    sink = sink or dataset.sink
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    monitor = monitor or Monitor(config, bank)
    run = evaluate_frames(monitor, dataset, options, total=len(dataset))
    report = build_report(
        run,
        monitor=monitor,
        bank_path=bank,
        data=dataset.describe(),
        declared_groups=dataset.declared_groups(),
        options=options,
        sink=sink,
        overrides=overrides,
        threshold_source=_threshold_source(monitor.config),
    )
    if run.features is not None:
        report["modes"].update(scene_modes_report(monitor, run, options))
    report_files.write_outputs(report, run, output, plots=options.plots)
    return report


def scene_modes_report(monitor: Monitor, run: EvalRun, options: EvalOptions) -> dict[str, Any]:
    """Image AUROC and per-frame time of the scene-level modes next to the patch mode.

    Scene models are fitted on ``options.nominal`` frames when given (CLS and mean modes), else on
    the bank's per-frame patch means (mean modes only: a patch bank keeps no CLS tokens).
    """
    labels = [r.label for r in run.records]
    nominal_features = None
    modes = ["patch", "patch_majority", "mean_knn", "mean_knnn", "mean_kmeans", "mean_hdbscan"]
    if options.nominal:
        frames = [f.rgb for f in iter_frames(options.nominal)]
        nominal_features = monitor.extractor.extract_batch(frames) if frames else None
        del frames
        modes = ["patch", "patch_majority", "cls_knn", "cls_knnn", "cls_kmeans", "cls_hdbscan"] + modes[2:]
    cfg = monitor.config
    table = evaluate_scene_modes(
        run.features,
        labels,
        nominal_features,
        modes=modes,
        patch_monitor=monitor,
        patch_bank=monitor.bank,
        majority_fraction=cfg.majority_fraction,
        knnn_m=cfg.knnn_m,
        kmeans_k_range=tuple(cfg.kmeans_k_range),
        hdbscan_min_cluster_size=cfg.hdbscan_min_cluster_size,
        alpha=0.9,
        window=cfg.calibration_window,
    )
    feature_ms = median_or_none([r.timings_ms.get("features", 0.0) for r in run.records]) or 0.0
    for entry in table.values():
        # Scoring time after the shared backbone forward, and the end-to-end figure with it.
        entry["scoring_ms_per_frame"] = entry.get("ms_per_frame")
        entry["median_ms_per_frame"] = feature_ms + float(entry.get("ms_per_frame") or 0.0)
    return {
        f"scene/{name}" if not name.startswith("patch") else name: v for name, v in table.items() if name != "patch"
    }
