"""Language-guided scoring: prompt parsing, max-logit ensembling, the prompt map, fusion, and a tiny OWLv2."""
from __future__ import annotations

import numpy as np
import pytest

from semanom_ros.core import ConfigError
from semanom_ros.core.prompts import (
    DEFAULT_TEMPLATES,
    PromptScorer,
    ensemble_concepts,
    fuse_score_maps,
    parse_prompts,
    prompt_anomaly_map,
)


def test_parse_prompts_accepts_entries_mappings_and_bare_concepts():
    parsed = parse_prompts(["road: asphalt road | the road", "sky", " : ignored", "road: road"])
    assert parsed["road"] == ["asphalt road", "the road", "road"]
    assert parsed["sky"] == [t.format("sky") for t in DEFAULT_TEMPLATES]
    assert list(parsed) == ["road", "sky"]
    assert parse_prompts({"car": "a car", "dog": ["dog", "a dog"]}) == {"car": ["a car"], "dog": ["dog", "a dog"]}
    assert parse_prompts(None) == {}
    with pytest.raises(ConfigError, match="list of entries"):
        parse_prompts("road, sky")


def test_max_logit_ensembling_takes_the_best_phrasing_per_concept():
    logits = np.array([[1.0, 3.0, -2.0, 0.5, 4.0]], np.float32)  # phrasings of concepts 0,0,1,1,2
    out = ensemble_concepts(logits, [0, 0, 1, 1, 2], 3)
    np.testing.assert_allclose(out, [[3.0, 0.5, 4.0]])
    with pytest.raises(ValueError, match="no phrasing"):
        ensemble_concepts(logits, [0, 0, 0, 0, 2], 3)


def test_prompt_map_is_the_anomaly_mass_or_the_absence_of_nominal_concepts():
    # Two nominal concepts and one anomaly concept; at location 0 the anomaly dominates.
    logits = np.array([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]], np.float32)
    m = prompt_anomaly_map(logits, num_nominal=2)
    e5 = np.exp(5.0)
    np.testing.assert_allclose(m, [e5 / (e5 + 2), 1 / (e5 + 2)], rtol=1e-5)
    # Nominal only: 1 - sigmoid(best nominal logit).
    only = prompt_anomaly_map(np.array([[-3.0, -1.0], [4.0, 0.0]]), num_nominal=2)
    np.testing.assert_allclose(only, [1 - 1 / (1 + np.exp(1.0)), 1 - 1 / (1 + np.exp(-4.0))], rtol=1e-5)
    # Temperature flattens the softmax towards uniform.
    assert prompt_anomaly_map(logits[:1], 2, temperature=100.0)[0] == pytest.approx(1 / 3, abs=0.02)


def test_fusion_rule_maps_the_prompt_decision_point_onto_the_threshold():
    knn = np.array([[0.1, 0.3], [0.2, 0.2]], np.float32)
    prompt = np.array([[0.5, 0.0], [1.0, 0.5]], np.float32)
    thr = 0.2
    np.testing.assert_array_equal(fuse_score_maps(knn, prompt, 0.0, thr), knn)  # off
    np.testing.assert_allclose(fuse_score_maps(knn, prompt, 1.0, thr), 2 * thr * prompt)
    fused = fuse_score_maps(knn, prompt, 0.5, thr)
    np.testing.assert_allclose(fused, 0.5 * knn + 0.5 * 2 * thr * prompt)
    assert fused[1, 1] == pytest.approx(thr)  # both maps at their decision points
    # A coarser prompt map is resized onto the kNN grid.
    assert fuse_score_maps(np.zeros((4, 6), np.float32), np.ones((2, 3), np.float32), 0.5, thr).shape == (4, 6)
    with pytest.raises(ConfigError, match="prompt_fusion_weight"):
        fuse_score_maps(knn, prompt, 1.5, thr)


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory) -> str:
    from tiny_models import save_tiny_owlv2

    return str(save_tiny_owlv2(tmp_path_factory.mktemp("owl")))


def test_prompt_scorer_with_a_tiny_owlv2(tiny_owl):
    scorer = PromptScorer(tiny_owl, nominal_prompts=["road: road | asphalt", "sky"], anomaly_prompts=["cat"],
                          device="cpu", dtype="float32")
    assert scorer.concepts == ["road", "sky", "cat"]
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(48, 96, 3), dtype=np.uint8)  # wide: bottom half of the square is padding
    logits = scorer.phrasing_logits(frame)
    assert logits.shape == (3, 6, 2 + 3 + 3)  # 6x6 OWLv2 grid, 3 rows cover the frame
    concepts = scorer.concept_logits(frame)
    np.testing.assert_allclose(concepts[..., 0], logits[..., :2].max(-1))  # road: its 2 phrasings
    m = scorer.score_map(frame, grid=(4, 8))
    assert m.shape == (4, 8) and np.all((m >= 0) & (m <= 1))
    raw = scorer.score_map(frame)
    np.testing.assert_allclose(raw, prompt_anomaly_map(concepts, 2), rtol=1e-6)

    # Run-time change: re-embedded, the map changes.
    scorer.set_prompts(["road"], ["dog", "cat"])
    assert scorer.concepts == ["road", "dog", "cat"]
    assert scorer.phrasing_logits(frame).shape[-1] == 3 * len(DEFAULT_TEMPLATES)
    with pytest.raises(ConfigError, match="at least one concept"):
        scorer.set_prompts([], [])
    with pytest.raises(ConfigError, match="both nominal and anomalous"):
        scorer.set_prompts(["cat"], ["cat"])
    assert scorer.concepts == ["road", "dog", "cat"]  # a rejected change keeps the old prompts


