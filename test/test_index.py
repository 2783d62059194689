"""Index strategies of the nominal bank.

Correctness of each type, auto selection, exclusion, manifest record, save/load round trip, and
clear errors. Small synthetic data; no timing.
"""
from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from semanom_ros.core.bank import ModelSignature, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.search.faiss_backend import (
    build_index,
    excluding_params,
    maybe_to_gpu,
    probe_recall,
    search_depth,
    search_excluding,
)
from semanom_ros.core.search.recall import RecallProbe, probe_truth
from semanom_ros.core.search.spec import IndexSpec, default_nlist, resolve_type
from semanom_ros.core.threads import configure_threads, resolve_num_threads
from semanom_ros.core.scoring import leave_one_out_scores

DIM = 64
SMALL = dict(pq_m=8, pq_bits=6, hnsw_m=16, recall_queries=200)


def clustered(n: int, clusters: int = 24, spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in well-separated clusters (within-cluster cosine ~0.9, across ~0)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(0, clusters, n)
    x = centres[label] + spread * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), label


def signature() -> ModelSignature:
    return ModelSignature(model="synthetic", fingerprint="f" * 16, input_height=224, dim=DIM)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(3000)


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "ivf", "hnsw"])
def test_each_type_finds_each_vector_itself(data, kind):
    x, _ = data
    index, info = build_index(x.astype(np.float16), IndexSpec(type=kind, **SMALL))
    _, ids = index.search(x[:500], 1)
    assert np.mean(ids[:, 0] == np.arange(500)) == 1.0
    assert info["type"] == kind and info["num_vectors"] == len(x)
    if kind in ("ivf", "hnsw"):
        assert info["recall_at_1"] is not None and info["recall_at_1"] >= 0.9
        assert search_depth(index) == info["search_depth"] > 0
    else:
        assert info["recall_at_1"] is None  # exact: nothing to measure
    expected_bytes = {"flat": 4 * DIM, "flat_fp16": 2 * DIM}.get(kind)
    if expected_bytes:
        assert info["bytes_per_vector"] == expected_bytes


def test_ivfpq_keeps_neighbours_in_their_cluster(data):
    x, label = data
    index, info = build_index(x, IndexSpec(type="ivfpq", **SMALL))
    _, ids = index.search(x[:300], 2)
    assert np.all(label[ids[:, 1]] == label[:300])
    assert info["bytes_per_vector"] < 4 * DIM  # compressed: fewer bytes than float32
    assert info["params"]["pq_m"] == 8


def test_fixed_nprobe_is_kept_and_recall_still_measured(data):
    x, _ = data
    index, info = build_index(x, IndexSpec(type="ivf", nlist=32, nprobe=3, **SMALL))
    assert search_depth(index) == 3 and info["params"]["nlist"] == 32
    assert 0.0 <= info["recall_at_1"] <= 1.0


def test_auto_is_exact_below_threshold_and_measures_the_candidates_above(data):
    x, _ = data
    spec = IndexSpec(type="auto", auto_threshold=1000, target_recall=0.95, **SMALL)
    assert resolve_type(spec, 999) == "flat"
    assert resolve_type(spec, 1000) == "auto"
    assert resolve_type(IndexSpec(type="flat"), 10**9) == "flat"  # a setting overrides the size rule
    small_index, small = build_index(x[:500], spec)
    big_index, big = build_index(x, spec)
    assert small["type"] == "flat" and isinstance(small_index, faiss.IndexFlatIP)
    assert small["requested"] == big["requested"] == "auto"
    candidates = {c["type"]: c for c in big["candidates"]}
    assert set(candidates) == {"ivf", "hnsw"}
    chosen = candidates[big["type"]]
    assert big["search_depth"] == chosen["search_depth"] == search_depth(big_index)
    meeting = [c for c in candidates.values() if c["recall_at_1"] >= 0.95]
    if meeting:  # the fastest of those that reach the target
        assert chosen["probe_query_ms"] == min(c["probe_query_ms"] for c in meeting)
    else:  # else the most accurate
        assert chosen["recall_at_1"] == max(c["recall_at_1"] for c in candidates.values())
    _, unmeasured = build_index(x, spec, measure_recall=False)
    assert unmeasured["type"] == "ivf" and "candidates" not in unmeasured


