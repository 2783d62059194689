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
import datetime as _dt
import heapq
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semanom_ros import __version__
from semanom_ros.core import Monitor, NominalBank, PipelineConfig
from semanom_ros.core.errors import ConfigError, SemanomError
from semanom_ros.core.maps import threshold_components, upsample_scores
from semanom_ros.core.scoring import threshold_for_alpha

from .eval_data import (
    BagDataset,
    EvalDataError,
    FolderDataset,
    LabelledFrame,
    WarningSink,
    find_folder_layout,
)
from .eval_metrics import IoUAccumulator, image_metrics, pixel_metrics, threshold_metrics
from .pipeline_args import add_pipeline_overrides, pipeline_overrides, stderr_warning_sink

__all__ = [
    "EvalOptions",
    "EvalRun",
    "FrameRecord",
    "REPORT_SCHEMA",
    "build_report",
    "config_from_bank",
    "evaluate_frames",
    "main",
    "run_evaluation",
    "sweep_operating_points",
]

_log = logging.getLogger("semanom_ros.eval")

REPORT_SCHEMA = "semanom_ros.eval_report"
REPORT_SCHEMA_VERSION = 1
DEFAULT_MIN_AREAS = (0, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
DEFAULT_ALPHAS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)
DEFAULT_THRESHOLD_STEPS = 25
# Pixel metrics pool every 4th pixel in each direction: AUROC agrees with the full set to ~3
# decimals and memory stays at 1/16 (a 960x540 frame keeps 32 400 samples).
DEFAULT_PIXEL_STRIDE = 4


@dataclass
class EvalOptions:
    """What the evaluation computes besides the operating point."""

    pixel_stride: int = DEFAULT_PIXEL_STRIDE
    n_examples: int = 4  # frames per row of examples.png
    thresholds: Sequence[float] | None = None  # None: evenly spaced over the observed image scores
    min_areas: Sequence[int] = DEFAULT_MIN_AREAS
    alphas: Sequence[float] = DEFAULT_ALPHAS
    progress: bool = True
    plots: bool = True
    # Scene-level modes scored side by side with the monitor's mode (issue: global embeddings).
    scene_modes: bool = False
    nominal: str | None = None  # folder/bag of nominal frames for CLS modes; None = the bank's frame means

    def validate(self) -> "EvalOptions":
        if not isinstance(self.pixel_stride, int) or self.pixel_stride < 1:
            raise ConfigError(f"pixel_stride: {self.pixel_stride!r} must be an integer >= 1")
        if self.n_examples < 0:
            raise ConfigError(f"examples: {self.n_examples} must be >= 0")
        if any(not 0.0 < a < 1.0 for a in self.alphas):
            raise ConfigError(f"alphas: every alpha must be in (0, 1), got {list(self.alphas)}")
        if any(a < 0 for a in self.min_areas):
            raise ConfigError(f"min_areas: areas must be >= 0, got {list(self.min_areas)}")
        return self


@dataclass
class FrameRecord:
    """What the evaluation keeps of one frame (the patch grid, not the full-resolution map)."""

    name: str
    label: int
    group: str | None
    score: float
    is_anomalous: bool
    n_components: int
    patch_scores: np.ndarray  # (h, w) float32
    image_size: tuple[int, int]  # (H, W)
    ms_total: float
    timings_ms: dict[str, float]
    has_mask: bool = False
    iou: float | None = None  # full-resolution IoU of the filtered mask with the ground truth
    intersection: int = 0
    union: int = 0
    px_scores: np.ndarray | None = None  # sampled score-map pixels (float32)
    px_truth: np.ndarray | None = None  # sampled ground-truth pixels (bool)


@dataclass
class _Example:
    name: str
    score: float
    label: int
    group: str | None
    thumbnail: np.ndarray  # RGB


