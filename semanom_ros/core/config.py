"""The one configuration object that describes a detection pipeline.

Nodes fill it from ROS parameters, tools from flags or YAML; a bank's manifest records the
parts that must match at scoring time (model, input size), so a bank is never scored with
features from another model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

DEFAULT_MODEL = "facebook/dinov2-small"
SEARCH_BACKENDS = ("auto", "torch", "faiss")
SCORE_NORMALIZATIONS = ("none", "median")


@dataclass
class PipelineConfig:
    """Everything that decides what a frame's anomaly result is.

    Fields that must match the bank (``model``, ``input_height``) are checked against the
    bank's manifest when a :class:`~semanom_ros.core.monitor.Monitor` is built.
    """

    # Backbone: a transformers hub id or a local folder saved with save_pretrained.
    model: str = DEFAULT_MODEL
    # Height in pixels the frame is resized to before the backbone; the width keeps the aspect
    # ratio and both are rounded to multiples of the patch size.
    input_height: int = 224
    # Cap on the resized width (very wide panoramas would otherwise explode); None = 4 x the 16:9
    # width at input_height (features.default_max_input_width: 1582 px at 224). Frames whose aspect
    # ratio the capped input cannot hold within a factor 2 are refused (ImageError).
    max_input_width: int | None = None
    # Which backbone output the patch vectors are: 0 = the last hidden state (after the final
    # LayerNorm), N >= 1 = the output of block N before it. Block 11 of DINOv2-S doubles the AP on
    # road obstacles (docs/quality-research.md); the last layer generalises better across drives.
    # Part of the bank's model signature: a bank is only scored with the layer it was built with.
    feature_layer: int = 0
    # Extra views of each frame, each a crop box [top, bottom, left, right] in fractions of the
    # frame, resized to input_height like the full frame (so a crop is seen at a finer scale). Its
    # patches go into the same bank and are scored against it; the score map is the per-pixel
    # maximum over the full frame and the views covering the pixel. E.g. [[0.375, 1.0, 0.125, 0.875]]
    # (the road ahead) finds small obstacles the full frame is too coarse for (patch mode only).
    crop_views: list[list[float]] = field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16
    batch_size: int = 8  # frames per forward pass in offline tools
    # torch and faiss CPU threads (one count for both); 0 = OMP_NUM_THREADS if set, else all usable cores
    num_threads: int = 0

    # Similarity index over the bank (see semanom_ros.core.search): auto = exact flat search below
    # index_auto_threshold vectors; above, IVF and HNSW are built, tuned and timed, the fastest
    # reaching recall@1 0.97 kept; or force
    # flat | flat_fp16 | ivf | ivfpq | hnsw.
    index_type: str = "auto"
    index_auto_threshold: int = 50_000
    index_nlist: int = 0  # IVF lists; 0 = about 4 sqrt(N)
    # IVF lists (HNSW: efSearch) searched per query; 0 = the depth the bank tuned at build (recall@1 >= 0.97)
    nprobe: int = 0
    use_gpu_index: bool = True  # put the index on the GPU when faiss has GPU support and device is CUDA
    # Search engine: "torch" = exact search with the bank resident where the model runs (fp16 on a
    # GPU; see semanom_ros.core.search.torch_exact); "faiss" = faiss on the host (index_type above);
    # "auto" = torch when the pipeline runs on CUDA and the bank fits search_memory_fraction of the
    # GPU's free memory, else faiss (the reason is logged).
    search_backend: str = "auto"
    search_dtype: str = "auto"  # torch search storage: auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32
    search_memory_fraction: float = 0.5

    # Scoring: patch score = 1 - mean cosine similarity of its k nearest bank vectors.
    k: int = 1
    # Smoothing of the patch score grid (Gaussian sigma in patches; 0 = none).
    score_smoothing_sigma: float = 0.0
    # Per-frame normalisation of the patch scores before smoothing and thresholding: "none", or
    # "median" = score minus the median of the frame's non-ignored patch scores, clipped at 0 (a new
    # car or camera lifts every patch of a frame alike; issue #14). Calibration applies the same
    # rule, so it must match the bank's calibration.
    score_normalization: str = "none"

    # Calibration: threshold = alpha-quantile of leave-one-out image scores of nominal frames.
    alpha: float = 0.999
    # "patch": quantile over all nominal patch scores (pixels; the area filter decides the image);
    # "image": quantile over each nominal frame's highest patch score.
    calibration_level: str = "patch"
    # Frames on each side of a nominal frame (same source, message ordinal) left out of its
    # leave-one-out search: consecutive video frames are near duplicates.
    calibration_window: int = 12
    # What a nominal frame's leave-one-out search leaves out: "window" (its calibration_window
    # neighbours: how a drive resembles itself), "source" (every frame of its own bag / folder: how
    # a new drive looks; needs >= 2 sources), "auto" = source when the bank has >= 2 sources.
    calibration_holdout: str = "auto"
    # At most this many bank frames are scored during calibration (evenly spaced).
    calibration_max_frames: int = 300
    # Use this threshold instead of the bank's calibrated one (None = the bank's).
    threshold: float | None = None

    # Maps: connected components of the thresholded score map smaller than this are dropped.
    min_component_area_px: int = 500
    # Optional image (non-zero = ignore) of pixels left out of both bank and scoring.
    ignore_mask: str | None = None
    # A patch is ignored when more than this fraction of its pixels is ignored.
    ignore_patch_fraction: float = 0.5

    overlay_alpha: float = 0.5

    # What is compared with the bank: "patch" (DINOv2 patches vs a patch bank), "instance" (OWLv2
    # boxes -> SAM 2 masks -> mask-averaged DINOv2 embeddings vs an instance bank) or "combined"
    # (both; a frame is anomalous when an instance is, or when a patch component lies mostly
    # outside every instance; see semanom_ros.core.scorers.instance) or "scene" (one global
    # embedding per frame vs a scene model, scene_method; see semanom_ros.core.scorers.scene).
    mode: str = "patch"
    # combined mode: the instance bank directory (the monitor's own bank is the patch bank).
    instance_bank: str | None = None
    # combined mode: instance threshold instead of the instance bank's calibrated one (None = bank's).
    instance_threshold: float | None = None
    # OWLv2 box proposer: hub id or folder; text queries (empty = class-agnostic, by objectness;
    # a string is split at commas); score threshold, boxes kept, NMS IoU, merging of duplicates
    # (IoU, or containment of a nested part); square input side (0 = the checkpoint's, 960).
    detector_model: str = "google/owlv2-base-patch16-ensemble"
    detector_queries: list[str] = field(default_factory=list)
    detector_score_threshold: float = 0.1
    detector_top_k: int = 20
    detector_nms_iou: float = 0.5
    detector_merge_iou: float = 0.7
    detector_merge_containment: float = 0.9
    detector_input_size: int = 0
    # SAM 2: hub id or folder; backend "transformers" (default) or "sam2" (Meta's package + torchvision).
    segmenter_model: str = "facebook/sam2.1-hiera-tiny"
    segmenter_backend: str = "transformers"
    # Instance masks smaller than this (frame pixels, after removing ignored pixels) are dropped.
    instance_min_mask_area_px: int = 100
    # combined mode: a patch component counts as evidence when at least this fraction of its
    # pixels lies outside every instance mask (components on instances are judged by the instance).
    combined_min_outside_fraction: float = 0.5

    # Image decision of patch mode: "components" = anomalous when a component survives the area
    # filter; "majority" = when at least majority_fraction of the non-ignored patches exceed the threshold.
    image_decision: str = "components"
    majority_fraction: float = 0.5

    # Scene-level scoring (mode scene, semanom_ros.core.scorers.scene): one global embedding per frame.
    scene_method: str = "off"  # off | knn | knnn | kmeans | hdbscan
    global_embedding: str = "cls"  # cls | mean (mean of the patch tokens)
    knnn_m: int = 5  # k-NNN: in-cluster neighbours of the nearest nominal frame that normalise its distance
    kmeans_k_range: list[int] = field(default_factory=lambda: [2, 10])  # k-Means k picked by silhouette in [min, max]
    hdbscan_min_cluster_size: int = 5

    # Language-guided scoring (semanom_ros.core.prompts): OWLv2 text prompts scored per location.
    # Entries "concept" or "concept: phrasing 1 | phrasing 2"; nominal = what belongs in the scene,
    # anomaly = what must never appear.
    prompt_model: str = "google/owlv2-base-patch16-ensemble"
    nominal_prompts: list[str] = field(default_factory=list)
    anomaly_prompts: list[str] = field(default_factory=list)
    prompt_input_size: int = 0  # OWLv2 square input side; 0 = the checkpoint's (960 for owlv2-base)
    # fused = (1 - w) * knn_map + w * 2 * threshold * prompt_map (see prompts.fuse_score_maps); 0 = off.
    prompt_fusion_weight: float = 0.0

    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "PipelineConfig":
        """Raise :class:`ConfigError` naming the first bad field and its allowed range."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model: must be a hub id such as 'facebook/dinov2-small' or a local folder")
        _check_int(self, "input_height", 14, 4096)
        if self.max_input_width is not None:
            _check_int(self, "max_input_width", 14, 16384)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype: {self.dtype!r} is not one of auto, float32, float16, bfloat16")
        _check_int(self, "feature_layer", 0, 256)
        self.crop_views = check_crop_views(self.crop_views)
        if self.crop_views and self.mode != "patch":
            raise ConfigError(f"crop_views: views are scored in mode patch only, not {self.mode!r}; set crop_views: []")
        _check_int(self, "batch_size", 1, 1024)
        _check_int(self, "num_threads", 0, 1024)
        index_types = ("auto", "flat", "flat_fp16", "ivf", "ivfpq", "hnsw")
        if self.index_type not in index_types:
            raise ConfigError(f"index_type: {self.index_type!r} is not one of {', '.join(index_types)}")
        _check_int(self, "index_auto_threshold", 0, 10**12)
        _check_int(self, "index_nlist", 0, 1 << 20)
        _check_int(self, "nprobe", 0, 1 << 16)
        if not isinstance(self.use_gpu_index, bool):
            raise ConfigError(f"use_gpu_index: {self.use_gpu_index!r} must be true or false")
        if self.search_backend not in SEARCH_BACKENDS:
            raise ConfigError(f"search_backend: {self.search_backend!r} is not one of {', '.join(SEARCH_BACKENDS)}")
        if self.search_dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"search_dtype: {self.search_dtype!r} is not one of auto, float32, float16, bfloat16")
        _check_float(self, "search_memory_fraction", 0.01, 1.0)
        _check_int(self, "k", 1, 1024)
        _check_float(self, "score_smoothing_sigma", 0.0, 100.0)
        if self.score_normalization not in SCORE_NORMALIZATIONS:
            raise ConfigError(
                f"score_normalization: {self.score_normalization!r} is not one of {', '.join(SCORE_NORMALIZATIONS)}"
            )
        if self.score_normalization == "median" and self.image_decision == "majority" and (
            float(self.majority_fraction) >= 0.5
        ):
            raise ConfigError(
                f"score_normalization: median leaves fewer than half of a frame's patches above 0, so image_decision "
                f"majority with majority_fraction {self.majority_fraction} never fires; use image_decision "
                "components, a majority_fraction below 0.5, or score_normalization none"
            )
        if not (0.0 < float(self.alpha) < 1.0):
            raise ConfigError(
                f"alpha: {self.alpha} is outside (0, 1); e.g. 0.999 marks the top 0.1 % of nominal patch scores"
            )
        if self.calibration_level not in ("patch", "image"):
            raise ConfigError(f"calibration_level: {self.calibration_level!r} is not one of patch, image")
        _check_int(self, "calibration_window", 0, 100000)
        if self.calibration_holdout not in ("auto", "source", "window"):
            raise ConfigError(
                f"calibration_holdout: {self.calibration_holdout!r} is not one of auto, source, window"
            )
        _check_int(self, "calibration_max_frames", 1, 10**7)
        if self.threshold is not None:
            _check_float(self, "threshold", 0.0, 2.0)
        _check_int(self, "min_component_area_px", 0, 10**9)
        _check_float(self, "ignore_patch_fraction", 0.0, 1.0)
        _check_float(self, "overlay_alpha", 0.0, 1.0)
        _validate_instance_settings(self)
        _validate_scene_settings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Build from a mapping; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**dict(values)).validate()

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes).validate()


