"""Instance mode: OWLv2 boxes -> SAM 2 masks -> mask-averaged DINOv2 embeddings, scored as objects.

The paper's second (and best) variant compares whole objects instead of isolated patches, so a
traffic light on a truck or a stop sign on a billboard is judged as one object:

1. :class:`~semanom_ros.core.detector.BoxProposer` (OWLv2) proposes boxes, from text queries or
   class-agnostically from its objectness score; duplicates and nested parts are merged.
2. :class:`~semanom_ros.core.segmenter.Sam2Segmenter` (SAM 2) turns every box into a mask, all
   boxes of a frame in one batch over one image embedding.
3. :func:`mask_average_embeddings` averages the frame's DINOv2 patch embeddings under each mask,
   each patch weighted by the fraction of it the mask covers, and normalises the mean.
4. The instance embedding is scored against an instance bank (``NominalBank(kind="instance")``,
   one vector per nominal instance) exactly like a patch: score = 1 - max cosine similarity
   (mean of the k nearest for k > 1); the threshold is the alpha-quantile of leave-one-out
   instance scores of the nominal frames (``calibration_level: patch`` = per instance,
   ``image`` = per frame's highest instance score).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from .bank import NominalBank, check_signature
from .config import PipelineConfig
from .detector import BoxProposer, Proposals
from .errors import BankError, BankMismatchError, ConfigError, ImageError
from .features import FeatureExtractor, Features, validate_rgb
from .maps import Component
from .scoring import calibrate, knn_scores, threshold_for_alpha
from .segmenter import Sam2Segmenter

INSTANCE_BANK_KIND = "instance"


# -- mask averaging ----------------------------------------------------------------------------------
@dataclass
class MaskEmbeddings:
    """Mask-averaged embeddings of the masks that had any area at patch resolution."""

    vectors: np.ndarray  # (m, D) float32 unit vectors
    index: np.ndarray  # (m,) int: which input mask each vector came from
    weights: np.ndarray  # (m,) float32: mask area in patches (sum of per-patch coverage)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (mask index, reason)


def patch_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, H, W) bool -> (n, h, w) float32: the fraction of each patch each mask covers."""
    h, w = grid
    out = np.empty((len(masks), h, w), np.float32)
    for i, mask in enumerate(masks):
        # INTER_AREA averages the pixels falling in each cell, fractional cell borders included.
        out[i] = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return out


