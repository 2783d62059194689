"""Per-frame median normalisation of patch scores (issue #14: a new car or camera lifts a whole frame)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core import ConfigError, Monitor, NominalBank, PatchBankBuilder, PipelineConfig
from semanom_ros.core.bank import ModelSignature
from semanom_ros.core.scoring import calibrate, calibrated_threshold, patch_score_grid
from semanom_ros.nodes.params import MONITOR_PARAMS
from semanom_ros.tools.pipeline_args import add_pipeline_overrides, pipeline_overrides
from semanom_ros.workflows.settings import config_from_bank

DIM = 16
SHIFT_AXIS = DIM - 1  # a direction no nominal patch has: mixing it in lifts every patch score alike


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _nominal_patches(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Patches near the nominal cluster centres (which live in the first 8 dimensions)."""
    picked = centres[rng.integers(0, len(centres), n)]
    noise = np.zeros((n, DIM), np.float32)
    noise[:, :8] = rng.normal(scale=0.08, size=(n, 8))
    return _unit(picked + noise)


def _bank_and_centres(frames: int = 24, patches: int = 16, seed: int = 0) -> tuple[NominalBank, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    centres = np.zeros((6, DIM), np.float32)
    centres[:, :8] = rng.normal(size=(6, 8))
    centres = _unit(centres)
    bank = NominalBank(ModelSignature(model="m", fingerprint="f", input_height=224, dim=DIM))
    for i in range(frames):
        bank.add_frame(_nominal_patches(rng, centres, patches), source="drive", index=i, stamp_ns=i)
    return bank, centres, seed


def _median_normalised(raw: np.ndarray) -> np.ndarray:
    return np.maximum(raw - np.median(raw), 0.0)


# -- configuration -----------------------------------------------------------------------------------------
def test_config_validates_score_normalization():
    assert PipelineConfig().score_normalization == "none"
    PipelineConfig(score_normalization="median").validate()
    with pytest.raises(ConfigError, match="score_normalization: 'mean' is not one of none, median"):
        PipelineConfig(score_normalization="mean").validate()
    # at most half of a frame's patches lie above its median: a >= 50 % majority could never fire
    with pytest.raises(ConfigError, match="score_normalization: median .* majority_fraction 0.5"):
        PipelineConfig(score_normalization="median", image_decision="majority").validate()
    PipelineConfig(score_normalization="median", image_decision="majority", majority_fraction=0.2).validate()


def test_unset_node_and_flag_values_take_the_banks_normalization():
    spec = {s.name: s for s in MONITOR_PARAMS}["score_normalization"]
    assert spec.default == "" and set(spec.choices) == {"", "none", "median"}
    manifest = {"config": {"score_normalization": "median"}, "model": {"model": "m", "input_height": 224}}
    assert config_from_bank(manifest, {"score_normalization": ""}).score_normalization == "median"
    assert config_from_bank(manifest, {"score_normalization": "none"}).score_normalization == "none"
    assert config_from_bank({"config": {}, "model": {}}).score_normalization == "none"  # banks from before
    parser = argparse.ArgumentParser()
    add_pipeline_overrides(parser)
    assert pipeline_overrides(parser.parse_args(["--score-normalization", "median"])) == {
        "score_normalization": "median"
    }
    assert "score_normalization" not in pipeline_overrides(parser.parse_args([]))


# -- scoring -----------------------------------------------------------------------------------------------
def test_patch_score_grid_subtracts_the_median_of_non_ignored_patches_and_clips_at_zero():
    bank, centres, _ = _bank_and_centres()
    rng = np.random.default_rng(7)
    grid = _nominal_patches(rng, centres, 12).reshape(3, 4, DIM)
    grid[0, 0] = _unit(np.eye(DIM, dtype=np.float32)[SHIFT_AXIS])
    ignore = np.zeros((3, 4), bool)
    ignore[2, :] = True
    raw = patch_score_grid(bank, grid, ignore=ignore)
    normalised = patch_score_grid(bank, grid, ignore=ignore, normalization="median")
    kept = ~ignore
    np.testing.assert_allclose(normalised[kept], _median_normalised(raw[kept]), atol=1e-6)
    assert (normalised[ignore] == 0).all() and normalised.min() >= 0
    with pytest.raises(ConfigError, match="score_normalization"):
        patch_score_grid(bank, grid, normalization="zscore")


def test_a_frame_lifted_as_a_whole_is_flagged_only_without_normalisation():
    bank, centres, _ = _bank_and_centres()
    rng = np.random.default_rng(11)
    nominal = _nominal_patches(rng, centres, 16)
    shift = np.zeros(DIM, np.float32)
    shift[SHIFT_AXIS] = 0.6
    lifted = _unit(nominal + shift).reshape(4, 4, DIM)  # another camera: every patch a little further away
    one_odd = nominal.copy()
    one_odd[5] = _unit(shift)  # one patch unlike anything nominal
    one_odd = one_odd.reshape(4, 4, DIM)
    for normalization, lifted_flagged in (("none", True), ("median", False)):
        threshold = calibrate(bank, alpha=0.99, window=1, level="image", normalization=normalization)["threshold"]
        lifted_score = patch_score_grid(bank, lifted, normalization=normalization).max()
        odd_score = patch_score_grid(bank, one_odd, normalization=normalization).max()
        assert bool(lifted_score > threshold) is lifted_flagged, (normalization, lifted_score, threshold)
        assert odd_score > 2 * threshold, (normalization, odd_score, threshold)
        nominal_score = patch_score_grid(bank, nominal.reshape(4, 4, DIM), normalization=normalization).max()
        assert nominal_score <= threshold


@pytest.mark.parametrize("level", ["patch", "image"])
def test_median_calibration_threshold_matches_brute_force(level):
    bank, _, _ = _bank_and_centres(frames=10, patches=9)
    window, alpha = 1, 0.95
    cal = calibrate(bank, alpha=alpha, window=window, level=level, normalization="median")
    vectors = np.asarray(bank.vectors, np.float32)
    patch_scores, image_scores = [], []
    for f in range(bank.num_frames):
        others = np.concatenate([
            vectors[g * 9:(g + 1) * 9] for g in range(bank.num_frames) if abs(g - f) > window
        ])
        raw = 1.0 - (bank.frame_vectors(f) @ others.T).max(axis=1)
        scores = _median_normalised(raw)
        patch_scores.append(scores)
        image_scores.append(scores.max())
    chosen = np.concatenate(patch_scores) if level == "patch" else np.asarray(image_scores)
    assert cal["score_normalization"] == "median"
    assert cal["threshold"] == pytest.approx(float(np.quantile(chosen, alpha)), abs=1e-5)
    raw_cal = calibrate(bank, alpha=alpha, window=window, level=level)
    assert raw_cal["score_normalization"] == "none" and raw_cal["threshold"] > cal["threshold"]


def test_threshold_refuses_a_calibration_with_another_normalization():
    bank, _, _ = _bank_and_centres(frames=6, patches=4)
    cal = calibrate(bank, alpha=0.9, window=1, normalization="median")
    median = PipelineConfig(alpha=0.9, score_normalization="median")
    assert calibrated_threshold(cal, median) == pytest.approx(cal["threshold"], abs=2e-3)
    with pytest.raises(ConfigError, match="score_normalization: the bank was calibrated with median"):
        calibrated_threshold(cal, median.replace(score_normalization="none"))
    older = {k: v for k, v in cal.items() if k != "score_normalization"}  # a bank calibrated before the option
    with pytest.raises(ConfigError, match="calibrated with none, the pipeline uses median"):
        calibrated_threshold(older, median)
    assert calibrated_threshold({**cal, "score_normalization": None}, median) > 0  # instance bank: nothing to match


# -- engine ------------------------------------------------------------------------------------------------
def test_monitor_scores_on_the_banks_normalised_scale(tiny_model):
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=0, alpha=0.99,
                         min_component_area_px=0, score_normalization="median")
    builder = PatchBankBuilder(cfg)
    builder.add_all([
        argparse.Namespace(rgb=textured_frame(100 + i % 3, 84, 140), source="seq", index=i, stamp_ns=i)
        for i in range(6)
    ])
    cal = builder.calibrate()
    assert cal["score_normalization"] == "median"
    monitor = Monitor(cfg, builder.bank, extractor=builder.extractor)
    nominal = textured_frame(100, 84, 140)
    quiet = monitor.process(nominal)
    raw = patch_score_grid(builder.bank, builder.extractor.extract(nominal).patches)
    np.testing.assert_allclose(quiet.patch_scores, _median_normalised(raw), atol=1e-5)
    assert quiet.score_map.min() >= 0 and not quiet.is_anomalous
    odd = nominal.copy()
    odd[28:70, 70:126] = [255, 0, 255]
    odd[40:60, 80:110] = [0, 255, 0]
    assert monitor.process(odd).is_anomalous
    with pytest.raises(ConfigError, match="score_normalization"):
        Monitor(cfg.replace(score_normalization="none"), builder.bank, extractor=builder.extractor)


def test_bank_cli_build_and_calibrate_take_the_normalization():
    from semanom_ros.tools.bank_cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["calibrate", "bank", "--score-normalization", "median"])
    assert args.score_normalization == "median"
    args = parser.parse_args(["build", "drive", "-o", "bank", "--score-normalization", "none"])
    assert args.score_normalization == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "bank", "--score-normalization", "mean"])
