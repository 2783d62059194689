"""Scene-level scoring: global embeddings, k-Means/silhouette, k-NNN, HDBSCAN, majority vote."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from semanom_ros.core import BankError, ConfigError, NominalBank
from semanom_ros.core.bank import ModelSignature
from semanom_ros.core.features import Features
from semanom_ros.core.scorers.scene import (
    SceneScorer,
    fit_hdbscan,
    global_bank_from_patch_bank,
    global_embedding,
    knnn_normalisers,
    select_k_by_silhouette,
)
from semanom_ros.core.scoring import majority_vote
from semanom_ros.workflows.scene_evaluation import evaluate_scene_modes, format_modes_table


def _circle(angles) -> np.ndarray:
    """Unit vectors in 3-D on the x-y circle (cosine distance = 1 - cos(angle difference))."""
    a = np.asarray(angles, np.float64)
    return np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1).astype(np.float32)


def _blobs(k: int, per: int, dim: int = 16, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]  # orthonormal directions
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + noise * rng.normal(size=(k * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def _features(cls: np.ndarray, patches: np.ndarray | None = None) -> Features:
    if patches is None:
        patches = np.tile(cls, (2, 2, 1))
    return Features(patches=patches.astype(np.float32), cls=cls.astype(np.float32), image_size=(28, 28),
                    input_size=(28, 28))


# -- k-Means with silhouette --------------------------------------------------------------------
@pytest.mark.parametrize("true_k", [2, 4, 6])
def test_silhouette_picks_the_number_of_blobs(true_k):
    x, truth = _blobs(true_k, per=15, seed=true_k)
    k, labels, centroids, scores = select_k_by_silhouette(x, (2, 8))
    assert k == true_k
    assert centroids.shape == (true_k, 16)
    assert max(scores, key=scores.get) == true_k
    # Same partition as the truth up to label names.
    assert len({(a, b) for a, b in zip(labels, truth)}) == true_k


def test_silhouette_range_is_capped_by_the_number_of_points_and_validated():
    x, _ = _blobs(2, per=2)  # 4 points: k at most 3
    k, labels, _, scores = select_k_by_silhouette(x, (2, 10))
    assert set(scores) <= {2, 3} and k == 2
    assert select_k_by_silhouette(x[:2], (2, 10))[0] == 1  # too few points for silhouette
    with pytest.raises(ConfigError, match="kmeans_k_range"):
        select_k_by_silhouette(x, (1, 5))


# -- k-NNN ----------------------------------------------------------------------------------------
def test_knnn_same_distance_is_more_anomalous_next_to_a_tight_cluster():
    tight = [0.0, 0.1, 0.2]
    wide = [np.pi / 2, np.pi / 2 + 0.4, np.pi / 2 + 0.8]
    nominal = _circle(tight + wide)
    scorer = SceneScorer("knnn", knnn_m=2, kmeans_k_range=(2, 4)).fit(nominal)
    assert scorer.state["kmeans"]["k"] == 2

    def cosd(a, b):
        return 1.0 - np.cos(a - b)

    # Nearest neighbour of -0.2 is angle 0 (its 2 in-cluster neighbours at 0.1 and 0.2);
    # nearest of pi/2 + 1.0 is pi/2 + 0.8 (neighbours at distance 0.4 and 0.8). Both at 0.2 rad.
    expected_tight = cosd(-0.2, 0.0) / np.mean([cosd(0.0, 0.1), cosd(0.0, 0.2)])
    expected_wide = cosd(1.0, 0.8) / np.mean([cosd(0.8, 0.4), cosd(0.8, 0.0)])
    q_tight, q_wide = _circle([-0.2, np.pi / 2 + 1.0])
    s_tight, s_wide = scorer.score(q_tight), scorer.score(q_wide)
    assert s_tight == pytest.approx(expected_tight, rel=0.02)  # embeddings are stored as float16
    assert s_wide == pytest.approx(expected_wide, rel=0.02)
    assert s_tight > 10 * s_wide
    # Plain kNN cannot tell them apart: the same absolute distance.
    assert scorer.score(q_tight, "knn") == pytest.approx(scorer.score(q_wide, "knn"), rel=0.02)


def test_knnn_normalisers_stay_inside_the_cluster_and_handle_small_clusters():
    x = _circle([0.0, 0.1, 0.2, 1.5])
    labels = np.array([0, 0, 0, 1])
    norm = knnn_normalisers(x, labels, m=5)  # m larger than the cluster: all other members
    assert norm[0] == pytest.approx(np.mean([1 - np.cos(0.1), 1 - np.cos(0.2)]), rel=1e-4)
    # The singleton falls back to its nearest neighbours over all points.
    assert norm[3] == pytest.approx(np.mean([1 - np.cos(1.5 - a) for a in (0.0, 0.1, 0.2)]), rel=1e-4)


# -- HDBSCAN --------------------------------------------------------------------------------------
def test_hdbscan_membership_marks_noise_and_far_points_as_anomalous():
    x, _ = _blobs(2, per=20, noise=0.03, seed=1)
    rng = np.random.default_rng(3)
    outliers = rng.normal(size=(3, 16)).astype(np.float32)
    outliers /= np.linalg.norm(outliers, axis=1, keepdims=True)
    nominal = np.vstack([x, outliers])
    labels, prob, core = fit_hdbscan(nominal, min_cluster_size=5)
    assert len(set(labels[:40]) - {-1}) == 2
    assert prob[:40].min() > 0.5 and prob[40:].max() < 0.2  # isolated points: weak or no membership
    noise = 40 + int(np.flatnonzero(labels[40:] == -1)[0])
    scorer = SceneScorer("hdbscan", hdbscan_min_cluster_size=5).fit(nominal)
    best = int(np.argmax(prob))
    assert scorer.score(nominal[best]) == pytest.approx(1.0 - prob[best], abs=1e-3)
    assert scorer.score(nominal[noise]) == pytest.approx(1.0)  # nearest nominal point is noise
    assert scorer.score(outliers[0]) > 0.8
    far = -x[0]  # opposite direction: far beyond any core distance
    assert scorer.score(far) > 0.9
    inside = scorer.score(x[1])
    assert 0.0 <= inside < 0.5


# -- scorer: banks, persistence, calibration ------------------------------------------------------
def test_scene_model_is_saved_with_the_global_bank_and_reloads_identically(tmp_path):
    x, _ = _blobs(3, per=10, seed=5)
    sig = ModelSignature(model="m", fingerprint="f", input_height=224, dim=16)
    scorer = SceneScorer("knnn").fit(x, signature=sig)
    cal = scorer.calibrate(alpha=0.9, window=0)
    assert set(cal) == {"knn", "knnn", "kmeans", "hdbscan"}
    scorer.bank.save(tmp_path / "scene")
    loaded = NominalBank.load(tmp_path / "scene")
    assert loaded.kind == "global" and loaded.num_frames == 30
    again = SceneScorer.from_bank(loaded)
    queries, _ = _blobs(3, per=3, seed=6)
    for method in ("knn", "knnn", "kmeans", "hdbscan"):
        a = scorer.score_vectors(queries, method)
        b = again.score_vectors(queries, method)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert again.threshold(method) == pytest.approx(scorer.threshold(method))
    with pytest.raises(BankError, match="no scene model"):
        SceneScorer.from_bank(NominalBank(sig, kind="global"))


def test_leave_one_out_window_excludes_temporal_neighbours():
    # A slow drift: each frame's nearest other frame is its temporal neighbour.
    x = _circle(np.linspace(0, 1.0, 21))
    scorer = SceneScorer("knn", kmeans_k_range=(2, 3)).fit(x)
    near = scorer.leave_one_out_scores("knn", window=0)
    far = scorer.leave_one_out_scores("knn", window=2)
    assert np.all(near < 1e-2)  # itself excluded, neighbour 0.05 rad away found
    assert np.median(far) > 5 * np.median(near)


def test_global_embeddings_from_features_and_from_a_patch_bank():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(2, 3, 8)).astype(np.float32)
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    cls = np.eye(8, dtype=np.float32)[0]
    f = _features(cls, patches)
    np.testing.assert_allclose(global_embedding(f, "cls"), cls)
    mean = patches.reshape(-1, 8).mean(0)
    np.testing.assert_allclose(global_embedding(f, "mean"), mean / np.linalg.norm(mean), rtol=1e-5)
    ignore = np.zeros((2, 3), bool)
    ignore[0] = True
    m2 = patches[1].mean(0)
    np.testing.assert_allclose(global_embedding(f, "mean", ignore), m2 / np.linalg.norm(m2), rtol=1e-5)
    with pytest.raises(ConfigError, match="global_embedding"):
        global_embedding(f, "max")

    sig = ModelSignature(model="m", fingerprint="f", input_height=28, dim=8)
    bank = NominalBank(sig)
    for i in range(3):
        bank.add_patch_grid(np.roll(patches, i, axis=-1), source="s", index=i)
    gbank = global_bank_from_patch_bank(bank)
    assert gbank.kind == "global" and gbank.num_frames == 3 and len(gbank) == 3
    np.testing.assert_allclose(gbank.vectors[0].astype(np.float32), mean / np.linalg.norm(mean), atol=2e-3)
    scorer = SceneScorer("knn").fit(bank)  # a patch bank fits through its frame means
    assert scorer.global_embedding == "mean"


def test_scene_scorer_rejects_bad_settings():
    with pytest.raises(ConfigError, match="scene_method"):
        SceneScorer("lof")
    with pytest.raises(ConfigError, match="knnn_m"):
        SceneScorer(knnn_m=0)
    with pytest.raises(BankError, match="not fitted"):
        SceneScorer().score(np.ones(4, np.float32))


# -- majority vote --------------------------------------------------------------------------------
def test_majority_vote_counts_non_ignored_patches():
    grid = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert majority_vote(grid, 0.5) == (True, 0.5)  # exactly half is enough
    assert majority_vote(grid, 0.5, fraction=0.6) == (False, 0.5)
    ignore = np.array([[True, False], [False, False]])
    decision, frac = majority_vote(grid, 0.5, 0.6, ignore)
    assert decision and frac == pytest.approx(2 / 3)
    assert majority_vote(grid, 0.5, ignore=np.ones((2, 2), bool)) == (False, 0.0)
    with pytest.raises(ConfigError, match="majority_fraction"):
        majority_vote(grid, 0.5, fraction=0.0)


# -- evaluation helper ----------------------------------------------------------------------------
def test_evaluate_scene_modes_separates_constructed_anomalies():
    nominal_x, _ = _blobs(2, per=20, noise=0.05, seed=2)
    rng = np.random.default_rng(9)
    normal_test, _ = _blobs(2, per=5, noise=0.05, seed=2)
    odd = rng.normal(size=(5, 16)).astype(np.float32)
    odd /= np.linalg.norm(odd, axis=1, keepdims=True)
    test_x = np.vstack([normal_test, odd])
    y = [0] * 10 + [1] * 5
    nominal = [_features(v) for v in nominal_x]
    test = [_features(v) for v in test_x]

    class FakeMonitor:  # duck-typed stand-in for Monitor.score_features
        threshold = 0.5

        def score_features(self, f):
            far_from_both_ends = f.cls @ nominal_x[0] < 0.5 and f.cls @ nominal_x[-1] < 0.5
            grid = np.full((2, 2), 0.9 if far_from_both_ends else 0.1, np.float32)
            return SimpleNamespace(score=float(grid.max()), is_anomalous=bool(grid.max() > 0.5), patch_scores=grid,
                                   threshold=0.5)

        def ignore_patches(self, image_size, grid):
            return None

    modes = ("cls_knn", "cls_knnn", "cls_kmeans", "cls_hdbscan", "mean_knn", "patch", "patch_majority")
    report = evaluate_scene_modes(test, y, nominal, modes=modes, patch_monitor=FakeMonitor(), window=0)
    assert set(report) == set(modes)
    for mode in ("cls_knn", "cls_knnn", "cls_kmeans", "mean_knn", "patch", "patch_majority"):
        assert report[mode]["image_auroc"] == pytest.approx(1.0), mode
        assert report[mode]["ms_per_frame"] >= 0
    assert report["cls_hdbscan"]["image_auroc"] > 0.9
    assert "| cls_knnn | 1.000 |" in format_modes_table(report)
    with pytest.raises(ConfigError, match="mode"):
        evaluate_scene_modes(test, y, nominal, modes=("cls_lof",))


def test_monitor_majority_decision_follows_the_patch_fraction(tiny_model):
    from conftest import textured_frame

    from semanom_ros.core import Monitor, PatchBankBuilder, PipelineConfig

    cfg = PipelineConfig(model=tiny_model, input_height=28, device="cpu", threshold=0.5, min_component_area_px=0)
    bank = PatchBankBuilder(cfg).add_all(
        SimpleNamespace(rgb=textured_frame(i), source="s", index=i, stamp_ns=0) for i in range(4)
    )
    frame = textured_frame(99)
    scores = Monitor(cfg, bank).process(frame).patch_scores
    median = float(np.median(scores))
    below, above = median - 1e-6, float(scores.max()) - 1e-6  # half the patches vs. only the top one
    for thr, expected in ((below, True), (above, scores.size == 1)):
        majority = Monitor(cfg.replace(threshold=thr, image_decision="majority"), bank).process(frame)
        components = Monitor(cfg.replace(threshold=thr), bank).process(frame)
        assert majority.is_anomalous == expected
        assert components.is_anomalous  # any surviving component flags the frame


def test_knnn_normalisers_can_skip_temporal_neighbours():
    angles = np.linspace(0, 1.0, 21)  # a slow drift: neighbours 0.05 rad apart
    x = _circle(angles)
    labels = np.zeros(21, np.int64)
    src, idx = np.zeros(21, np.int64), np.arange(21)
    plain = knnn_normalisers(x, labels, m=2)
    skipped = knnn_normalisers(x, labels, m=2, frame_source=src, frame_index=idx, exclude_window=3)
    # Frame 10: neighbours 1 frame away (0.05 rad) vs 4 frames away (0.2 rad) once +-3 are skipped.
    assert plain[10] == pytest.approx(1 - np.cos(0.05), rel=1e-3)
    assert skipped[10] == pytest.approx(1 - np.cos(0.2), rel=1e-3)
    # A window swallowing everything leaves no neighbours: the median (here the fallback 1.0) is used.
    assert np.all(np.isfinite(knnn_normalisers(x, labels, 2, frame_source=src, frame_index=idx, exclude_window=50)))


def test_scene_bank_and_scene_monitor_with_a_tiny_dinov2(tiny_model, tmp_path):
    from conftest import textured_frame

    from semanom_ros.core import Monitor, PipelineConfig
    from semanom_ros.core.scorers.scene import build_scene_bank

    cfg = PipelineConfig(model=tiny_model, input_height=28, device="cpu", scene_method="knn", batch_size=3,
                         alpha=0.9, calibration_window=0, kmeans_k_range=[2, 3])
    frames = [SimpleNamespace(rgb=textured_frame(i % 3), source="s", index=i, stamp_ns=0) for i in range(8)]
    bank = build_scene_bank(cfg, frames)
    assert bank.kind == "global" and bank.num_frames == 8 and "calibration" in bank.extra["scene"]
    bank.save(tmp_path / "scene")
    monitor = Monitor(cfg.replace(mode="scene"), tmp_path / "scene")  # the scene scorer, picked by mode
    seen = monitor.process(textured_frame(1))
    assert seen.score == pytest.approx(0.0, abs=2e-3) and not seen.is_anomalous  # an exact nominal scene
    odd = monitor.process(np.full((84, 140, 3), 255, np.uint8))
    assert odd.score > seen.score and odd.score_map.shape == (84, 140)
    assert odd.is_anomalous == (odd.score > monitor.threshold) and odd.mask.all() == odd.is_anomalous


@pytest.mark.integration
def test_mean_patch_scene_check_on_real_highway_frames(highway_bank, shared):
    """Real DINOv2-S/14: the scene model fitted from an existing patch bank's frame means.

    It ranks anomalous highway frames above nominal ones (all 71 frames give AUROC 0.90, see the
    benchmark).
    """
    import csv

    from conftest import read_rgb
    from sklearn.metrics import roc_auc_score

    from semanom_ros.core import FeatureExtractor

    cfg, path = highway_bank
    scorer = SceneScorer("knn").fit(NominalBank.load(path))
    assert scorer.global_embedding == "mean"
    data = shared / "data" / "highway" / "test"
    rows = list(csv.DictReader((data / "labels.csv").open()))[:16]
    extractor = FeatureExtractor(cfg.model, cfg.input_height, "cpu", "float32")
    scores = [scorer.score(extractor.extract(read_rgb(data / "images" / f"{r['frame']}.jpg"))) for r in rows]
    labels = [int(r["anomalous"]) for r in rows]
    assert 0 < sum(labels) < len(labels)
    assert roc_auc_score(labels, scores) > 0.75  # 0.84 measured on these 16 frames
