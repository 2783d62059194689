"""Instance mode: OWLv2 boxes -> SAM 2 masks -> mask-averaged DINOv2 embeddings, scored as objects.

The paper's second (and best) variant compares whole objects instead of isolated patches, so a
traffic light on a truck or a stop sign on a billboard is judged as one object:

1. :class:`~semanom_ros.core.instances.detector.BoxProposer` (OWLv2) proposes boxes, from text queries or
   class-agnostically from its objectness score; duplicates and nested parts are merged.
2. :class:`~semanom_ros.core.instances.segmenter.Sam2Segmenter` (SAM 2) turns every box into a mask, all
   boxes of a frame in one batch over one image embedding.
3. :func:`~semanom_ros.core.instances.embeddings.mask_average_embeddings` averages the frame's DINOv2 patch
   embeddings under each mask, each patch weighted by the fraction of it the mask covers, and normalises
   the mean.
4. The instance embedding is scored against an instance bank (``NominalBank(kind="instance")``,
   one vector per nominal instance) exactly like a patch: score = 1 - max cosine similarity
   (mean of the k nearest for k > 1); the threshold is the alpha-quantile of leave-one-out
   instance scores of the nominal frames (``calibration_level: patch`` = per instance,
   ``image`` = per frame's highest instance score).

Scoring (step 4) and the frame decision of instance and combined mode are
:mod:`semanom_ros.core.scorers.instance`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bank.signature import check_signature
from ..bank.store import INSTANCE_BANK_KIND, NominalBank
from ..config import PipelineConfig
from ..errors import BankMismatchError, ImageError
from ..features import FeatureExtractor, Features, validate_rgb
from .detector import BoxProposer, Proposals
from .embeddings import mask_average_embeddings
from .segmenter import Sam2Segmenter


@dataclass
class Instance:
    """One object in a frame: where it is, what OWLv2 called it and how unusual it is."""

    box: tuple[int, int, int, int]  # x, y, width, height of the proposed box in frame pixels
    mask: np.ndarray  # (H, W) bool
    label: str  # the matching query text(s) ("object" for class-agnostic proposals)
    score: float = 0.0  # anomaly score: 1 - max cosine similarity to the instance bank
    is_anomalous: bool = False
    embedding: np.ndarray | None = None  # (D,) unit vector
    detection_score: float = 0.0  # OWLv2 confidence in [0, 1]
    mask_quality: float = 0.0  # SAM 2's predicted IoU
    area_px: int = 0
    index: int = 0  # value of its pixels in AnomalyResult.labels (1..n; 0 before scoring)

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.box
        return x, y, x + w, y + h


@dataclass
class DetectedInstances:
    """The instance pipeline's output for one frame, before scoring."""

    instances: list[Instance]
    proposals: Proposals
    dropped: list[tuple[str, str]]  # (label, reason) of proposals that became no instance
    timings_ms: dict[str, float] = field(default_factory=dict)


def _xywh(box: np.ndarray) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    x, y = int(np.floor(x1)), int(np.floor(y1))
    return x, y, max(1, int(np.ceil(x2)) - x), max(1, int(np.ceil(y2)) - y)


