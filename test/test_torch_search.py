"""torch exact search (semanom_ros.core.search.torch_exact) against faiss IndexFlatIP, on CPU tensors.

Bank vectors are rounded to float16 first, as a NominalBank stores them, so float16 storage is
lossless and the float16 path can be held to float32 answers up to the product's rounding.
"""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from semanom_ros.core import ConfigError, ModelSignature, NominalBank
from semanom_ros.core.search.torch_exact import (
    MIN_BANK_CHUNK,
    TorchExactIndex,
    device_fit,
    normalise_exclude,
    plan_chunks,
)

SIM_TOL = 1e-5  # float32 products in a different summation order


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return unit_rows(rng, 300, 24), unit_rows(rng, 57, 24)


def flat(vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def faiss_excluding(index, queries, k, exclude):
    """What the faiss path does for a flat index: an IDSelectorNot over the ranges' union."""
    selectors = [faiss.IDSelectorRange(a, b) for a, b in exclude]
    sel = selectors[0]
    for extra in selectors[1:]:
        sel = faiss.IDSelectorOr(sel, extra)
    keep = faiss.IDSelectorNot(sel)
    sims, ids = index.search(queries, k, params=faiss.SearchParameters(sel=keep))
    return np.where(ids < 0, -1.0, sims).astype(np.float32), ids


def untied_rows(sims: np.ndarray, gap: float) -> np.ndarray:
    """Rows whose similarities (k + 1 columns: the answers and the next one) differ by > gap."""
    return (np.abs(np.diff(sims, axis=1)) > gap).all(axis=1)


def assert_same_answers(ours, reference, tol: float = SIM_TOL, gap: float = 1e-4) -> None:
    """``reference`` holds k + 1 neighbours per row.

    Ids are compared where the k answers and the next candidate are not tied.
    """
    (s, i), (ts, ti) = ours, reference
    k = s.shape[1]
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == ts[:, :k].shape == i.shape
    np.testing.assert_allclose(s, ts[:, :k], atol=tol)
    rows = untied_rows(ts, gap)
    assert rows.mean() > 0.8  # the comparison below is not vacuous
    np.testing.assert_array_equal(i[rows], ti[rows, :k])


@pytest.mark.parametrize("workspace", [None, 512, 4096])
@pytest.mark.parametrize("k", [1, 5])
def test_equals_faiss_flat_for_any_chunking(data, workspace, k):
    vectors, queries = data
    index = TorchExactIndex(vectors, device="cpu", workspace_bytes=workspace)
    assert index.dtype == torch.float32 and not index.rescore  # CPU default: float32, nothing to rescore
    assert_same_answers(index.search(queries, k), flat(vectors).search(queries, k + 1))


def test_chunk_plans_cut_the_bank_and_the_queries():
    assert plan_chunks(57, 300, 4, 512) == (1, 128)  # both cut
    assert plan_chunks(57, 300, 4, 4096) == (3, 300)  # queries cut, bank whole
    assert plan_chunks(20, 9000, 4, 400_000) == (20, 5000)  # bank cut, queries whole
    assert plan_chunks(448, 10**7, 2, 1 << 30)[0] == 448
    # Never a bank chunk narrower than MIN_BANK_CHUNK while queries can still be split.
    q, b = plan_chunks(10_000, 10**6, 2, 64 << 20)
    assert b >= MIN_BANK_CHUNK and q * b * 2 <= 64 << 20


def test_bank_chunks_with_all_queries_at_once():
    rng = np.random.default_rng(3)
    vectors, queries = unit_rows(rng, 9000, 16), unit_rows(rng, 20, 16)
    for k in (1, 3):
        ours = TorchExactIndex(vectors, device="cpu", workspace_bytes=400_000).search(queries, k)
        assert_same_answers(ours, flat(vectors).search(queries, k + 1))


@pytest.mark.parametrize("workspace", [None, 512])
@pytest.mark.parametrize("k", [1, 4])
def test_exclusion_equals_faiss_selectors(data, workspace, k):
    vectors, queries = data
    exclude = [(10, 40), (35, 90), (250, 300)]  # overlapping, and reaching the bank's end
    ours = TorchExactIndex(vectors, device="cpu", workspace_bytes=workspace).search(queries, k, exclude)
    assert_same_answers(ours, faiss_excluding(flat(vectors), queries, k + 1, exclude))
    assert not np.isin(ours[1], np.r_[10:90, 250:300]).any()


def test_leave_one_out_ranges_equal_the_bank_search(data):
    """The calibration case: a frame's own patches with its temporal neighbours excluded."""
    vectors, _ = data
    sig = ModelSignature(model="test", fingerprint="x", input_height=28, dim=vectors.shape[1])
    bank = NominalBank.from_vectors(vectors, sig, frame_of_vector=np.arange(len(vectors)) // 10)
    index = TorchExactIndex(bank.vectors, device="cpu", workspace_bytes=1024)
    for frame_id in (0, 13, 29):
        exclude = bank.excluded_ranges(frame_id, window=3)
        queries = bank.frame_vectors(frame_id)
        for k in (1, 3):
            assert_same_answers(index.search(queries, k, exclude), bank.search(queries, k + 1, exclude))


def test_missing_neighbours_are_minus_one(data):
    vectors, queries = data
    index = TorchExactIndex(vectors[:4], device="cpu")
    sims, ids = index.search(queries, 6)  # k above the bank's size: padded like faiss
    assert (ids[:, 4:] == -1).all() and (sims[:, 4:] == -1.0).all() and (ids[:, :4] >= 0).all()
    sims, ids = index.search(queries, 2, exclude=[(0, 4)])  # everything excluded
    assert (ids == -1).all() and (sims == -1.0).all()
    sims, ids = index.search(queries[:0], 3)
    assert sims.shape == (0, 3) and ids.shape == (0, 3)


# tol: similarity error allowed; gap: neighbours further apart than this must come back in order.
@pytest.mark.parametrize("dtype, tol, gap", [("float16", 1e-3, 1e-3), ("bfloat16", 1e-2, 6e-3)])
@pytest.mark.parametrize("k", [1, 5])
def test_half_precision_agrees_within_tolerance(data, dtype, tol, gap, k):
    vectors, queries = data
    exact = TorchExactIndex(vectors, device="cpu", dtype="float32").search(queries, k + 1)
    for rescore in (True, False):
        half = TorchExactIndex(vectors, device="cpu", dtype=dtype, workspace_bytes=512, rescore=rescore)
        assert half.dtype == getattr(torch, dtype) and half.nbytes == vectors.size * 2
        sims, ids = half.search(queries, k)
        np.testing.assert_allclose(sims, exact[0][:, :k], atol=tol)
        rows = untied_rows(exact[0], gap)
        assert rows.mean() > 0.2
        np.testing.assert_array_equal(ids[rows], exact[1][rows, :k])
        if rescore:  # rescored values are the float32 similarities of the ids returned
            chosen = np.einsum("nd,nkd->nk", queries, half._vectors.float().numpy()[ids])
            np.testing.assert_allclose(sims, chosen, atol=SIM_TOL)


def test_rescoring_orders_neighbours_the_half_product_ties():
    # 0.5 and 0.50005 round to the same float16 product; float32 rescoring puts the larger first.
    vectors = np.array([[0.5, 0.0], [0.5, 0.5], [-1.0, 0.0]], np.float32)
    queries = np.array([[1.0, 1e-4]], np.float32)
    sims, ids = TorchExactIndex(vectors, device="cpu", dtype="float16").search(queries, 2)
    np.testing.assert_array_equal(ids, [[1, 0]])
    np.testing.assert_allclose(sims, [[0.50005, 0.5]], atol=1e-7)


def test_torch_queries_and_device_answers(data):
    vectors, queries = data
    index = TorchExactIndex(torch.from_numpy(vectors), device="cpu")
    sims, ids = index.search_tensors(torch.from_numpy(queries).half(), 2)
    assert isinstance(sims, torch.Tensor) and sims.dtype == torch.float32 and ids.dtype == torch.int64
    ref = index.search(queries.astype(np.float16).astype(np.float64), 2)
    np.testing.assert_allclose(sims.numpy(), ref[0], atol=SIM_TOL)
    np.testing.assert_array_equal(ids.numpy(), ref[1])


def test_device_fit_reports_a_bank_too_large_for_the_budget():
    mib = 1 << 20
    fit = device_fit(10**6, 384, "cpu", "float16", workspace_bytes=64 * mib, budget_bytes=512 * mib)
    assert not fit.fits and fit.needed_bytes == 10**6 * 384 * 2 + 64 * mib and fit.budget_bytes == 512 * mib
    assert "does not fit" in fit.reason and "faiss" in fit.reason
    ok = device_fit(10**5, 384, "cpu", "float16", workspace_bytes=64 * mib, budget_bytes=512 * mib)
    assert ok.fits and ok.needed_bytes == 10**5 * 384 * 2 + 64 * mib
    assert device_fit(1000, 8, "cpu").budget_bytes > 0  # from the host's available memory
    assert device_fit(10**5, 384, "cpu", "float32", workspace_bytes=mib, budget_bytes=140 * mib).fits is False


def test_normalise_exclude_merges_and_clips():
    assert normalise_exclude([(50, 60), (0, 5), (4, 10), (90, 200), (7, 7)], 100) == [(0, 10), (50, 60), (90, 100)]
    assert normalise_exclude(np.array([[3, 8]]), 100) == [(3, 8)]
    assert normalise_exclude(None, 10) == []


@pytest.mark.parametrize(
    "build, call",
    [
        (dict(dtype="float64"), None),
        (dict(device="tpu"), None),
        (dict(workspace_bytes=0), None),
        (None, dict(k=0)),
        (None, dict(queries=np.zeros((3, 5), np.float32))),
        (None, dict(exclude=[(-1, 4)])),
        (None, dict(exclude=[(8, 2)])),
        (None, dict(exclude=[(1, 2, 3)])),
        (None, dict(queries=np.array([["a"] * 24]))),
    ],
)
def test_bad_arguments_raise_config_errors(data, build, call):
    vectors, queries = data
    with pytest.raises(ConfigError):
        index = TorchExactIndex(vectors, **{"device": "cpu", **(build or {})})
        args = {"queries": queries, "k": 1, "exclude": None, **(call or {})}
        index.search(args.pop("queries"), **args)


def test_bad_bank_vectors_raise_config_errors():
    for vectors in (np.zeros((0, 4), np.float32), np.zeros(8, np.float32), np.ones((3, 4), np.int64)):
        with pytest.raises(ConfigError, match="vectors"):
            TorchExactIndex(vectors, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            TorchExactIndex(np.ones((3, 4), np.float32), device="cuda")
