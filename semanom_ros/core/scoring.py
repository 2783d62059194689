"""kNN anomaly scores, leave-one-out calibration of the decision threshold, image decisions."""
from __future__ import annotations

from typing import Any, Iterable

import cv2
import numpy as np

from .bank.store import INSTANCE_BANK_KIND, NominalBank, iter_frame_ids
from .config import SCORE_NORMALIZATIONS, PipelineConfig
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


def check_score_normalization(normalization: str) -> str:
    """Return ``normalization`` or raise ConfigError when it is not one of :data:`SCORE_NORMALIZATIONS`."""
    if normalization not in SCORE_NORMALIZATIONS:
        raise ConfigError(
            f"score_normalization: {normalization!r} is not one of {', '.join(SCORE_NORMALIZATIONS)}"
        )
    return normalization


def subtract_frame_median(scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """A frame's patch scores minus the median of its ``keep`` patches (all when None); the others unchanged.

    A camera, car or weather change lifts every patch score of a frame alike; what stands out of
    the frame's own typical level is what is anomalous (docs/quality-research.md, issue #14).
    """
    out = np.array(scores, np.float32, copy=True)
    chosen = slice(None) if keep is None else keep
    if out[chosen].size:
        out[chosen] -= np.float32(np.median(out[chosen]))
    return out


def patch_score_grid(
    bank: NominalBank,
    patches: np.ndarray,
    k: int = 1,
    ignore: np.ndarray | None = None,
    smoothing_sigma: float = 0.0,
    exclude=None,
    normalization: str = "none",
) -> np.ndarray:
    """(h, w, D) patch grid -> (h, w) float32 scores; ignored patches score 0.

    ``normalization`` "median" subtracts the median of the frame's non-ignored patch scores before
    smoothing and clips the result at 0 (see :func:`subtract_frame_median`, :func:`clip_normalized`).
    """
    h, w, d = patches.shape
    flat = patches.reshape(h * w, d)  # a GPU tensor stays one (NominalBank.search takes either)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool).reshape(-1)
        scores = np.zeros(h * w, np.float32)
        rows = keep if isinstance(flat, np.ndarray) else np.flatnonzero(keep).tolist()
        scores[keep] = knn_scores(bank, flat[rows], k, exclude)
    else:
        scores = knn_scores(bank, flat, k, exclude)
    return grid_from_scores(scores, (h, w), ignore, smoothing_sigma, normalization)


def grid_from_scores(
    scores: np.ndarray,
    grid_shape: tuple[int, int],
    ignore: np.ndarray | None = None,
    smoothing_sigma: float = 0.0,
    normalization: str = "none",
) -> np.ndarray:
    """Raw kNN scores of a frame's patches (P,) -> the (h, w) grid :func:`patch_score_grid` returns.

    Normalisation, smoothing and clipping as a live frame gets them (ignored patches: 0).
    """
    keep = None if ignore is None else ~np.asarray(ignore, bool).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if keep is not None:
        scores = np.where(keep, scores, np.float32(0.0)).astype(np.float32)
    if check_score_normalization(normalization) == "median":
        scores = subtract_frame_median(scores, keep)
    grid = smooth_grid(scores.reshape(grid_shape), smoothing_sigma)
    if ignore is not None and smoothing_sigma > 0:
        grid = np.where(ignore, 0.0, grid).astype(np.float32)
    return clip_normalized(grid, normalization)


def clip_normalized(scores: np.ndarray, normalization: str) -> np.ndarray:
    """Median-normalised scores clipped at 0 ("none": unchanged).

    Below the frame's median is "nothing unusual", like an ignored patch (0). Clipping is monotone,
    so every threshold above 0 (alpha above the share of patches at or below their frame's median)
    decides exactly as on the unclipped scores, and score maps stay in [0, 2] like raw scores.
    """
    if normalization != "median":
        return scores
    return np.maximum(scores, 0.0).astype(np.float32)


def image_score(grid: np.ndarray) -> float:
    """Image-level score: the highest patch score (what the threshold is calibrated on)."""
    return float(grid.max()) if grid.size else 0.0


CALIBRATION_HOLDOUTS = ("auto", "source", "window")


def source_count(bank: Any) -> int:
    """How many sources (bags / topics / folders) the frames of a bank come from."""
    return int(len(np.unique(bank.frames["source"]))) if bank.num_frames else 0


def resolve_holdout(bank: Any, holdout: str = "auto") -> str:
    """What calibration leaves out of each frame's search: ``"source"`` or ``"window"``.

    "auto" is "source" when the bank's frames come from at least 2 sources, else "window".
    """
    if holdout not in CALIBRATION_HOLDOUTS:
        raise ConfigError(f"calibration_holdout: {holdout!r} is not one of {', '.join(CALIBRATION_HOLDOUTS)}")
    sources = source_count(bank)
    if holdout == "source" and sources < 2:
        raise ConfigError(
            f"calibration_holdout source leaves each frame's whole source out, and the bank's frames come from "
            f"{sources} source; build from >= 2 drives, use 'window', or calibrate on a separate drive "
            "('semanom-bank calibrate BANK --on DRIVE')"
        )
    if holdout == "auto":
        return "source" if sources >= 2 else "window"
    return holdout


def within_drive_warning(sources: int) -> str:
    """The warning a threshold calibrated inside its own drive(s) carries (manifest and build output)."""
    return (
        f"threshold calibrated inside its own drive (window holdout, {sources} source"
        f"{'' if sources == 1 else 's'}): it measures how a drive resembles itself and is likely too tight for a "
        "new drive (expect false alarms); build from >= 2 drives or run 'semanom-bank calibrate BANK --on DRIVE' "
        "with a separate nominal drive"
    )


def leave_one_out_scores(
    bank: NominalBank,
    k: int = 1,
    window: int = 12,
    max_frames: int = 300,
    smoothing_sigma: float = 0.0,
    progress=None,
    holdout: str = "window",
    normalization: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Score bank frames against the bank minus themselves and their temporal neighbours.

    Without the exclusion window a frame finds its own (or its near-duplicate neighbour's)
    patches and scores ~0, and the threshold comes out far too low. ``holdout`` "source" leaves
    out every frame of the scored frame's own source instead (a whole drive), so the scores are
    those of one drive against the others. ``normalization`` is applied per frame as in
    :func:`patch_score_grid`, so the threshold is on the scale live frames are scored on.

    Returns (image scores (F,), all patch scores (P,)).
    """
    check_score_normalization(normalization)
    image_scores, patch_scores = [], []
    ids = list(iter_frame_ids(bank, max_frames))
    exclusion = None if holdout == "source" else window
    for fid in ids if progress is None else progress(ids):
        fr = bank.frames[fid]
        queries = bank.frame_vectors(fid)
        exclude = bank.excluded_ranges(fid, exclusion)
        scores = knn_scores(bank, queries, k, exclude)
        if normalization == "median":
            # Scores >= 2 mark patches with no neighbour outside the exclusion (calibrate drops them).
            scores = subtract_frame_median(scores, scores < 2.0)
        gh, gw = int(fr["grid_h"]), int(fr["grid_w"])
        if smoothing_sigma > 0 and gh * gw == len(scores):
            scores = smooth_grid(scores.reshape(gh, gw), smoothing_sigma).reshape(-1)
        scores = clip_normalized(scores, normalization)
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


def check_calibration_args(alpha: float, level: str) -> None:
    """Raise ConfigError for an alpha outside (0, 1) or an unknown calibration level."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: {alpha} is outside (0, 1)")
    if level not in CALIBRATION_LEVELS:
        raise ConfigError(f"calibration_level: {level!r} is not one of {CALIBRATION_LEVELS}")


def score_statistics(scores: np.ndarray) -> dict[str, Any]:
    """Min, max, mean, a few quantiles and the quantile table of nominal scores."""
    qs = [0.5, 0.9, 0.95, 0.99, 0.999]
    return {
        "min": float(scores.min()),
        "max": float(scores.max()),
        "mean": float(scores.mean()),
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in qs},
        "table": quantile_table(scores),
    }


def calibration_from_scores(
    image_scores: np.ndarray,
    patch_scores: np.ndarray,
    *,
    alpha: float,
    level: str,
    k: int,
    smoothing_sigma: float,
    method: str,
    normalization: str = "none",
) -> dict[str, Any]:
    """The calibration entry of a manifest: threshold = alpha-quantile of nominal ``level`` scores."""
    chosen = patch_scores if level == "patch" else image_scores
    return {
        "method": method,
        "level": level,
        "alpha": float(alpha),
        "k": int(k),
        "smoothing_sigma": float(smoothing_sigma),
        "score_normalization": normalization,
        "frames_scored": int(len(image_scores)),
        "patches_scored": int(len(patch_scores)),
        "threshold": float(np.quantile(chosen, alpha)),
        "image_scores": score_statistics(image_scores),
        "patch_scores": score_statistics(patch_scores),
    }


def calibrate(
    bank: NominalBank,
    alpha: float = 0.999,
    k: int = 1,
    window: int = 12,
    max_frames: int = 300,
    smoothing_sigma: float = 0.0,
    level: str = "patch",
    progress=None,
    holdout: str = "window",
    normalization: str = "none",
) -> dict[str, Any]:
    """Set ``bank.calibration``: threshold = alpha-quantile of leave-one-out scores.

    ``level`` "patch" takes the quantile over every patch score of the scored frames (the
    threshold then marks pixels; the component-area filter decides the image), "image" over
    each frame's highest patch score (alpha then bounds the image-level false-alarm rate
    before the area filter). ``holdout`` (see :func:`resolve_holdout`): "window" leaves each
    frame's ``window`` neighbours out of its search, "source" its whole source, "auto" chooses.
    ``normalization`` (see :func:`patch_score_grid`) is applied to each scored frame.
    A within-drive ("window") calibration carries a ``warning`` (see :func:`within_drive_warning`).
    """
    check_calibration_args(alpha, level)
    if bank.num_frames < 2:
        raise ConfigError("calibration needs at least 2 nominal frames in the bank")
    resolved = resolve_holdout(bank, holdout)
    image_scores, patch_scores = leave_one_out_scores(
        bank, k, window, max_frames, smoothing_sigma, progress, holdout=resolved, normalization=normalization
    )
    if (image_scores >= 2.0).all():
        raise ConfigError(
            f"calibration_window {window} leaves no other frame to compare with (bank of {bank.num_frames} frames"
            " from one sequence); use a smaller window or add more nominal frames"
        )
    patch_scores = patch_scores[patch_scores < 2.0]
    image_scores = image_scores[image_scores < 2.0]
    what = "each frame's own source left out" if resolved == "source" else f"window {window} left out"
    calibration = calibration_from_scores(
        image_scores, patch_scores, alpha=alpha, level=level, k=k, smoothing_sigma=smoothing_sigma,
        method=f"leave-one-out {level} scores ({what}), alpha-quantile", normalization=normalization,
    )
    sources = source_count(bank)
    calibration.update(holdout=resolved, window=int(window), sources=sources)
    if resolved == "window":
        calibration["warning"] = within_drive_warning(sources)
    bank.calibration = calibration
    return calibration


def drive_scores(
    bank: NominalBank,
    grids: Iterable[tuple[np.ndarray, np.ndarray | None]],
    k: int = 1,
    smoothing_sigma: float = 0.0,
    normalization: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of frames that are not in the bank (a separate nominal drive) against the whole bank.

    ``grids`` yields ((h, w, D) patch grid, (h, w) bool ignored patches or None) per frame.
    Returns (image scores (F,), patch scores of the non-ignored patches (P,)).
    """
    image_scores, patch_scores = [], []
    for patches, ignore in grids:
        grid = patch_score_grid(bank, patches, k, ignore, smoothing_sigma, normalization=normalization)
        kept = grid.reshape(-1) if ignore is None else grid[~np.asarray(ignore, bool)]
        if kept.size == 0:
            continue
        patch_scores.append(kept.astype(np.float32))
        image_scores.append(float(kept.max()))
    return np.asarray(image_scores, np.float32), (
        np.concatenate(patch_scores) if patch_scores else np.zeros(0, np.float32)
    )


def calibrate_on_drive(
    bank: NominalBank, image_scores: np.ndarray, patch_scores: np.ndarray, config: PipelineConfig,
    drive: dict[str, Any],
) -> dict[str, Any]:
    """Set ``bank.calibration`` from the :func:`drive_scores` of a separate nominal drive.

    The threshold is the alpha-quantile of those scores at ``config``'s calibration level (its
    alpha, k, smoothing and score normalization are recorded); ``drive`` (its path, frame count) is recorded as the
    calibration's provenance.
    """
    c = config
    check_calibration_args(c.alpha, c.calibration_level)
    if len(image_scores) < 1:
        raise ConfigError(f"calibration drive {drive.get('path')}: no frame could be scored")
    calibration = calibration_from_scores(
        image_scores, patch_scores, alpha=c.alpha, level=c.calibration_level, k=c.k,
        smoothing_sigma=c.score_smoothing_sigma, normalization=c.score_normalization,
        method=f"{c.calibration_level} scores of a separate nominal drive against the whole bank, alpha-quantile",
    )
    calibration.update(holdout="drive", sources=source_count(bank), drive=dict(drive))
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
            bank, c.alpha, c.k, c.calibration_window, c.calibration_max_frames, 0.0, c.calibration_level, progress,
            c.calibration_holdout,
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"instance bank calibration failed ({exc}): too few instances outside each frame's "
            f"calibration_window of {c.calibration_window}; use a smaller window or add frames"
        ) from None
    # Smoothing and normalization are patch-grid operations; None tells the monitor there is nothing to match.
    cal["smoothing_sigma"] = None
    cal["score_normalization"] = None
    cal["unit"] = "instance"
    bank.calibration = cal
    return cal


def calibrate_bank(bank: NominalBank, config: PipelineConfig, progress=None) -> dict[str, Any]:
    """Leave-one-out calibration of a patch or instance bank; sets and returns ``bank.calibration``.

    With the settings of ``config`` (alpha, k, window, max frames, smoothing, level, score normalization).
    """
    if bank.kind == INSTANCE_BANK_KIND:
        return calibrate_instance_bank(bank, config, progress)
    # (A coreset's calibration view has no views: a coreset of a crop-view bank is calibrated jointly.)
    if getattr(bank, "num_views", lambda: 1)() > 1:
        # Each view is searched in its own vectors and calibrated on its own scores (a crop seen at
        # a finer scale scores on another scale); the full frame's calibration is the bank's, the
        # crop views' ride along under "views" and become offsets (view_offsets).
        views = [_calibrate_patch_bank(bank.view_bank(v), config, progress) for v in range(bank.num_views())]
        calibration = dict(views[0], views=views[1:])
        bank.calibration = calibration
        return calibration
    return _calibrate_patch_bank(bank, config, progress)


def _calibrate_patch_bank(bank: NominalBank, config: PipelineConfig, progress=None) -> dict[str, Any]:
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
        c.calibration_holdout,
        c.score_normalization,
    )


def calibrated_threshold(calibration: dict[str, Any] | None, config: PipelineConfig) -> float:
    """The threshold a bank's calibration gives at ``config.alpha``.

    Refuses a calibration made with another k, smoothing or score normalization than the pipeline
    scores with (a calibration without a recorded normalization predates it: "none").
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
    theirs = calibration.get("score_normalization", "none")
    if theirs is not None and theirs != c.score_normalization:
        raise ConfigError(
            f"score_normalization: the bank was calibrated with {theirs}, the pipeline uses "
            f"{c.score_normalization}; recalibrate ('semanom-bank calibrate --score-normalization "
            f"{c.score_normalization}') or set it back"
        )
    return threshold_for_alpha(calibration, c.alpha, c.calibration_level)


def view_offsets(calibration: dict[str, Any] | None, config: PipelineConfig) -> list[float]:
    """What each view's scores are shifted by before the views are fused (0.0 for the full frame).

    Crop view v's scores get the full frame's threshold minus view v's own (both at ``config.alpha``),
    so the one decision threshold marks each view at its own alpha-quantile of nominal scores.
    """
    views = (calibration or {}).get("views") or []
    if not views:
        return [0.0] * (1 + len(config.crop_views))
    level = config.calibration_level
    full = threshold_for_alpha(calibration, config.alpha, level)
    return [0.0] + [full - threshold_for_alpha(view, config.alpha, level) for view in views]


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
