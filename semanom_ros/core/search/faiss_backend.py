"""The faiss backend of :class:`~semanom_ros.core.search.index.SearchIndex`: index types, build, tuning, search.

A bank's vectors are unit-norm, so the inner product is the cosine similarity. Which faiss index
serves them is a trade of speed, memory and exactness that changes with the bank's size (figures
from ``bench/bench_search_scaling.py`` on a 2-core CPU, 448 queries = one 224-high frame):

=============  =====================================  =================  =========================
type           faiss index                            bytes / vector     when
=============  =====================================  =================  =========================
``flat``       IndexFlatIP (float32, BLAS)            1536               exact; banks below 5e4
``flat_fp16``  IndexScalarQuantizer(QT_fp16)          768                exact up to fp16 rounding
``ivf``        IndexIVFScalarQuantizer(QT_fp16)       ~780               on request (builds fastest)
``ivfpq``      IndexIVFPQ (optional fp16 re-rank)     ~64 (+768 rerank)  memory-bound only: recall@1 ~0.1-0.2
``hnsw``       IndexHNSWSQ(QT_fp16), M=16             ~910               auto from 5e4 vectors
=============  =====================================  =================  =========================

``auto`` takes ``flat`` below ``auto_threshold`` (5e4) vectors: on an idle 2-core CPU with one
224-high frame (448 queries) exact search costs about as much as the DINOv2 forward at 6.7e4
vectors (267 vs 295 ms). Above it ``auto`` *measures* rather than guesses: it builds each of
``AUTO_CANDIDATES`` (IVF and HNSW, both fp16 codes, under 1 KB per vector), tunes each to
``target_recall`` on the same probe, times the probe's queries, and keeps the fastest that reaches
the target (else the most accurate); the manifest records every candidate. Which wins depends on
how redundant the bank is: HNSW (M=16) was 3x faster on a synthetic bank with well separated
re-drives, but on the real 448-high highway bank, where neighbouring patches are near copies, it
could not pass recall 0.90 at any depth while IVF reached 0.99 in 161 ms. Building both costs
~2.5 min at 1e6 vectors once; a saved bank keeps the chosen index on disk. For the approximate types
``nprobe`` / ``ef_search`` of 0 means "tune at build time": the smallest depth whose recall@1 against
exact search reaches ``target_recall`` on a
:class:`RecallProbe`. A bank probes with patches of its own frames, each searched with the
frames around it (``calibration_window``) excluded, standing in for a new pass of the same road.
On the real highway bank that probe was conservative at every HNSW depth (0.944 vs 0.969 for
real test frames at efSearch 128), where perturbed bank vectors (the fallback for bare vector
sets) said 0.98 at efSearch 16 while real frames got 0.85; on the benchmark's synthetic
re-drive bank it is optimistic instead (README, Performance). The measured curve
(depth -> recall) is returned in the info dict the bank stores in its manifest.

Nothing here imports rclpy; the GPU path (``use_gpu``) is taken only when faiss reports a GPU.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import faiss
import numpy as np

from ..errors import ConfigError
from .recall import RecallProbe, as_f32_blocks, probe_truth, sample_rows
from .spec import (
    APPROXIMATE_TYPES,
    AUTO_CANDIDATES,
    AUTO_UNMEASURED,
    INDEX_TYPES,
    IndexSpec,
    default_nlist,
    resolve_type,
)
# Searches that exclude id ranges (leave-one-out calibration) probe this many times deeper.
EXCLUDE_DEPTH_FACTOR = 4

# Tried in order when nprobe / ef_search are left to the build-time tuner.
_NPROBE_LADDER = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


# -- building -----------------------------------------------------------------------------------
def _make_index(kind: str, dim: int, spec: IndexSpec, n: int) -> tuple[faiss.Index, dict[str, Any]]:
    ip = faiss.METRIC_INNER_PRODUCT
    fp16 = faiss.ScalarQuantizer.QT_fp16
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "flat_fp16":
        return faiss.IndexScalarQuantizer(dim, fp16, ip), {}
    if kind in ("ivf", "ivfpq"):
        nlist = spec.nlist or default_nlist(n)
        if nlist > n:
            raise ConfigError(f"index nlist: {nlist} lists for only {n} vectors; use fewer lists or a flat index")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, fp16, ip)
            params = {"nlist": nlist, "codec": "fp16"}
        else:
            if dim % spec.pq_m:
                raise ConfigError(f"index pq_m: {spec.pq_m} does not divide the embedding dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, spec.pq_m, spec.pq_bits, ip)
            params = {"nlist": nlist, "pq_m": spec.pq_m, "pq_bits": spec.pq_bits}
        return index, params  # faiss's Python wrapper keeps the quantizer alive with the index
    if kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, fp16, spec.hnsw_m, ip)
        index.hnsw.efConstruction = spec.ef_construction
        return index, {"hnsw_m": spec.hnsw_m, "ef_construction": spec.ef_construction, "codec": "fp16"}
    raise ConfigError(f"index_type: {kind!r} is not one of {', '.join(INDEX_TYPES)}")


def build_index(
    vectors: np.ndarray,
    spec: IndexSpec | None = None,
    *,
    measure_recall: bool = True,
    probe: RecallProbe | None = None,
) -> tuple[faiss.Index, dict[str, Any]]:
    """Index (N, D) unit vectors (float16 or float32, memory-mapped is fine) for inner product.

    Returns a CPU ``(index, info)`` with info = ``{"type", "params", "recall_at_1", "build_s",
    "bytes_per_vector", "num_vectors", "search_depth"}`` (move it with :func:`maybe_to_gpu`);
    ``recall_at_1`` is measured against exact
    search on ``probe`` (default: perturbed bank vectors), with ``recall_curve`` = the
    ``[depth, recall]`` pairs tried and ``recall_probe`` what was measured on (None for exact
    types or when ``measure_recall`` is False). Vectors are converted to
    float32 block by block, so no full float32 copy of a large bank is ever held.
    """
    spec = (spec or IndexSpec()).validate()
    vectors = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty (N, D) array, got shape {vectors.shape}")
    n, dim = vectors.shape
    kind = resolve_type(spec, n)
    if kind == "auto":
        if not measure_recall or spec.recall_queries == 0:
            kind = AUTO_UNMEASURED
        else:
            return _build_fastest(vectors, spec, probe)
    t0 = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    index, params = _make_index(kind, dim, spec, n)
    if not index.is_trained:
        nlist = params.get("nlist", 1)
        pq_need = (1 << spec.pq_bits) * 39 if kind == "ivfpq" else 0
        # 20 points per list and 10 k-means iterations: coarse centroids only need to balance the
        # lists, and faiss's defaults (up to 256 per list, 25 iterations) take many minutes on 2
        # cores at 1e6 vectors.
        want = spec.max_train or min(max(20 * nlist, pq_need, 10_000), n)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 5  # 20 per list is deliberate: no warning for it
        index.train(sample_rows(vectors, want, rng))
    for _, block in as_f32_blocks(vectors):
        index.add(block)
    info: dict[str, Any] = {
        "type": kind,
        "requested": spec.type,
        "params": params,
        "num_vectors": int(n),
        "recall_at_1": None,
    }
    if kind in APPROXIMATE_TYPES:
        if kind == "ivfpq" and spec.rerank > 0:
            index = _with_fp16_rerank(index, vectors, spec.rerank)
            params["rerank"] = spec.rerank
        info["recall_at_1"], info["recall_curve"], info["recall_probe"] = tune_depth(
            index, kind, vectors, spec, rng, measure_recall, probe
        )
    info["build_s"] = round(time.perf_counter() - t0, 3)
    info["bytes_per_vector"] = round(index_bytes(index) / n, 1)
    info["search_depth"] = search_depth(index)
    return index, info


def _build_fastest(
    vectors: np.ndarray, spec: IndexSpec, probe: RecallProbe | None
) -> tuple[faiss.Index, dict[str, Any]]:
    """Index type auto above the threshold: build, tune and time each candidate on one probe; keep the best."""
    t0 = time.perf_counter()
    probe = probe or RecallProbe.perturbed(vectors, spec.recall_queries, np.random.default_rng(spec.seed))
    if probe.truth is None:
        probe.truth = probe_truth(vectors, probe)
    best: tuple[tuple[bool, float], faiss.Index, dict[str, Any]] | None = None
    candidates = []
    for kind in AUTO_CANDIDATES:
        index, info = build_index(vectors, dataclasses.replace(spec, type=kind), probe=probe)
        # Plain searches of the probe's queries: what the monitor's per-frame search costs.
        queries = np.ascontiguousarray(probe.queries, np.float32)
        t = time.perf_counter()
        index.search(queries, 1)
        info["probe_query_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        recall = info["recall_at_1"] or 0.0
        candidates.append({key: info[key] for key in (
            "type", "search_depth", "recall_at_1", "probe_query_ms", "build_s", "bytes_per_vector")})
        # Meeting the target comes first; then speed (if both meet it) or recall (if neither does).
        rank = (recall >= spec.target_recall, -info["probe_query_ms"] if recall >= spec.target_recall else recall)
        if best is None or rank > best[0]:
            best = (rank, index, info)
        else:
            del index
    assert best is not None
    _, index, info = best
    info.update(requested="auto", candidates=candidates, build_s=round(time.perf_counter() - t0, 3))
    return index, info


def _with_fp16_rerank(index: faiss.Index, vectors: np.ndarray, k_factor: int) -> faiss.Index:
    # PQ codes alone rank near-ties poorly (recall@1 ~0.5 on DINOv2 patches); re-scoring the top
    # candidates against fp16 copies restores it at 768 more bytes per vector.
    refine = faiss.IndexScalarQuantizer(index.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for _, block in as_f32_blocks(vectors):
        refine.add(block)
    out = faiss.IndexRefine(index, refine)
    out.k_factor = float(k_factor)
    return out


def base_index(index: faiss.Index) -> faiss.Index:
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index)
    return index


def set_search_depth(index: faiss.Index, depth: int) -> None:
    """Set nprobe (IVF) or efSearch (HNSW); no-op for exact indexes."""
    base = base_index(index)
    if isinstance(base, faiss.IndexIVF):
        base.nprobe = int(depth)
    elif isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = int(depth)


def search_depth(index: faiss.Index) -> int | None:
    base = base_index(index)
    if isinstance(base, faiss.IndexIVF):
        return int(base.nprobe)
    if isinstance(base, faiss.IndexHNSW):
        return int(base.hnsw.efSearch)
    return None


def tune_depth(
    index: faiss.Index,
    kind: str,
    vectors: np.ndarray,
    spec: IndexSpec,
    rng: np.random.Generator,
    measure: bool,
    probe: RecallProbe | None,
) -> tuple[float | None, list[list[float]] | None, str | None]:
    fixed = spec.nprobe if kind in ("ivf", "ivfpq") else spec.ef_search
    if kind in ("ivf", "ivfpq"):
        nlist = base_index(index).nlist
        ladder = [p for p in _NPROBE_LADDER if p <= nlist] or [nlist]
        default = min(32, nlist)
    else:
        ladder, default = list(_EF_LADDER), 64
    if not measure or spec.recall_queries == 0:
        set_search_depth(index, fixed or default)
        return None, None, None
    probe = probe or RecallProbe.perturbed(vectors, spec.recall_queries, rng)
    if probe.truth is None:
        probe.truth = probe_truth(vectors, probe)
    truth = probe.truth
    curve: list[list[float]] = []
    for depth in [fixed] if fixed else ladder:
        set_search_depth(index, depth)
        recall = probe_recall(index, probe, truth)
        curve.append([int(depth), round(recall, 4)])
        if recall >= spec.target_recall:
            break
    return curve[-1][1], curve, probe.description


def probe_recall(index: faiss.Index, probe: RecallProbe, truth: np.ndarray) -> float:
    """recall@1 of ``index`` at its current depth on ``probe`` (queries with no exact answer skipped)."""
    found = np.full(len(truth), -1, np.int64)
    for q0, q1, exclude in probe.groups:
        q = np.ascontiguousarray(probe.queries[q0:q1], np.float32)
        if exclude:
            # depth_factor 1: the probe measures the depth plain searches will use.
            _, ids = index.search(q, 1, params=excluding_params(index, exclude, depth_factor=1))
        else:
            _, ids = index.search(q, 1)
        found[q0:q1] = ids[:, 0]
    recalls = []
    for q0, q1 in probe.parts or [(0, len(truth))]:
        valid = truth[q0:q1] >= 0
        if valid.any():
            recalls.append(float(np.mean(found[q0:q1][valid] == truth[q0:q1][valid])))
    return min(recalls) if recalls else 0.0


def recall_at_1(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, ids = index.search(np.ascontiguousarray(queries, np.float32), 1)
    return float(np.mean(ids[:, 0] == truth))


def index_bytes(index: faiss.Index) -> int:
    """Bytes the index's data structures hold (codes, ids, links, centroids), counted without copying."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return index_bytes(index.base_index) + index_bytes(index.refine_index)
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        stored = sum(lists.list_size(i) for i in range(index.nlist))
        pq_tables = index.pq.M * index.pq.ksub * index.pq.dsub * 4 if isinstance(index, faiss.IndexIVFPQ) else 0
        return int(stored * (index.code_size + 8) + index_bytes(index.quantizer) + pq_tables)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        links = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return int(links + index_bytes(index.storage))
    if isinstance(index, (faiss.IndexFlatCodes, faiss.IndexFlat)):
        return int(index.ntotal * index.code_size)
    return int(faiss.serialize_index(index).nbytes)