def mask_average_embeddings(
    patches: np.ndarray,
    masks: np.ndarray,
    image_size: tuple[int, int] | None = None,
    min_area_patches: float = 1e-6,
) -> MaskEmbeddings:
    """Instance embeddings: the patch embeddings under each mask, area-weighted, L2-normalised.

    ``patches`` is an (h, w, D) grid covering the whole frame, ``masks`` (n, H, W) bool at the
    frame's resolution (``image_size`` (H, W) is checked when given). Each patch is weighted by
    the fraction of its pixels the mask covers, so a small object contributes exactly the
    patches it touches, in proportion. Masks covering less than ``min_area_patches`` patches
    in total (empty masks) and masks whose weighted mean vanishes are not returned; they are
    listed in ``dropped`` with the reason. Raises ImageError for masks of the wrong shape.
    """
    patches = np.asarray(patches, np.float32)
    if patches.ndim != 3:
        raise ImageError(f"patches must be an (h, w, D) grid, got shape {patches.shape}")
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ImageError(f"masks must have shape (n, H, W), got {masks.shape}")
    h, w, d = patches.shape
    n, height, width = masks.shape
    if image_size is not None and (height, width) != tuple(image_size):
        raise ImageError(
            f"masks are {height}x{width} (HxW) but the frame is {image_size[0]}x{image_size[1]}; "
            "masks must be at the frame's resolution"
        )
    if n and (height < h or width < w):
        raise ImageError(f"masks of {height}x{width} are coarser than the {h}x{w} patch grid they are averaged over")
    if n == 0:
        return MaskEmbeddings(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    cover = patch_coverage(masks.astype(bool, copy=False), (h, w)).reshape(n, h * w)
    area = cover.sum(axis=1)
    sums = cover @ patches.reshape(h * w, d)
    norms = np.linalg.norm(sums, axis=1)
    dropped: list[tuple[int, str]] = []
    keep = []
    for i in range(n):
        if area[i] < min_area_patches:
            dropped.append((i, "empty mask"))
        elif norms[i] <= 1e-6 * area[i]:
            dropped.append((i, "patch embeddings under the mask cancel out"))
        else:
            keep.append(i)
    idx = np.asarray(keep, np.int64)
    vectors = (sums[idx] / norms[idx, None]).astype(np.float32) if len(idx) else np.zeros((0, d), np.float32)
    return MaskEmbeddings(vectors, idx, area[idx].astype(np.float32), dropped)


# -- instances ---------------------------------------------------------------------------------------
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
        extractor = extractor or FeatureExtractor(
            config.model, config.input_height, config.device, config.dtype, config.max_input_width
        )
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
        """Instances of one frame; ``features`` (DINOv2 of this frame) is computed when not given,
        ``ignore`` (H, W) bool pixels are cut out of every mask before averaging."""
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
    check_signature(bank.signature, _signature(pipeline.extractor), where=where)
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
        problems.append(f"detector_queries: the {where} was built with {theirs_q}, the pipeline uses {ours['detector']['queries']}")
    if problems:
        raise BankMismatchError("; ".join(problems) + ". Rebuild the instance bank or set the pipeline to match.")


def _signature(extractor: FeatureExtractor):
    from .monitor import signature_of

    return signature_of(extractor)


# -- bank building -----------------------------------------------------------------------------------
class InstanceBankBuilder:
    """Streams nominal frames into an instance bank (one vector per instance), then calibrates it.

    Frames are the same objects the patch builder takes (``rgb``, ``source``, ``index``,
    ``stamp_ns``, optional ``topic`` and ``ignore``). DINOv2 runs in batches of
    ``config.batch_size``; OWLv2 and SAM 2 run per frame.
    """

    def __init__(
        self,
        config: PipelineConfig,
        pipeline: InstancePipeline | None = None,
        bank: NominalBank | None = None,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        from .monitor import load_ignore_mask, set_cpu_threads

        config.validate()
        set_cpu_threads(config.num_threads)
        self.config = config
        self.pipeline = pipeline or InstancePipeline.from_config(config, extractor)
        if bank is not None:
            check_instance_bank(bank, self.pipeline, where="existing bank")
            self.bank = bank
        else:
            self.bank = NominalBank(_signature(self.pipeline.extractor), kind=INSTANCE_BANK_KIND, config=config.to_dict())
            self.bank.extra["instance"] = self.pipeline.describe()
        self._ignore_pixels = load_ignore_mask(config.ignore_mask)
        self._pending: list[Any] = []
        self.frames_added = 0
        self.instances_added = 0
        self.dropped: dict[str, int] = {}

    def add(self, frame: Any) -> None:
        self._pending.append(frame)
        if len(self._pending) >= self.config.batch_size:
            self.flush()

    def add_all(self, frames: Iterable[Any], progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> NominalBank:
        for frame in frames if progress is None else progress(frames):
            self.add(frame)
        self.flush()
        return self.bank

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        feats = self.pipeline.extractor.extract_batch([f.rgb for f in batch])
        for frame, feat in zip(batch, feats):
            ignore = _frame_ignore(self._ignore_pixels, getattr(frame, "ignore", None), feat.image_size)
            found = self.pipeline.detect(frame.rgb, feat, ignore)
            for _, reason in found.dropped:
                key = reason.split(" < ")[0] if "<" in reason else reason
                self.dropped[key] = self.dropped.get(key, 0) + 1
            vectors = (
                np.stack([inst.embedding for inst in found.instances])
                if found.instances
                else np.zeros((0, self.bank.dim), np.float32)
            )
            # A frame without instances is still recorded: it scores 0 in image-level calibration.
            self.bank.add_frame(
                vectors,
                source=str(frame.source),
                index=int(frame.index),
                stamp_ns=int(getattr(frame, "stamp_ns", 0) or 0),
                topic=getattr(frame, "topic", None),
            )
            self.frames_added += 1
            self.instances_added += len(vectors)

    def calibrate(self, progress=None) -> dict[str, Any]:
        """Leave-one-out threshold over nominal instances (same procedure as patch banks)."""
        self.flush()
        return calibrate_instance_bank(self.bank, self.config, progress)


def calibrate_instance_bank(bank: NominalBank, config: PipelineConfig, progress=None) -> dict[str, Any]:
    """``scoring.calibrate`` on an instance bank: each vector is one instance, so level "patch"
    is per instance and "image" per frame's highest instance score. No spatial smoothing."""
    c = config
    with_instances = int((bank.frames["vec_count"] > 0).sum()) if bank.num_frames else 0
    if len(bank) < 2 or with_instances < 2:
        raise ConfigError(
            f"calibration needs nominal instances in at least 2 frames; the bank holds {len(bank)} instances in "
            f"{with_instances} of {bank.num_frames} frames. Lower detector_score_threshold, add frames, or check "
            "detector_queries"
        )
    try:
        cal = calibrate(
            bank, c.alpha, c.k, c.calibration_window, c.calibration_max_frames, 0.0, c.calibration_level, progress
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"instance bank calibration failed ({exc}): too few instances outside each frame's "
            f"calibration_window of {c.calibration_window}; use a smaller window or add frames"
        ) from None
    # Smoothing is a patch-grid operation; None tells the monitor there is nothing to match.
    cal["smoothing_sigma"] = None
    cal["unit"] = "instance"
    bank.calibration = cal
    return cal


def build_instance_bank(
    config: PipelineConfig,
    frames: Iterable[Any],
    output: str | Path | None = None,
    *,
    calibrate: bool = True,
    bank: NominalBank | None = None,
    pipeline: InstancePipeline | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> NominalBank:
    """Build (or extend ``bank``), calibrate and (when ``output`` is given) atomically save an
    instance bank from nominal frames. What ``semanom-bank build --mode instance`` calls."""
    builder = InstanceBankBuilder(config, pipeline=pipeline, bank=bank)
    builder.add_all(frames, progress)
    if calibrate:
        builder.calibrate()
    builder.bank.extra["instance_build"] = {
        "frames": builder.frames_added,
        "instances": builder.instances_added,
        "dropped": dict(builder.dropped),
    }
    if output is not None:
        builder.bank.save(output)
    return builder.bank


def _frame_ignore(config_ignore: np.ndarray | None, own: Any, size: tuple[int, int]) -> np.ndarray | None:
    masks = []
    if config_ignore is not None:
        m = config_ignore
        if m.shape != tuple(size):
            m = cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        masks.append(m)
    if own is not None:
        own = np.asarray(own, bool)
        if own.shape != tuple(size):
            raise ImageError(f"frame ignore mask {own.shape} differs from the frame's {tuple(size)}")
        masks.append(own)
    if not masks:
        return None
    return np.logical_or.reduce(masks)


# -- scoring and the monitor's instance path ---------------------------------------------------------
def score_instances(bank: NominalBank, instances: Sequence[Instance], threshold: float, k: int = 1) -> list[Instance]:
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


class InstanceScorer:
    """The monitor's instance path: runs the pipeline on a frame and scores it against the instance bank.

    In ``instance`` mode the monitor's own bank is the instance bank and the monitor's
    threshold applies; in ``combined`` mode the instance bank comes from
    ``config.instance_bank`` and has its own threshold (``instance_threshold`` or its calibration).
    """

    def __init__(self, config: PipelineConfig, bank: NominalBank, pipeline: InstancePipeline,
                 threshold: float | None = None) -> None:
        self.config = config
        self.bank = bank
        self.pipeline = pipeline
        check_instance_bank(bank, pipeline)
        if len(bank) == 0:
            raise BankError("the instance bank holds no instances; build it from nominal frames with objects in them")
        self.threshold = self._initial_threshold() if threshold is None else float(threshold)
        self._ignore_pixels = None
        self._ignore_cache: dict[tuple[int, int], np.ndarray] = {}
        bank._ensure_index()

    @classmethod
    def for_monitor(cls, monitor: Any, pipeline: InstancePipeline | None = None) -> "InstanceScorer":
        """Built by ``Monitor.__init__`` when ``config.mode`` is instance or combined."""
        from .monitor import load_ignore_mask

        config = monitor.config
        pipeline = pipeline or InstancePipeline.from_config(config, monitor.extractor)
        if config.mode == "instance":
            scorer = cls(config, monitor.bank, pipeline, threshold=monitor.threshold)
        else:
            if monitor.bank.kind == INSTANCE_BANK_KIND:
                raise BankMismatchError(
                    "combined mode: the monitor's bank must be the patch bank; the instance bank goes in instance_bank"
                )
            scorer = cls(config, NominalBank.load(config.instance_bank), pipeline, threshold=config.instance_threshold)
        scorer._ignore_pixels = load_ignore_mask(config.ignore_mask)
        return scorer

    def _initial_threshold(self) -> float:
        cal = self.bank.calibration
        if not cal:
            raise BankError(
                "the instance bank is not calibrated and no instance_threshold is set; run 'semanom-bank calibrate'"
            )
        theirs = cal.get("k")
        if theirs is not None and int(theirs) != int(self.config.k):
            raise ConfigError(
                f"k: the instance bank was calibrated with {theirs}, the pipeline uses {self.config.k}; "
                "recalibrate ('semanom-bank calibrate') or set it back"
            )
        return threshold_for_alpha(cal, self.config.alpha, self.config.calibration_level)

    def set_alpha(self, alpha: float) -> float:
        self.threshold = threshold_for_alpha(self.bank.calibration or {}, alpha, self.config.calibration_level)
        return self.threshold

    def set_threshold(self, threshold: float) -> None:
        """Combined mode's instance threshold at run time (instance mode uses Monitor.set_threshold)."""
        if not 0.0 <= threshold <= 2.0:
            raise ConfigError(f"instance_threshold: {threshold} must be in [0, 2] (scores are 1 - cosine similarity)")
        self.threshold = float(threshold)
        self.config.instance_threshold = float(threshold)

    def pixel_ignore(self, size: tuple[int, int], extra: np.ndarray | None) -> np.ndarray | None:
        base = None
        if self._ignore_pixels is not None:
            if size not in self._ignore_cache:
                self._ignore_cache[size] = _frame_ignore(self._ignore_pixels, None, size)
            base = self._ignore_cache[size]
        if extra is not None:
            if extra.shape != tuple(size):
                raise ImageError(f"ignore mask shape {extra.shape} differs from the frame's {tuple(size)}")
            extra = np.asarray(extra, bool)
            base = extra if base is None else (base | extra)
        return base

    def process(self, monitor: Any, features: Features, rgb: np.ndarray, extra_ignore: np.ndarray | None = None):
        """AnomalyResult of one frame in instance or combined mode (see the module docstring)."""
        from .monitor import AnomalyResult

        size = tuple(features.image_size)
        ignore = self.pixel_ignore(size, extra_ignore)
        found = self.pipeline.detect(rgb, features, ignore)
        threshold = monitor.threshold if self.config.mode == "instance" else self.threshold
        self.threshold = threshold
        t0 = time.perf_counter()
        instances = score_instances(self.bank, found.instances, threshold, self.config.k)
        t1 = time.perf_counter()
        labels, inst_scores = instance_maps(instances, size)
        anomalous = [inst for inst in instances if inst.is_anomalous]
        components = [instance_component(inst) for inst in anomalous]
        inst_mask = np.zeros(size, bool)
        for inst in anomalous:
            inst_mask |= inst.mask
        if self.config.mode == "instance":
            grid = features.grid_shape
            result = AnomalyResult(
                is_anomalous=bool(anomalous),
                score=float(instances[0].score) if instances else 0.0,
                threshold=float(threshold),
                score_map=inst_scores,
                mask=inst_mask,
                labels=labels,
                components=components,
                patch_scores=cv2.resize(inst_scores, (grid[1], grid[0]), interpolation=cv2.INTER_AREA),
                instances=instances,
            )
            patch_timings: dict[str, float] = {}
        else:
            result = self._combine(monitor, features, rgb, extra_ignore, instances, labels, components, inst_mask)
            patch_timings = {f"patch_{name}": ms for name, ms in result.timings_ms.items()}
        maps_ms = (time.perf_counter() - t1) * 1e3 - sum(patch_timings.values())
        result.timings_ms = {**found.timings_ms, "search": (t1 - t0) * 1e3, "maps": maps_ms, **patch_timings}
        return result

    def _combine(self, monitor, features, rgb, extra_ignore, instances, labels, components, inst_mask):
        patch = monitor.score_features(features, rgb, extra_ignore)
        covered = labels > 0
        kept = []
        for comp in patch.components:
            x, y, w, h = comp.bbox
            region = patch.labels[y : y + h, x : x + w] == comp.label
            outside = float((region & ~covered[y : y + h, x : x + w]).sum()) / max(1, int(region.sum()))
            if outside >= self.config.combined_min_outside_fraction:
                kept.append((comp, region))
        labels = labels.copy()
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
        return patch

    def release(self) -> None:
        self.pipeline.release(extractor=False)
        self.bank._index = None


# -- overlay -----------------------------------------------------------------------------------------
def draw_instances(overlay_bgr: np.ndarray, instances: Sequence[Instance], thickness: int = 2) -> np.ndarray:
    """Draw each instance's mask outline and "label score" on a BGR8 image (in place; returned).

    Anomalous instances are outlined red, nominal ones green. ``Monitor.overlay`` calls this on
    the output of ``maps.render_overlay`` whenever the result carries instances.
    """
    if not instances:
        return overlay_bgr
    scale = max(0.4, min(overlay_bgr.shape[:2]) / 900.0)
    for inst in instances:
        colour = (0, 0, 255) if inst.is_anomalous else (0, 200, 0)
        if inst.mask is not None and inst.mask.shape == overlay_bgr.shape[:2] and inst.mask.any():
            contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(overlay_bgr, contours, -1, colour, thickness)
        x, y, _, _ = inst.box
        text = f"{inst.index}:{inst.label[:24]} {inst.score:.2f}"
        origin = (max(0, x), max(12, y - 4))
        cv2.putText(overlay_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(overlay_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thickness - 1), cv2.LINE_AA)
    return overlay_bgr


__all__ = [
    "DetectedInstances",
    "INSTANCE_BANK_KIND",
    "Instance",
    "InstanceBankBuilder",
    "InstancePipeline",
    "InstanceScorer",
    "MaskEmbeddings",
    "build_instance_bank",
    "calibrate_instance_bank",
    "check_instance_bank",
    "draw_instances",
    "instance_maps",
    "mask_average_embeddings",
    "patch_coverage",
    "score_instances",
]
