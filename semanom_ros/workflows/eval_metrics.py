"""Image- and pixel-level detection metrics on plain arrays (the maths is scikit-learn's).

Every function returns a plain dict of Python numbers ready for JSON. A figure that is not
defined for the data (AUROC with one class only, precision with no positive prediction, ...)
is ``None`` and its reason is recorded under the block's ``"undefined"`` mapping: a report
never shows a made-up number.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "IoUAccumulator",
    "best_f1",
    "binary_counts",
    "fpr_at_tpr",
    "image_metrics",
    "pixel_metrics",
    "threshold_metrics",
]


def _as_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (nominal) or 1 (anomalous)")
    return y.astype(np.int8, copy=False)


def _num(value: Any) -> float | None:
    """A finite float, or None (NaN from sklearn's zero_division=nan means 'undefined')."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _one_class_reason(y: np.ndarray, what: str = "frames") -> str | None:
    if y.size == 0:
        return f"no {what}"
    positives = int(y.sum())
    if positives == 0:
        return f"only nominal {what} ({y.size}); needs both classes"
    if positives == y.size:
        return f"only anomalous {what} ({y.size}); needs both classes"
    return None


def binary_counts(y_true: Any, y_pred: Any) -> dict[str, int]:
    """tp, fp, tn, fn from sklearn's confusion matrix (labels fixed to [0, 1])."""
    y, p = _as_labels(y_true), _as_labels(y_pred)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} entries, y_pred {p.size}")
    if y.size == 0:
        return {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    tn, fp, fn, tp = confusion_matrix(y, p, labels=[0, 1]).ravel()
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def threshold_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Figures of a hard decision: counts, precision, recall, F1, FPR, specificity, balanced accuracy."""
    y, p = _as_labels(y_true), _as_labels(y_pred)
    out: dict[str, Any] = binary_counts(y, p)
    undefined: dict[str, str] = {}
    keys = ("precision", "recall", "f1", "fpr", "specificity", "balanced_accuracy")
    if y.size == 0:
        out.update(dict.fromkeys(keys))
        out["undefined"] = dict.fromkeys(keys, "no frames")
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, p, labels=[1], average=None, zero_division=np.nan
        )
    out["precision"], out["recall"], out["f1"] = _num(precision[0]), _num(recall[0]), _num(f1[0])
    n_pos, n_neg = out["tp"] + out["fn"], out["tn"] + out["fp"]
    if out["precision"] is None:
        undefined["precision"] = "no frame was flagged anomalous"
    if n_pos == 0:
        # sklearn reports F1 = 0 here; with nothing to find, F1 means nothing.
        out["recall"] = out["f1"] = None
        undefined["recall"] = undefined["f1"] = "no anomalous frames"
    elif out["f1"] is None:
        undefined["f1"] = "precision undefined (no frame was flagged)"
    out["fpr"] = out["fp"] / n_neg if n_neg else None
    out["specificity"] = out["tn"] / n_neg if n_neg else None
    if not n_neg:
        undefined["fpr"] = undefined["specificity"] = "no nominal frames"
    reason = _one_class_reason(y)
    if reason is None:
        out["balanced_accuracy"] = _num(balanced_accuracy_score(y, p))
    else:
        out["balanced_accuracy"] = None
        undefined["balanced_accuracy"] = reason
    out["undefined"] = undefined
    return out


def best_f1(y_true: Any, y_score: Any) -> dict[str, Any]:
    """The operating point with the highest F1 on the precision-recall curve of the scores.

    ``threshold`` is the score a frame needs to reach (``score >= threshold``) at that point.
    """
    y, s = _as_labels(y_true), np.asarray(y_score, np.float64).reshape(-1)
    reason = _one_class_reason(y)
    if reason is not None:
        return {"f1": None, "threshold": None, "precision": None, "recall": None, "reason": reason}
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold.
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    i = int(np.argmax(f1))
    return {"f1": float(f1[i]), "threshold": float(thresholds[i]), "precision": float(p[i]), "recall": float(r[i])}


def fpr_at_tpr(y_true: Any, y_score: Any, tpr_level: float = 0.95) -> float | None:
    """False-positive rate where the ROC curve reaches ``tpr_level`` (linear interpolation on the curve)."""
    y, s = _as_labels(y_true), np.asarray(y_score, np.float64).reshape(-1)
    if _one_class_reason(y) is not None:
        return None
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    # tpr is non-decreasing; np.interp takes the first crossing where it rises through the level.
    return float(np.interp(tpr_level, tpr, fpr))


def image_metrics(y_true: Any, y_score: Any, y_pred: Any) -> dict[str, Any]:
    """Everything the report shows for a set of frames.

    ``y_score`` ranks frames (the image score), ``y_pred`` is the monitor's decision at its
    threshold and minimum component area.
    """
    y = _as_labels(y_true)
    s = np.asarray(y_score, np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"y_true has {y.size} entries, y_score {s.size}")
    out: dict[str, Any] = {
        "n_frames": int(y.size),
        "n_anomalous": int(y.sum()),
        "n_nominal": int(y.size - y.sum()),
    }
    at_threshold = threshold_metrics(y, y_pred)
    undefined = at_threshold.pop("undefined")
    out.update(at_threshold)
    reason = _one_class_reason(y)
    if reason is None:
        out["auroc"] = float(roc_auc_score(y, s))
        out["auprc"] = float(average_precision_score(y, s))
    else:
        out["auroc"] = out["auprc"] = None
        undefined["auroc"] = undefined["auprc"] = reason
    out["best_f1"] = best_f1(y, s)
    out["undefined"] = undefined
    return out


def pixel_metrics(y_true: Any, y_score: Any) -> dict[str, Any]:
    """AUROC, average precision and FPR at 95 % TPR over (sampled) pixels."""
    y = _as_labels(y_true)
    s = np.asarray(y_score, np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"y_true has {y.size} pixels, y_score {s.size}")
    out: dict[str, Any] = {"n_pixels": int(y.size), "n_anomalous_pixels": int(y.sum())}
    reason = _one_class_reason(y, "pixels")
    if reason is None:
        out["auroc"] = float(roc_auc_score(y, s))
        out["ap"] = float(average_precision_score(y, s))
        out["fpr_at_95_tpr"] = fpr_at_tpr(y, s, 0.95)
        out["undefined"] = {}
    else:
        out["auroc"] = out["ap"] = out["fpr_at_95_tpr"] = None
        out["undefined"] = dict.fromkeys(("auroc", "ap", "fpr_at_95_tpr"), reason)
    return out


@dataclass
class IoUAccumulator:
    """Intersection over union of predicted and ground-truth masks, pooled and per frame.

    ``iou`` pools all pixels (sum of intersections / sum of unions), ``mean_iou`` averages the
    per-frame IoU over frames whose ground-truth mask is not empty.
    """

    intersection: int = 0
    union: int = 0
    per_frame: list[float] = field(default_factory=list)

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> float | None:
        pred, gt = np.asarray(predicted, bool), np.asarray(truth, bool)
        if pred.shape != gt.shape:
            raise ValueError(f"predicted mask {pred.shape} and ground truth {gt.shape} differ in shape")
        inter = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        self.intersection += inter
        self.union += union
        if gt.any():
            self.per_frame.append(inter / union)
            return inter / union
        return None

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iou": self.intersection / self.union if self.union else None,
            "mean_iou": float(np.mean(self.per_frame)) if self.per_frame else None,
            "iou_frames": len(self.per_frame),
        }
        undefined = {}
        if out["iou"] is None:
            undefined["iou"] = "neither prediction nor ground truth marks any pixel"
        if out["mean_iou"] is None:
            undefined["mean_iou"] = "no frame has a non-empty ground-truth mask"
        out["undefined"] = undefined
        return out
