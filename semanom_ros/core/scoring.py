"""kNN anomaly scores, leave-one-out calibration of the decision threshold, image decisions."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .bank.store import INSTANCE_BANK_KIND, NominalBank, iter_frame_ids
from .config import PipelineConfig
from .errors import BankError, ConfigError


def knn_scores(bank: NominalBank, queries: np.ndarray, k: int = 1, exclude=None) -> np.ndarray:
    """Anomaly score per query vector: 1 - mean cosine similarity of its k nearest bank vectors."""
    if len(queries) == 0:
        return np.zeros(0, np.float32)
    sims, _ = bank.search(queries, k=k, exclude=exclude)
    return (1.0 - sims.mean(axis=1)).astype(np.float32)


def smooth_grid(grid: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return grid
    return cv2.GaussianBlur(grid, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def patch_score_grid(
    bank: NominalBank,
    patches: np.ndarray,
    k: int = 1,
    ignore: np.ndarray | None = None,
    smoothing_sigma: float = 0.0,
    exclude=None,
) -> np.ndarray:
    """(h, w, D) patch grid -> (h, w) float32 scores; ignored patches score 0."""
    h, w, d = patches.shape
    flat = patches.reshape(h * w, d)  # a GPU tensor stays one (NominalBank.search takes either)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool).reshape(-1)
        scores = np.zeros(h * w, np.float32)
        rows = keep if isinstance(flat, np.ndarray) else np.flatnonzero(keep).tolist()
        scores[keep] = knn_scores(bank, flat[rows], k, exclude)
    else:
        scores = knn_scores(bank, flat, k, exclude)
    grid = smooth_grid(scores.reshape(h, w), smoothing_sigma)
    if ignore is not None and smoothing_sigma > 0:
        grid = np.where(ignore, 0.0, grid).astype(np.float32)
    return grid


def image_score(grid: np.ndarray) -> float:
    """Image-level score: the highest patch score (what the threshold is calibrated on)."""
    return float(grid.max()) if grid.size else 0.0


def leave_one_out_scores(
    bank: NominalBank,
    k: int = 1,
    window: int = 12,
    max_frames: int = 300,
    smoothing_sigma: float = 0.0,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score bank frames against the bank minus themselves and their temporal neighbours.

    Without the exclusion window a frame finds its own (or its near-duplicate neighbour's)
    patches and scores ~0, and the threshold comes out far too low.

    Returns (image scores (F,), all patch scores (P,)).
    """
    image_scores, patch_scores = [], []
    ids = list(iter_frame_ids(bank, max_frames))
    for fid in ids if progress is None else progress(ids):
        fr = bank.frames[fid]
        queries = bank.frame_vectors(fid)
        exclude = bank.excluded_ranges(fid, window)
        scores = knn_scores(bank, queries, k, exclude)
        gh, gw = int(fr["grid_h"]), int(fr["grid_w"])
        if smoothing_sigma > 0 and gh * gw == len(scores):
            scores = smooth_grid(scores.reshape(gh, gw), smoothing_sigma).reshape(-1)
        patch_scores.append(scores)
        image_scores.append(float(scores.max()) if len(scores) else 0.0)
    return np.asarray(image_scores, np.float32), (
        np.concatenate(patch_scores) if patch_scores else np.zeros(0, np.float32)
    )


# Dense where thresholds live (alpha 0.99 .. 0.9999), coarse elsewhere.
_QUANTILE_GRID = np.unique(
    np.round(
        np.concatenate([np.linspace(0.0, 0.99, 100), np.linspace(0.99, 0.999, 91), np.linspace(0.999, 1.0, 101)]), 6
    )
)


def quantile_table(scores: np.ndarray) -> dict[str, list[float]]:
    """Quantiles of ``scores`` on a fixed grid, dense where thresholds live.

    A stored table lets alpha change later (at run time) without re-searching the bank.
    """
    return {
        "q": [round(float(q), 6) for q in _QUANTILE_GRID],
        "value": [round(float(v), 6) for v in np.quantile(scores, _QUANTILE_GRID)],
    }


CALIBRATION_LEVELS = ("patch", "image")