# -- search with exclusions ---------------------------------------------------------------------
def excluding_params(
    index: faiss.Index, exclude: Sequence[tuple[int, int]], depth_factor: int = EXCLUDE_DEPTH_FACTOR
) -> faiss.SearchParameters:
    """Search parameters that skip the [start, stop) id ranges, searching ``depth_factor`` x deeper.

    IVF indexes reject plain SearchParameters, and a fresh SearchParametersIVF would silently
    reset nprobe to 1, so the parameter type follows the index. The deeper search is there
    because exclusion is used for leave-one-out calibration: a frame's temporal neighbours are
    near duplicates that fill the very lists (graph region) the query probes, so at the usual
    depth the best remaining neighbour is often missed and the score overstated.
    """
    selectors = [faiss.IDSelectorRange(int(a), int(b)) for a, b in exclude]
    sel: Any = selectors[0]
    for extra in selectors[1:]:
        sel = faiss.IDSelectorOr(sel, extra)
    keep = faiss.IDSelectorNot(sel)
    base = base_index(index)
    if isinstance(base, faiss.IndexIVF):
        nprobe = min(int(base.nprobe) * depth_factor, int(base.nlist))
        params: faiss.SearchParameters = faiss.SearchParametersIVF(sel=keep, nprobe=nprobe)
    elif isinstance(base, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=keep, efSearch=int(base.hnsw.efSearch) * depth_factor)
    else:
        params = faiss.SearchParameters(sel=keep)
    if base is not index:  # IndexRefine: the selector goes to the base index's parameters
        outer = faiss.IndexRefineSearchParameters(base_index_params=params, k_factor=float(index.k_factor))
        outer.sel = keep
        outer._keep = (params, keep)  # SWIG does not hold references: keep them alive
        return outer
    params._keep = (selectors, sel, keep)
    return params