def check_crop_views(views: Any) -> list[list[float]]:
    """``views`` as a list of [top, bottom, left, right] fractions; ConfigError naming the bad entry."""
    if views is None:
        return []
    if not isinstance(views, (list, tuple)):
        raise ConfigError(f"crop_views: {views!r} must be a list of [top, bottom, left, right] boxes")
    out = []
    for i, box in enumerate(views):
        try:
            top, bottom, left, right = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ConfigError(
                f"crop_views[{i}]: {box!r} must be four numbers [top, bottom, left, right], fractions of the frame"
            ) from None
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ConfigError(
                f"crop_views[{i}]: {box!r} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1 "
                "(fractions of the frame height and width), e.g. [0.375, 1.0, 0.125, 0.875]"
            )
        out.append([top, bottom, left, right])
    return out


def _check_int(cfg: PipelineConfig, name: str, lo: int, hi: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name}: {value!r} must be an integer in [{lo}, {hi}]")


def _check_float(cfg: PipelineConfig, name: str, lo: float, hi: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"{name}: {value!r} must be a number in [{lo}, {hi}]")


MODES = ("patch", "instance", "combined", "scene")


def _validate_instance_settings(cfg: PipelineConfig) -> None:
    """Instance-mode settings (checked in every mode, so a typo fails before the mode is switched)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.mode == "combined" and not cfg.instance_bank:
        raise ConfigError(
            "instance_bank: combined mode needs the instance bank directory (the monitor's bank is the patch "
            "bank); build one with 'semanom-bank build --mode instance'"
        )
    if cfg.instance_threshold is not None:
        _check_float(cfg, "instance_threshold", 0.0, 2.0)
    for name in ("detector_model", "segmenter_model"):
        value = getattr(cfg, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name}: must be a hub id or a local folder written by save_pretrained")
    queries = cfg.detector_queries
    if queries is None:
        queries = []
    if isinstance(queries, str):
        # ROS string parameters and flags carry a list as "a car, a traffic light".
        queries = [q.strip() for q in queries.split(",")]
    if not isinstance(queries, (list, tuple)) or not all(isinstance(q, str) for q in queries):
        raise ConfigError(
            f"detector_queries: {cfg.detector_queries!r} must be a list of strings (or one comma-separated string)"
        )
    cfg.detector_queries = [q.strip() for q in queries if q.strip()]
    _check_float(cfg, "detector_score_threshold", 0.0, 1.0)
    _check_int(cfg, "detector_top_k", 1, 1000)
    _check_float(cfg, "detector_nms_iou", 0.0, 1.0)
    _check_float(cfg, "detector_merge_iou", 0.01, 1.0)
    _check_float(cfg, "detector_merge_containment", 0.01, 1.0)
    _check_int(cfg, "detector_input_size", 0, 4096)
    if cfg.segmenter_backend not in ("transformers", "sam2"):
        raise ConfigError(f"segmenter_backend: {cfg.segmenter_backend!r} is not one of transformers, sam2")
    _check_int(cfg, "instance_min_mask_area_px", 0, 10**9)
    _check_float(cfg, "combined_min_outside_fraction", 0.0, 1.0)


def _validate_scene_settings(cfg: PipelineConfig) -> None:
    """Scene-level, majority-vote and prompt settings (see semanom_ros.core.scorers.scene / prompts)."""
    if cfg.image_decision not in ("components", "majority"):
        raise ConfigError(f"image_decision: {cfg.image_decision!r} is not one of components, majority")
    _check_float(cfg, "majority_fraction", 1e-9, 1.0)
    if cfg.scene_method not in ("off", "knn", "knnn", "kmeans", "hdbscan"):
        raise ConfigError(f"scene_method: {cfg.scene_method!r} is not one of off, knn, knnn, kmeans, hdbscan")
    if cfg.global_embedding not in ("cls", "mean"):
        raise ConfigError(f"global_embedding: {cfg.global_embedding!r} is not one of cls, mean")
    _check_int(cfg, "knnn_m", 1, 1000)
    kr = cfg.kmeans_k_range
    ints = isinstance(kr, (list, tuple)) and len(kr) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in kr
    )
    if not ints or not 2 <= kr[0] <= kr[1]:
        raise ConfigError(f"kmeans_k_range: {kr!r} must be [k_min, k_max] integers with 2 <= k_min <= k_max")
    _check_int(cfg, "hdbscan_min_cluster_size", 2, 10**6)
    for name in ("nominal_prompts", "anomaly_prompts"):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: {value!r} must be a list of strings such as ['road: a road | asphalt', 'sky']")
    if not isinstance(cfg.prompt_model, str) or not cfg.prompt_model.strip():
        raise ConfigError("prompt_model: must be an OWLv2 hub id or folder")
    _check_int(cfg, "prompt_input_size", 0, 4096)
    _check_float(cfg, "prompt_fusion_weight", 0.0, 1.0)
