"""Instance and combined modes: objects (OWLv2 -> SAM 2 -> mask-averaged DINOv2) vs an instance bank.

Frame decision. ``instance`` mode: anomalous when any instance scores above the threshold;
the image score is the highest instance score (0 without instances). ``combined`` mode (patch
bank + instance bank): anomalous when any instance is anomalous, OR when a patch component
(above the patch threshold, area-filtered) lies mostly (``combined_min_outside_fraction``)
outside every instance mask. A component on an instance is judged by that instance (which
cuts patch false alarms on known objects seen at odd angles), a component outside all
instances is something OWLv2 did not propose (debris, a spill) and still raises the alarm.

Label image: instances are ordered by decreasing anomaly score and numbered 1..n; where masks
overlap, a pixel keeps the first (highest-scoring) instance's number, later ones never
overwrite it. In combined mode patch components that count as evidence follow as n+1..n+m.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import cv2
import numpy as np

from ..bank.store import NominalBank
from ..config import PipelineConfig
from ..errors import BankError, ConfigError
from ..features import Features
from ..ignore import IgnoreMask
from ..instances.pipeline import DetectedInstances, Instance, InstancePipeline, check_instance_bank
from ..maps import Component
from ..result import AnomalyResult
from ..scoring import knn_scores, threshold_for_alpha
from .base import Scorer
from .patch import PatchScorer


def score_instances(
    bank: NominalBank, instances: Sequence[Instance], threshold: float, k: int = 1
) -> list[Instance]:
    """Set score / is_anomalous / index on each instance; returns them by decreasing score, numbered 1..n."""
    if instances:
        scores = knn_scores(bank, np.stack([inst.embedding for inst in instances]), k)
        for inst, s in zip(instances, scores):
            inst.score = float(s)
            inst.is_anomalous = bool(s > threshold)
    ordered = sorted(instances, key=lambda inst: -inst.score)
    for i, inst in enumerate(ordered, start=1):
        inst.index = i
    return ordered


def instance_maps(instances: Sequence[Instance], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) uint16, score map (H, W) float32): instance numbers and scores, 0 outside.

    Instances are painted in order; a pixel keeps the first instance that covers it, so with
    instances ordered by decreasing score the higher-scoring instance wins overlaps.
    """
    labels = np.zeros(size, np.uint16)
    score_map = np.zeros(size, np.float32)
    for inst in instances[: np.iinfo(np.uint16).max]:
        free = inst.mask & (labels == 0)
        labels[free] = inst.index
        score_map[free] = inst.score
    return labels, score_map


def instance_component(inst: Instance) -> Component:
    ys, xs = np.nonzero(inst.mask)
    if len(xs) == 0:
        x, y, w, h = inst.box
        return Component(inst.index, 0, (x, y, w, h), inst.score, inst.score, (x + w / 2, y + h / 2))
    x0, y0 = int(xs.min()), int(ys.min())
    return Component(
        label=inst.index,
        area_px=int(len(xs)),
        bbox=(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1),
        peak_score=float(inst.score),
        mean_score=float(inst.score),
        centroid=(float(xs.mean()), float(ys.mean())),
    )


