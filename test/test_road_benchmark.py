"""Issue #14: feature_layer, crop views, the road-anomaly K-fold benchmark and the cross-drive mode."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from conftest import textured_frame
from semanom_ros.core import ConfigError, Monitor, PatchBankBuilder, PipelineConfig
from semanom_ros.core.errors import BankMismatchError
from semanom_ros.core.features import FeatureExtractor
from semanom_ros.core.maps import fuse_view_scores
from semanom_ros.core.scoring import threshold_for_alpha, view_offsets
from semanom_ros.tools.evaluate import main as eval_main
from semanom_ros.workflows.eval_data import EvalDataError
from semanom_ros.workflows.road_benchmark import RoadBenchmarkOptions, read_label_mask, run_road_benchmark
from semanom_ros.workflows.road_metrics import ComponentMetrics, frame_outcome
from semanom_ros.workflows.settings import config_from_bank

ROAD_VIEW = [0.3, 1.0, 0.1, 0.9]


def _road_set(root: Path, n: int = 8, seed: int = 0) -> Path:
    """Road-like frames: sky band, grey road, a red square obstacle (label 1) in every other frame, void on top."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        img = np.full((84, 140, 3), 90, np.uint8)
        img[:30] = (120, 160, 220)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        labels = np.zeros((84, 140), np.uint8)
        labels[:8] = 255
        if i % 2:
            y, x = 40 + i, 30 + 6 * i
            img[y : y + 16, x : x + 16] = (255, 0, 0)
            labels[y : y + 16, x : x + 16] = 1
        cv2.imwrite(str(root / "images" / f"{i}.png"), img[..., ::-1])
        cv2.imwrite(str(root / "labels_masks" / f"{i}.png"), labels)
    return root


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


@pytest.mark.parametrize(
    "changes",
    [
        dict(k=1),
        dict(k=2, crop_views=[ROAD_VIEW], score_normalization="median", feature_layer=1),
    ],
    ids=["full-frame", "crop-view-median-layer1"],
)
def test_kfold_protocol_equals_the_engine_on_each_folds_bank(tmp_path, tiny_model, changes):
    """A fold's threshold and score maps are what a bank built, calibrated and scored by the engine gives."""
    root = _road_set(tmp_path / "road")
    cfg = PipelineConfig(model=tiny_model, input_height=56, min_component_area_px=20, **changes)
    options = RoadBenchmarkOptions(folds=2, keep_maps=True, progress=False)
    report = run_road_benchmark(cfg, root, tmp_path / "out", options)
    names = [str(i) for i in range(8)]
    for fold in range(2):
        # The engine path: a bank of the other fold's label-0 patches (each image its own source), calibrated.
        builder = PatchBankBuilder(cfg.replace(ignore_patch_fraction=0.0))
        for i, name in enumerate(names):
            if i % 2 == fold:
                continue
            labels = cv2.imread(str(root / "labels_masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            builder.add(SimpleNamespace(rgb=_rgb(root / "images" / f"{name}.png"), source=name, index=i,
                                        stamp_ns=0, ignore=labels != 0))
        calibration = builder.calibrate()
        assert calibration["holdout"] == "source"
        assert report["thresholds"][fold] == pytest.approx(calibration["threshold"], abs=2e-3)
        monitor = Monitor(cfg.replace(threshold=calibration["threshold"]), builder.bank)
        for i, name in enumerate(names):
            if i % 2 != fold:
                continue
            engine_map = monitor.process(_rgb(root / "images" / f"{name}.png")).score_map
            np.testing.assert_allclose(report["score_maps"][name], engine_map, atol=2e-3)
    assert report["engine_check"]["max_abs_score_diff"] < 2e-3
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["frames"]["anomalous_frames"] == 4 and "score_maps" not in saved
    assert "| AP | AUROC | FPR95 | sIoU | PPV | mean F1 |" in (tmp_path / "out" / "report.md").read_text()


def test_obstacles_are_found_and_metrics_are_consistent(tmp_path, tiny_model):
    root = _road_set(tmp_path / "road")
    cfg = PipelineConfig(model=tiny_model, input_height=56, min_component_area_px=20, crop_views=[ROAD_VIEW])
    report = run_road_benchmark(cfg, root, None, RoadBenchmarkOptions(folds=2, progress=False))
    frames, comp = report["frames"], report["components"]
    assert frames["n_frames"] == 8 and frames["anomalous_frames"] == 4
    assert 0 <= frames["frames_hit"] <= 4
    assert comp["gt_components"] == 4  # one obstacle per anomalous frame
    assert 0.0 <= comp["siou"] <= 1.0 and 0.0 <= comp["mean_f1"] <= 1.0
    assert report["pixel"]["auroc"] > 0.5  # a red square on grey road stands out even for a random backbone
    hits = sum(r["hit"] for r in report["per_image"])
    assert hits == frames["frames_hit"]


