"""Scene-level modes side by side, on frames whose features are already computed.

Image AUROC and scoring time of each global-embedding method next to the Monitor's patch modes.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from semanom_ros.core.bank import NominalBank
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.features import Features
from semanom_ros.core.scorers.scene import GLOBAL_EMBEDDINGS, SCENE_METHODS, SceneScorer, global_embedding
from semanom_ros.core.scoring import majority_vote

DEFAULT_MODES = ("cls_knn", "cls_knnn", "cls_kmeans", "cls_hdbscan", "mean_knn", "mean_knnn")


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def _best_balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Balanced accuracy at the best threshold for these labels (an oracle upper bound, not a calibrated figure)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def _balanced_accuracy(labels: np.ndarray, decisions: np.ndarray) -> float | None:
    from sklearn.metrics import balanced_accuracy_score

    if len(np.unique(labels)) < 2:
        return None
    return float(balanced_accuracy_score(labels, decisions))


def evaluate_scene_modes(
    test_features: Sequence[Features],
    labels: Sequence[int | bool],
    nominal_features: Sequence[Features] | None = None,
    *,
    modes: Sequence[str] = DEFAULT_MODES,
    patch_monitor: Any = None,
    majority_fraction: float = 0.5,
    knnn_m: int = 5,
    kmeans_k_range: Sequence[int] = (2, 10),
    hdbscan_min_cluster_size: int = 5,
    alpha: float = 0.99,
    window: int = 12,
    patch_bank: NominalBank | None = None,
    repeats: int = 1,
    knnn_exclude_window: int = 0,
) -> dict[str, dict[str, Any]]:
    """Image-level AUROC and per-frame scoring time of each mode on frames whose features are computed.

    ``modes`` are ``"<cls|mean>_<knn|knnn|kmeans|hdbscan>"`` (global models fitted on
    ``nominal_features``; ``mean_*`` falls back to ``patch_bank`` frame means when no nominal
    features are given), plus ``"patch"`` (the Monitor's max patch score) and ``"patch_majority"``
    (fraction of patches above the Monitor's threshold) when ``patch_monitor`` is given.
    ``ms_per_frame`` is the scoring time after feature extraction (the backbone forward is
    shared by every mode). ``balanced_accuracy`` is at the calibrated threshold: the scene
    model's leave-one-out alpha-quantile, the Monitor's own decision for patch modes;
    ``best_balanced_accuracy`` is at the best threshold for these labels (an oracle bound).

    Returns ``{mode: {"image_auroc", "balanced_accuracy", "best_balanced_accuracy", "ms_per_frame",
    "threshold", ...}}``.
    """
    y = np.asarray(labels).astype(int)
    if len(y) != len(test_features):
        raise ValueError(f"{len(test_features)} frames but {len(y)} labels")
    out: dict[str, dict[str, Any]] = {}
    scorers: dict[str, SceneScorer] = {}
    for mode in modes:
        if mode in ("patch", "patch_majority"):
            if patch_monitor is None:
                continue
            scores, decisions, times = [], [], []
            for f in test_features:
                for r in range(repeats):
                    t0 = time.perf_counter()
                    res = patch_monitor.score_features(f)
                    if mode == "patch_majority":
                        ignore = patch_monitor.ignore_patches(f.image_size, f.grid_shape)
                        dec, frac = majority_vote(res.patch_scores, res.threshold, majority_fraction, ignore)
                    t1 = time.perf_counter()
                    times.append(t1 - t0)
                if mode == "patch":
                    scores.append(res.score)
                    decisions.append(res.is_anomalous)
                else:
                    scores.append(frac)
                    decisions.append(dec)
            out[mode] = {
                "image_auroc": _auroc(y, np.asarray(scores)),
                "balanced_accuracy": _balanced_accuracy(y, np.asarray(decisions, int)),
                "best_balanced_accuracy": _best_balanced_accuracy(y, np.asarray(scores)),
                "ms_per_frame": float(np.median(times) * 1e3),
                "threshold": float(patch_monitor.threshold),
            }
            continue
        emb, _, method = mode.partition("_")
        if emb not in GLOBAL_EMBEDDINGS or method not in SCENE_METHODS:
            raise ConfigError(
                f"mode {mode!r} is not 'patch', 'patch_majority' or '<cls|mean>_<{'|'.join(SCENE_METHODS)}>'"
            )
        if emb not in scorers:
            scorer = SceneScorer(method, emb, knnn_m, kmeans_k_range, hdbscan_min_cluster_size,
                                 knnn_exclude_window=knnn_exclude_window)
            if nominal_features is not None:
                nominal = np.stack([global_embedding(f, emb) for f in nominal_features])
                scorer.fit(nominal)
            elif patch_bank is not None and emb == "mean":
                scorer.fit(patch_bank)
            else:
                raise ValueError(f"mode {mode!r} needs nominal_features (or a patch_bank for mean modes)")
            scorer.calibrate(alpha, window)
            scorers[emb] = scorer
        scorer = scorers[emb]
        scores, times = [], []
        for f in test_features:
            for r in range(repeats):
                t0 = time.perf_counter()
                s = scorer.score(f, method)
                times.append(time.perf_counter() - t0)
            scores.append(s)
        scores_arr = np.asarray(scores)
        thr = scorer.threshold(method)
        out[mode] = {
            "image_auroc": _auroc(y, scores_arr),
            "balanced_accuracy": _balanced_accuracy(y, (scores_arr > thr).astype(int)),
            "best_balanced_accuracy": _best_balanced_accuracy(y, scores_arr),
            "ms_per_frame": float(np.median(times) * 1e3),
            "threshold": float(thr),
        }
        if method == "kmeans":
            out[mode]["k"] = scorer.state["kmeans"]["k"]
        if method == "hdbscan":
            out[mode]["clusters"] = scorer.state["hdbscan"]["num_clusters"]
    return out


def format_modes_table(modes: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`evaluate_scene_modes` results."""
    def f(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    lines = [
        "| mode | image AUROC | balanced acc. (calibrated) | balanced acc. (best threshold) | ms/frame (scoring) |",
        "|---|---|---|---|---|",
    ]
    for name, r in modes.items():
        lines.append(
            f"| {name} | {f(r.get('image_auroc'), '.3f')} | {f(r.get('balanced_accuracy'), '.3f')} | "
            f"{f(r.get('best_balanced_accuracy'), '.3f')} | {f(r.get('ms_per_frame'), '.3f')} |"
        )
    return "\n".join(lines)


__all__ = ["DEFAULT_MODES", "evaluate_scene_modes", "format_modes_table"]