class InstanceScorer(Scorer):
    """Runs the instance pipeline on a frame and scores its instances against an instance bank.

    In ``instance`` mode this is the Monitor's scorer: its bank is the Monitor's bank and the
    Monitor's threshold applies. In ``combined`` mode it is the instance half of a
    :class:`CombinedScorer` and keeps its own ``threshold`` (``instance_threshold`` or the
    instance bank's calibration).
    """

    def __init__(self, config: PipelineConfig, bank: NominalBank, pipeline: InstancePipeline,
                 ignore: IgnoreMask) -> None:
        self.config = config
        self.bank = bank
        self.pipeline = pipeline
        self.ignore = ignore
        check_instance_bank(bank, pipeline)
        if len(bank) == 0:
            raise BankError(
                "the instance bank holds no instances; build it from nominal frames with objects in them"
            )
        self.threshold: float | None = None  # combined mode's own instance threshold (see CombinedScorer)
        bank.search_index.ensure()

    def own_threshold(self) -> float:
        """Combined mode's instance threshold from the instance bank's calibration (k must match)."""
        cal = self.bank.calibration
        if not cal:
            raise BankError(
                "the instance bank is not calibrated and no instance_threshold is set; "
                "run 'semanom-bank calibrate'"
            )
        theirs = cal.get("k")
        if theirs is not None and int(theirs) != int(self.config.k):
            raise ConfigError(
                f"k: the instance bank was calibrated with {theirs}, the pipeline uses {self.config.k}; "
                "recalibrate ('semanom-bank calibrate') or set it back"
            )
        return threshold_for_alpha(cal, self.config.alpha, self.config.calibration_level)

    def set_alpha(self, alpha: float) -> float:
        calibration = self.bank.calibration or {}
        self.threshold = threshold_for_alpha(calibration, alpha, self.config.calibration_level)
        return self.threshold

    def set_threshold(self, threshold: float) -> None:
        """Combined mode's instance threshold at run time (instance mode uses Monitor.set_threshold)."""
        if not 0.0 <= threshold <= 2.0:
            raise ConfigError(
                f"instance_threshold: {threshold} must be in [0, 2] (scores are 1 - cosine similarity)"
            )
        self.threshold = float(threshold)
        self.config.instance_threshold = float(threshold)

    def detect_and_score(
        self, features: Features, rgb: np.ndarray, extra_ignore: np.ndarray | None, threshold: float
    ) -> tuple[DetectedInstances, list[Instance], float]:
        """The frame's instances scored at ``threshold``, by decreasing score; and the search time (ms)."""
        size = tuple(features.image_size)
        ignore = self.ignore.with_frame(size, extra_ignore)
        found = self.pipeline.detect(rgb, features, ignore)
        self.threshold = threshold
        t0 = time.perf_counter()
        instances = score_instances(self.bank, found.instances, threshold, self.config.k)
        return found, instances, (time.perf_counter() - t0) * 1e3

    def score(self, features: Features, threshold: float, rgb: np.ndarray | None = None,
              extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        found, instances, search_ms = self.detect_and_score(features, rgb, extra_ignore, threshold)
        t1 = time.perf_counter()
        size = tuple(features.image_size)
        labels, inst_scores = instance_maps(instances, size)
        anomalous = [inst for inst in instances if inst.is_anomalous]
        grid = features.grid_shape
        result = AnomalyResult(
            is_anomalous=bool(anomalous),
            score=float(instances[0].score) if instances else 0.0,
            threshold=float(threshold),
            score_map=inst_scores,
            mask=anomalous_mask(anomalous, size),
            labels=labels,
            components=[instance_component(inst) for inst in anomalous],
            patch_scores=cv2.resize(inst_scores, (grid[1], grid[0]), interpolation=cv2.INTER_AREA),
            instances=instances,
        )
        maps_ms = (time.perf_counter() - t1) * 1e3
        result.timings_ms = {**found.timings_ms, "search": search_ms, "maps": maps_ms}
        return result

    def release(self) -> None:
        self.pipeline.release(extractor=False)
        super().release()


class CombinedScorer(Scorer):
    """Combined mode: a patch scorer on the Monitor's (patch) bank plus an instance scorer on ``config.instance_bank``.

    See the module docstring for the frame decision.
    """

    def __init__(self, patch: PatchScorer, instances: InstanceScorer) -> None:
        self.patch = patch
        self.instances = instances
        self.config = patch.config
        self.bank = patch.bank
        fixed = self.config.instance_threshold
        instances.threshold = instances.own_threshold() if fixed is None else float(fixed)

    def threshold_at(self, alpha: float) -> float:
        threshold = self.patch.threshold_at(alpha)
        if self.config.instance_threshold is None:  # the instance threshold follows alpha too
            self.instances.set_alpha(alpha)
        return threshold

    def score(self, features: Features, threshold: float, rgb: np.ndarray | None = None,
              extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        found, instances, search_ms = self.instances.detect_and_score(
            features, rgb, extra_ignore, self.instances.threshold
        )
        t1 = time.perf_counter()
        size = tuple(features.image_size)
        labels, _ = instance_maps(instances, size)
        anomalous = [inst for inst in instances if inst.is_anomalous]
        components = [instance_component(inst) for inst in anomalous]
        inst_mask = anomalous_mask(anomalous, size)
        patch = self.patch.score(features, threshold, rgb, extra_ignore)
        patch_timings = {f"patch_{name}": ms for name, ms in patch.timings_ms.items()}
        covered = labels > 0
        kept = []
        for comp in patch.components:
            x, y, w, h = comp.bbox
            region = patch.labels[y : y + h, x : x + w] == comp.label
            outside = float((region & ~covered[y : y + h, x : x + w]).sum()) / max(1, int(region.sum()))
            if outside >= self.config.combined_min_outside_fraction:
                kept.append((comp, region))
        mask = inst_mask.copy()
        all_components = list(components)
        next_label = len(instances) + 1
        for comp, region in kept:
            x, y, w, h = comp.bbox
            window = labels[y : y + h, x : x + w]
            window[region & (window == 0)] = next_label
            mask[y : y + h, x : x + w] |= region
            all_components.append(dataclasses.replace(comp, label=next_label))
            next_label += 1
        patch.is_anomalous = bool(kept) or any(inst.is_anomalous for inst in instances)
        patch.mask = mask
        patch.labels = labels
        patch.components = all_components
        patch.instances = list(instances)
        maps_ms = (time.perf_counter() - t1) * 1e3 - sum(patch_timings.values())
        patch.timings_ms = {**found.timings_ms, "search": search_ms, "maps": maps_ms, **patch_timings}
        return patch

    def release(self) -> None:
        self.instances.release()
        self.patch.release()


def anomalous_mask(anomalous: Sequence[Instance], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the union of the anomalous instances' masks."""
    mask = np.zeros(size, bool)
    for inst in anomalous:
        mask |= inst.mask
    return mask


__all__ = [
    "CombinedScorer",
    "InstanceScorer",
    "anomalous_mask",
    "instance_component",
    "instance_maps",
    "score_instances",
]