def test_auto_prefers_the_candidate_that_reaches_the_target(data, monkeypatch):
    """A candidate under the target loses even when it is faster."""
    import semanom_ros.core.search.faiss_backend as index_module

    x, _ = data
    real_tune = index_module.tune_depth

    def hnsw_misses(index, kind, *args):
        recall, curve, probe = real_tune(index, kind, *args)
        return (0.5 if kind == "hnsw" else recall), curve, probe

    monkeypatch.setattr(index_module, "tune_depth", hnsw_misses)
    _, info = build_index(x, IndexSpec(type="auto", auto_threshold=1000, target_recall=0.9, **SMALL))
    assert info["type"] == "ivf" and info["recall_at_1"] >= 0.9


def test_default_nlist_is_bounded_by_training_points():
    assert default_nlist(10**6) == 4096
    assert default_nlist(3000) <= 3000 // 39
    assert default_nlist(10) >= 1


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "flat_fp16"])
def test_exclusion_matches_exact_search(data, kind):
    x, _ = data
    exact = NominalBank.from_vectors(x, signature())
    approx = NominalBank.from_vectors(x, signature())
    approx.set_index_spec(IndexSpec(type=kind, **SMALL))
    queries = x[:200]
    exclude = [(0, 100), (150, 400)]
    sims_e, ids_e = exact.search(queries, 1, exclude=exclude)
    sims_a, ids_a = approx.search(queries, 1, exclude=exclude)
    in_excluded = ((ids_a >= 0) & (ids_a < 100)) | ((ids_a >= 150) & (ids_a < 400))
    assert not in_excluded.any()
    assert (ids_a >= 0).all()
    assert np.mean(ids_a[:, 0] == ids_e[:, 0]) >= 0.95
    assert np.abs(sims_a - sims_e).max() < 0.05


def test_excluding_params_keep_search_depth(data):
    x, _ = data
    ivf, _ = build_index(x, IndexSpec(type="ivf", nlist=32, nprobe=7, **SMALL))
    params = excluding_params(ivf, [(0, 10)], depth_factor=1)
    assert isinstance(params, faiss.SearchParametersIVF) and params.nprobe == 7
    assert excluding_params(ivf, [(0, 10)], depth_factor=4).nprobe == 28  # deeper: neighbours are excluded
    assert excluding_params(ivf, [(0, 10)], depth_factor=100).nprobe == 32  # never beyond nlist
    hnsw, _ = build_index(x[:1000], IndexSpec(type="hnsw", ef_search=40, **SMALL))
    params = excluding_params(hnsw, [(0, 10), (20, 30)], depth_factor=1)
    assert isinstance(params, faiss.SearchParametersHNSW) and params.efSearch == 40


def test_manifest_records_index_and_load_rebuilds_the_same(tmp_path, data):
    x, _ = data
    frames = np.repeat(np.arange(30), 100)
    bank = NominalBank.from_vectors(x, signature(), frame_of_vector=frames)
    bank.config = PipelineConfig(index_type="ivf", device="cpu").to_dict()
    sims_before, ids_before = bank.search(x[:100], 1)
    info = bank.index_info
    assert info["type"] == "ivf" and info["recall_at_1"] >= 0.9
    bank.save(tmp_path / "bank")

    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    recorded = manifest["index"]
    for key in ("type", "params", "recall_at_1", "build_s", "bytes_per_vector", "search_depth"):
        assert key in recorded
    assert recorded["type"] == "ivf" and recorded["recall_at_1"] == info["recall_at_1"]

    loaded = NominalBank.load(tmp_path / "bank")
    sims_after, ids_after = loaded.search(x[:100], 1)
    assert loaded.index_info["type"] == "ivf"
    assert loaded.index_info["search_depth"] == info["search_depth"]
    assert loaded.index_info["params"]["nlist"] == info["params"]["nlist"]
    assert loaded.index_info["recall_at_1"] == info["recall_at_1"]
    np.testing.assert_array_equal(ids_after, ids_before)
    np.testing.assert_allclose(sims_after, sims_before, atol=1e-6)


