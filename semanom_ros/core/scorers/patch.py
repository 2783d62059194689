"""Patch mode: every DINOv2 patch against a patch bank, a score map, components above the threshold."""
from __future__ import annotations

import time

import numpy as np

from ..bank.store import NominalBank
from ..config import PipelineConfig
from ..errors import ConfigError, ImageError
from ..features import Features
from ..ignore import IgnoreMask
from ..maps import fuse_view_scores, threshold_components, upsample_scores
from ..prompts import PromptScorer, fuse_score_maps
from ..result import AnomalyResult
from ..scoring import image_score, majority_vote, patch_score_grid, view_offsets
from .base import Scorer


class PatchScorer(Scorer):
    """Scores a frame's patch grid against a patch bank (optionally fused with language prompts).

    The image decision is ``config.image_decision``: a component surviving the area filter, or a
    majority of the non-ignored patches above the threshold.
    """

    def __init__(self, config: PipelineConfig, bank: NominalBank, ignore: IgnoreMask) -> None:
        self.config = config
        self.bank = bank
        self.ignore = ignore
        # Language-prompt fusion (semanom_ros.core.prompts). The threshold stays the calibrated kNN
        # one: the fusion rule maps prompt probability 0.5 onto it, so no re-calibration.
        self.prompt_scorer: PromptScorer | None = None

    def build_prompt_scorer(self) -> None:
        """Load OWLv2 and embed the configured prompts (ConfigError when they are missing)."""
        if not str(self.config.prompt_model or "").strip():
            raise ConfigError("prompt_model: prompt_fusion_weight > 0 needs an OWLv2 hub id or folder")
        if not self.config.nominal_prompts and not self.config.anomaly_prompts:
            raise ConfigError(
                "nominal_prompts / anomaly_prompts: prompt_fusion_weight > 0 needs at least one prompt, "
                "e.g. nominal_prompts: ['road', 'car', 'sky']"
            )
        self.prompt_scorer = PromptScorer.from_config(self.config)

    def view_grid(self, patches: np.ndarray, image_size: tuple[int, int], box: tuple[int, int, int, int] | None,
                  extra_ignore: np.ndarray | None, view: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """(score grid, ignored patches or None) of the full frame (``box`` None) or of crop view ``view``.

        Each view is searched in its own vectors of the bank (:meth:`NominalBank.view_bank`).
        """
        grid_shape = (patches.shape[0], patches.shape[1])
        if box is None:
            ignore = self.ignore_patches(image_size, grid_shape)
            extra = None if extra_ignore is None else self.ignore.patch_mask(extra_ignore, grid_shape)
        else:
            top, bottom, left, right = box
            configured = self.ignore.pixels(image_size)
            ignore = None if configured is None else self.ignore.patch_mask(
                configured[top:bottom, left:right], grid_shape)
            extra = None if extra_ignore is None else self.ignore.patch_mask(
                extra_ignore[top:bottom, left:right], grid_shape)
        if extra is not None:
            ignore = extra if ignore is None else (ignore | extra)
        grid = patch_score_grid(
            self.bank.view_bank(view), patches, self.config.k, ignore, self.config.score_smoothing_sigma,
            normalization=self.config.score_normalization,
        )
        return grid, ignore

    def ignore_patches(self, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray | None:
        """Patches the configured ignore mask leaves out for a frame size and grid (None: none)."""
        return self.ignore.patches(image_size, grid)

    def score(self, features: Features, threshold: float, rgb: np.ndarray | None = None,
              extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        t0 = time.perf_counter()
        if extra_ignore is not None and extra_ignore.shape != features.image_size:
            raise ImageError(f"ignore mask shape {extra_ignore.shape} differs from the frame's {features.image_size}")
        grid, ignore = self.view_grid(features.patches, features.image_size, None, extra_ignore)
        offsets = view_offsets(self.bank.calibration, self.config) if features.views else [0.0]
        view_grids = []
        for v, view in enumerate(features.views, start=1):
            view_scores = self.view_grid(view.patches, features.image_size, view.box, extra_ignore, v)[0]
            view_grids.append((view.box, view_scores + np.float32(offsets[v] if v < len(offsets) else 0.0)))
        t1 = time.perf_counter()
        weight = self.config.prompt_fusion_weight
        fused_prompts = self.prompt_scorer is not None and weight > 0 and rgb is not None
        if fused_prompts:
            grid = fuse_score_maps(grid, self.prompt_scorer.score_map(rgb, grid.shape), weight, threshold)
        t_prompts = time.perf_counter()
        score_map = fuse_view_scores(upsample_scores(grid, features.image_size), view_grids)
        min_area = self.config.min_component_area_px
        mask, labels, components = threshold_components(score_map, threshold, min_area)
        t2 = time.perf_counter()
        timings = {"search": (t1 - t0) * 1e3, "maps": (t2 - t_prompts) * 1e3}
        if fused_prompts:
            timings["prompts"] = (t_prompts - t1) * 1e3  # only when the prompt map was fused
        is_anomalous = bool(components)
        if self.config.image_decision == "majority":  # alternative image decision: at least half the patches
            is_anomalous = majority_vote(grid, threshold, self.config.majority_fraction, ignore)[0]
        return AnomalyResult(
            is_anomalous=is_anomalous,
            score=max([image_score(grid)] + [image_score(g) for _, g in view_grids]),
            threshold=threshold,
            score_map=score_map,
            mask=mask,
            labels=labels,
            components=components,
            patch_scores=grid,
            timings_ms=timings,
        )

    def release(self) -> None:
        if self.prompt_scorer is not None:
            self.prompt_scorer.release()
            self.prompt_scorer = None
        super().release()


__all__ = ["PatchScorer"]
