"""The on-device pipeline (issue #13), exercised on CPU tensors.

Resize as matrix products, the torch search backend behind the bank, mask averaging on the
patches' device, several cameras in one call.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from conftest import textured_frame
from semanom_ros.core import Monitor, PatchBankBuilder, PipelineConfig, mask_average_embeddings
from semanom_ros.core.resize import area_weights, mask_coverage, resize_chw
from semanom_ros.core.search import index as search_index_module
from semanom_ros.core.search.torch_exact import DeviceFit, TorchExactIndex


@pytest.fixture(scope="module")
def tiny_bank(tiny_model):
    cfg = PipelineConfig(model=tiny_model, input_height=28, device="cpu", calibration_window=1)
    builder = PatchBankBuilder(cfg)
    builder.add_all(SimpleNamespace(rgb=textured_frame(i), source="s", index=i, stamp_ns=i) for i in range(8))
    builder.calibrate()
    return cfg, builder.bank


@pytest.mark.parametrize("size,out", [((540, 960), (224, 392)), ((100, 140), (28, 42)), ((84, 140), (28, 42))])
def test_area_resize_reproduces_opencv(size, out):
    rgb = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    expected = cv2.resize(rgb, (out[1], out[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
    got = resize_chw(torch.from_numpy(rgb).permute(2, 0, 1).float(), out).permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 0.5 + 1e-3  # before rounding: within half a level
    assert (np.round(got) != expected).mean() < 1e-2  # after rounding: only exact .5 ties differ


def test_area_weights_rows_sum_to_one_and_reject_enlarging():
    w = area_weights(17, 5)
    assert w.shape == (5, 17) and np.allclose(w.sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        area_weights(5, 17)


def test_mask_coverage_matches_opencv_per_mask():
    masks = np.random.default_rng(1).random((3, 90, 130)) > 0.6
    expected = np.stack([cv2.resize(m.astype(np.float32), (9, 6), interpolation=cv2.INTER_AREA) for m in masks])
    assert np.allclose(mask_coverage(torch.from_numpy(masks), (6, 9)).numpy(), expected, atol=1e-6)


def test_device_preprocessing_matches_host(tiny_bank):
    cfg, bank = tiny_bank
    monitor = Monitor(cfg, bank)
    frame = textured_frame(42, 120, 250)
    host = monitor.extractor.preprocess(frame)
    monitor.extractor.preprocess_on_device = True
    device = monitor.extractor.preprocess_tensor(frame).numpy()
    one_level = 1.0 / (255 * 0.224)  # one uint8 level after normalisation (smallest std)
    assert device.shape == host.shape and np.abs(device - host).max() <= one_level + 1e-4


def test_torch_backend_scores_like_faiss(tiny_bank):
    cfg, bank = tiny_bank
    faiss_monitor = Monitor(cfg.replace(search_backend="faiss"), bank)
    assert faiss_monitor.bank.index_info["backend"] == "faiss"
    frames = [textured_frame(100 + i, 96, 170) for i in range(3)]
    expected = [faiss_monitor.process(f) for f in frames]
    torch_monitor = Monitor(cfg.replace(search_backend="torch"), bank)
    assert torch_monitor.bank.index_info["backend"] == "torch"
    assert isinstance(torch_monitor.bank.search_index.ensure(), TorchExactIndex)
    torch_monitor.extractor.preprocess_on_device = True
    for frame, ref in zip(frames, expected):
        got = torch_monitor.process(frame)
        assert np.abs(got.score_map - ref.score_map).max() <= 1e-3
        assert got.is_anomalous == ref.is_anomalous and np.array_equal(got.mask, ref.mask)


def test_auto_backend_uses_faiss_on_cpu(tiny_bank):
    cfg, bank = tiny_bank
    assert Monitor(cfg, bank).bank.index_info["backend"] == "faiss"


def test_bank_too_large_for_device_falls_back_to_faiss_with_reason(tiny_bank, monkeypatch):
    cfg, bank = tiny_bank
    reason = "bank of 48 x 32 float32 needs 1 GiB, the budget is 1 MiB"
    monkeypatch.setattr(
        search_index_module, "device_fit", lambda *a, **k: DeviceFit(False, 1 << 30, 1 << 20, "cpu", reason)
    )
    monitor = Monitor(cfg.replace(search_backend="torch", search_memory_fraction=0.2), bank)
    assert monitor.bank.index_info["backend"] == "faiss"
    assert any(reason in w for w in monitor.bank.warnings)


def test_process_batch_equals_per_frame(tiny_bank):
    cfg, bank = tiny_bank
    monitor = Monitor(cfg.replace(search_backend="torch"), bank)
    frames = [textured_frame(7, 96, 170), textured_frame(8, 96, 170), textured_frame(9, 60, 100)]
    batched = monitor.process_batch(frames)
    for frame, got in zip(frames, batched):
        ref = monitor.process(frame)
        assert np.allclose(got.score_map, ref.score_map, atol=1e-5) and got.is_anomalous == ref.is_anomalous
    assert monitor.process_batch([]) == []


def test_mask_averaging_on_tensor_patches_equals_numpy():
    rng = np.random.default_rng(2)
    patches = rng.normal(size=(4, 6, 16)).astype(np.float32)
    masks = rng.random((3, 56, 84)) > 0.5
    ref = mask_average_embeddings(patches, masks, (56, 84))
    got = mask_average_embeddings(torch.from_numpy(patches), masks, (56, 84))
    assert np.allclose(got.vectors, ref.vectors, atol=1e-5) and np.array_equal(got.index, ref.index)