def test_appending_invalidates_the_recorded_index(tmp_path, data):
    x, _ = data
    bank = NominalBank.from_vectors(x[:1000], signature())
    bank.search(x[:5], 1)
    assert bank.index_info["type"] == "flat"  # default auto, far below the threshold
    bank.add_frame(x[1000:1100], source="more", index=0)
    assert bank.index_info is None
    bank.save(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["index"] is None


def test_calibration_runs_on_an_ivf_bank(data):
    x, _ = data
    frames = np.repeat(np.arange(30), 100)
    bank = NominalBank.from_vectors(x, signature(), frame_of_vector=frames)
    bank.set_index_spec(IndexSpec(type="ivf", **SMALL))
    image_scores, patch_scores = leave_one_out_scores(bank, k=1, window=2, max_frames=10)
    assert len(image_scores) == 10 and len(patch_scores) == 1000
    assert (patch_scores >= 0).all() and (patch_scores < 1.0).all()  # no "missing neighbour" scores of 2


def test_invalid_specs_raise_clear_errors(data):
    x, _ = data
    with pytest.raises(ConfigError, match="index_type"):
        IndexSpec(type="kdtree").validate()
    with pytest.raises(ConfigError, match="nprobe"):
        IndexSpec(nprobe=-1).validate()
    with pytest.raises(ConfigError, match="target_recall"):
        IndexSpec(target_recall=1.5).validate()
    with pytest.raises(ConfigError, match="nlist"):
        build_index(x[:100], IndexSpec(type="ivf", nlist=500))
    with pytest.raises(ConfigError, match="pq_m"):
        build_index(x, IndexSpec(type="ivfpq", pq_m=7))
    with pytest.raises(ConfigError, match="index_type"):
        PipelineConfig(index_type="annoy").validate()
    with pytest.raises(ConfigError, match="nprobe"):
        PipelineConfig(nprobe=-3).validate()
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, DIM), np.float32), IndexSpec())


def test_spec_from_pipeline_config():
    cfg = PipelineConfig(index_type="hnsw", nprobe=48, index_auto_threshold=5, device="cpu")
    spec = IndexSpec.from_config(cfg)
    assert (spec.type, spec.auto_threshold, spec.ef_search, spec.use_gpu) == ("hnsw", 5, 48, False)
    assert IndexSpec.from_config(cfg.to_dict()) == spec
    assert IndexSpec.from_config({}) == IndexSpec()
    assert IndexSpec.from_config(None).type == "auto"


def test_gpu_request_without_gpu_stays_on_cpu(data):
    x, _ = data
    index, _ = build_index(x[:500], IndexSpec(type="flat"))
    moved, device = maybe_to_gpu(index, use_gpu=True)
    if faiss.get_num_gpus() == 0:
        assert moved is index and device == "cpu"
    else:  # pragma: no cover - only on a machine with a GPU faiss
        assert device.startswith("cuda")


def test_thread_counts_never_exceed_the_cores(monkeypatch):
    import torch

    before_torch, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert resolve_num_threads(0) == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert resolve_num_threads(0) == 1  # 0 respects the environment's pinning
        monkeypatch.setenv("OMP_NUM_THREADS", "999")
        assert resolve_num_threads(0) == cores
        assert resolve_num_threads(10_000) == cores
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(before_torch)
        faiss.omp_set_num_threads(before_faiss)


