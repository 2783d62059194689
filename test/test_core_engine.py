"""Behaviour of the core engine with tiny random-init DINOv2 checkpoints (no ROS, no real weights)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import textured_frame
from semanom_ros.core import (
    BankError,
    BankMismatchError,
    ConfigError,
    FeatureExtractor,
    ImageError,
    ModelError,
    Monitor,
    NominalBank,
    PatchBankBuilder,
    PipelineConfig,
)
from semanom_ros.core.bank import ModelSignature
from semanom_ros.core.maps import render_overlay, threshold_components, upsample_scores
from semanom_ros.core.scoring import calibrate, knn_scores, leave_one_out_scores, threshold_for_alpha


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, field",
    [
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"k": 0}, "k"),
        ({"input_height": 5}, "input_height"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"min_component_area_px": -1}, "min_component_area_px"),
        ({"overlay_alpha": 1.5}, "overlay_alpha"),
        ({"calibration_level": "pixel"}, "calibration_level"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        PipelineConfig(**changes).validate()


# -- features --------------------------------------------------------------------------------
def test_extractor_gives_unit_patch_grid_with_aspect_kept(tiny_model):
    ex = FeatureExtractor(tiny_model, input_height=56)
    feats = ex.extract(textured_frame(0, 90, 180))
    assert feats.input_size == (56, 112)  # height fixed, 2:1 aspect kept, multiples of 14
    assert feats.patches.shape == (4, 8, 32)
    assert feats.image_size == (90, 180)
    np.testing.assert_allclose(np.linalg.norm(feats.patches, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats.cls), 1.0, atol=1e-5)
    assert len(ex.fingerprint) == 24


def test_batched_extraction_matches_single_frames(tiny_model):
    ex = FeatureExtractor(tiny_model, input_height=42)
    frames = [textured_frame(i) for i in range(3)] + [textured_frame(9, 60, 60)]
    batched = ex.extract_batch(frames)
    for frame, feat in zip(frames, batched):
        np.testing.assert_allclose(ex.extract(frame).patches, feat.patches, atol=1e-5)
    assert batched[3].patches.shape[:2] == (3, 3)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((40, 40), np.uint8), "grayscale"),
        (np.zeros((40, 40, 4), np.uint8), "RGBA"),
        (np.zeros((40, 40, 3), np.uint16), "uint16"),
        (np.zeros((0, 40, 3), np.uint8), "empty"),
        (np.zeros((10, 40, 3), np.uint8), "smaller than one"),
        (np.zeros((40, 40, 3), np.uint8)[:, ::-1], "C-contiguous"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_frames_fail_clearly(tiny_model, image, message):
    ex = FeatureExtractor(tiny_model, input_height=28)
    with pytest.raises(ImageError, match=message):
        ex.extract(image)


def test_model_folder_that_is_not_dinov2_is_rejected(tmp_path):
    # A text model has no patch tokens: not a supported vision backbone (ViT and I-JEPA are, see test_backbones).
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="'bert' checkpoint, not DINOv2 or another supported backbone"):
        FeatureExtractor(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        FeatureExtractor(str(tmp_path / "empty"))


# -- bank ------------------------------------------------------------------------------------
def _sig(dim=8, model="m", fingerprint="f", input_height=224):
    return ModelSignature(model=model, fingerprint=fingerprint, input_height=input_height, dim=dim)


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_bank(frames=6, per_frame=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    bank = NominalBank(_sig(dim))
    for i in range(frames):
        bank.add_frame(_unit(rng, per_frame, dim), source="bag_a", index=i, stamp_ns=1000 + i, topic="/cam")
    return bank


def test_search_matches_brute_force_and_exclusion_skips_ranges():
    bank = _random_bank()
    rng = np.random.default_rng(5)
    queries = _unit(rng, 7, 8)
    base = bank.vectors.astype(np.float32)
    sims, ids = bank.search(queries, k=3)
    brute = queries @ base.T
    np.testing.assert_allclose(sims, -np.sort(-brute, axis=1)[:, :3], atol=1e-5)
    excl_sims, excl_ids = bank.search(queries, k=2, exclude=[(0, 10), (20, 25)])
    brute[:, 0:10] = -np.inf
    brute[:, 20:25] = -np.inf
    assert not np.isin(excl_ids, list(range(10)) + list(range(20, 25))).any()
    np.testing.assert_allclose(excl_sims, -np.sort(-brute, axis=1)[:, :2], atol=1e-5)


def test_knn_score_is_one_minus_mean_of_k_nearest():
    bank = _random_bank()
    q = bank.vectors[:3].astype(np.float32)
    np.testing.assert_allclose(knn_scores(bank, q, k=1), 0.0, atol=1e-3)  # fp16 storage
    sims = np.sort(q @ bank.vectors.astype(np.float32).T, axis=1)[:, ::-1]
    np.testing.assert_allclose(knn_scores(bank, q, k=4), 1 - sims[:, :4].mean(1), atol=1e-3)


def test_save_load_round_trip_keeps_vectors_provenance_and_calibration(tmp_path):
    bank = _random_bank()
    calibrate(bank, alpha=0.9, window=1)
    bank.save(tmp_path / "bank")
    loaded = NominalBank.load(tmp_path / "bank")
    np.testing.assert_array_equal(loaded.vectors, bank.vectors)
    np.testing.assert_array_equal(loaded.frames, bank.frames)
    assert loaded.calibration["threshold"] == pytest.approx(bank.calibration["threshold"])
    assert loaded.sources[0].name == "bag_a" and loaded.sources[0].frames == 6
    assert (loaded.sources[0].first_stamp_ns, loaded.sources[0].last_stamp_ns) == (1000, 1005)
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    for key in ("format_version", "model", "num_vectors", "dim", "sources", "calibration", "files"):
        assert key in manifest
    assert manifest["calibration"]["window"] == 1 and manifest["calibration"]["alpha"] == 0.9


def test_interrupted_save_leaves_previous_bank_intact(tmp_path, monkeypatch):
    path = tmp_path / "bank"
    old = _random_bank(seed=1)
    old.save(path)
    new = _random_bank(frames=9, seed=2)
    import semanom_ros.core.bank.store as bank_mod

    calls = {"n": 0}
    real_save = np.save

    def failing_save(fh, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated Ctrl-C mid-write")
        return real_save(fh, arr, **kw)

    monkeypatch.setattr(bank_mod.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    reloaded = NominalBank.load(path)
    np.testing.assert_array_equal(reloaded.vectors, old.vectors)
    assert reloaded.num_frames == 6
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # no temp directory left behind
    new.save(path)  # and a later save replaces it
    assert NominalBank.load(path).num_frames == 9


def test_crash_between_renames_is_recovered_on_load(tmp_path):
    path = tmp_path / "bank"
    _random_bank().save(path)
    path.rename(tmp_path / ".bank.old")  # what a crash between the two fallback renames leaves
    assert NominalBank.load(path).num_frames == 6


@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "bad_json", "foreign", "missing_file", "bitflip"])
def test_damaged_bank_directories_fail_with_a_clear_error(tmp_path, damage):
    path = tmp_path / "bank"
    _random_bank().save(path)
    if damage == "truncate":
        f = path / "embeddings.npy"
        f.write_bytes(f.read_bytes()[:-20])
        match = "truncated"
    elif damage == "no_manifest":
        (path / "manifest.json").unlink()
        match = "no manifest.json"
    elif damage == "bad_json":
        (path / "manifest.json").write_text("{not json")
        match = "corrupt"
    elif damage == "foreign":
        (path / "manifest.json").write_text('{"hello": 1}')
        match = "not a semanom_ros bank"
    elif damage == "missing_file":
        (path / "frames.npy").unlink()
        match = "missing frames.npy"
    else:
        f = path / "embeddings.npy"
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
        match = "checksum"
    with pytest.raises(BankError, match=match):
        NominalBank.load(path)
    with pytest.raises(BankError, match="does not exist"):
        NominalBank.load(tmp_path / "nowhere")


def test_from_vectors_and_merge():
    rng = np.random.default_rng(3)
    vecs = _unit(rng, 12, 8)
    a = NominalBank.from_vectors(vecs, _sig(), frame_of_vector=np.repeat(np.arange(4), 3))
    assert (len(a), a.num_frames) == (12, 4)
    b = _random_bank()
    a.merge(b)
    assert (len(a), a.num_frames, len(a.sources)) == (42, 10, 2)
    with pytest.raises(BankMismatchError, match="input size"):
        a.merge(NominalBank(_sig(input_height=448)))


# -- calibration -----------------------------------------------------------------------------
def test_leave_one_out_window_excludes_temporal_neighbours():
    # Frames come in identical pairs (a video's near-duplicate neighbours).
    rng = np.random.default_rng(0)
    bank = NominalBank(_sig())
    for i in range(10):
        bank.add_frame(_unit(np.random.default_rng(i // 2), 4, 8), source="s", index=i)
    self_only, _ = leave_one_out_scores(bank, window=0)
    np.testing.assert_allclose(self_only, 0.0, atol=1e-3)  # the twin is found: threshold far too low
    with_window, _ = leave_one_out_scores(bank, window=1)
    assert (with_window > 0.05).all()
    del rng


def test_threshold_is_alpha_quantile_of_leave_one_out_scores():
    bank = _random_bank(frames=12, per_frame=6)
    cal = calibrate(bank, alpha=0.9, window=1, level="patch")
    _, patch = leave_one_out_scores(bank, window=1)
    assert cal["threshold"] == pytest.approx(np.quantile(patch, 0.9), abs=1e-6)
    img_cal = calibrate(bank, alpha=0.5, window=1, level="image")
    images, _ = leave_one_out_scores(bank, window=1)
    assert img_cal["threshold"] == pytest.approx(np.quantile(images, 0.5), abs=1e-6)
    # the stored table re-derives thresholds for other alphas without searching again
    assert threshold_for_alpha(cal, 0.9, "patch") == pytest.approx(np.quantile(patch, 0.9), abs=2e-3)
    assert threshold_for_alpha(cal, 0.5, "patch") < threshold_for_alpha(cal, 0.99, "patch")
    with pytest.raises(ConfigError, match="alpha"):
        calibrate(bank, alpha=1.2)


# -- maps ------------------------------------------------------------------------------------
def test_components_smaller_than_min_area_are_dropped():
    score = np.zeros((60, 80), np.float32)
    score[5:25, 5:25] = 0.9  # 400 px
    score[40:44, 60:64] = 0.5  # 16 px
    mask, labels, comps = threshold_components(score, 0.3, min_component_area_px=50)
    assert len(comps) == 1 and comps[0].area_px == 400 and comps[0].bbox == (5, 5, 20, 20)
    assert comps[0].peak_score == pytest.approx(0.9)
    assert mask.sum() == 400 and labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1}
    _, _, both = threshold_components(score, 0.3, min_component_area_px=10)
    assert [c.peak_score for c in both] == pytest.approx([0.9, 0.5])  # ordered by peak score
    up = upsample_scores(np.array([[0.0, 1.0]], np.float32), (10, 20))
    assert up.shape == (10, 20) and up[:, 0].max() < up[:, -1].min()
    overlay = render_overlay(np.zeros((60, 80, 3), np.uint8), score, mask, comps, 0.3)
    assert overlay.shape == (60, 80, 3) and overlay.dtype == np.uint8


# -- monitor ---------------------------------------------------------------------------------
def _frames(n, height=84, width=140):
    return [
        SimpleNamespace(rgb=textured_frame(100 + i % 3, height, width), source="seq", index=i, stamp_ns=i)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_bank(tiny_model):
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=0, alpha=0.99, min_component_area_px=0)
    builder = PatchBankBuilder(cfg)
    builder.add_all(_frames(6))
    builder.calibrate()
    return cfg, builder


def test_monitor_flags_a_pasted_object_and_localises_it(tiny_bank):
    cfg, builder = tiny_bank
    monitor = Monitor(cfg, builder.bank, extractor=builder.extractor)
    nominal = textured_frame(100, 84, 140)
    quiet = monitor.process(nominal)
    assert not quiet.is_anomalous and quiet.score < monitor.threshold
    odd = nominal.copy()
    odd[28:70, 70:126] = [255, 0, 255]
    odd[40:60, 80:110] = [0, 255, 0]
    result = monitor.process(odd)
    assert result.is_anomalous and result.score > monitor.threshold
    assert result.score_map.shape == (84, 140) and result.mask.shape == (84, 140)
    inside = result.score_map[30:68, 72:124].mean()
    outside = result.score_map[:, :50].mean()
    assert inside > 3 * outside
    x, y, w, h = result.components[0].bbox
    assert x + w > 70 and y + h > 28  # the component overlaps the pasted block
    assert set(result.timings_ms) == {"features", "search", "maps"}


def test_ignore_mask_removes_region_from_scoring(tiny_bank, tmp_path):
    import cv2

    cfg, builder = tiny_bank
    ignore = np.zeros((84, 140), np.uint8)
    ignore[:, 56:] = 255
    cv2.imwrite(str(tmp_path / "ignore.png"), ignore)
    monitor = Monitor(cfg.replace(ignore_mask=str(tmp_path / "ignore.png")), builder.bank, extractor=builder.extractor)
    odd = textured_frame(100, 84, 140)
    odd[28:70, 70:126] = [255, 0, 255]
    result = monitor.process(odd)
    assert not result.is_anomalous
    assert result.patch_scores[:, 4:].max() == 0.0


def test_monitor_refuses_banks_of_another_model_or_size(tiny_bank, other_tiny_model):
    cfg, builder = tiny_bank
    with pytest.raises(BankMismatchError, match="model"):
        Monitor(cfg.replace(model=other_tiny_model), builder.bank)
    with pytest.raises(BankMismatchError, match="input_height 56"):
        Monitor(cfg.replace(input_height=28), builder.bank)


def test_monitor_runtime_threshold_alpha_and_calibration_checks(tiny_bank):
    cfg, builder = tiny_bank
    monitor = Monitor(cfg, builder.bank, extractor=builder.extractor)
    low = monitor.set_alpha(0.5)
    assert low <= monitor.set_alpha(0.99)
    monitor.set_threshold(0.0)
    assert monitor.process(textured_frame(100, 84, 140)).is_anomalous
    with pytest.raises(ConfigError, match="threshold"):
        monitor.set_threshold(5.0)
    with pytest.raises(ConfigError, match="k: the bank was calibrated with 1"):
        Monitor(cfg.replace(k=3), builder.bank, extractor=builder.extractor)
    uncalibrated = NominalBank(builder.bank.signature)
    uncalibrated.add_frame(builder.bank.frame_vectors(0), source="s", index=0)
    with pytest.raises(BankError, match="not calibrated"):
        Monitor(cfg, uncalibrated, extractor=builder.extractor)
    assert Monitor(cfg.replace(threshold=0.3), uncalibrated, extractor=builder.extractor).threshold == 0.3


def test_builder_appends_to_existing_bank_only_with_same_model(tiny_bank, other_tiny_model, tmp_path):
    cfg, builder = tiny_bank
    builder.bank.save(tmp_path / "b")
    existing = NominalBank.load(tmp_path / "b")
    more = PatchBankBuilder(cfg, extractor=builder.extractor, bank=existing)
    more.add_all(_frames(2))
    assert more.bank.num_frames == builder.bank.num_frames + 2
    with pytest.raises(BankMismatchError):
        PatchBankBuilder(cfg.replace(model=other_tiny_model), bank=NominalBank.load(tmp_path / "b"))
