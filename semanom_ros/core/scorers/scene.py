"""Scene-level scoring: one global embedding per frame instead of one per patch.

A cheap first check (Spat & Chabbi-Drissi 2025): a frame's global embedding (the DINOv2 CLS
token, or the mean of its patch tokens for backbones without CLS such as I-JEPA) is compared
with the global embeddings of the nominal frames. One search per frame instead of one per patch
makes scoring orders of magnitude cheaper; the backbone forward pass is the same.

Storage: the nominal global embeddings are an ordinary :class:`NominalBank` of ``kind="global"``
(one vector per frame: the same save/load/search/atomic-write machinery as patch banks) and the
cluster models live in ``bank.extra["scene"]`` (JSON, saved in the manifest with the bank). Every
model is fitted at once, so one bank serves every method; the method is chosen at scoring time.

Methods (all distances are cosine distances ``1 - dot`` between unit vectors):

``knn``
    distance to the nearest nominal embedding.
``knnn``
    k-NNN: for a query q with nearest nominal neighbour n, ``d(q, n) / mu(n)`` where ``mu(n)`` is
    the mean distance from n to its m nearest neighbours inside n's k-Means cluster (m =
    ``knnn_m``, default 5; precomputed at fit time). The same absolute distance is more anomalous
    next to a tight cluster than next to a spread-out one.
``kmeans``
    distance to the nearest k-Means centroid (k chosen by silhouette score over ``kmeans_k_range``).
``hdbscan``
    ``1 - membership strength``. scikit-learn's HDBSCAN has no ``approximate_predict``, so a new
    point inherits its nearest nominal neighbour n's membership probability (0 for noise points),
    scaled by ``min(1, core(n) / e(q, n))``: full strength within n's core distance (Euclidean
    distance to its ``min_samples``-th neighbour, HDBSCAN's own density scale), decaying as
    1/distance beyond it (``e`` is the Euclidean distance between unit vectors).

In the Monitor (``mode: scene``) :class:`SceneModeScorer` is the scorer: the whole frame is the
"region" (a scene check says whether, not where). The patch majority vote is in
:func:`semanom_ros.core.scoring.majority_vote`.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import numpy as np

from ..bank.builder import BankBuilder, frame_provenance
from ..bank.signature import ModelSignature
from ..bank.store import NominalBank
from ..config import PipelineConfig
from ..errors import BankError, ConfigError
from ..features import FeatureExtractor, Features
from ..result import AnomalyResult, FrameLike
from ..scoring import quantile_table, threshold_for_alpha
from .base import Scorer

SCENE_METHODS = ("knn", "knnn", "kmeans", "hdbscan")
GLOBAL_EMBEDDINGS = ("cls", "mean")
SCENE_FORMAT_VERSION = 1


# -- global embeddings -----------------------------------------------------------------------------
def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def global_embedding(features: Features, mode: str = "cls", ignore: np.ndarray | None = None) -> np.ndarray:
    """A frame's (D,) unit global embedding: its CLS token, or the mean of its (non-ignored) patches."""
    if mode == "cls":
        return _unit(features.cls)
    if mode == "mean":
        patches = features.patches.reshape(-1, features.patches.shape[-1])
        if ignore is not None:
            keep = ~np.asarray(ignore, bool).reshape(-1)
            if keep.any():
                patches = patches[keep]
        return _unit(patches.mean(axis=0))
    raise ConfigError(f"global_embedding: {mode!r} is not one of {', '.join(GLOBAL_EMBEDDINGS)}")


def global_bank_from_patch_bank(patch_bank: NominalBank) -> NominalBank:
    """A ``kind="global"`` bank with one vector per frame of a patch bank: the mean of its patches.

    Lets a user with a patch bank try the scene-level check without re-running the backbone
    (equivalent to ``global_embedding="mean"``).
    """
    if patch_bank.kind != "patch":
        raise BankError(f"expected a patch bank, got a {patch_bank.kind!r} bank")
    out = NominalBank(patch_bank.signature, kind="global", config=dict(patch_bank.config, global_embedding="mean"))
    vectors = patch_bank.vectors
    for fr in patch_bank.frames:
        s, n = int(fr["vec_start"]), int(fr["vec_count"])
        if n == 0:
            continue
        mean = np.asarray(vectors[s : s + n], np.float32).mean(axis=0)
        src = patch_bank.sources[int(fr["source"])]
        out.add_frame(
            _unit(mean)[None], source=src.name, topic=src.topic, index=int(fr["index"]), stamp_ns=int(fr["stamp_ns"])
        )
    return out


