"""Component-level road-anomaly metrics (SegmentMeIfYouCan: sIoU, PPV, mean F1) and operating-point counts.

Definitions follow Chan et al., "SegmentMeIfYouCan" (NeurIPS 2021 datasets track), computed here with
OpenCV connected components (8-connectivity) on masks at frame resolution:

- ground-truth components: connected regions of label 1; predicted components: connected regions of
  the monitor's mask (after its area filter) with void pixels (label 255) removed;
- sIoU of a ground-truth component k: |k & P(k)| / |(k | P(k)) minus other ground-truth components|,
  P(k) the union of predicted components that touch k;
- PPV of a predicted component p: |p & G(p)| / |p|, G(p) the union of ground-truth components it touches;
- at each tau in 0.25, 0.30, ..., 0.75: TP = ground-truth components with sIoU > tau, FN = the others,
  FP = predicted components with PPV <= tau; F1(tau) = 2 TP / (2 TP + FN + FP); mean F1 averages them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

VOID_LABEL = 255
SIOU_TAUS = tuple(round(0.25 + 0.05 * i, 2) for i in range(11))

__all__ = ["ComponentMetrics", "FrameOutcome", "frame_outcome", "VOID_LABEL", "SIOU_TAUS"]


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count, labels


@dataclass
class ComponentMetrics:
    """Accumulates sIoU, PPV and the F1 counts over frames."""

    siou: list[float] = field(default_factory=list)
    ppv: list[float] = field(default_factory=list)
    tp: np.ndarray = field(default_factory=lambda: np.zeros(len(SIOU_TAUS), np.int64))
    fn: np.ndarray = field(default_factory=lambda: np.zeros(len(SIOU_TAUS), np.int64))
    fp: np.ndarray = field(default_factory=lambda: np.zeros(len(SIOU_TAUS), np.int64))

    def add(self, predicted: np.ndarray, labels: np.ndarray) -> None:
        """One frame: ``predicted`` (H, W) bool mask, ``labels`` (H, W) 0 / 1 / 255."""
        if predicted.shape != labels.shape:
            raise ValueError(f"predicted mask {predicted.shape} and labels {labels.shape} differ in shape")
        anomaly = labels == 1
        pred = np.asarray(predicted, bool) & (labels != VOID_LABEL)
        n_gt, gt = _components(anomaly)
        n_pr, pr = _components(pred)
        taus = np.asarray(SIOU_TAUS)
        for k in range(1, n_gt):
            comp = gt == k
            touching = np.unique(pr[comp])
            touching = touching[touching > 0]
            union_pred = np.isin(pr, touching) if touching.size else np.zeros_like(comp)
            others = anomaly & ~comp
            inter = np.count_nonzero(comp & union_pred)
            union = np.count_nonzero((comp | union_pred) & ~others)
            value = inter / union if union else 0.0
            self.siou.append(value)
            self.tp += value > taus
            self.fn += value <= taus
        for p in range(1, n_pr):
            comp = pr == p
            touching = np.unique(gt[comp])
            touching = touching[touching > 0]
            hit = np.count_nonzero(comp & np.isin(gt, touching)) if touching.size else 0
            value = hit / np.count_nonzero(comp)
            self.ppv.append(value)
            self.fp += value <= taus

    def result(self) -> dict[str, Any]:
        f1 = 2 * self.tp / np.maximum(2 * self.tp + self.fn + self.fp, 1)
        return {
            "siou": float(np.mean(self.siou)) if self.siou else None,
            "ppv": float(np.mean(self.ppv)) if self.ppv else None,
            "mean_f1": float(f1.mean()) if self.siou or self.ppv else None,
            "gt_components": len(self.siou),
            "predicted_components": len(self.ppv),
            "f1_by_tau": {str(t): float(v) for t, v in zip(SIOU_TAUS, f1)},
        }


@dataclass
class FrameOutcome:
    """The monitor's decision on one labelled frame, in operating-point terms."""

    has_anomaly: bool  # the frame has label-1 pixels
    hit: bool  # a surviving component overlaps a label-1 pixel
    false_components: int  # surviving components with no label-1 pixel, mostly outside the void
    void_components: int  # components with no label-1 pixel lying mostly (>= void_fraction) in the void


def frame_outcome(component_labels: np.ndarray, labels: np.ndarray, void_fraction: float = 0.5) -> FrameOutcome:
    """Hits and false components of one frame from the monitor's component label image (0 = none).

    A component with no anomaly pixel counts as false unless at least ``void_fraction`` of it lies in
    the void (label 255: the ego bonnet, borders, unlabelled areas: nothing a detection there could be
    right or wrong about).
    """
    hit, false, void = False, 0, 0
    ids = np.unique(component_labels)
    for c in ids[ids > 0]:
        values = labels[component_labels == c]
        if (values == 1).any():
            hit = True
        elif (values == VOID_LABEL).mean() >= void_fraction:
            void += 1
        else:
            false += 1
    return FrameOutcome(bool((labels == 1).any()), hit, false, void)
