"""kNN anomaly scores and leave-one-out calibration of the decision threshold."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .bank import NominalBank, iter_frame_ids
from .errors import ConfigError


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


def _quantile_table(scores: np.ndarray) -> dict[str, list[float]]:
    # A dense quantile table lets alpha change later (at run time) without re-searching the bank.
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
    image_table, patch_table = _quantile_table(image_scores), _quantile_table(patch_scores)
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