class ExampleCollector:
    """Keeps the overlays of the few frames examples.png shows, rendering only those that qualify."""

    CATEGORIES = ("best_hits", "worst_misses", "false_alarms")

    def __init__(self, n: int, thumb_width: int = 480) -> None:
        self.n = n
        self.thumb_width = thumb_width
        self._heaps: dict[str, list[tuple[float, int, _Example]]] = {c: [] for c in self.CATEGORIES}
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
            overlay = cv2.resize(overlay, (self.thumb_width, round(h * self.thumb_width / w)), interpolation=cv2.INTER_AREA)
        item = _Example(frame.name, float(result.score), frame.label, frame.group, overlay)
        entry = (key, next(self._seq), item)
        if len(heap) < self.n:
            heapq.heappush(heap, entry)
        else:
            heapq.heapreplace(heap, entry)

    def selected(self) -> dict[str, list[_Example]]:
        return {c: [e[2] for e in sorted(h, key=lambda e: (-e[0], e[1]))] for c, h in self._heaps.items()}


@dataclass
class EvalRun:
    records: list[FrameRecord]
    features: list[Any] | None
    examples: dict[str, list[_Example]]
    threshold: float
    min_area_px: int
    wall_s: float
    pixel_stride: int


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


# --------------------------------------------------------------------------- sweeps


def _auto_thresholds(records: Sequence[FrameRecord], operating: float, steps: int) -> list[float]:
    scores = np.array([r.score for r in records], np.float64)
    lo, hi = 0.5 * float(scores.min()), float(scores.max())
    grid = np.linspace(lo, hi, steps) if hi > lo else np.array([hi])
    # The operating threshold exactly (not rounded), so its row reproduces the monitor's decisions.
    return sorted({round(float(t), 6) for t in grid} | {float(operating)})