# -- nominal models --------------------------------------------------------------------------------
def select_k_by_silhouette(
    vectors: np.ndarray, k_range: Sequence[int] = (2, 10), random_state: int = 0
) -> tuple[int, np.ndarray, np.ndarray, dict[int, float]]:
    """k-Means with k chosen by the highest silhouette score over ``k_range`` (inclusive, capped at n-1).

    Returns (k, labels (n,), centroids (k, D), {k: silhouette}). Fewer than 3 points cannot be
    scored by silhouette: one cluster is returned.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.asarray(vectors, np.float32)
    n = len(x)
    lo, hi = int(k_range[0]), int(k_range[1])
    if lo < 2 or hi < lo:
        raise ConfigError(f"kmeans_k_range: {list(k_range)} must be [k_min, k_max] with 2 <= k_min <= k_max")
    hi = min(hi, n - 1)
    if n < 3 or hi < lo:
        return 1, np.zeros(n, np.int64), x.mean(axis=0, keepdims=True), {}
    scores: dict[int, float] = {}
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for k in range(lo, hi + 1):
        km = KMeans(n_clusters=k, n_init="auto", random_state=random_state).fit(x)
        if len(np.unique(km.labels_)) < 2:  # duplicates collapsed the clustering
            continue
        s = float(silhouette_score(x, km.labels_))
        scores[k] = s
        if best is None or s > best[0]:
            best = (s, k, km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32))
    if best is None:
        return 1, np.zeros(n, np.int64), x.mean(axis=0, keepdims=True), scores
    return best[1], best[2], best[3], scores


def knnn_normalisers(
    vectors: np.ndarray,
    labels: np.ndarray,
    m: int = 5,
    *,
    frame_source: np.ndarray | None = None,
    frame_index: np.ndarray | None = None,
    exclude_window: int = 0,
) -> np.ndarray:
    """Per nominal point: mean cosine distance to its m nearest neighbours within its own cluster.

    A cluster with fewer than m+1 members uses all its other members; a singleton cluster falls
    back to its m nearest neighbours over all points. With ``exclude_window`` > 0, frames of the
    same source within that many messages are not neighbours (consecutive video frames are near
    duplicates whose tiny distances say nothing about the spread of the scene); a point left
    without neighbours gets the median normaliser. Pairwise distances are computed per cluster
    (memory ~ largest cluster squared; fine for the thousands of frames a scene bank holds).
    """
    x = _unit(vectors)
    n = len(x)
    out = np.zeros(n, np.float32)
    if n < 2:
        return out
    window = int(exclude_window) if frame_source is not None and frame_index is not None else 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pool = idx if len(idx) > 1 else np.arange(n)
        dist = 1.0 - x[idx] @ x[pool].T
        dist[idx[:, None] == pool[None, :]] = np.inf  # not its own neighbour
        if window > 0:
            near = (frame_source[idx][:, None] == frame_source[pool][None, :]) & (
                np.abs(frame_index[idx][:, None] - frame_index[pool][None, :]) <= window
            )
            dist[near] = np.inf
        mm = min(m, len(pool) - 1)
        nearest = np.partition(dist, mm - 1, axis=1)[:, :mm]
        finite = np.isfinite(nearest)
        counts = finite.sum(axis=1)
        sums = np.where(finite, nearest, 0.0).sum(axis=1)
        out[idx] = np.where(counts > 0, np.maximum(sums / np.maximum(counts, 1), 0.0), np.nan)
    if np.isnan(out).any():
        out[np.isnan(out)] = np.nanmedian(out) if np.isfinite(out).any() else 1.0
    return out


def fit_hdbscan(
    vectors: np.ndarray, min_cluster_size: int = 5, min_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn HDBSCAN on unit vectors (Euclidean, monotone in cosine distance).

    Returns (labels (n,) with -1 = noise, membership probabilities (n,), core distances (n,)).
    """
    from sklearn.cluster import HDBSCAN

    x = _unit(vectors)
    n = len(x)
    mcs = max(2, min(int(min_cluster_size), n))
    ms = max(1, min(int(min_samples or mcs), n - 1))
    if n < 3:
        return np.full(n, -1, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32)
    model = HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True).fit(x)
    # Core distance as HDBSCAN defines it: distance to the min_samples-th nearest neighbour (self included).
    e = np.sqrt(np.maximum(2.0 - 2.0 * (x @ x.T), 0.0))
    core = np.sort(e, axis=1)[:, min(ms, n - 1)]
    return model.labels_.astype(np.int64), model.probabilities_.astype(np.float32), core.astype(np.float32)


