"""Instance mode, with tiny random-init OWLv2, SAM 2 and DINOv2 checkpoints.

Mask averaging, instance banks (build, save, load, calibrate, score) and the Monitor in instance and
combined mode.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core import (
    BankError,
    BankMismatchError,
    ConfigError,
    ImageError,
    Instance,
    InstanceBankBuilder,
    InstancePipeline,
    Monitor,
    NominalBank,
    PatchBankBuilder,
    PipelineConfig,
    build_instance_bank,
    draw_instances,
    mask_average_embeddings,
)
from semanom_ros.core.scorers.instance import instance_maps, score_instances
from tiny_models import save_tiny_dinov2, save_tiny_owlv2, save_tiny_sam2

H, W = 84, 140


# -- mask averaging with hand-made grids and masks ---------------------------------------------------
def _basis_grid() -> np.ndarray:
    """2 x 2 patch grid whose four patches are the unit vectors e0..e3 (D = 4)."""
    return np.eye(4, dtype=np.float32).reshape(2, 2, 4)


def test_mask_average_weights_each_patch_by_the_fraction_it_covers():
    patches = _basis_grid()  # frame 28 x 28 -> patches of 14 x 14 px
    masks = np.zeros((3, 28, 28), bool)
    masks[0, :14, :14] = True  # all of patch (0, 0)
    masks[1, :14, :21] = True  # all of (0, 0) + half of (0, 1)
    masks[2, 7:21, 7:21] = True  # a quarter of each patch
    out = mask_average_embeddings(patches, masks, (28, 28))
    expected = np.array([[1, 0, 0, 0], [1, 0.5, 0, 0], [1, 1, 1, 1]], np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out.vectors, expected, atol=1e-6)
    np.testing.assert_allclose(out.weights, [1.0, 1.5, 1.0], atol=1e-6)
    assert out.index.tolist() == [0, 1, 2] and out.dropped == []


def test_mask_average_handles_frames_that_are_not_patch_multiples():
    patches = _basis_grid()
    masks = np.zeros((1, 30, 30), bool)
    masks[0, :, :15] = True  # the left half: patches (0, 0) and (1, 0) fully
    out = mask_average_embeddings(patches, masks)
    np.testing.assert_allclose(out.vectors[0], np.array([1, 0, 1, 0]) / np.sqrt(2), atol=1e-6)


def test_empty_and_cancelling_masks_are_dropped_with_a_reason():
    patches = np.zeros((2, 2, 3), np.float32)
    patches[0, 0] = [1, 0, 0]
    patches[0, 1] = [-1, 0, 0]  # opposite of (0, 0): their mean vanishes
    patches[1, :] = [0, 1, 0]
    masks = np.zeros((3, 28, 28), bool)
    masks[1, :14, :] = True
    masks[2, 14:, :] = True
    out = mask_average_embeddings(patches, masks, (28, 28))
    assert out.index.tolist() == [2]
    np.testing.assert_allclose(out.vectors, [[0, 1, 0]], atol=1e-6)
    assert [i for i, _ in out.dropped] == [0, 1]
    assert "empty" in out.dropped[0][1] and "cancel" in out.dropped[1][1]
    none = mask_average_embeddings(patches, np.zeros((0, 28, 28), bool), (28, 28))
    assert none.vectors.shape == (0, 3)


def test_masks_of_the_wrong_size_or_layout_are_refused_naming_the_shapes():
    patches = _basis_grid()
    with pytest.raises(ImageError, match=r"masks are 20x28.*frame is 28x28"):
        mask_average_embeddings(patches, np.ones((1, 20, 28), bool), (28, 28))
    with pytest.raises(ImageError, match=r"\(n, H, W\)"):
        mask_average_embeddings(patches, np.ones((28, 28), bool))
    with pytest.raises(ImageError, match="coarser"):
        mask_average_embeddings(patches, np.ones((1, 1, 1), bool))


# -- tiny models and banks ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("instance_models")
    return SimpleNamespace(
        dino=str(save_tiny_dinov2(root / "dino")),
        owl=str(save_tiny_owlv2(root / "owl")),
        sam=str(save_tiny_sam2(root / "sam")),
    )


def _config(models, **changes) -> PipelineConfig:
    base = dict(
        model=models.dino,
        input_height=56,
        detector_model=models.owl,
        segmenter_model=models.sam,
        detector_score_threshold=0.0,
        detector_top_k=3,
        instance_min_mask_area_px=20,
        calibration_window=1,
        mode="instance",
    )
    base.update(changes)
    return PipelineConfig(**base).validate()


def _frames(n: int, start: int = 0):
    return [
        SimpleNamespace(rgb=textured_frame(i, H, W), source="nominal", index=i, stamp_ns=1000 * (i + 1))
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def pipeline(models) -> InstancePipeline:
    return InstancePipeline.from_config(_config(models))


@pytest.fixture(scope="module")
def instance_bank(models, pipeline, tmp_path_factory):
    cfg = _config(models)
    path = tmp_path_factory.mktemp("banks") / "instances"
    bank = build_instance_bank(cfg, _frames(8), path, pipeline=pipeline)
    return cfg, path, bank


def test_pipeline_finds_instances_with_frame_sized_masks_and_unit_embeddings(pipeline):
    found = pipeline.detect(textured_frame(0, H, W))
    assert 1 <= len(found.instances) <= 3
    for inst in found.instances:
        assert inst.mask.shape == (H, W) and inst.mask.dtype == bool
        assert inst.area_px == int(inst.mask.sum()) >= 20
        assert np.isclose(np.linalg.norm(inst.embedding), 1.0, atol=1e-5)
        x, y, w, h = inst.box
        assert 0 <= x < W and 0 <= y < H and w >= 1 and h >= 1
    assert set(found.timings_ms) >= {"features", "detector", "segmenter", "embed"}


def test_ignored_pixels_are_cut_out_of_masks(pipeline):
    frame = textured_frame(0, H, W)
    everything = np.ones((H, W), bool)
    found = pipeline.detect(frame, ignore=everything)
    assert found.instances == [] and found.dropped
    assert all("instance_min_mask_area_px" in reason for _, reason in found.dropped)
    with pytest.raises(ImageError, match="ignore mask shape"):
        pipeline.detect(frame, ignore=np.ones((10, 10), bool))


def test_instance_bank_is_built_calibrated_saved_and_reloaded(instance_bank, pipeline):
    cfg, path, bank = instance_bank
    assert bank.kind == "instance" and bank.num_frames == 8
    assert 8 <= len(bank) <= 24  # 1..3 instances per frame
    assert bank.frames["vec_count"].sum() == len(bank)
    cal = bank.calibration
    assert cal["unit"] == "instance" and cal["smoothing_sigma"] is None and 0 < cal["threshold"] < 2
    loaded = NominalBank.load(path)
    assert loaded.kind == "instance" and len(loaded) == len(bank)
    recorded = loaded.extra["instance"]
    assert recorded["detector"]["fingerprint"] == pipeline.proposer.fingerprint
    assert recorded["segmenter"]["fingerprint"] == pipeline.segmenter.fingerprint
    assert recorded["detector"]["queries"] == []
    assert loaded.extra["instance_build"]["frames"] == 8
    np.testing.assert_allclose(loaded.vectors, bank.vectors)


def test_a_bank_frame_scores_near_zero_and_an_unseen_frame_higher(instance_bank, pipeline):
    cfg, path, _ = instance_bank
    monitor = Monitor(cfg, path, extractor=pipeline.extractor, instance_pipeline=pipeline)
    seen = monitor.process(textured_frame(3, H, W))
    assert seen.instances and seen.score < 0.01  # its own instances are in the bank
    assert not seen.is_anomalous
    unseen = monitor.process(textured_frame(123, H, W))
    assert unseen.score > seen.score + 0.05


def test_instance_result_fields_are_consistent(instance_bank, pipeline):
    cfg, path, _ = instance_bank
    monitor = Monitor(cfg, path, extractor=pipeline.extractor, instance_pipeline=pipeline)
    monitor.set_threshold(0.0)  # every instance with a positive score is anomalous
    frame = textured_frame(77, H, W)
    result = monitor.process(frame)
    insts = result.instances
    assert insts and [i.index for i in insts] == list(range(1, len(insts) + 1))
    assert all(a.score >= b.score for a, b in zip(insts, insts[1:]))  # numbered by decreasing score
    assert result.score == pytest.approx(insts[0].score)
    assert result.is_anomalous == any(i.is_anomalous for i in insts)
    assert all(i.is_anomalous == (i.score > 0.0) for i in insts)
    assert result.labels.shape == (H, W) and result.labels.dtype == np.uint16
    assert result.score_map.shape == (H, W) and result.score_map.dtype == np.float32
    covered = np.zeros((H, W), bool)
    for inst in insts:
        # Each instance owns its mask pixels that no higher-scoring instance took first.
        own = inst.mask & ~covered
        assert (result.labels[own] == inst.index).all()
        np.testing.assert_allclose(result.score_map[own], inst.score)
        covered |= inst.mask
    assert (result.labels[~covered] == 0).all() and (result.score_map[~covered] == 0).all()
    anomalous_union = np.logical_or.reduce([i.mask for i in insts if i.is_anomalous] or [np.zeros((H, W), bool)])
    np.testing.assert_array_equal(result.mask, anomalous_union)
    assert {c.label for c in result.components} == {i.index for i in insts if i.is_anomalous}
    assert {"features", "detector", "segmenter", "embed", "search", "maps"} <= set(result.timings_ms)
    overlay = monitor.overlay(frame, result)
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8
    monitor.set_threshold(2.0)
    assert not monitor.process(frame).is_anomalous


def test_monitor_loads_the_instance_models_from_the_config(instance_bank):
    cfg, path, _ = instance_bank
    monitor = Monitor(cfg, path)  # DINOv2, OWLv2 and SAM 2 from the config's folders
    result = monitor.process(textured_frame(3, H, W))
    assert result.instances and result.labels.shape == (H, W)
    monitor.release()
    assert monitor.instance_scorer.pipeline.proposer.model is None


def test_no_boxes_means_a_nominal_frame_with_empty_outputs(instance_bank, models, pipeline):
    cfg, path, _ = instance_bank
    proposer_threshold = pipeline.proposer.score_threshold
    pipeline.proposer.score_threshold = 1.0  # nothing passes
    try:
        result = Monitor(cfg, path, extractor=pipeline.extractor, instance_pipeline=pipeline).process(
            textured_frame(5, H, W)
        )
    finally:
        pipeline.proposer.score_threshold = proposer_threshold
    assert result.instances == [] and not result.is_anomalous and result.score == 0.0
    assert not result.labels.any() and not result.score_map.any() and result.components == []


def test_monitor_refuses_banks_of_the_wrong_kind_or_pipeline(instance_bank, models, pipeline, tmp_path):
    cfg, path, bank = instance_bank
    with pytest.raises(BankError, match="instance bank"):
        Monitor(dataclasses.replace(cfg, mode="patch"), path, extractor=pipeline.extractor)
    patch_builder = PatchBankBuilder(dataclasses.replace(cfg, mode="patch"), extractor=pipeline.extractor)
    patch_builder.add_all(_frames(3))
    with pytest.raises(BankError, match="needs an instance bank"):
        Monitor(cfg, patch_builder.bank, extractor=pipeline.extractor, instance_pipeline=pipeline)
    other = NominalBank.load(path)
    other.extra["instance"]["detector"]["queries"] = ["a car"]
    with pytest.raises(BankMismatchError, match="detector_queries"):
        Monitor(cfg, other, extractor=pipeline.extractor, instance_pipeline=pipeline)
    other = NominalBank.load(path)
    other.extra["instance"]["segmenter"]["fingerprint"] = "0" * 24
    with pytest.raises(BankMismatchError, match="segmenter_model"):
        Monitor(cfg, other, extractor=pipeline.extractor, instance_pipeline=pipeline)
    monitor = Monitor(cfg, path, extractor=pipeline.extractor, instance_pipeline=pipeline)
    with pytest.raises(ConfigError, match="instance mode"):
        monitor.score_features(pipeline.extractor.extract(textured_frame(0, H, W)))


def test_calibration_without_instances_says_what_to_change(models, pipeline):
    builder = InstanceBankBuilder(_config(models), pipeline=pipeline)
    saved = pipeline.proposer.score_threshold
    pipeline.proposer.score_threshold = 1.0
    try:
        builder.add_all(_frames(3))
    finally:
        pipeline.proposer.score_threshold = saved
    assert len(builder.bank) == 0 and builder.bank.num_frames == 3
    with pytest.raises(ConfigError, match="detector_score_threshold"):
        builder.calibrate()


def test_combined_mode_rule(instance_bank, models, pipeline, tmp_path):
    """Anomalous when an instance is, or when a patch component lies mostly outside every instance."""
    _, inst_path, _ = instance_bank
    patch_cfg = _config(models, mode="patch")
    builder = PatchBankBuilder(patch_cfg, extractor=pipeline.extractor)
    builder.add_all(_frames(8))
    builder.calibrate()
    patch_path = builder.bank.save(tmp_path / "patch_bank")
    cfg = _config(models, mode="combined", instance_bank=str(inst_path), instance_threshold=2.0,
                  threshold=0.0, min_component_area_px=0)
    monitor = Monitor(cfg, patch_path, extractor=pipeline.extractor, instance_pipeline=pipeline)
    frame = textured_frame(200, H, W)
    result = monitor.process(frame)
    # Patch threshold 0: the whole frame is one component, mostly outside the few small instances.
    assert result.instances and not any(i.is_anomalous for i in result.instances)
    assert result.is_anomalous
    n = len(result.instances)
    assert [c.label for c in result.components] == [n + 1]  # patch evidence follows the instances
    assert result.labels.max() == n + 1
    assert result.threshold == 0.0 and result.score_map.shape == (H, W)
    assert {"patch_search", "patch_maps", "detector", "segmenter"} <= set(result.timings_ms)
    # Demand that all of a component lie outside instances: partly covered, it no longer counts.
    strict = Monitor(dataclasses.replace(cfg, combined_min_outside_fraction=1.0), patch_path,
                     extractor=pipeline.extractor, instance_pipeline=pipeline)
    result = strict.process(frame)
    assert not result.is_anomalous and result.components == []
    # An anomalous instance alone flags the frame even with no patch evidence.
    by_instance = Monitor(dataclasses.replace(cfg, threshold=2.0, instance_threshold=0.0), patch_path,
                          extractor=pipeline.extractor, instance_pipeline=pipeline)
    result = by_instance.process(frame)
    assert result.is_anomalous and all(c.label <= len(result.instances) for c in result.components)
    with pytest.raises(BankError, match="instance_bank"):
        Monitor(cfg, inst_path, extractor=pipeline.extractor, instance_pipeline=pipeline)
    # Without instance_threshold the instance bank's calibration sets it, and alpha moves both thresholds.
    calibrated = Monitor(dataclasses.replace(cfg, instance_threshold=None, threshold=None), patch_path,
                         extractor=pipeline.extractor, instance_pipeline=pipeline)
    scorer = calibrated.instance_scorer
    before = scorer.threshold
    assert before == pytest.approx(NominalBank.load(inst_path).calibration["threshold"])
    calibrated.set_alpha(0.5)
    assert scorer.threshold < before


def test_config_validates_instance_settings():
    with pytest.raises(ConfigError, match="mode"):
        PipelineConfig(mode="objects").validate()
    with pytest.raises(ConfigError, match="instance_bank"):
        PipelineConfig(mode="combined").validate()
    with pytest.raises(ConfigError, match="segmenter_backend"):
        PipelineConfig(segmenter_backend="onnx").validate()
    with pytest.raises(ConfigError, match="detector_top_k"):
        PipelineConfig(detector_top_k=0).validate()
    with pytest.raises(ConfigError, match="detector_queries"):
        PipelineConfig(detector_queries=[1, 2]).validate()
    cfg = PipelineConfig(detector_queries="a car, a traffic light, ").validate()
    assert cfg.detector_queries == ["a car", "a traffic light"]


def test_score_instances_and_maps_keep_the_higher_scoring_instance_on_overlaps():
    d = 4
    bank = NominalBank.from_vectors(np.eye(d, dtype=np.float32)[:1], _sig(d), kind="instance")
    a = np.zeros((10, 10), bool)
    a[:, :6] = True
    b = np.zeros((10, 10), bool)
    b[:, 4:] = True
    near = np.array([1, 0, 0, 0], np.float32)  # score 0
    far = np.array([0, 1, 0, 0], np.float32)  # score 1
    insts = [Instance((0, 0, 6, 10), a, "a", embedding=near), Instance((4, 0, 6, 10), b, "b", embedding=far)]
    ordered = score_instances(bank, insts, threshold=0.5)
    assert [i.label for i in ordered] == ["b", "a"] and [i.is_anomalous for i in ordered] == [True, False]
    labels, scores = instance_maps(ordered, (10, 10))
    assert (labels[:, 4:] == 1).all() and (labels[:, :4] == 2).all()  # b (higher score) keeps the overlap
    np.testing.assert_allclose(scores[:, 4:], 1.0, atol=1e-3)
    out = draw_instances(np.zeros((10, 10, 3), np.uint8), ordered, thickness=1)
    assert out.any()


def _sig(dim: int):
    from semanom_ros.core.bank import ModelSignature

    return ModelSignature(model="hand-made", fingerprint="x", input_height=14, dim=dim)
