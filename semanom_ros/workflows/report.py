"""What an evaluation keeps of each frame (:class:`FrameRecord`, :class:`EvalRun`) and the figures made of it.

Image and pixel metrics overall and per group, the threshold / alpha / minimum-area sweeps and
timings, as the JSON-ready report (:func:`build_report`; keys documented in the README).

The sweeps re-derive the maps from each frame's kept patch score grid with
:mod:`semanom_ros.core.maps`, so they cost no second forward pass.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semanom_ros import __version__
from semanom_ros.core import Monitor, NominalBank
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.maps import threshold_components, upsample_scores
from semanom_ros.core.scoring import threshold_for_alpha

from .eval_data import EvalDataError, WarningSink
from .eval_metrics import image_metrics, pixel_metrics, threshold_metrics

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_MIN_AREAS",
    "DEFAULT_PIXEL_STRIDE",
    "EvalOptions",
    "EvalRun",
    "Example",
    "FrameRecord",
    "REPORT_SCHEMA",
    "build_report",
    "median_or_none",
    "sweep_operating_points",
]

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
class Example:
    """One frame of examples.png: its overlay thumbnail and what it was."""

    name: str
    score: float
    label: int
    group: str | None
    thumbnail: np.ndarray  # RGB


@dataclass
class EvalRun:
    """Everything one pass over the frames keeps (what the report and the plots are made of)."""

    records: list[FrameRecord]
    features: list[Any] | None
    examples: dict[str, list[Example]]
    threshold: float
    min_area_px: int
    wall_s: float
    pixel_stride: int


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
    """Image decisions (and sampled-pixel IoU) over thresholds and over minimum areas.

    For every threshold at the operating minimum area, and for every minimum area at the operating
    threshold.

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
        row({"threshold": t, "min_area_px": int(operating_min_area)}, t_dec[i], t_iou[i])
        for i, t in enumerate(thresholds)
    ]
    area_rows = [
        row({"threshold": float(operating_threshold), "min_area_px": a}, a_dec[i], a_iou[i])
        for i, a in enumerate(min_areas)
    ]
    return threshold_rows, area_rows


# --------------------------------------------------------------------------- report


def median_or_none(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return float(np.median(values)) if len(values) else None


def _timings(run: EvalRun) -> dict[str, Any]:
    totals = [r.ms_total for r in run.records]
    stages = sorted({k for r in run.records for k in r.timings_ms})
    return {
        "median_ms_per_frame": median_or_none(totals),
        "p90_ms_per_frame": float(np.percentile(totals, 90)) if totals else None,
        "mean_ms_per_frame": float(np.mean(totals)) if totals else None,
        "median_ms_by_stage": {
            s: median_or_none([r.timings_ms[s] for r in run.records if s in r.timings_ms]) for s in stages
        },
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
    thresholds = (
        list(options.thresholds) if options.thresholds
        else _auto_thresholds(records, run.threshold, DEFAULT_THRESHOLD_STEPS)
    )
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