# -- the scorer ------------------------------------------------------------------------------------
class SceneScorer:
    """Scene-level anomaly score of a frame from its global embedding against a global bank.

    >>> scorer = SceneScorer(method="knnn").fit(nominal_vectors)          # or a global / patch bank
    >>> scorer.calibrate(alpha=0.99)                                      # leave-one-out threshold
    >>> s = scorer.score(features)                                        # Features or a (D,) vector
    >>> scorer.bank.save("scene_bank")                                    # models saved in the manifest
    >>> scorer = SceneScorer.from_bank(NominalBank.load("scene_bank"))
    """

    def __init__(
        self,
        method: str = "knnn",
        global_embedding: str = "cls",
        knnn_m: int = 5,
        kmeans_k_range: Sequence[int] = (2, 10),
        hdbscan_min_cluster_size: int = 5,
        random_state: int = 0,
        knnn_exclude_window: int = 0,
    ) -> None:
        if method not in SCENE_METHODS:
            raise ConfigError(f"scene_method: {method!r} is not one of {', '.join(SCENE_METHODS)}")
        if global_embedding not in GLOBAL_EMBEDDINGS:
            raise ConfigError(f"global_embedding: {global_embedding!r} is not one of {', '.join(GLOBAL_EMBEDDINGS)}")
        if int(knnn_m) < 1:
            raise ConfigError(f"knnn_m: {knnn_m} must be at least 1")
        if len(kmeans_k_range) != 2 or int(kmeans_k_range[0]) < 2 or int(kmeans_k_range[1]) < int(kmeans_k_range[0]):
            raise ConfigError(f"kmeans_k_range: {list(kmeans_k_range)} must be [k_min, k_max] with 2 <= k_min <= k_max")
        if int(hdbscan_min_cluster_size) < 2:
            raise ConfigError(f"hdbscan_min_cluster_size: {hdbscan_min_cluster_size} must be at least 2")
        self.method = method
        self.global_embedding = global_embedding
        self.knnn_m = int(knnn_m)
        self.kmeans_k_range = (int(kmeans_k_range[0]), int(kmeans_k_range[1]))
        self.hdbscan_min_cluster_size = int(hdbscan_min_cluster_size)
        self.random_state = int(random_state)
        self.knnn_exclude_window = int(knnn_exclude_window)
        self.bank: NominalBank | None = None
        self.state: dict[str, Any] = {}
        self._x: np.ndarray | None = None  # (F, D) float32 nominal embeddings
        self._centroids: np.ndarray | None = None
        self._normalisers: np.ndarray | None = None
        self._hdb_labels: np.ndarray | None = None
        self._hdb_prob: np.ndarray | None = None
        self._hdb_core: np.ndarray | None = None

    @classmethod
    def from_config(cls, config: Any) -> "SceneScorer":
        """From a PipelineConfig (fields scene_method, global_embedding, knnn_m, kmeans_k_range, ...)."""
        method = getattr(config, "scene_method", "knnn")
        return cls(
            method="knnn" if method in (None, "off") else method,
            global_embedding=getattr(config, "global_embedding", "cls"),
            knnn_m=getattr(config, "knnn_m", 5),
            kmeans_k_range=tuple(getattr(config, "kmeans_k_range", (2, 10))),
            hdbscan_min_cluster_size=getattr(config, "hdbscan_min_cluster_size", 5),
        )

    # -- fitting -----------------------------------------------------------------------------------
    def fit(
        self,
        bank_or_vectors: NominalBank | np.ndarray,
        signature: ModelSignature | None = None,
    ) -> "SceneScorer":
        """Fit every nominal model on a global bank, a patch bank (mean of each frame's patches) or (F, D) vectors."""
        if isinstance(bank_or_vectors, NominalBank):
            bank = bank_or_vectors
            if bank.kind == "patch":
                bank = global_bank_from_patch_bank(bank)
                self.global_embedding = "mean"
            elif bank.kind != "global":
                raise BankError(f"a scene model needs a 'global' or 'patch' bank, got a {bank.kind!r} bank")
        else:
            vectors = _unit(np.asarray(bank_or_vectors, np.float32))
            if vectors.ndim != 2:
                raise ValueError(f"global embeddings must have shape (F, D), got {vectors.shape}")
            signature = signature or ModelSignature(model="precomputed", fingerprint="", input_height=0,
                                                    dim=vectors.shape[1])
            bank = NominalBank.from_vectors(vectors, signature, kind="global", source="precomputed")
        if bank.num_frames < 2:
            raise BankError(f"a scene model needs at least 2 nominal frames, the bank has {bank.num_frames}")
        x = _unit(np.asarray(bank.vectors, np.float32))
        t0 = time.perf_counter()
        k, labels, centroids, silhouettes = select_k_by_silhouette(x, self.kmeans_k_range, self.random_state)
        frames = bank.frames
        normalisers = knnn_normalisers(
            x, labels, self.knnn_m, frame_source=frames["source"], frame_index=frames["index"],
            exclude_window=self.knnn_exclude_window,
        )
        hdb_labels, hdb_prob, hdb_core = fit_hdbscan(x, self.hdbscan_min_cluster_size)
        self.state = {
            "format_version": SCENE_FORMAT_VERSION,
            "global_embedding": self.global_embedding,
            "num_frames": int(len(x)),
            "kmeans": {
                "k": int(k),
                "k_range": list(self.kmeans_k_range),
                "silhouette": {str(kk): round(v, 6) for kk, v in silhouettes.items()},
                "centroids": _unit(centroids).round(6).tolist(),
                "labels": labels.tolist(),
            },
            "knnn": {
                "m": self.knnn_m,
                "exclude_window": self.knnn_exclude_window,
                "normalisers": [round(float(v), 7) for v in normalisers],
            },
            "hdbscan": {
                "min_cluster_size": self.hdbscan_min_cluster_size,
                "num_clusters": int(len(set(hdb_labels.tolist()) - {-1})),
                "labels": hdb_labels.tolist(),
                "probabilities": [round(float(v), 6) for v in hdb_prob],
                "core_distances": [round(float(v), 7) for v in hdb_core],
            },
            "fit_s": round(time.perf_counter() - t0, 4),
            "calibration": {},
        }
        bank.extra["scene"] = self.state
        self.bank = bank
        self._load_arrays()
        return self

    @classmethod
    def from_bank(cls, bank: NominalBank, method: str | None = None) -> "SceneScorer":
        """A scorer from a saved global bank whose manifest holds a fitted scene model."""
        state = bank.extra.get("scene")
        if bank.kind != "global" or not state:
            raise BankError(
                f"the {bank.kind!r} bank holds no scene model; fit one with SceneScorer().fit(bank) and save the bank"
            )
        scorer = cls(
            method=method or "knnn",
            global_embedding=state.get("global_embedding", "cls"),
            knnn_m=state["knnn"]["m"],
            kmeans_k_range=tuple(state["kmeans"]["k_range"]),
            hdbscan_min_cluster_size=state["hdbscan"]["min_cluster_size"],
            knnn_exclude_window=state["knnn"].get("exclude_window", 0),
        )
        if state.get("num_frames") != bank.num_frames:
            raise BankError(
                f"the bank's scene model was fitted on {state.get('num_frames')} frames but the bank holds "
                f"{bank.num_frames}; refit it (SceneScorer().fit(bank))"
            )
        scorer.bank, scorer.state = bank, state
        scorer._load_arrays()
        return scorer

    def _load_arrays(self) -> None:
        assert self.bank is not None
        s = self.state
        self._x = _unit(np.asarray(self.bank.vectors, np.float32))
        self._centroids = np.asarray(s["kmeans"]["centroids"], np.float32)
        self._normalisers = np.asarray(s["knnn"]["normalisers"], np.float32)
        self._hdb_labels = np.asarray(s["hdbscan"]["labels"], np.int64)
        self._hdb_prob = np.asarray(s["hdbscan"]["probabilities"], np.float32)
        self._hdb_core = np.asarray(s["hdbscan"]["core_distances"], np.float32)

    # -- scoring -----------------------------------------------------------------------------------
    def embed(self, features: Features | np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
        """(D,) unit global embedding of Features (per ``global_embedding``) or of a given vector."""
        if isinstance(features, Features):
            return global_embedding(features, self.global_embedding, ignore)
        return _unit(np.asarray(features, np.float32).reshape(-1))

    def score(
        self, features: Features | np.ndarray, method: str | None = None, ignore: np.ndarray | None = None
    ) -> float:
        """Anomaly score of one frame (higher = more anomalous)."""
        return float(self.score_vectors(self.embed(features, ignore)[None], method)[0])

    def score_vectors(
        self, vectors: np.ndarray, method: str | None = None, exclude: Sequence[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """Scores of (n, D) unit global embeddings; ``exclude`` lists bank vector-id ranges to skip."""
        if self.bank is None:
            raise BankError("the scene scorer is not fitted; call fit(bank_or_vectors) first")
        method = method or self.method
        if method not in SCENE_METHODS:
            raise ConfigError(f"scene_method: {method!r} is not one of {', '.join(SCENE_METHODS)}")
        q = _unit(np.asarray(vectors, np.float32))
        if method == "kmeans":
            return (1.0 - (q @ self._centroids.T).max(axis=1)).astype(np.float32)
        sims, ids = self.bank.search(q, k=1, exclude=exclude)
        d = np.maximum(1.0 - sims[:, 0], 0.0)
        n = ids[:, 0]
        if method == "knn":
            return d.astype(np.float32)
        if method == "knnn":
            return (d / np.maximum(self._normalisers[n], 1e-6)).astype(np.float32)
        # hdbscan: the nearest nominal point's membership, scaled down with distance beyond its core distance.
        e = np.sqrt(2.0 * d)
        prob = np.where(self._hdb_labels[n] >= 0, self._hdb_prob[n], 0.0)
        scale = np.minimum(1.0, self._hdb_core[n] / np.maximum(e, 1e-12))
        return (1.0 - prob * scale).astype(np.float32)

    # -- calibration -------------------------------------------------------------------------------
    def leave_one_out_scores(self, method: str | None = None, window: int = 12) -> np.ndarray:
        """Each nominal frame scored against the bank minus itself and its ``window`` temporal neighbours."""
        if self.bank is None:
            raise BankError("the scene scorer is not fitted; call fit(bank_or_vectors) first")
        out = np.empty(self.bank.num_frames, np.float32)
        for fid in range(self.bank.num_frames):
            exclude = self.bank.excluded_ranges(fid, window)
            out[fid] = self.score_vectors(self._x[fid : fid + 1], method, exclude=exclude)[0]
        return out

    def calibrate(self, alpha: float = 0.99, window: int = 12, methods: Iterable[str] | None = None) -> dict[str, Any]:
        """Store per method the alpha-quantile of leave-one-out nominal scores as its threshold.

        (k-Means distances are measured to centroids that include the frame itself, so that
        method's threshold is slightly optimistic.)
        """
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"alpha: {alpha} is outside (0, 1)")
        cal = {}
        for method in methods or SCENE_METHODS:
            scores = self.leave_one_out_scores(method, window)
            scores = scores[np.isfinite(scores) & (scores < 1e5)]
            if len(scores) == 0:
                raise ConfigError(
                    f"calibration_window {window} leaves no other frame to compare with; use a smaller window"
                )
            cal[method] = {
                "alpha": float(alpha),
                "window": int(window),
                "threshold": float(np.quantile(scores, alpha)),
                "image_scores": {"table": quantile_table(scores)},
            }
        self.state["calibration"] = cal
        return cal

    def threshold(self, method: str | None = None, alpha: float | None = None) -> float:
        """The calibrated threshold of a method (at another alpha from the stored quantile table)."""
        method = method or self.method
        cal = self.state.get("calibration", {}).get(method)
        if not cal:
            raise BankError(f"the scene model holds no calibration for {method!r}; call calibrate()")
        return cal["threshold"] if alpha is None else threshold_for_alpha(cal, alpha, "image")

    def is_anomalous(
        self, features: Features | np.ndarray, method: str | None = None, alpha: float | None = None
    ) -> tuple[bool, float]:
        s = self.score(features, method)
        return s > self.threshold(method, alpha), s


# -- engine integration ----------------------------------------------------------------------------
class SceneBankBuilder(BankBuilder):
    """Streams nominal frames into a ``kind="global"`` bank: one global embedding per frame."""

    def __init__(self, config: PipelineConfig, extractor: FeatureExtractor | None = None) -> None:
        super().__init__(config)
        self.extractor = extractor or FeatureExtractor.from_config(config)
        self.bank = NominalBank(self.extractor.signature(), kind="global", config=config.to_dict())

    def add_features(self, frame: FrameLike, feat: Features) -> int:
        mode = getattr(self.config, "global_embedding", "cls")
        return self.bank.add_frame(global_embedding(feat, mode)[None], **frame_provenance(frame))

    def calibrate(self, progress=None) -> dict[str, Any]:
        """Fit every scene model on the bank and store their leave-one-out thresholds (in ``bank.extra``)."""
        self.flush()
        scorer = SceneScorer.from_config(self.config).fit(self.bank)
        return scorer.calibrate(self.config.alpha, self.config.calibration_window)


def build_scene_bank(
    config: PipelineConfig, frames: Iterable[Any], extractor: FeatureExtractor | None = None
) -> NominalBank:
    """A fitted and calibrated ``kind="global"`` bank from nominal frames (rgb, source, index, stamp_ns).

    Uses the config's model, input_height, global_embedding, knnn_m, kmeans_k_range,
    hdbscan_min_cluster_size, alpha and calibration_window; save it with ``bank.save(path)``.
    """
    builder = SceneBankBuilder(config, extractor)
    builder.add_all(frames)
    builder.calibrate()
    return builder.bank


class SceneModeScorer(Scorer):
    """The Monitor's scorer in ``mode: scene``: a frame's global embedding against a scene model.

    ``bank`` is a global bank with a scene model (:func:`build_scene_bank`) or a patch bank (its
    frame means are used, so ``global_embedding`` becomes ``mean``). ``score_map`` holds the frame
    score everywhere and ``mask`` is all-True when the frame is anomalous. Threshold: the scene
    model's leave-one-out calibration at ``config.alpha`` (unless ``config.threshold`` is set).
    """

    def __init__(self, config: PipelineConfig, bank: NominalBank) -> None:
        self.config = config
        self.method = "knnn" if config.scene_method == "off" else config.scene_method
        if bank.kind == "global" and bank.extra.get("scene"):
            self.model = SceneScorer.from_bank(bank, self.method)
        else:
            self.model = SceneScorer.from_config(config).fit(bank)
            self.model.method = self.method
        self.bank = self.model.bank

    def queries_on_device(self, extractor_device_type: str) -> bool:
        return False  # one global vector per frame: the scene models run on the host

    def initial_threshold(self) -> float:
        if not self.model.state.get("calibration", {}).get(self.method):
            self.model.calibrate(self.config.alpha, self.config.calibration_window)
        return self.model.threshold(self.method, self.config.alpha)

    def threshold_at(self, alpha: float) -> float:
        return self.model.threshold(self.method, alpha)

    def score(self, features: Features, threshold: float, rgb: np.ndarray | None = None,
              extra_ignore: np.ndarray | None = None) -> AnomalyResult:
        t1 = time.perf_counter()
        score = self.model.score(features)
        t2 = time.perf_counter()
        anomalous = bool(score > threshold)
        h, w = features.image_size
        return AnomalyResult(
            is_anomalous=anomalous,
            score=score,
            threshold=threshold,
            score_map=np.full((h, w), score, np.float32),
            mask=np.full((h, w), anomalous),
            labels=np.zeros((h, w), np.uint16),
            components=[],
            patch_scores=np.full(features.grid_shape, score, np.float32),
            timings_ms={"search": (t2 - t1) * 1e3},
        )


__all__ = [
    "GLOBAL_EMBEDDINGS",
    "SCENE_METHODS",
    "SceneBankBuilder",
    "SceneModeScorer",
    "SceneScorer",
    "build_scene_bank",
    "fit_hdbscan",
    "global_bank_from_patch_bank",
    "global_embedding",
    "knnn_normalisers",
    "select_k_by_silhouette",
]
