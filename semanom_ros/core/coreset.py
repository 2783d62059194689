"""Coreset subsampling of a nominal bank: greedy k-center (PatchCore's "approximate greedy coreset").

Nominal video is highly redundant: the road surface of frame 10 is almost the road surface of
frame 11. Greedy k-center keeps the vectors that cover the bank best: starting from one random
vector it repeatedly adds the vector farthest from everything kept so far, so every dropped
vector has a kept vector within the final covering radius. Scoring against the coreset then
differs from scoring against the full bank by at most that radius, at a fraction of the memory
and search time (Roth et al. 2022, PatchCore, Sec. 3.2).

Speed-up (as in PatchCore): distances are computed after a seeded Gaussian random projection to
``projection_dim`` (128) dimensions. By the Johnson-Lindenstrauss lemma Euclidean distances are
preserved up to a small relative error, and each greedy step costs one (N, 128) matrix-vector
product instead of an (N, 384) one. The selection is therefore approximate (a near-farthest
vector may be taken instead of the farthest) but deterministic for a given ``seed``.

Calibration of a coreset bank: the threshold must describe nominal frames scored *against the
coreset*, with all their patches as queries. Calibrating the coreset on its own vectors would
query with exactly the outliers k-center keeps and overstate the threshold, so
:func:`calibrate_coreset` queries with the full bank's frames (same leave-one-out window) and
searches the coreset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .bank.store import NominalBank
from .config import PipelineConfig
from .errors import ConfigError
from .scoring import calibrate_bank

__all__ = [
    "CoresetCalibrationView",
    "CoresetResult",
    "calibrate_coreset",
    "coreset_bank",
    "coreset_target_size",
    "greedy_k_center",
    "greedy_k_center_order",
    "subsample_bank",
]

DEFAULT_PROJECTION_DIM = 128


def coreset_target_size(num_vectors: int, fraction: float | None = None, count: int | None = None) -> int:
    """Number of vectors a coreset keeps; exactly one of ``fraction`` (0, 1] and ``count`` >= 1."""
    if (fraction is None) == (count is None):
        raise ConfigError("coreset: give exactly one of a fraction (0, 1] or a count (>= 1) of vectors to keep")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ConfigError(
                f"coreset fraction: {fraction!r} must be in (0, 1], e.g. 0.25 keeps a quarter of the vectors"
            )
        return max(1, min(num_vectors, int(round(float(fraction) * num_vectors))))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or int(count) < 1:
        raise ConfigError(f"coreset size: {count!r} must be an integer >= 1 (vectors to keep)")
    return min(num_vectors, int(count))


def greedy_k_center(
    vectors: np.ndarray,
    count: int,
    *,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Indices (sorted ascending) of ``count`` rows of ``vectors`` chosen by greedy k-center.

    ``vectors`` (N, D) may be float16 or memory-mapped; they are projected once, block by block,
    to ``projection_dim`` dimensions (no projection when D is not larger). ``progress(n)`` is
    called with the number of centres chosen since its last call.
    """
    if not isinstance(count, bool) and int(count) >= len(vectors) > 0:
        return np.arange(len(vectors), dtype=np.int64)  # keeping everything needs no search
    return np.sort(greedy_k_center_order(vectors, count, projection_dim=projection_dim, seed=seed, progress=progress))


