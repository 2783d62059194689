"""Monitor: one frame in, one AnomalyResult out. The single entry point nodes and tools call.

The Monitor loads the bank and the backbone, picks the scorer by ``config.mode`` (patch,
instance, combined, scene: :mod:`semanom_ros.core.scorers`) and owns the decision threshold.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .bank.signature import check_signature
from .bank.store import INSTANCE_BANK_KIND, NominalBank
from .config import PipelineConfig
from .errors import BankError, ConfigError
from .features import FeatureExtractor, Features, validate_rgb
from .ignore import IgnoreMask
from .instances.drawing import draw_instances
from .instances.pipeline import InstancePipeline
from .maps import render_overlay
from .prompts import PromptScorer, parse_prompts
from .result import AnomalyResult
from .scorers.base import Scorer
from .scorers.instance import CombinedScorer, InstanceScorer
from .scorers.patch import PatchScorer
from .scorers.scene import SceneModeScorer
from .scoring import calibrated_threshold
from .search.spec import IndexSpec
from .threads import configure_threads


def index_spec_for(config: PipelineConfig, bank: NominalBank) -> IndexSpec:
    """The index a pipeline searches ``bank`` with.

    The bank's own settings (what it was built and tuned with), overridden by each index setting
    the pipeline sets away from its default. So a node left at ``index_type: auto`` / ``nprobe: 0``
    uses the saved index as built, while ``nprobe: 128`` changes only the search depth and
    ``index_type: hnsw`` re-indexes.
    """
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
    spec.backend, spec.device = config.search_backend, config.device
    spec.dtype, spec.memory_fraction = config.search_dtype, config.search_memory_fraction
    return spec.validate()


class Monitor:
    """Scores frames against a nominal bank with the settings in a :class:`PipelineConfig`."""

    def __init__(
        self,
        config: PipelineConfig,
        bank: NominalBank | str | Path,
        extractor: FeatureExtractor | None = None,
        instance_pipeline: InstancePipeline | None = None,
    ) -> None:
        # A private copy: runtime changes (threshold, alpha) must not leak into the caller's config.
        config = dataclasses.replace(config).validate()
        configure_threads(config.num_threads)
        self.config = config
        self.bank = NominalBank.load(bank) if isinstance(bank, (str, Path)) else bank
        self.extractor = extractor or FeatureExtractor.from_config(config)
        self.extractor.check_views(config)
        self.scorer: Scorer
        if config.mode == "scene":
            check_signature(self.bank.signature, self.extractor.signature())
            self.scorer = SceneModeScorer(config, self.bank)
            self.bank = self.scorer.bank  # the global bank (a patch bank's frame means when given one)
            self.threshold = self._initial_threshold(self.scorer.initial_threshold)
            return
        _check_bank_kind(self.bank, config.mode)
        check_signature(self.bank.signature, self.extractor.signature())
        if len(self.bank) == 0:
            raise BankError("the bank is empty; build it from nominal frames first")
        ignore = IgnoreMask.from_config(config)
        self.threshold = self._initial_threshold(lambda: calibrated_threshold(self.bank.calibration, config))
        self.bank.set_index_spec(index_spec_for(config, self.bank))
        # Load or build the index now, not on the first frame (one per view in a bank with crop views).
        for view in range(self.bank.num_views()):
            self.bank.view_bank(view).search_index.ensure()
        if config.mode == "patch":
            self.scorer = PatchScorer(config, self.bank, ignore)
        else:
            # instance / combined mode: OWLv2 + SAM 2 + the instance bank.
            pipeline = instance_pipeline or InstancePipeline.from_config(config, self.extractor)
            if config.mode == "instance":
                self.scorer = InstanceScorer(config, self.bank, pipeline, ignore)
            else:
                instance_bank = NominalBank.load(config.instance_bank)
                self.scorer = CombinedScorer(
                    PatchScorer(config, self.bank, ignore),
                    InstanceScorer(config, instance_bank, pipeline, ignore),
                )
        if config.prompt_fusion_weight > 0 and config.mode == "patch":
            self._patch_scorer().build_prompt_scorer()

    # -- scorers ----------------------------------------------------------------------------
    @property
    def instance_scorer(self) -> InstanceScorer | None:
        """The instance scorer in instance and combined mode; None otherwise."""
        if isinstance(self.scorer, InstanceScorer):
            return self.scorer
        return self.scorer.instances if isinstance(self.scorer, CombinedScorer) else None

    @property
    def prompt_scorer(self) -> PromptScorer | None:
        """The language-prompt scorer fused into patch scores (patch mode, once built)."""
        return self.scorer.prompt_scorer if isinstance(self.scorer, PatchScorer) else None

    def _patch_scorer(self) -> PatchScorer:
        if isinstance(self.scorer, PatchScorer):
            return self.scorer
        if isinstance(self.scorer, CombinedScorer):
            return self.scorer.patch
        raise ConfigError(
            f"score_features scores patches against a patch bank; in {self.config.mode} mode "
            "call process(rgb)"
        )

    def set_prompts(self, nominal_prompts: list[str] | None, anomaly_prompts: list[str] | None) -> None:
        """Replace the language prompts (re-embedded now when a prompt scorer exists)."""
        nominal, anomaly = list(nominal_prompts or []), list(anomaly_prompts or [])
        if self.prompt_scorer is not None:
            self.prompt_scorer.set_prompts(nominal, anomaly)  # ConfigError leaves the old prompts in place
        else:
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
            self._patch_scorer().build_prompt_scorer()
        self.config.prompt_fusion_weight = weight

    # -- thresholds -------------------------------------------------------------------------
    def _initial_threshold(self, calibrated: Callable[[], float]) -> float:
        """``config.threshold`` when set, else the bank's calibrated threshold at ``config.alpha``."""
        if self.config.threshold is not None:
            return float(self.config.threshold)
        return calibrated()

    def set_alpha(self, alpha: float) -> float:
        """Re-derive the threshold from the bank's leave-one-out scores for a new alpha."""
        self.threshold = self.scorer.threshold_at(alpha)
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
        """Patches the configured ignore mask leaves out of a frame of ``image_size`` (patch scoring)."""
        return self._patch_scorer().ignore_patches(image_size, grid)

    def process(self, rgb: np.ndarray, extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        """Score one (H, W, 3) uint8 RGB frame. ``extra_ignore`` (H, W) bool adds ignored pixels."""
        validate_rgb(rgb, min_side=self.extractor.patch_size)
        t0 = time.perf_counter()
        on_device = self.scorer.queries_on_device(self.extractor.device.type)
        features = self.extractor.extract(rgb, on_device=on_device)
        t1 = time.perf_counter()
        result = self.scorer.score(features, self.threshold, rgb, extra_ignore)
        result.timings_ms = {"features": (t1 - t0) * 1e3, **result.timings_ms}
        return result

    def process_batch(
        self, frames: Sequence[np.ndarray], extra_ignores: Sequence[np.ndarray | None] | None = None
    ) -> list[AnomalyResult]:
        """Score frames of several cameras together.

        Frames of one size share a forward pass (one batch on a GPU); each result is what
        :meth:`process` gives for that frame alone.
        """
        if extra_ignores is not None and len(extra_ignores) != len(frames):
            raise ConfigError(f"extra_ignores: {len(extra_ignores)} masks for {len(frames)} frames")
        if not frames:
            return []
        t0 = time.perf_counter()
        on_device = self.scorer.queries_on_device(self.extractor.device.type)
        features = self.extractor.extract_batch(list(frames), on_device=on_device)
        per_frame_ms = (time.perf_counter() - t0) * 1e3 / len(frames)
        results = []
        for i, (rgb, feats) in enumerate(zip(frames, features)):
            result = self.scorer.score(feats, self.threshold, rgb, extra_ignores[i] if extra_ignores else None)
            result.timings_ms = {"features": per_frame_ms, **result.timings_ms}
            results.append(result)
        return results

    def score_features(
        self, features: Features, rgb: np.ndarray | None = None, extra_ignore: np.ndarray | None = None
    ) -> AnomalyResult:
        """Patch scores of already extracted features (patch mode; the patch half of combined mode)."""
        return self._patch_scorer().score(features, self.threshold, rgb, extra_ignore)

    def overlay(self, rgb: np.ndarray, result: AnomalyResult) -> np.ndarray:
        """BGR8 visualisation of a result on its frame."""
        image = render_overlay(
            rgb, result.score_map, result.mask, result.components, result.threshold, self.config.overlay_alpha
        )
        if result.instances:
            image = draw_instances(image, result.instances)
        return image

    def release(self) -> None:
        scorer: Any = getattr(self, "scorer", None)
        if scorer is not None:
            scorer.release()
        self.extractor.release()


def _check_bank_kind(bank: NominalBank, mode: str) -> None:
    """Instance banks only in instance mode (its vectors are objects, not patches), and vice versa."""
    if mode == "instance" and bank.kind != INSTANCE_BANK_KIND:
        raise BankError(
            f"mode instance needs an instance bank; this bank is of kind {bank.kind!r} "
            "(build one with 'semanom-bank build --mode instance')"
        )
    if mode != "instance" and bank.kind == INSTANCE_BANK_KIND:
        raise BankError(
            f"mode {mode} scores patches but this is an instance bank; set mode: instance"
            + (" (in combined mode the instance bank goes in instance_bank)" if mode == "combined" else "")
        )


__all__ = ["Monitor", "index_spec_for"]
