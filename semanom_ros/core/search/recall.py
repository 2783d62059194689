"""Recall@1 of an approximate index against exact search: the probes and exact answers it is measured on."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np


@dataclass
class RecallProbe:
    """Queries that measure an approximate index's recall@1 at build time.

    ``groups`` are ``(first_query, stop_query, exclude)``: those queries are searched with the
    ``exclude`` vector-id ranges [start, stop) skipped, both exactly and approximately, so a
    bank's own frames can stand in for unseen ones (their neighbours in time excluded).
    ``parts`` split the queries into stand-ins of different kinds; the probe's recall is the
    lowest part's, because each kind has overstated real recall on some bank: held-out frames on
    synthetic re-drives, perturbed vectors on the real highway bank.
    """

    queries: np.ndarray  # (m, D) float32 unit vectors
    groups: list[tuple[int, int, list[tuple[int, int]]]]
    description: str
    parts: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # [] = one part, all queries
    truth: np.ndarray | None = None  # exact answers, filled on first use (shared by candidates)

    @classmethod
    def perturbed(cls, vectors: np.ndarray, count: int, rng: np.random.Generator) -> "RecallProbe":
        """Bank vectors plus noise: the probe for a bare vector set with no frames to hold out."""
        queries = recall_queries(vectors, count, rng)
        return cls(queries, [(0, len(queries), [])], f"{len(queries)} perturbed bank vectors")

    def with_perturbed(self, vectors: np.ndarray, count: int, rng: np.random.Generator) -> "RecallProbe":
        """This probe plus a second part of ``count`` perturbed bank vectors."""
        extra = recall_queries(vectors, count, rng)
        m = len(self.queries)
        parts = list(self.parts or [(0, m)]) + [(m, m + len(extra))]
        return RecallProbe(
            np.concatenate([self.queries, extra]),
            [*self.groups, (m, m + len(extra), [])],
            f"{self.description}; {len(extra)} perturbed bank vectors (recall = the lower of the two)",
            parts,
        )


def as_f32_blocks(vectors: np.ndarray, block: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, float32 block): converts fp16 / memory-mapped banks without a full copy."""
    for start in range(0, len(vectors), block):
        yield start, np.ascontiguousarray(vectors[start : start + block], dtype=np.float32)


def sample_rows(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct rows of ``vectors`` (ascending order) as a float32 array."""
    count = min(count, len(vectors))
    rows = np.sort(rng.choice(len(vectors), size=count, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def evenly_spaced(count: int, max_count: int) -> Iterable[int]:
    """Evenly spaced ids in [0, count), at most ``max_count`` of them."""
    if count <= max_count:
        return range(count)
    return np.unique(np.linspace(0, count - 1, max_count).round().astype(int)).tolist()


def probe_truth(vectors: np.ndarray, probe: RecallProbe) -> np.ndarray:
    """(m,) exact nearest id of each probe query with its group's ranges excluded (-1: none left)."""
    queries = probe.queries
    best_s = np.full(len(queries), -np.inf, np.float32)
    best_i = np.full(len(queries), -1, np.int64)
    block = max(4096, (1 << 24) // max(len(queries), 1))  # ~64 MB of similarities at a time
    for start, base in as_f32_blocks(vectors, block):
        sims = queries @ base.T
        stop = start + len(base)
        for q0, q1, exclude in probe.groups:
            for a, b in exclude:
                lo, hi = max(a, start), min(b, stop)
                if lo < hi:
                    sims[q0:q1, lo - start : hi - start] = -np.inf
        arg = sims.argmax(axis=1)
        val = sims[np.arange(len(queries)), arg]
        better = val > best_s
        best_s[better], best_i[better] = val[better], arg[better] + start
    best_i[~np.isfinite(best_s)] = -1
    return best_i


def recall_from_curve(curve: Sequence[Sequence[float]] | None, depth: int) -> float | None:
    """Recall measured at build time for ``depth`` (None when that depth was not tried)."""
    for tried, recall in curve or ():
        if int(tried) == int(depth):
            return float(recall)
    return None


def recall_queries(vectors: np.ndarray, count: int, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    """Held-out-like queries: bank vectors plus Gaussian noise (cosine ~0.9 to their origin), renormalised.

    Querying bank vectors themselves would find their own copy and overstate recall.
    """
    base = sample_rows(vectors, count, rng)
    q = base + rng.standard_normal(base.shape).astype(np.float32) * noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


def exact_top1(vectors: np.ndarray, queries: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """(n,) id of each query's exact nearest bank vector (blocked matmul, fp16 banks upcast per block)."""
    best_s = np.full(len(queries), -np.inf, np.float32)
    best_i = np.full(len(queries), -1, np.int64)
    for start, base in as_f32_blocks(vectors, block):
        sims = queries @ base.T
        arg = sims.argmax(axis=1)
        val = sims[np.arange(len(queries)), arg]
        better = val > best_s
        best_s[better], best_i[better] = val[better], arg[better] + start
    return best_i


__all__ = [
    "RecallProbe",
    "as_f32_blocks",
    "evenly_spaced",
    "exact_top1",
    "probe_truth",
    "recall_from_curve",
    "recall_queries",
    "sample_rows",
]