def search_excluding(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: Sequence[tuple[int, int]],
    depth_factor: int = EXCLUDE_DEPTH_FACTOR,
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN skipping the ``exclude`` id ranges; rows left without k neighbours are searched deeper.

    On the real highway bank an IVF search at the tuned nprobe with the +-12 frame calibration
    window excluded left ~1 % of patches with no neighbour at all (score 2.0, threshold ruined);
    4x deeper matched exact search. Rows still short are retried 4x deeper again, up to all lists.
    """
    sims, ids = index.search(queries, k, params=excluding_params(index, exclude, depth_factor))
    base = base_index(index)
    factor = depth_factor
    while (ids < 0).any():
        if isinstance(base, faiss.IndexIVF):
            if int(base.nprobe) * factor >= int(base.nlist):
                break
        elif isinstance(base, faiss.IndexHNSW):
            if int(base.hnsw.efSearch) * factor >= 1 << 14:
                break
        else:  # exact: a missing neighbour means everything was excluded
            break
        factor *= 4
        rows = np.flatnonzero((ids < 0).any(axis=1))
        more_s, more_i = index.search(
            np.ascontiguousarray(queries[rows]), k, params=excluding_params(index, exclude, factor)
        )
        sims[rows], ids[rows] = more_s, more_i
    return sims, ids


# -- GPU ------------------------------------------------------------------------------------
def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except Exception:  # a CPU-only faiss build without the symbol wired up
        return 0


def maybe_to_gpu(index: faiss.Index, use_gpu: bool) -> tuple[faiss.Index, str]:
    """Move ``index`` to GPU 0 when asked and faiss has GPU support; else leave it on the CPU.

    fp16 storage on the GPU (useFloat16) halves memory like the CPU fp16 codecs; HNSW has no GPU
    version in faiss and stays on the CPU.
    """
    if not use_gpu or gpu_count() == 0 or isinstance(base_index(index), faiss.IndexHNSW):
        return index, "cpu"
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    gpu_index._resources = resources  # the resources must outlive the index
    return gpu_index, "cuda:0"


def exact_search_excluding(
    index: faiss.IndexFlat, queries: np.ndarray, k: int, exclude: Sequence[tuple[int, int]], block: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN over a flat index skipping the ``exclude`` id ranges (missing neighbours: id -1).

    faiss's ID selectors switch flat search off its BLAS path (about 9x slower here), so
    exclusion over a flat index is a blocked matrix product with the excluded columns masked.
    """
    dim = index.d
    base = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * dim).reshape(index.ntotal, dim)
    n = len(queries)
    best_s = np.full((n, k), -np.inf, np.float32)
    best_i = np.full((n, k), -1, np.int64)
    for start in range(0, index.ntotal, block):
        stop = min(start + block, index.ntotal)
        sims = queries @ base[start:stop].T
        for a, b in exclude:
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                sims[:, lo - start : hi - start] = -np.inf
        kk = min(k, stop - start)
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    best_i[~np.isfinite(best_s)] = -1
    return best_s, best_i


def search_torch_tensor(index: faiss.Index, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search a GPU index with queries already on the GPU (FeatureExtractor on_device).

    Faiss's torch bridge searches the tensor in place, so only the (n, k) answers cross to the host.
    """
    import faiss.contrib.torch_utils  # noqa: F401  (heavy, needs torch: teaches faiss indexes to take tensors)

    sims, ids = index.search(queries.float().contiguous(), k)
    return sims.cpu().numpy(), ids.cpu().numpy()


__all__ = [
    "EXCLUDE_DEPTH_FACTOR",
    "base_index",
    "build_index",
    "exact_search_excluding",
    "excluding_params",
    "gpu_count",
    "index_bytes",
    "maybe_to_gpu",
    "probe_recall",
    "recall_at_1",
    "search_depth",
    "search_excluding",
    "search_torch_tensor",
    "set_search_depth",
    "tune_depth",
]