def calibrate(
    bank: NominalBank,
    alpha: float = 0.999,
    k: int = 1,
    window: int = 12,
    max_frames: int = 300,
    smoothing_sigma: float = 0.0,
    level: str = "patch",
    progress=None,
) -> dict[str, Any]:
    """Set ``bank.calibration``: threshold = alpha-quantile of leave-one-out scores.

    ``level`` "patch" takes the quantile over every patch score of the scored frames (the
    threshold then marks pixels; the component-area filter decides the image), "image" over
    each frame's highest patch score (alpha then bounds the image-level false-alarm rate
    before the area filter).
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: {alpha} is outside (0, 1)")
    if level not in CALIBRATION_LEVELS:
        raise ConfigError(f"calibration_level: {level!r} is not one of {CALIBRATION_LEVELS}")
    if bank.num_frames < 2:
        raise ConfigError("calibration needs at least 2 nominal frames in the bank")
    image_scores, patch_scores = leave_one_out_scores(bank, k, window, max_frames, smoothing_sigma, progress)
    if (image_scores >= 2.0).all():
        raise ConfigError(
            f"calibration_window {window} leaves no other frame to compare with (bank of {bank.num_frames} frames"
            " from one sequence); use a smaller window or add more nominal frames"
        )
    patch_scores = patch_scores[patch_scores < 2.0]
    image_scores = image_scores[image_scores < 2.0]
    qs = [0.5, 0.9, 0.95, 0.99, 0.999]
    image_table, patch_table = quantile_table(image_scores), quantile_table(patch_scores)
    chosen = patch_scores if level == "patch" else image_scores
    calibration = {
        "method": f"leave-one-out {level} scores, alpha-quantile",
        "level": level,
        "alpha": float(alpha),
        "k": int(k),
        "window": int(window),
        "smoothing_sigma": float(smoothing_sigma),
        "frames_scored": int(len(image_scores)),
        "patches_scored": int(len(patch_scores)),
        "threshold": float(np.quantile(chosen, alpha)),
        "image_scores": {
            "min": float(image_scores.min()),
            "max": float(image_scores.max()),
            "mean": float(image_scores.mean()),
            "quantiles": {str(q): float(np.quantile(image_scores, q)) for q in qs},
            "table": image_table,
        },
        "patch_scores": {
            "min": float(patch_scores.min()),
            "max": float(patch_scores.max()),
            "mean": float(patch_scores.mean()),
            "quantiles": {str(q): float(np.quantile(patch_scores, q)) for q in qs},
            "table": patch_table,
        },
    }
    bank.calibration = calibration
    return calibration


def threshold_for_alpha(calibration: dict[str, Any], alpha: float, level: str | None = None) -> float:
    """The threshold for any alpha (and either level) from the stored quantile tables."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: {alpha} is outside (0, 1)")
    level = level or calibration.get("level", "patch")
    table = (calibration.get(f"{level}_scores") or {}).get("table")
    if not table:
        raise ConfigError("the bank's calibration holds no score table; run 'semanom-bank calibrate'")
    return float(np.interp(alpha, table["q"], table["value"]))


def calibrate_instance_bank(bank: NominalBank, config: PipelineConfig, progress=None) -> dict[str, Any]:
    """``calibrate`` on an instance bank.

    Each vector is one instance, so level "patch" is per instance and "image" per frame's highest
    instance score. No spatial smoothing.
    """
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


def calibrate_bank(bank: NominalBank, config: PipelineConfig, progress=None) -> dict[str, Any]:
    """Leave-one-out calibration of a patch or instance bank; sets and returns ``bank.calibration``.

    With the settings of ``config`` (alpha, k, window, max frames, smoothing, level).
    """
    if bank.kind == INSTANCE_BANK_KIND:
        return calibrate_instance_bank(bank, config, progress)
    c = config
    return calibrate(
        bank,
        c.alpha,
        c.k,
        c.calibration_window,
        c.calibration_max_frames,
        c.score_smoothing_sigma,
        c.calibration_level,
        progress,
    )


def calibrated_threshold(calibration: dict[str, Any] | None, config: PipelineConfig) -> float:
    """The threshold a bank's calibration gives at ``config.alpha``.

    Refuses a calibration made with another k or smoothing than the pipeline scores with.
    """
    if not calibration:
        raise BankError(
            "the bank is not calibrated and no threshold is set; run 'semanom-bank calibrate' or set 'threshold'"
        )
    c = config
    for name, ours in (("k", c.k), ("smoothing_sigma", c.score_smoothing_sigma)):
        theirs = calibration.get(name)
        if theirs is not None and abs(float(theirs) - float(ours)) > 1e-9:
            raise ConfigError(
                f"{'score_' if name == 'smoothing_sigma' else ''}{name}: the bank was calibrated with {theirs}, "
                f"the pipeline uses {ours}; recalibrate ('semanom-bank calibrate') or set it back"
            )
    return threshold_for_alpha(calibration, c.alpha, c.calibration_level)


def majority_vote(
    patch_scores: np.ndarray, threshold: float, fraction: float = 0.5, ignore: np.ndarray | None = None
) -> tuple[bool, float]:
    """Image decision by patch majority: anomalous when >= ``fraction`` of non-ignored patches exceed ``threshold``.

    Returns (is_anomalous, fraction of patches above the threshold). An image whose patches are
    all ignored is nominal.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"majority_fraction: {fraction} must be in (0, 1]")
    scores = np.asarray(patch_scores, np.float32).reshape(-1)
    if ignore is not None:
        scores = scores[~np.asarray(ignore, bool).reshape(-1)]
    if scores.size == 0:
        return False, 0.0
    above = float(np.mean(scores > threshold))
    return above >= fraction, above