class InstancePipeline:
    """Proposer + segmenter + DINOv2 extractor: an RGB frame in, its instances (unscored) out."""

    def __init__(
        self,
        proposer: BoxProposer,
        segmenter: Sam2Segmenter,
        extractor: FeatureExtractor,
        min_mask_area_px: int = 100,
    ) -> None:
        self.proposer = proposer
        self.segmenter = segmenter
        self.extractor = extractor
        self.min_mask_area_px = int(min_mask_area_px)

    @classmethod
    def from_config(cls, config: PipelineConfig, extractor: FeatureExtractor | None = None) -> "InstancePipeline":
        config.validate()
        extractor = extractor or FeatureExtractor.from_config(config)
        proposer = BoxProposer(
            config.detector_model,
            queries=config.detector_queries,
            score_threshold=config.detector_score_threshold,
            top_k=config.detector_top_k,
            nms_iou=config.detector_nms_iou,
            merge_iou=config.detector_merge_iou,
            merge_containment=config.detector_merge_containment,
            input_size=config.detector_input_size,
            device=config.device,
            dtype=config.dtype,
        )
        segmenter = Sam2Segmenter(
            config.segmenter_model, device=config.device, dtype=config.dtype, backend=config.segmenter_backend
        )
        return cls(proposer, segmenter, extractor, config.instance_min_mask_area_px)

    def detect(
        self, rgb: np.ndarray, features: Features | None = None, ignore: np.ndarray | None = None
    ) -> DetectedInstances:
        """Instances of one frame.

        ``features`` (DINOv2 of this frame) is computed when not given, ``ignore`` (H, W) bool
        pixels are cut out of every mask before averaging.
        """
        validate_rgb(rgb, min_side=self.extractor.patch_size)
        size = (rgb.shape[0], rgb.shape[1])
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if features is None:
            features = self.extractor.extract(rgb)
            timings["features"] = (time.perf_counter() - t0) * 1e3
        elif tuple(features.image_size) != size:
            raise ImageError(f"features are of a {features.image_size} frame, the frame is {size}")
        if ignore is not None and ignore.shape != size:
            raise ImageError(f"ignore mask shape {ignore.shape} differs from the frame's {size}")
        t1 = time.perf_counter()
        proposals = self.proposer.propose(rgb)
        t2 = time.perf_counter()
        seg = self.segmenter.segment(rgb, proposals.boxes)
        t3 = time.perf_counter()
        masks = seg.masks
        if ignore is not None and len(masks):
            masks &= ~ignore
        areas = masks.reshape(len(masks), -1).sum(axis=1) if len(masks) else np.zeros(0, np.int64)
        dropped: list[tuple[str, str]] = []
        usable = []
        for i in range(len(masks)):
            if not seg.object_present[i]:
                dropped.append((proposals.labels[i], "SAM 2 found no object in the box"))
            elif areas[i] < max(1, self.min_mask_area_px):
                dropped.append((proposals.labels[i], f"mask of {int(areas[i])} px < instance_min_mask_area_px"))
            else:
                usable.append(i)
        usable_idx = np.asarray(usable, np.int64)
        emb = mask_average_embeddings(features.patches, masks[usable_idx], size)
        for j, reason in emb.dropped:
            dropped.append((proposals.labels[usable[j]], reason))
        instances = []
        for vec, j in zip(emb.vectors, emb.index):
            i = usable[int(j)]
            instances.append(
                Instance(
                    box=_xywh(proposals.boxes[i]),
                    mask=masks[i],
                    label=proposals.labels[i],
                    embedding=vec,
                    detection_score=float(proposals.scores[i]),
                    mask_quality=float(seg.quality[i]),
                    area_px=int(areas[i]),
                )
            )
        t4 = time.perf_counter()
        timings.update(
            detector=(t2 - t1) * 1e3, segmenter=(t3 - t2) * 1e3, embed=(t4 - t3) * 1e3
        )
        return DetectedInstances(instances, proposals, dropped, timings)

    def describe(self) -> dict[str, Any]:
        """Recorded in an instance bank's manifest (``extra["instance"]``) and checked at load."""
        return {
            "detector": self.proposer.describe(),
            "segmenter": self.segmenter.describe(),
            "min_mask_area_px": self.min_mask_area_px,
        }

    def release(self, extractor: bool = True) -> None:
        self.proposer.release()
        self.segmenter.release()
        if extractor:
            self.extractor.release()


def check_instance_bank(bank: NominalBank, pipeline: InstancePipeline, where: str = "instance bank") -> None:
    """Refuse a bank that is not an instance bank, or was built with another detector, segmenter or queries."""
    if bank.kind != INSTANCE_BANK_KIND:
        raise BankMismatchError(
            f"the {where} is a {bank.kind!r} bank, instance mode needs an {INSTANCE_BANK_KIND!r} bank "
            "(build one with 'semanom-bank build --mode instance')"
        )
    check_signature(bank.signature, pipeline.extractor.signature(), where=where)
    recorded = (bank.extra or {}).get("instance") or {}
    ours = pipeline.describe()
    problems = []
    for part, setting in (("detector", "detector_model"), ("segmenter", "segmenter_model")):
        theirs = recorded.get(part) or {}
        if theirs.get("fingerprint") and theirs["fingerprint"] != ours[part]["fingerprint"]:
            problems.append(
                f"{setting}: the {where} was built with {theirs.get('model')!r} (weights {theirs['fingerprint']}), "
                f"the pipeline uses {ours[part]['model']!r} (weights {ours[part]['fingerprint']})"
            )
    theirs_q = (recorded.get("detector") or {}).get("queries")
    if theirs_q is not None and list(theirs_q) != list(ours["detector"]["queries"]):
        problems.append(
            f"detector_queries: the {where} was built with {theirs_q}, the pipeline uses {ours['detector']['queries']}"
        )
    if problems:
        raise BankMismatchError("; ".join(problems) + ". Rebuild the instance bank or set the pipeline to match.")


__all__ = ["DetectedInstances", "INSTANCE_BANK_KIND", "Instance", "InstancePipeline", "check_instance_bank"]