def test_excluded_search_goes_deeper_when_the_probed_lists_are_all_excluded(data):
    """Leave-one-out on video: near-duplicate neighbours fill the probed lists; no row may come back empty."""
    x, label = data
    order = np.argsort(label, kind="stable")  # cluster members get consecutive ids, like video frames
    xs = x[order]
    index, _ = build_index(xs, IndexSpec(type="ivf", nlist=24, nprobe=1, **SMALL))
    first = int(np.sum(label == label[order[0]]))
    exclude = [(0, first)]  # the query's whole cluster is excluded
    bare_s, bare_i = index.search(xs[:50], 1, params=excluding_params(index, exclude, depth_factor=1))
    assert (bare_i < 0).any()  # the failure this guards against
    sims, ids = search_excluding(index, xs[:50], 1, exclude)
    assert (ids >= first).all()
    exact = NominalBank.from_vectors(xs, signature())
    sims_e, _ = exact.search(xs[:50], 1, exclude=exclude)
    assert np.abs(sims - sims_e).max() < 0.02


# -- build-time recall probe ---------------------------------------------------------------------
def video_bank(frames: int = 60, per_frame: int = 40, seed: int = 3) -> NominalBank:
    """A drive-like bank: each frame's patches drift slowly from the previous frame's."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((per_frame, DIM)).astype(np.float32)
    vecs = []
    for _ in range(frames):
        base = base + 0.25 * rng.standard_normal(base.shape).astype(np.float32)
        vecs.append(base / np.linalg.norm(base, axis=1, keepdims=True))
    x = np.concatenate(vecs)
    bank = NominalBank.from_vectors(x, signature(), frame_of_vector=np.repeat(np.arange(frames), per_frame))
    bank.config = PipelineConfig(device="cpu", calibration_window=3).to_dict()
    return bank


def test_probe_truth_never_returns_an_excluded_vector():
    bank = video_bank()
    probe = bank.search_index.recall_probe(IndexSpec(recall_queries=160))
    assert probe is not None and "+-3 frames excluded" in probe.description and "perturbed" in probe.description
    held_out = [g for g in probe.groups if g[2]]
    assert len(held_out) == 16 and probe.parts == [(0, 80), (80, 160)]
    truth = probe_truth(bank.vectors, probe)
    x = np.asarray(bank.vectors, np.float32)
    for q0, q1, exclude in probe.groups:
        sims = probe.queries[q0:q1] @ x.T
        for a, b in exclude:
            assert not ((truth[q0:q1] >= a) & (truth[q0:q1] < b)).any()
            sims[:, a:b] = -np.inf
        np.testing.assert_array_equal(truth[q0:q1], sims.argmax(1))


def test_bank_tunes_its_index_on_held_out_frames_and_records_the_curve():
    bank = video_bank()
    bank.set_index_spec(IndexSpec(type="hnsw", hnsw_m=8, ef_construction=16, recall_queries=320, target_recall=0.99))
    bank.search(bank.frame_vectors(0)[:2], 1)
    info = bank.index_info
    assert "bank frames" in info["recall_probe"] and "perturbed" in info["recall_probe"]
    curve = info["recall_curve"]
    depths = [d for d, _ in curve]
    assert depths == sorted(depths) and info["search_depth"] == depths[-1]
    assert info["recall_at_1"] == curve[-1][1]
    # The tuner stops at the first depth meeting the target (or runs out of ladder).
    assert all(r < 0.99 for _, r in curve[:-1])
    assert curve[-1][1] >= 0.99 or depths[-1] == 512


def test_a_single_frame_bank_falls_back_to_perturbed_vectors(data):
    x, _ = data
    bank = NominalBank.from_vectors(x, signature(), frame_of_vector=np.zeros(len(x), int))
    assert bank.search_index.recall_probe(IndexSpec()) is None
    bank.set_index_spec(IndexSpec(type="ivf", **SMALL))
    bank.search(x[:3], 1)
    assert "perturbed" in bank.index_info["recall_probe"]


# -- persisted approximate index -----------------------------------------------------------------
def saved_hnsw_bank(tmp_path) -> tuple[NominalBank, np.ndarray, np.ndarray]:
    bank = video_bank()
    bank.config["index_type"] = "hnsw"
    queries = np.asarray(bank.vectors[::37], np.float32)
    _, ids = bank.search(queries, 1)
    bank.save(tmp_path / "bank")
    return bank, queries, ids


def test_saved_approximate_index_is_loaded_not_rebuilt(tmp_path, monkeypatch):
    bank, queries, ids = saved_hnsw_bank(tmp_path)
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert "index.faiss" in manifest["files"] and manifest["index"]["type"] == "hnsw"
    assert "loaded_from" not in manifest["index"]

    import semanom_ros.core.search.index as search_index_module

    def no_build(*args, **kwargs):
        raise AssertionError("the saved index should have been read, not rebuilt")

    monkeypatch.setattr(search_index_module, "build_index", no_build)
    loaded = NominalBank.load(tmp_path / "bank")
    _, ids_loaded = loaded.search(queries, 1)
    np.testing.assert_array_equal(ids_loaded, ids)
    assert loaded.index_info["loaded_from"].endswith("index.faiss")
    assert loaded.index_info["recall_at_1"] == bank.index_info["recall_at_1"]
    assert not loaded.warnings
    # Re-saving a loaded, never-searched bank carries the index over.
    again = NominalBank.load(tmp_path / "bank")
    again.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "index.faiss").read_bytes() == (tmp_path / "bank" / "index.faiss").read_bytes()


def test_exact_banks_save_no_index_file(tmp_path, data):
    x, _ = data
    bank = NominalBank.from_vectors(x[:500], signature())
    bank.search(x[:2], 1)
    bank.save(tmp_path / "flat")
    assert not (tmp_path / "flat" / "index.faiss").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_index_file_is_rebuilt_with_a_warning(tmp_path, damage):
    _, queries, ids = saved_hnsw_bank(tmp_path)
    path = tmp_path / "bank" / "index.faiss"
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    loaded = NominalBank.load(tmp_path / "bank", verify=True)
    assert len(loaded.warnings) == 1 and "index" in loaded.warnings[0]
    _, ids_loaded = loaded.search(queries, 1)  # rebuilt, still answers
    assert "loaded_from" not in loaded.index_info
    assert np.mean(ids_loaded == ids) >= 0.95


def test_a_depth_override_reuses_the_saved_index_and_reports_the_measured_recall(tmp_path, monkeypatch):
    bank, queries, _ = saved_hnsw_bank(tmp_path)
    curve = bank.index_info["recall_curve"]
    import semanom_ros.core.search.index as search_index_module

    monkeypatch.setattr(
        search_index_module, "build_index", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt"))
    )
    loaded = NominalBank.load(tmp_path / "bank")
    first_depth = curve[0][0]
    spec = IndexSpec.from_config(dict(loaded.config, nprobe=first_depth))
    loaded.set_index_spec(spec)
    loaded.search(queries, 1)
    assert search_depth(loaded.search_index.ensure()) == first_depth
    assert loaded.index_info["recall_at_1"] == curve[0][1]
    loaded.set_index_spec(IndexSpec.from_config(dict(loaded.config, nprobe=333)))  # never tried at build
    loaded.search(queries, 1)
    assert loaded.index_info["search_depth"] == 333 and loaded.index_info["recall_at_1"] is None


def test_monitor_index_settings_defer_to_the_bank_unless_set(tmp_path):
    from semanom_ros.core.monitor import index_spec_for

    bank = video_bank()
    bank.config.update(index_type="hnsw", nprobe=0)
    spec = index_spec_for(PipelineConfig(device="cpu"), bank)
    assert spec.type == "hnsw" and spec.ef_search == 0 and not spec.use_gpu
    spec = index_spec_for(PipelineConfig(device="cpu", nprobe=48), bank)
    assert spec.type == "hnsw" and spec.ef_search == 48
    spec = index_spec_for(PipelineConfig(device="cpu", index_type="ivf", index_nlist=16), bank)
    assert spec.type == "ivf" and spec.nlist == 16
    bank.config["device"] = "cpu"  # the builder's device does not decide where the monitor's index lives
    assert index_spec_for(PipelineConfig(device="cuda", use_gpu_index=True), bank).use_gpu


def test_num_frames_follows_appends_merges_and_loads(tmp_path):
    bank = video_bank(frames=5, per_frame=4)
    assert bank.num_frames == 5 == len(bank.frames)
    other = video_bank(frames=3, per_frame=4, seed=9)
    bank.merge(other)
    assert bank.num_frames == 8 == len(bank.frames)
    bank.save(tmp_path / "b")
    assert NominalBank.load(tmp_path / "b").num_frames == 8


def test_search_and_score_grid_take_torch_tensors_like_arrays(data):
    """The GPU path hands the bank torch tensors; on the CPU they must give the NumPy answers."""
    import torch

    from semanom_ros.core.scoring import patch_score_grid

    x, _ = data
    bank = NominalBank.from_vectors(x[:2000], signature())
    queries = x[2000:2048]
    sims_np, ids_np = bank.search(queries, 3)
    sims_t, ids_t = bank.search(torch.from_numpy(queries), 3)
    np.testing.assert_array_equal(ids_t, ids_np)
    np.testing.assert_allclose(sims_t, sims_np)
    grid = queries.reshape(6, 8, DIM)
    ignore = np.zeros((6, 8), bool)
    ignore[0, :3] = True
    expected = patch_score_grid(bank, grid, k=1, ignore=ignore)
    got = patch_score_grid(bank, torch.from_numpy(grid), k=1, ignore=ignore)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got[0, :3] == 0).all() and (got[1:] > 0).all()


def test_a_saved_auto_bank_reloads_the_candidate_it_chose(tmp_path, monkeypatch):
    bank = video_bank()
    bank.config["index_auto_threshold"] = 1000
    queries = np.asarray(bank.vectors[::41], np.float32)
    _, ids = bank.search(queries, 1)
    chosen = bank.index_info["type"]
    assert chosen in ("ivf", "hnsw") and len(bank.index_info["candidates"]) == 2
    bank.save(tmp_path / "auto")
    import semanom_ros.core.search.index as search_index_module

    monkeypatch.setattr(
        search_index_module, "build_index", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt"))
    )
    loaded = NominalBank.load(tmp_path / "auto")
    _, ids_loaded = loaded.search(queries, 1)
    assert loaded.index_info["type"] == chosen and "loaded_from" in loaded.index_info
    np.testing.assert_array_equal(ids_loaded, ids)


def test_probe_recall_is_the_lowest_parts():
    """A probe of two parts passes a depth only when both of its stand-ins do."""
    x, _ = clustered(2000)
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    probe = RecallProbe(x[:20].copy(), [(0, 20, [])], "two parts", parts=[(0, 10), (10, 20)])
    truth = np.arange(20)
    truth[15:] = 1999  # five wrong answers in the second part only
    assert probe_recall(index, probe, truth) == pytest.approx(0.5)
    assert probe_recall(index, RecallProbe(probe.queries, probe.groups, "one part"), truth) == pytest.approx(0.75)


def test_setting_the_same_index_spec_keeps_the_built_index(data):
    x, _ = data
    bank = NominalBank.from_vectors(x, signature())
    bank.config = PipelineConfig(device="cpu", index_type="ivf").to_dict()
    bank.search(x[:2], 1)
    built = bank.search_index.ensure()
    bank.set_index_spec(IndexSpec.from_config(bank.config))
    assert bank.search_index.ensure() is built
    bank.set_index_spec(IndexSpec.from_config(dict(bank.config, index_type="hnsw")))
    assert bank.search_index.ensure() is not built and bank.index_info["type"] == "hnsw"