def test_component_metrics_follow_the_smiyc_definitions():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 5:15] = 1  # obstacle A (100 px)
    labels[25:35, 25:35] = 1  # obstacle B
    labels[:, 38:] = 255
    perfect = ComponentMetrics()
    perfect.add(labels == 1, labels)
    assert perfect.result()["siou"] == 1.0 and perfect.result()["ppv"] == 1.0 and perfect.result()["mean_f1"] == 1.0
    half = np.zeros_like(labels, bool)
    half[5:15, 5:10] = True  # half of A, nothing on B
    half[20:22, 0:10] = True  # a false positive of 20 px
    half[0:10, 38:40] = True  # only void pixels: removed before components
    m = ComponentMetrics()
    m.add(half, labels)
    r = m.result()
    assert r["gt_components"] == 2 and r["predicted_components"] == 2
    assert r["siou"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["ppv"] == pytest.approx((1.0 + 0.0) / 2)
    # tau < 0.5: TP 1 (A), FN 1 (B), FP 1 -> F1 = 2/4; tau >= 0.5: TP 0, FN 2, FP 1 -> 0
    assert r["f1_by_tau"]["0.25"] == pytest.approx(0.5) and r["f1_by_tau"]["0.5"] == 0.0


def test_frame_outcome_counts_hits_false_and_void_components():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:6, 2:6] = 1
    labels[15:, :] = 255
    comps = np.zeros((20, 20), np.uint16)
    comps[3:5, 3:8] = 1  # touches the obstacle
    comps[8:10, 8:12] = 2  # on the road: false
    comps[15:20, 0:10] = 3  # all void: not false
    out = frame_outcome(comps, labels)
    assert (out.has_anomaly, out.hit, out.false_components, out.void_components) == (True, True, 1, 1)


def test_label_masks_with_unknown_values_are_refused(tmp_path):
    path = tmp_path / "l.png"
    cv2.imwrite(str(path), np.full((4, 4), 7, np.uint8))
    with pytest.raises(EvalDataError, match=r"l.png: values \[7\] besides 0"):
        read_label_mask(path, (4, 4))
    with pytest.raises(EvalDataError, match="its image is 5x4"):
        read_label_mask(path, (4, 5))


def test_cli_road_anomaly_and_its_errors(tmp_path, tiny_model, capsys):
    root = _road_set(tmp_path / "road", n=6)
    rc = eval_main(["--road-anomaly", str(root), "--folds", "3", "--model", tiny_model, "--input-height", "56",
                    "--crop-view", "0.3,1,0.1,0.9", "--feature-layer", "1", "--min-area", "20",
                    "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    assert "6 images, 3 folds: pixel AP" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["config"]["feature_layer"] == 1 and saved["config"]["crop_views"] == [ROAD_VIEW]
    assert len(saved["thresholds"]) == 3
    (root / "labels_masks" / "2.png").unlink()
    assert eval_main(["--road-anomaly", str(root), "--model", tiny_model, "-o", str(tmp_path / "o2")]) == 2
    assert "image 2.png has no label mask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--road-anomaly", str(root), "--bank", str(tmp_path), "-o", str(tmp_path / "o3")])


def test_cross_drive_mode_counts_flagged_frames(tmp_path, tiny_model, capsys):
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=0, min_component_area_px=20)
    builder = PatchBankBuilder(cfg)
    builder.add_all(SimpleNamespace(rgb=textured_frame(s), source="a", index=s, stamp_ns=s) for s in range(6))
    builder.calibrate()
    bank = builder.bank.save(tmp_path / "bank")
    drive = tmp_path / "drive"
    drive.mkdir()
    frames = [textured_frame(100 + s) for s in range(3)] + [np.full((84, 140, 3), (255, 0, 255), np.uint8)]
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(drive / f"{i:04d}.png"), rgb[..., ::-1])
    monitor = Monitor(cfg, bank)
    expected = sum(monitor.process(rgb).is_anomalous for rgb in frames)
    assert eval_main(["--bank", str(bank), "--nominal-drive", str(drive), "-o", str(tmp_path / "x"),
                      "--no-progress"]) == 0
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert report["n_frames"] == 4 and report["frames_flagged"] == expected
    assert [r["score"] for r in report["frames"]] == pytest.approx([monitor.process(f).score for f in frames])
    assert f"{expected} flagged" in capsys.readouterr().out
    assert eval_main(["--bank", str(bank), "--nominal-drive", str(drive), "--threshold", "0.0001",
                      "-o", str(tmp_path / "y"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "y" / "report.json").read_text())["frames_flagged"] == 4


def test_feature_layer_is_that_blocks_output_and_part_of_the_signature(tmp_path, tiny_model):
    from transformers import AutoModel

    extractor = FeatureExtractor(tiny_model, 56, "cpu", feature_layer=1)
    rgb = textured_frame(3)
    feats = extractor.extract(rgb)
    model = AutoModel.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        hidden = model(pixel_values=torch.from_numpy(extractor.preprocess(rgb)[None]),
                       output_hidden_states=True).hidden_states[1]
    expected = torch.nn.functional.normalize(hidden[0, 1:], dim=-1).numpy().reshape(feats.patches.shape)
    np.testing.assert_allclose(feats.patches, expected, atol=1e-5)
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=0, feature_layer=1)
    builder = PatchBankBuilder(cfg)
    builder.add_all(SimpleNamespace(rgb=textured_frame(s), source="a", index=s, stamp_ns=s) for s in range(3))
    builder.calibrate()
    path = builder.bank.save(tmp_path / "bank")
    assert json.loads((path / "manifest.json").read_text())["model"]["feature_layer"] == 1
    assert config_from_bank(path).feature_layer == 1  # node, eval and replay follow the bank
    with pytest.raises(BankMismatchError, match="block-1 vectors, the pipeline uses last-layer"):
        Monitor(cfg.replace(feature_layer=0), path)
    with pytest.raises(Exception, match="feature_layer 9: .* has 2 blocks"):
        FeatureExtractor(tiny_model, 56, "cpu", feature_layer=9)