def greedy_k_center_order(
    vectors: np.ndarray,
    count: int,
    *,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    block: int = 1 << 18,
) -> np.ndarray:
    """The first ``count`` greedy k-center picks in the order they were chosen.

    The greedy sequence does not depend on ``count``: the first m picks of a longer run are the
    m-center coreset, so one run serves several sizes (``order[:m]``).
    Cost: ``count`` passes over an (N, projection_dim) float32 array (about 3 ms per pick for
    N = 67 200 on one core, memory-bound).
    """
    n = int(len(vectors))
    if n == 0:
        raise ConfigError("coreset: the bank is empty")
    if isinstance(count, bool) or int(count) < 1:
        raise ConfigError(f"coreset size: {count!r} must be >= 1")
    if int(projection_dim) < 1:
        raise ConfigError(f"coreset projection_dim: {projection_dim!r} must be >= 1")
    count = min(int(count), n)
    rng = np.random.default_rng(seed)
    dim = int(vectors.shape[1])
    projection = None
    if dim > projection_dim:
        projection = (rng.standard_normal((dim, projection_dim)) / np.sqrt(projection_dim)).astype(np.float32)
    width = projection_dim if projection is not None else dim
    points = np.empty((n, width), np.float32)
    for start in range(0, n, block):
        part = np.asarray(vectors[start : start + block], dtype=np.float32)
        points[start : start + len(part)] = part @ projection if projection is not None else part
    sq_norms = np.einsum("ij,ij->i", points, points)

    chosen = np.empty(count, np.int64)
    first = int(rng.integers(n))
    chosen[0] = first
    # Squared distance of every point to its nearest centre so far (||x||^2 - 2 x.c + ||c||^2).
    min_dist = sq_norms - 2.0 * (points @ points[first]) + sq_norms[first]
    min_dist[first] = -np.inf  # never pick a centre twice (duplicates have distance 0, not -inf)
    dist = np.empty_like(min_dist)
    report_every = max(1, count // 200)
    since = 1
    for i in range(1, count):
        nxt = int(np.argmax(min_dist))
        chosen[i] = nxt
        np.dot(points, points[nxt], out=dist)
        dist *= -2.0
        dist += sq_norms
        dist += sq_norms[nxt]
        np.minimum(min_dist, dist, out=min_dist)
        min_dist[nxt] = -np.inf
        since += 1
        if progress is not None and since >= report_every:
            progress(since)
            since = 0
    if progress is not None and since:
        progress(since)
    return chosen


def subsample_bank(bank: NominalBank, keep_ids: np.ndarray) -> NominalBank:
    """A new bank with only the vectors ``keep_ids`` (ascending), every frame and source kept.

    See :meth:`NominalBank.subset`: frame ids, and the leave-one-out windows built on them, stay
    the same as in ``bank``; calibration is cleared (it describes the full bank).
    """
    return bank.subset(keep_ids)


@dataclass
class CoresetResult:
    """A coreset bank and how much it shrank."""

    bank: NominalBank
    from_vectors: int
    to_vectors: int
    seconds: float
    seed: int
    projection_dim: int

    @property
    def kept_fraction(self) -> float:
        return self.to_vectors / self.from_vectors if self.from_vectors else 1.0

    @property
    def shrink_factor(self) -> float:
        """Reduction ratio, from / to, e.g. 4.0 for a quarter of the vectors."""
        return self.from_vectors / self.to_vectors if self.to_vectors else float("inf")

    def describe(self) -> dict[str, Any]:
        return {
            "method": "greedy k-center (random projection)",
            "from_vectors": self.from_vectors,
            "to_vectors": self.to_vectors,
            "kept_fraction": round(self.kept_fraction, 6),
            "shrink_factor": round(self.shrink_factor, 4),
            "projection_dim": self.projection_dim,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
        }


def coreset_bank(
    bank: NominalBank,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    progress: Callable[[int], None] | None = None,
) -> CoresetResult:
    """Greedy k-center coreset of ``bank`` to a ``fraction`` of its vectors or a ``count``.

    The result's bank records the coreset in ``extra["coreset"]`` and is uncalibrated; call
    :func:`calibrate_coreset` with the full bank.
    """
    target = coreset_target_size(len(bank), fraction, count)
    t0 = time.perf_counter()
    keep = greedy_k_center(bank.vectors, target, projection_dim=projection_dim, seed=seed, progress=progress)
    small = subsample_bank(bank, keep)
    result = CoresetResult(small, len(bank), len(small), time.perf_counter() - t0, int(seed), int(projection_dim))
    info = result.describe()
    info["requested"] = (
        {"fraction": fraction} if fraction is not None else {"count": int(count)}  # type: ignore[arg-type]
    )
    previous = bank.extra.get("coreset")
    if previous:  # a coreset of a coreset: keep the chain
        info["previous"] = previous
    small.extra["coreset"] = info
    small.calibration = None
    return result


class CoresetCalibrationView:
    """What :func:`scoring.calibrate_bank` reads from a bank, with queries from the full bank.

    ``calibrate`` scores each frame's vectors (``frame_vectors``) against the bank minus the
    frame's temporal neighbours (``excluded_ranges`` + ``search``); here the searched bank is
    the coreset and the query vectors are the frame's full patch set. Frame ids match because
    :func:`subsample_bank` keeps every frame.
    """

    def __init__(self, coreset: NominalBank, full: NominalBank) -> None:
        if coreset.num_frames != full.num_frames:
            raise ValueError(
                f"coreset has {coreset.num_frames} frames, the full bank {full.num_frames}: not a coreset of it"
            )
        self._coreset, self._full = coreset, full
        self.kind = coreset.kind
        self.calibration: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self._coreset)

    @property
    def num_frames(self) -> int:
        return self._coreset.num_frames

    @property
    def frames(self) -> np.ndarray:
        return self._full.frames

    def frame_vectors(self, frame_id: int) -> np.ndarray:
        return self._full.frame_vectors(frame_id)

    def excluded_ranges(self, frame_id: int, window: int | None) -> list[tuple[int, int]]:
        return self._coreset.excluded_ranges(frame_id, window)

    def search(self, queries: np.ndarray, k: int = 1, exclude=None):
        return self._coreset.search(queries, k=k, exclude=exclude)


def calibrate_coreset(
    coreset: NominalBank, full: NominalBank, config: PipelineConfig, progress=None
) -> dict[str, Any]:
    """Leave-one-out calibration of a coreset bank with the full bank's frames as queries."""
    view = CoresetCalibrationView(coreset, full)
    cal = calibrate_bank(view, config, progress)  # type: ignore[arg-type]
    cal["queries"] = "full bank frames searched against the coreset"
    coreset.calibration = cal
    return cal
