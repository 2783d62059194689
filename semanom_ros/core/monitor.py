"""Monitor: one frame in, one AnomalyResult out. The single entry point nodes and tools call."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import cv2
import numpy as np

from .bank import ModelSignature, NominalBank, check_signature
from .config import PipelineConfig
from .errors import BankError, ConfigError, ImageError
from .features import FeatureExtractor, Features, patch_mask_from_pixels, validate_rgb
from .index import IndexSpec
from .maps import Component, render_overlay, threshold_components, upsample_scores
from .scoring import calibrate, image_score, patch_score_grid, threshold_for_alpha


@dataclass
class AnomalyResult:
    """What the monitor concluded about one frame."""

    is_anomalous: bool
    score: float  # image score (max patch score); compare with `threshold`
    threshold: float
    score_map: np.ndarray  # (H, W) float32 raw scores at frame resolution
    mask: np.ndarray  # (H, W) bool: above threshold, small components dropped
    labels: np.ndarray  # (H, W) uint16: 0 = none, i = components[i-1] / instances[i-1]
    components: list[Component]
    patch_scores: np.ndarray  # (h, w) float32 grid the map was made from
    instances: list[Any] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class FrameLike(Protocol):
    rgb: np.ndarray
    source: str
    index: int
    stamp_ns: int


def set_cpu_threads(num_threads: int) -> int:
    """Give torch and faiss one thread count (see :func:`~semanom_ros.core.index.configure_threads`);
    0 = ``OMP_NUM_THREADS`` when set, else the cores this process may use. Returns the count set."""
    from .index import configure_threads

    return configure_threads(num_threads)


def index_spec_for(config: PipelineConfig, bank: NominalBank) -> IndexSpec:
    """The index a pipeline searches ``bank`` with: the bank's own settings (what it was built and
    tuned with), overridden by each index setting the pipeline sets away from its default. So a
    node left at ``index_type: auto`` / ``nprobe: 0`` uses the saved index as built, while
    ``nprobe: 128`` changes only the search depth and ``index_type: hnsw`` re-indexes."""
    spec = IndexSpec.from_config(bank.config)
    defaults = PipelineConfig()
    if config.index_type != defaults.index_type:
        spec.type = config.index_type
    if config.index_auto_threshold != defaults.index_auto_threshold:
        spec.auto_threshold = config.index_auto_threshold
    if config.index_nlist:
        spec.nlist = config.index_nlist
    if config.nprobe:
        spec.nprobe = config.nprobe
        spec.ef_search = config.nprobe  # one knob for both: nprobe doubles as HNSW efSearch
    # Where the index lives follows the pipeline that searches it, not the machine that built it.
    spec.use_gpu = bool(config.use_gpu_index) and config.device != "cpu"
    return spec.validate()


def load_ignore_mask(path: str | None) -> np.ndarray | None:
    """Read an ignore-mask image (non-zero = ignore) as (H, W) bool; None when not set."""
    if not path:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConfigError(f"ignore_mask: cannot read {path} as an image (PNG with non-zero = ignored pixels)")
    if image.ndim == 3:
        image = image.max(axis=2)
    return image > 0


class Monitor:
    """Scores frames against a nominal bank with the settings in a :class:`PipelineConfig`."""

    def __init__(
        self,
        config: PipelineConfig,
        bank: NominalBank | str | Path,
        extractor: FeatureExtractor | None = None,
        instance_pipeline: Any = None,
    ) -> None:
        # A private copy: runtime changes (threshold, alpha) must not leak into the caller's config.
        config = dataclasses.replace(config).validate()
        set_cpu_threads(config.num_threads)
        self.config = config
        self.bank = NominalBank.load(bank) if isinstance(bank, (str, Path)) else bank
        self.extractor = extractor or FeatureExtractor(
            config.model, config.input_height, config.device, config.dtype, config.max_input_width
        )
        _check_bank_kind(self.bank, config.mode)
        check_signature(self.bank.signature, signature_of(self.extractor))
        if len(self.bank) == 0:
            raise BankError("the bank is empty; build it from nominal frames first")
        self._ignore_pixels = load_ignore_mask(config.ignore_mask)
        self._ignore_cache: dict[tuple[int, int, int, int], np.ndarray] = {}
        self.threshold = self._initial_threshold()
        self.bank.set_index_spec(index_spec_for(config, self.bank))
        self.bank._ensure_index()  # load or build the index now, not on the first frame
        # instance / combined mode: OWLv2 + SAM 2 + the instance bank (semanom_ros.core.instances).
        self.instance_scorer = None
        if config.mode != "patch":
            from .instances import InstanceScorer

            self.instance_scorer = InstanceScorer.for_monitor(self, instance_pipeline)
        # Language-prompt fusion (semanom_ros.core.prompts), patch grid only. The threshold stays the
        # calibrated kNN one: the fusion rule maps prompt probability 0.5 onto it, so no re-calibration.
        self.prompt_scorer = None
        if config.prompt_fusion_weight > 0 and config.mode == "patch":
            self._build_prompt_scorer()

    def _build_prompt_scorer(self) -> None:
        from .prompts import PromptScorer

        if not str(self.config.prompt_model or "").strip():
            raise ConfigError("prompt_model: prompt_fusion_weight > 0 needs an OWLv2 hub id or folder")
        if not self.config.nominal_prompts and not self.config.anomaly_prompts:
            raise ConfigError(
                "nominal_prompts / anomaly_prompts: prompt_fusion_weight > 0 needs at least one prompt, "
                "e.g. nominal_prompts: ['road', 'car', 'sky']"
            )
        self.prompt_scorer = PromptScorer.from_config(self.config)

    def set_prompts(self, nominal_prompts: list[str] | None, anomaly_prompts: list[str] | None) -> None:
        """Replace the language prompts (re-embedded now when a prompt scorer exists)."""
        nominal, anomaly = list(nominal_prompts or []), list(anomaly_prompts or [])
        if self.prompt_scorer is not None:
            self.prompt_scorer.set_prompts(nominal, anomaly)  # ConfigError leaves the old prompts in place
        else:
            from .prompts import parse_prompts

            parse_prompts(nominal), parse_prompts(anomaly)  # reject malformed entries now, not at first use
        self.config.nominal_prompts, self.config.anomaly_prompts = nominal, anomaly

    def set_prompt_fusion_weight(self, weight: float) -> None:
        """0 skips fusion (the scorer is kept); raising it from 0 builds the scorer if needed."""
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"prompt_fusion_weight: {weight!r} is not a number") from None
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"prompt_fusion_weight: {weight} must be in [0, 1] (0 = prompts off)")
        if weight > 0 and self.config.mode != "patch":
            raise ConfigError("prompt_fusion_weight: prompt fusion applies to mode 'patch' only")
        if weight > 0 and self.prompt_scorer is None:
            self._build_prompt_scorer()
        self.config.prompt_fusion_weight = weight

    # -- thresholds -------------------------------------------------------------------------
    def _initial_threshold(self) -> float:
        if self.config.threshold is not None:
            return float(self.config.threshold)
        cal = self.bank.calibration
        if not cal:
            raise BankError(
                "the bank is not calibrated and no threshold is set; run 'semanom-bank calibrate' or set 'threshold'"
            )
        c = self.config
        for name, ours in (("k", c.k), ("smoothing_sigma", c.score_smoothing_sigma)):
            theirs = cal.get(name)
            if theirs is not None and abs(float(theirs) - float(ours)) > 1e-9:
                raise ConfigError(
                    f"{'score_' if name == 'smoothing_sigma' else ''}{name}: the bank was calibrated with {theirs}, "
                    f"the pipeline uses {ours}; recalibrate ('semanom-bank calibrate') or set it back"
                )
        return threshold_for_alpha(cal, c.alpha, c.calibration_level)

    def set_alpha(self, alpha: float) -> float:
        """Re-derive the threshold from the bank's leave-one-out scores for a new alpha."""
        if not self.bank.calibration:
            raise ConfigError("alpha: the bank holds no calibration to re-derive a threshold from")
        self.threshold = threshold_for_alpha(self.bank.calibration, alpha, self.config.calibration_level)
        if self.instance_scorer is not None and self.config.mode == "combined" and self.config.instance_threshold is None:
            self.instance_scorer.set_alpha(alpha)
        self.config.alpha = float(alpha)
        self.config.threshold = None
        return self.threshold

    def set_threshold(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 2.0:
            raise ConfigError(f"threshold: {threshold} must be in [0, 2] (scores are 1 - cosine similarity)")
        self.threshold = float(threshold)
        self.config.threshold = float(threshold)

    # -- per frame --------------------------------------------------------------------------
    def ignore_patches(self, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray | None:
        if self._ignore_pixels is None:
            return None
        key = (*image_size, *grid)
        if key not in self._ignore_cache:
            mask = self._ignore_pixels
            if mask.shape != image_size:
                mask = cv2.resize(mask.astype(np.uint8), (image_size[1], image_size[0]), interpolation=cv2.INTER_NEAREST) > 0
            self._ignore_cache[key] = patch_mask_from_pixels(mask, grid, self.config.ignore_patch_fraction)
        return self._ignore_cache[key]

    def process(self, rgb: np.ndarray, extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        """Score one (H, W, 3) uint8 RGB frame. ``extra_ignore`` (H, W) bool adds ignored pixels."""
        validate_rgb(rgb, min_side=self.extractor.patch_size)
        t0 = time.perf_counter()
        features = self.extractor.extract(rgb, on_device=self._queries_on_device())
        t1 = time.perf_counter()
        if self.instance_scorer is not None:
            result = self.instance_scorer.process(self, features, rgb, extra_ignore)
        else:
            result = self.score_features(features, rgb, extra_ignore)
        result.timings_ms = {"features": (t1 - t0) * 1e3, **result.timings_ms}
        return result

    def _queries_on_device(self) -> bool:
        # Patch mode with the model and the index both on the GPU: the patch embeddings never
        # leave it (instance mode averages them on the host under SAM masks).
        info = self.bank.index_info or {}
        return (
            self.instance_scorer is None
            and self.extractor.device.type == "cuda"
            and str(info.get("device", "cpu")).startswith("cuda")
        )

    def score_features(
        self, features: Features, rgb: np.ndarray | None = None, extra_ignore: np.ndarray | None = None
    ) -> AnomalyResult:
        if self.config.mode == "instance":
            raise ConfigError("score_features scores patches against a patch bank; in instance mode call process(rgb)")
        t0 = time.perf_counter()
        ignore = self.ignore_patches(features.image_size, features.grid_shape)
        if extra_ignore is not None:
            if extra_ignore.shape != features.image_size:
                raise ImageError(f"ignore mask shape {extra_ignore.shape} differs from the frame's {features.image_size}")
            extra = patch_mask_from_pixels(extra_ignore, features.grid_shape, self.config.ignore_patch_fraction)
            ignore = extra if ignore is None else (ignore | extra)
        grid = patch_score_grid(
            self.bank, features.patches, self.config.k, ignore, self.config.score_smoothing_sigma
        )
        t1 = time.perf_counter()
        weight = self.config.prompt_fusion_weight
        fused_prompts = self.prompt_scorer is not None and weight > 0 and rgb is not None
        if fused_prompts:
            from .prompts import fuse_score_maps

            grid = fuse_score_maps(grid, self.prompt_scorer.score_map(rgb, grid.shape), weight, self.threshold)
        t_prompts = time.perf_counter()
        score_map = upsample_scores(grid, features.image_size)
        mask, labels, components = threshold_components(score_map, self.threshold, self.config.min_component_area_px)
        t2 = time.perf_counter()
        timings = {"search": (t1 - t0) * 1e3, "maps": (t2 - t_prompts) * 1e3}
        if fused_prompts:
            timings["prompts"] = (t_prompts - t1) * 1e3  # only when the prompt map was fused
        is_anomalous = bool(components)
        if self.config.image_decision == "majority":
            from .scene import majority_vote  # alternative image decision: at least half the patches

            is_anomalous = majority_vote(grid, self.threshold, self.config.majority_fraction, ignore)[0]
        return AnomalyResult(
            is_anomalous=is_anomalous,
            score=image_score(grid),
            threshold=self.threshold,
            score_map=score_map,
            mask=mask,
            labels=labels,
            components=components,
            patch_scores=grid,
            timings_ms=timings,
        )

    def overlay(self, rgb: np.ndarray, result: AnomalyResult) -> np.ndarray:
        """BGR8 visualisation of a result on its frame."""
        image = render_overlay(
            rgb, result.score_map, result.mask, result.components, result.threshold, self.config.overlay_alpha
        )
        if result.instances:
            from .instances import draw_instances

            image = draw_instances(image, result.instances)
        return image

    def release(self) -> None:
        if getattr(self, "instance_scorer", None) is not None:
            self.instance_scorer.release()
        if getattr(self, "prompt_scorer", None) is not None:
            self.prompt_scorer.release()
            self.prompt_scorer = None
        self.extractor.release()
        self.bank._index = None


def _check_bank_kind(bank: NominalBank, mode: str) -> None:
    """Instance banks only in instance mode (its vectors are objects, not patches), and vice versa."""
    if mode == "instance" and bank.kind != "instance":
        raise BankError(
            f"mode instance needs an instance bank; this bank is of kind {bank.kind!r} "
            "(build one with 'semanom-bank build --mode instance')"
        )
    if mode != "instance" and bank.kind == "instance":
        raise BankError(
            f"mode {mode} scores patches but this is an instance bank; set mode: instance"
            + (" (in combined mode the instance bank goes in instance_bank)" if mode == "combined" else "")
        )


def signature_of(extractor: FeatureExtractor) -> ModelSignature:
    return ModelSignature(
        model=extractor.model_id,
        fingerprint=extractor.fingerprint,
        input_height=extractor.input_height,
        dim=extractor.dim,
        patch_size=extractor.patch_size,
    )


class PatchBankBuilder:
    """Streams frames into a patch bank in batches, then calibrates it.

    Frames are any objects with ``rgb``, ``source``, ``index``, ``stamp_ns`` (and optionally
    ``topic`` and ``ignore``, an (H, W) bool mask of pixels to leave out).
    """

    def __init__(self, config: PipelineConfig, extractor: FeatureExtractor | None = None,
                 bank: NominalBank | None = None) -> None:
        config.validate()
        set_cpu_threads(config.num_threads)
        self.config = config
        self.extractor = extractor or FeatureExtractor(
            config.model, config.input_height, config.device, config.dtype, config.max_input_width
        )
        sig = signature_of(self.extractor)
        if bank is not None:
            check_signature(bank.signature, sig, where="existing bank")
            self.bank = bank
        else:
            self.bank = NominalBank(sig, kind="patch", config=config.to_dict())
        self._ignore_pixels = load_ignore_mask(config.ignore_mask)
        self._pending: list[Any] = []

    def add(self, frame: FrameLike) -> None:
        self._pending.append(frame)
        if len(self._pending) >= self.config.batch_size:
            self.flush()

    def add_all(self, frames: Iterable[FrameLike]) -> NominalBank:
        for frame in frames:
            self.add(frame)
        self.flush()
        return self.bank

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        feats = self.extractor.extract_batch([f.rgb for f in batch])
        for frame, feat in zip(batch, feats):
            self.add_features(frame, feat)

    def add_features(self, frame: FrameLike, feat: Features) -> int:
        """Add one frame whose features are already extracted (callers that look at the features
        first, e.g. to skip near duplicates by CLS similarity); returns the frame's id in the bank."""
        keep = None
        ignore_px = self._frame_ignore(frame, feat.image_size)
        if ignore_px is not None:
            keep = ~patch_mask_from_pixels(ignore_px, feat.grid_shape, self.config.ignore_patch_fraction)
        return self.bank.add_patch_grid(
            feat.patches,
            source=str(frame.source),
            index=int(frame.index),
            stamp_ns=int(getattr(frame, "stamp_ns", 0) or 0),
            topic=getattr(frame, "topic", None),
            keep=keep,
        )

    def _frame_ignore(self, frame: Any, size: tuple[int, int]) -> np.ndarray | None:
        masks = []
        if self._ignore_pixels is not None:
            m = self._ignore_pixels
            if m.shape != size:
                m = cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
            masks.append(m)
        own = getattr(frame, "ignore", None)
        if own is not None:
            masks.append(np.asarray(own, bool))
        if not masks:
            return None
        return np.logical_or.reduce(masks)

    def calibrate(self, progress=None) -> dict[str, Any]:
        self.flush()
        c = self.config
        return calibrate(
            self.bank,
            c.alpha,
            c.k,
            c.calibration_window,
            c.calibration_max_frames,
            c.score_smoothing_sigma,
            c.calibration_level,
            progress,
        )