def test_crop_views_validate_and_fuse_by_maximum(tiny_model):
    for bad, match in [([[0.5, 0.4, 0, 1]], "top < bottom"), ([[0, 1, 0]], "four numbers")]:
        with pytest.raises(ConfigError, match=match):
            PipelineConfig(crop_views=bad).validate()
    with pytest.raises(ConfigError, match="mode patch only"):
        PipelineConfig(crop_views=[ROAD_VIEW], mode="scene", scene_method="knn").validate()
    base = np.zeros((10, 20), np.float32)
    fused = fuse_view_scores(base.copy(), [((5, 10, 0, 10), np.ones((2, 2), np.float32))])
    assert fused[5:, :10].min() == 1.0 and fused[:5].max() == 0.0 and fused[:, 10:].max() == 0.0
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=0, crop_views=[ROAD_VIEW])
    extractor = FeatureExtractor.from_config(cfg)
    feats = extractor.extract(textured_frame(1))
    (view,) = feats.views
    assert view.box == (25, 84, 14, 126)
    builder = PatchBankBuilder(cfg, extractor)
    builder.add_all(SimpleNamespace(rgb=textured_frame(s), source="a", index=s, stamp_ns=s) for s in range(3))
    assert len(builder.bank) == 3 * feats.num_patches  # the views' patches join the frame's
    calibration = builder.calibrate()
    assert config_from_bank(builder.bank).crop_views == [ROAD_VIEW]
    # Each view is searched and calibrated in its own vectors; the crop's threshold becomes an offset.
    crop_h, crop_w = view.grid_shape
    assert len(builder.bank.view_bank(1)) == 3 * crop_h * crop_w
    assert len(builder.bank.view_bank(0)) == 3 * feats.grid_shape[0] * feats.grid_shape[1]
    assert len(calibration["views"]) == 1
    spec = dataclasses.replace(builder.bank.search_index.current_spec(), type="hnsw")
    builder.bank.set_index_spec(spec)  # a Monitor's index settings reach the views' own indexes
    assert builder.bank.view_bank(1).search_index.current_spec().type == "hnsw"
    full_only = PatchBankBuilder(cfg.replace(crop_views=[]))
    full_only.add_all(SimpleNamespace(rgb=textured_frame(s), source="a", index=s, stamp_ns=s) for s in range(3))
    assert calibration["threshold"] == pytest.approx(full_only.calibrate()["threshold"], abs=1e-6)
    offsets = view_offsets(calibration, cfg)
    assert offsets[0] == 0.0 and offsets[1] == pytest.approx(
        threshold_for_alpha(calibration, cfg.alpha) - threshold_for_alpha(calibration["views"][0], cfg.alpha))


def test_bank_cli_builds_with_a_feature_layer_and_crop_views(tmp_path, tiny_model):
    from semanom_ros.tools.bank_cli import main as bank_main

    frames = tmp_path / "frames"
    frames.mkdir()
    for s in range(4):
        cv2.imwrite(str(frames / f"{s:04d}.png"), textured_frame(s)[..., ::-1])
    rc = bank_main(["build", str(frames), "-o", str(tmp_path / "bank"), "--model", tiny_model, "--input-height", "56",
                    "--feature-layer", "1", "--crop-view", "0.3,1,0.1,0.9", "--window", "0", "--no-progress"])
    assert rc == 0
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["model"]["feature_layer"] == 1 and manifest["config"]["crop_views"] == [ROAD_VIEW]