def sweep_operating_points(
    records: Sequence[FrameRecord],
    thresholds: Sequence[float],
    min_areas: Sequence[int],
    operating_threshold: float,
    operating_min_area: int,
    stride: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Image decisions (and sampled-pixel IoU) for every threshold at the operating minimum area,
    and for every minimum area at the operating threshold.

    Each frame's map is re-derived from its patch grid once (``upsample_scores``) and thresholded
    with the monitor's own ``threshold_components``, so the operating point reproduces the
    monitor's decisions exactly. IoU here uses the sampled pixels (``stride``); the report's
    ``pixel.overall.iou`` is the exact full-resolution figure.
    """
    thresholds = [float(t) for t in thresholds]
    min_areas = [int(a) for a in min_areas]
    n = len(records)
    labels = np.array([r.label for r in records], np.int8)
    t_dec = np.zeros((len(thresholds), n), bool)
    t_iou = np.zeros((len(thresholds), 2), np.int64)  # intersection, union
    a_dec = np.zeros((len(min_areas), n), bool)
    a_iou = np.zeros((len(min_areas), 2), np.int64)
    any_mask = False
    for j, rec in enumerate(records):
        score_map = upsample_scores(rec.patch_scores, rec.image_size)
        truth = rec.px_truth
        if truth is not None:
            any_mask = True
            truth = truth.reshape(score_map[::stride, ::stride].shape)
        for i, t in enumerate(thresholds):
            mask, _, comps = threshold_components(score_map, t, operating_min_area)
            t_dec[i, j] = bool(comps)
            if truth is not None:
                pred = mask[::stride, ::stride]
                t_iou[i] += (np.count_nonzero(pred & truth), np.count_nonzero(pred | truth))
        # One labelling at the operating threshold serves every area: the area filter only drops components.
        _, comp_labels, comps = threshold_components(score_map, operating_threshold, 0)
        areas = np.array([0] + [c.area_px for c in comps], np.int64)
        sampled_area = areas[comp_labels[::stride, ::stride]] if truth is not None else None
        for i, a in enumerate(min_areas):
            a_dec[i, j] = any(c.area_px >= a for c in comps)
            if sampled_area is not None:
                pred = (sampled_area >= max(a, 1))
                a_iou[i] += (np.count_nonzero(pred & truth), np.count_nonzero(pred | truth))

    def row(extra: dict[str, Any], decisions: np.ndarray, iou: np.ndarray) -> dict[str, Any]:
        out = dict(extra)
        out.update(threshold_metrics(labels, decisions))
        out["pixel_iou_sampled"] = (float(iou[0] / iou[1]) if iou[1] else None) if any_mask else None
        return out

    threshold_rows = [
        row({"threshold": t, "min_area_px": int(operating_min_area)}, t_dec[i], t_iou[i]) for i, t in enumerate(thresholds)
    ]
    area_rows = [
        row({"threshold": float(operating_threshold), "min_area_px": a}, a_dec[i], a_iou[i]) for i, a in enumerate(min_areas)
    ]
    return threshold_rows, area_rows


# --------------------------------------------------------------------------- report


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def _timings(run: EvalRun) -> dict[str, Any]:
    totals = [r.ms_total for r in run.records]
    stages = sorted({k for r in run.records for k in r.timings_ms})
    return {
        "median_ms_per_frame": _median(totals),
        "p90_ms_per_frame": float(np.percentile(totals, 90)) if totals else None,
        "mean_ms_per_frame": float(np.mean(totals)) if totals else None,
        "median_ms_by_stage": {s: _median([r.timings_ms[s] for r in run.records if s in r.timings_ms]) for s in stages},
        "wall_s": float(run.wall_s),
        "frames_per_s": len(totals) / run.wall_s if run.wall_s > 0 else None,
    }


def _image_block(records: Sequence[FrameRecord]) -> dict[str, Any]:
    y = np.array([r.label for r in records], np.int8)
    s = np.array([r.score for r in records], np.float64)
    p = np.array([r.is_anomalous for r in records], np.int8)
    return image_metrics(y, s, p)


def _pixel_block(records: Sequence[FrameRecord], stride: int) -> dict[str, Any] | None:
    masked = [r for r in records if r.has_mask]
    if not masked:
        return None
    truth = np.concatenate([r.px_truth for r in masked])
    scores = np.concatenate([r.px_scores for r in masked])
    out: dict[str, Any] = {"n_frames": len(masked), "pixel_stride": stride}
    out.update(pixel_metrics(truth, scores))
    undefined = out.pop("undefined")
    inter, union = sum(r.intersection for r in masked), sum(r.union for r in masked)
    per_frame = [r.iou for r in masked if r.iou is not None]
    out["iou"] = inter / union if union else None
    out["mean_iou"] = float(np.mean(per_frame)) if per_frame else None
    out["iou_frames"] = len(per_frame)
    if out["iou"] is None:
        undefined["iou"] = "neither the filtered maps nor the masks mark any pixel"
    if out["mean_iou"] is None:
        undefined["mean_iou"] = "no frame has a non-empty mask"
    out["undefined"] = undefined
    return out


def _empty_group(reason: str) -> dict[str, Any]:
    return {"n_frames": 0, "n_anomalous": 0, "n_nominal": 0, "undefined": {"all": reason}}


def build_report(
    run: EvalRun,
    *,
    monitor: Monitor,
    bank_path: str | Path,
    data: dict[str, Any],
    declared_groups: Sequence[str] = (),
    options: EvalOptions,
    sink: WarningSink,
    overrides: dict[str, Any] | None = None,
    threshold_source: str = "",
) -> dict[str, Any]:
    """Every figure of the evaluation as a JSON-ready dict (keys documented in the README)."""
    records = run.records
    if not records:
        raise EvalDataError(f"no frames were evaluated from {data}")
    cfg = monitor.config
    mode = str(getattr(cfg, "mode", "patch"))
    manifest = NominalBank.read_manifest(bank_path)
    calibration = monitor.bank.calibration or {}

    overall = _image_block(records)
    overall.update({"threshold": run.threshold, "min_area_px": run.min_area_px})
    groups = sorted({r.group for r in records if r.group is not None} | set(declared_groups))
    by_group: dict[str, Any] = {}
    pixel_by_group: dict[str, Any] = {}
    nominal = [r for r in records if r.label == 0]
    for g in groups:
        members = [r for r in records if r.group == g]
        if not members:
            reason = f"no frame belongs to group {g!r}"
            sink.warning(f"group/scenario {g!r} of {data.get('labels')} has no frames: its metrics are null")
            by_group[g] = _empty_group(reason)
            continue
        block = _image_block(members)
        if any(r.label == 1 for r in members):
            # The natural per-object figure: this group's frames against every nominal frame.
            others = [r for r in nominal if r.group != g]
            block["vs_nominal"] = _image_block(members + others) if others else None
        by_group[g] = block
        px = _pixel_block(members, run.pixel_stride)
        if px is not None:
            pixel_by_group[g] = px
    pixel_overall = _pixel_block(records, run.pixel_stride)
    if pixel_overall is not None and pixel_overall["n_frames"] < len(records):
        sink.warning(
            f"pixel metrics cover {pixel_overall['n_frames']} of {len(records)} frames (the others have no mask)"
        )

    # Sweeps.
    decision = str(getattr(cfg, "image_decision", "components"))
    if decision != "components" or mode != "patch":
        sink.warning(
            f"the sweeps re-derive decisions with the patch component rule (threshold + minimum area); this run "
            f"uses mode {mode!r} with image_decision {decision!r}, so sweep rows do not reproduce its decisions"
        )
    thresholds = list(options.thresholds) if options.thresholds else _auto_thresholds(records, run.threshold, DEFAULT_THRESHOLD_STEPS)
    alpha_rows_meta: list[tuple[float, float]] = []
    if calibration.get(f"{cfg.calibration_level}_scores", {}).get("table"):
        for a in sorted(set(options.alphas) | ({float(cfg.alpha)} if cfg.threshold is None else set())):
            alpha_rows_meta.append((float(a), threshold_for_alpha(calibration, float(a), cfg.calibration_level)))
    else:
        sink.warning(f"bank {bank_path} holds no calibration table: no alpha sweep")
    all_thresholds = sorted(set(thresholds) | {t for _, t in alpha_rows_meta})
    min_areas = sorted(set(int(a) for a in options.min_areas) | {run.min_area_px})
    t_rows, area_rows = sweep_operating_points(
        records, all_thresholds, min_areas, run.threshold, run.min_area_px, run.pixel_stride
    )
    by_threshold = {r["threshold"]: r for r in t_rows}
    threshold_rows = [by_threshold[t] for t in sorted(set(thresholds))]
    alpha_rows = [{"alpha": a, **by_threshold[t]} for a, t in alpha_rows_meta]

    timings = _timings(run)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "meta": {
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "semanom_ros_version": __version__,
            "mode": mode,
            "bank": {
                "path": str(bank_path),
                "kind": manifest.get("kind"),
                "num_frames": manifest.get("num_frames"),
                "num_vectors": manifest.get("num_vectors"),
                "sources": [s.get("name") for s in manifest.get("sources", [])],
                "calibration": {
                    k: calibration.get(k) for k in ("level", "alpha", "k", "window", "threshold", "frames_scored")
                } if calibration else None,
            },
            "model": manifest.get("model"),
            "config": cfg.to_dict(),
            "overrides": dict(overrides or {}),
            "data": data,
            "n_frames": len(records),
            "operating_point": {
                "threshold": run.threshold,
                "alpha": None if cfg.threshold is not None else float(cfg.alpha),
                "calibration_level": cfg.calibration_level,
                "min_area_px": run.min_area_px,
                "threshold_source": threshold_source,
            },
            "timings": timings,
        },
        "image": {"overall": overall, "by_group": by_group},
        "pixel": {"overall": pixel_overall, "by_group": pixel_by_group} if pixel_overall is not None else None,
        "sweeps": {"threshold": threshold_rows, "alpha": alpha_rows, "min_area": area_rows},
        # One entry per detection mode, for side-by-side comparison (other modes add their own key).
        "modes": {
            mode: {
                "image_auroc": overall["auroc"],
                "image_auprc": overall["auprc"],
                "image_f1": overall["f1"],
                "pixel_auroc": pixel_overall["auroc"] if pixel_overall else None,
                "median_ms_per_frame": timings["median_ms_per_frame"],
            }
        },
        "examples": {
            c: [{"name": e.name, "score": e.score, "label": e.label, "group": e.group} for e in items]
            for c, items in run.examples.items()
        },
        "frames": [
            {
                "name": r.name,
                "group": r.group,
                "label": r.label,
                "score": r.score,
                "is_anomalous": r.is_anomalous,
                "n_components": r.n_components,
                "has_mask": r.has_mask,
                "iou": r.iou,
                "ms": r.ms_total,
            }
            for r in records
        ],
        "files": {},
        "warnings": list(sink.messages),
    }
    return report


# --------------------------------------------------------------------------- configuration


def config_from_bank(bank: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The bank's recorded pipeline settings with ``overrides`` (non-None values) applied."""
    manifest = NominalBank.read_manifest(bank)
    recorded = dict(manifest.get("config") or {})
    if not recorded:
        recorded = {"model": manifest["model"]["model"], "input_height": int(manifest["model"]["input_height"])}
    try:
        cfg = PipelineConfig.from_dict(recorded)
    except ConfigError as exc:
        raise ConfigError(f"bank {bank}: the manifest's config is not usable: {exc}") from None
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "alpha" in changes:
        changes.setdefault("threshold", None)  # an alpha asks for the calibrated threshold at that alpha
    return cfg.replace(**changes)


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
    from . import eval_report

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
    eval_report.write_outputs(report, run, output, plots=options.plots)
    return report


def scene_modes_report(monitor: Monitor, run: EvalRun, options: EvalOptions) -> dict[str, Any]:
    """Image AUROC and per-frame time of the scene-level modes next to the patch mode.

    Scene models are fitted on ``options.nominal`` frames when given (CLS and mean modes), else on
    the bank's per-frame patch means (mean modes only: a patch bank keeps no CLS tokens).
    """
    from semanom_ros.workflows.scene_evaluation import evaluate_scene_modes

    labels = [r.label for r in run.records]
    nominal_features = None
    modes = ["patch", "patch_majority", "mean_knn", "mean_knnn", "mean_kmeans", "mean_hdbscan"]
    if options.nominal:
        from semanom_ros.io.frames import iter_frames

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
    feature_ms = _median([r.timings_ms.get("features", 0.0) for r in run.records]) or 0.0
    for entry in table.values():
        # Scoring time after the shared backbone forward, and the end-to-end figure with it.
        entry["scoring_ms_per_frame"] = entry.get("ms_per_frame")
        entry["median_ms_per_frame"] = feature_ms + float(entry.get("ms_per_frame") or 0.0)
    return {f"scene/{name}" if not name.startswith("patch") else name: v for name, v in table.items() if name != "patch"}


# --------------------------------------------------------------------------- command line


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
    src.add_argument("--group-column", help="scenario/group column of the CSV (default: scenario/group/object/category)")
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
    rp.add_argument("--min-areas", type=_int_list, help=f"min-area sweep values (default {','.join(map(str, DEFAULT_MIN_AREAS))})")
    rp.add_argument("--alphas", type=_float_list, help=f"alpha sweep values (default {','.join(map(str, DEFAULT_ALPHAS))})")
    rp.add_argument("--no-plots", action="store_true", help="write report.json and report.md only")
    rp.add_argument("--modes", action="store_true", help="also score scene-level modes (global embeddings: kNN, "
                    "k-NNN, k-Means, HDBSCAN; patch majority vote) and report their AUROC and ms/frame")
    rp.add_argument("--nominal", help="with --modes: folder or bag of nominal frames to fit the scene models on "
                    "(adds the CLS modes; default: the bank's per-frame patch means)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".mcap", ".db3")
    return (path / "metadata.yaml").is_file() or any(path.glob("*.mcap")) or any(path.glob("*.db3"))


def dataset_from_args(args: argparse.Namespace, sink: WarningSink) -> FolderDataset | BagDataset:
    bag = args.bag
    if args.data and not (args.images or args.bag):
        data = Path(args.data)
        if not data.exists():
            raise EvalDataError(f"--data {data} does not exist")
        if _is_bag(data):
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
    raise EvalDataError("no data: pass --data DIR, --images DIR [--masks DIR] [--labels CSV], or --bag BAG --labels FILE")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sink = stderr_warning_sink()
    overrides = pipeline_overrides(args)
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
