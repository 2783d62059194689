"""Greedy k-center coreset (semanom_ros.core.coreset).

Argument checks, covering quality, bank subsampling that keeps provenance, and calibration of a
coreset against the full frames.
"""
from __future__ import annotations

import numpy as np
import pytest

from semanom_ros.core.bank import ModelSignature, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.coreset import (
    calibrate_coreset,
    coreset_bank,
    coreset_target_size,
    greedy_k_center,
    greedy_k_center_order,
    subsample_bank,
)
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.scoring import calibrate

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _bank(frames: int = 12, grid: tuple[int, int] = (3, 4), seed: int = 0, dim: int = DIM) -> NominalBank:
    """A patch bank of a smooth 'video': each frame is the previous one plus a little noise."""
    rng = np.random.default_rng(seed)
    sig = ModelSignature(model="test", fingerprint="f" * 8, input_height=56, dim=dim)
    bank = NominalBank(sig)
    h, w = grid
    base = rng.standard_normal((h * w, dim))
    for i in range(frames):
        base = base + 0.3 * rng.standard_normal(base.shape)
        bank.add_patch_grid(_unit(base).reshape(h, w, dim), source="bag" if i < frames // 2 else "bag2",
                            index=i, stamp_ns=1_000 + i, topic="/cam")
    return bank


def _covering_radius(points: np.ndarray, centres: np.ndarray) -> float:
    d = ((points[:, None, :] - points[centres][None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d.min(axis=1).max()))


@pytest.mark.parametrize(
    "fraction, count, match",
    [(None, None, "exactly one"), (0.5, 3, "exactly one"), (0.0, None, r"\(0, 1\]"), (1.5, None, r"\(0, 1\]"),
     (-0.1, None, r"\(0, 1\]"), (True, None, r"\(0, 1\]"), (None, 0, ">= 1"), (None, 2.5, ">= 1")],
)
def test_target_size_validation(fraction, count, match):
    with pytest.raises(ConfigError, match=match):
        coreset_target_size(100, fraction, count)


def test_target_size_values():
    assert coreset_target_size(100, 0.25) == 25
    assert coreset_target_size(100, 1.0) == 100
    assert coreset_target_size(100, 0.001) == 1  # never empty
    assert coreset_target_size(100, count=500) == 100  # capped at the bank
    assert coreset_target_size(7, count=3) == 3


def test_one_centre_per_separated_cluster():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((5, 64)) * 50
    points = np.concatenate([c + rng.standard_normal((40, 64)) for c in centres]).astype(np.float32)
    for seed in (0, 1, 2):
        picked = greedy_k_center(points, 5, seed=seed, projection_dim=16)
        assert sorted(set(picked // 40)) == [0, 1, 2, 3, 4], seed


def test_covers_better_than_a_random_subset_and_is_deterministic():
    # Clusters of very different sizes (a long straight road and a few rare views): a random subset
    # spends its budget on the big ones, k-center covers the rare ones too.
    rng = np.random.default_rng(2)
    sizes = [300, 120, 60, 20, 8, 4, 2, 1, 1, 1]
    centres = _unit(rng.standard_normal((len(sizes), 384)))
    points = _unit(np.concatenate([c + 0.02 * rng.standard_normal((n, 384)) for c, n in zip(centres, sizes)]))
    n = len(points)
    picked = greedy_k_center(points, 40, seed=0)  # projected to 128 dims for the search
    assert np.array_equal(picked, greedy_k_center(points, 40, seed=0))
    assert len(np.unique(picked)) == 40 and np.all(np.diff(picked) > 0)
    random_radius = min(_covering_radius(points, rng.choice(n, 40, replace=False)) for _ in range(5))
    assert _covering_radius(points, picked) < 0.5 * random_radius


def test_greedy_order_is_a_prefix_sequence():
    points = _unit(np.random.default_rng(3).standard_normal((300, 32)))
    long = greedy_k_center_order(points, 30, seed=4)
    assert np.array_equal(long[:10], greedy_k_center_order(points, 10, seed=4))


def test_duplicates_and_degenerate_inputs():
    same = np.ones((10, 4), np.float32)
    assert np.array_equal(greedy_k_center(same, 10), np.arange(10))
    assert len(np.unique(greedy_k_center(same, 6))) == 6  # never the same vector twice
    with pytest.raises(ConfigError, match="empty"):
        greedy_k_center(np.zeros((0, 4), np.float32), 1)
    with pytest.raises(ConfigError, match=">= 1"):
        greedy_k_center(same, 0)


def test_subsample_keeps_frames_sources_and_provenance():
    bank = _bank()
    keep = np.array([0, 5, 6, 30, 31, len(bank) - 1])
    small = subsample_bank(bank, keep)
    assert len(small) == len(keep) and small.num_frames == bank.num_frames
    np.testing.assert_array_equal(small.vectors, bank.vectors[keep])
    for name in ("row", "col"):
        np.testing.assert_array_equal(small.vector_meta[name], bank.vector_meta[name][keep])
    np.testing.assert_array_equal(small.frames["index"], bank.frames["index"])
    np.testing.assert_array_equal(small.frames["grid_h"], bank.frames["grid_h"])
    # The frame each kept vector belongs to is the same frame (same message) as before.
    before = bank.frames["index"][bank.vector_meta["frame"][keep]]
    after = small.frames["index"][small.vector_meta["frame"]]
    np.testing.assert_array_equal(before, after)
    assert [s.to_dict() for s in small.sources] == [s.to_dict() for s in bank.sources]
    assert (small.frames["vec_count"] == 0).any()  # frames without survivors stay in the table
    with pytest.raises(ValueError, match="ascending"):
        subsample_bank(bank, np.array([3, 1]))


def test_coreset_bank_calibrated_against_full_frames_round_trips(tmp_path):
    bank = _bank(frames=16)
    config = PipelineConfig(model="test", calibration_window=1, alpha=0.9)
    full_cal = calibrate(bank, 0.9, 1, 1, 300)
    result = coreset_bank(bank, fraction=0.25, seed=0)
    small = result.bank
    assert result.to_vectors == round(0.25 * len(bank)) and result.shrink_factor == pytest.approx(4.0, rel=0.05)
    info = small.extra["coreset"]
    assert info["from_vectors"] == len(bank) and info["to_vectors"] == len(small)
    assert info["requested"] == {"fraction": 0.25}
    assert small.calibration is None
    cal = calibrate_coreset(small, bank, config)
    # Every query's nearest coreset vector is at most as similar as its nearest full-bank vector.
    assert cal["threshold"] >= full_cal["threshold"] - 1e-6
    assert cal["patches_scored"] == full_cal["patches_scored"]  # all patches of every frame were queries
    assert "full bank" in cal["queries"]
    saved = NominalBank.load(small.save(tmp_path / "core"))
    assert saved.num_frames == bank.num_frames and len(saved) == len(small)
    assert saved.extra["coreset"]["to_vectors"] == len(small)
    assert saved.calibration["threshold"] == pytest.approx(cal["threshold"])
    # A coreset bank with empty frames can be calibrated again (on its own vectors) without error.
    calibrate(saved, 0.9, 1, 1, 300)


def test_full_fraction_is_the_same_bank():
    bank = _bank(frames=4)
    result = coreset_bank(bank, fraction=1.0)
    np.testing.assert_array_equal(result.bank.vectors, bank.vectors)
    assert result.shrink_factor == 1.0