def test_prompt_config_fields_validate():
    from semanom_ros.core import PipelineConfig

    cfg = PipelineConfig(nominal_prompts=["road", "sky"], anomaly_prompts=["animal"], prompt_fusion_weight=0.3)
    assert cfg.validate().prompt_fusion_weight == 0.3
    with pytest.raises(ConfigError, match="prompt_fusion_weight"):
        PipelineConfig(prompt_fusion_weight=2.0).validate()
    with pytest.raises(ConfigError, match="nominal_prompts"):
        PipelineConfig(nominal_prompts="road").validate()
    with pytest.raises(ConfigError, match="kmeans_k_range"):
        PipelineConfig(kmeans_k_range=[1, 4]).validate()
    with pytest.raises(ConfigError, match="image_decision"):
        PipelineConfig(image_decision="vote").validate()


# -- wired into the Monitor -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_patch_bank(tmp_path_factory):
    from types import SimpleNamespace

    from conftest import textured_frame
    from semanom_ros.core import PatchBankBuilder, PipelineConfig
    from tiny_models import save_tiny_dinov2

    model = str(save_tiny_dinov2(tmp_path_factory.mktemp("dino")))
    cfg = PipelineConfig(model=model, input_height=56, calibration_window=0, alpha=0.99, min_component_area_px=0,
                         device="cpu", dtype="float32")
    builder = PatchBankBuilder(cfg)
    builder.add_all(SimpleNamespace(rgb=textured_frame(100 + i % 3), source="seq", index=i, stamp_ns=i)
                    for i in range(4))
    builder.calibrate()
    return cfg, builder


def test_monitor_fuses_the_prompt_map_into_the_knn_grid(tiny_patch_bank, tiny_owl):
    from conftest import textured_frame
    from semanom_ros.core import Monitor

    cfg, builder = tiny_patch_bank
    prompt_cfg = cfg.replace(prompt_model=tiny_owl, nominal_prompts=["road", "sky"], anomaly_prompts=["cat"],
                             prompt_fusion_weight=0.5)
    plain = Monitor(cfg.replace(prompt_model=tiny_owl), builder.bank, extractor=builder.extractor)
    fused = Monitor(prompt_cfg, builder.bank, extractor=builder.extractor)
    frame = textured_frame(7)
    knn_grid = plain.process(frame).patch_scores
    result = fused.process(frame)
    assert fused.threshold == plain.threshold  # the calibrated kNN threshold is kept
    prompt_map = fused.prompt_scorer.score_map(frame, knn_grid.shape)
    expected = fuse_score_maps(knn_grid, prompt_map, 0.5, plain.threshold)
    np.testing.assert_allclose(result.patch_scores, expected, rtol=1e-5, atol=1e-6)
    assert "prompts" in result.timings_ms

    # Run-time prompts change the fused grid; weight 0 keeps the scorer but skips fusion.
    fused.set_prompts(["road"], ["dog", "cat"])
    changed = fused.process(frame).patch_scores
    assert not np.allclose(changed, result.patch_scores)
    fused.set_prompt_fusion_weight(0.0)
    assert fused.prompt_scorer is not None
    np.testing.assert_allclose(fused.process(frame).patch_scores, knn_grid, rtol=1e-6)
    with pytest.raises(ConfigError, match="prompt_fusion_weight"):
        fused.set_prompt_fusion_weight(1.5)
    with pytest.raises(ConfigError, match="at least one concept"):
        fused.set_prompts([], [])

    # Raising the weight from 0 on a monitor without a scorer builds one from its config.
    with pytest.raises(ConfigError, match="at least one prompt"):
        plain.set_prompt_fusion_weight(0.5)
    plain.set_prompts(["road", "sky"], ["cat"])
    assert plain.prompt_scorer is None
    plain.set_prompt_fusion_weight(0.5)
    assert plain.prompt_scorer is not None
    fused.release()
    assert fused.prompt_scorer is None


def test_monitor_refuses_prompt_fusion_without_a_model_or_prompts(tiny_patch_bank):
    from semanom_ros.core import Monitor

    cfg, builder = tiny_patch_bank
    with pytest.raises(ConfigError, match="at least one prompt"):
        Monitor(cfg.replace(prompt_fusion_weight=0.5), builder.bank, extractor=builder.extractor)
    with pytest.raises(ConfigError, match="prompt_model"):
        Monitor(cfg.replace(prompt_fusion_weight=0.5, prompt_model="", nominal_prompts=["road"]),
                builder.bank, extractor=builder.extractor)
