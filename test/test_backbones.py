"""Backbone families through FeatureExtractor: tiny random configs saved and reloaded with from_pretrained."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semanom_ros.core import FeatureExtractor, ModelError
from semanom_ros.core.backbones import BACKBONES, backbone_spec, supported_model_types

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _save(family: str, folder) -> None:
    import transformers as tf

    torch.manual_seed(0)
    if family == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**TINY, patch_size=14, image_size=56))
    elif family == "dinov2_with_registers":
        model = tf.Dinov2WithRegistersModel(
            tf.Dinov2WithRegistersConfig(**TINY, patch_size=14, image_size=56, num_register_tokens=4)
        )
    elif family == "vit":
        model = tf.ViTModel(tf.ViTConfig(**TINY, patch_size=14, image_size=56), add_pooling_layer=True)
    elif family == "ijepa":
        model = tf.IJepaModel(tf.IJepaConfig(**TINY, patch_size=14, image_size=56))
    else:
        raise AssertionError(family)
    model.eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(60, 110, 3), dtype=np.uint8)  # not square: 2 x 4 patches at height 28


@pytest.mark.parametrize("family", ["dinov2", "dinov2_with_registers", "vit", "ijepa"])
def test_each_family_gives_a_patch_grid_and_a_global_token(tmp_path, frame, family):
    _save(family, tmp_path / family)
    ex = FeatureExtractor(str(tmp_path / family), input_height=28, device="cpu", dtype="float32")
    assert ex.model_type == family
    f = ex.extract(frame)
    assert f.patches.shape == (2, 4, 32) and f.cls.shape == (32,)
    np.testing.assert_allclose(np.linalg.norm(f.patches, axis=-1), 1.0, atol=1e-5)
    assert np.linalg.norm(f.cls) == pytest.approx(1.0, abs=1e-5)

    # The split matches the family's token layout in the raw last hidden state.
    x = torch.from_numpy(ex.preprocess(frame))[None]
    with torch.inference_mode():
        hidden = ex.model(pixel_values=x, **BACKBONES[family].forward_kwargs).last_hidden_state[0]
    hidden = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    prefix = {"dinov2": 1, "dinov2_with_registers": 5, "vit": 1, "ijepa": 0}[family]
    assert ex.num_prefix_tokens == prefix and hidden.shape[0] == prefix + 8
    np.testing.assert_allclose(f.patches.reshape(8, 32), hidden[prefix:], atol=1e-5)
    if family == "ijepa":  # no CLS: the global token is the mean of the patches
        mean = hidden.mean(axis=0)
        np.testing.assert_allclose(f.cls, mean / np.linalg.norm(mean), atol=1e-5)
        assert not ex.has_cls
    else:
        np.testing.assert_allclose(f.cls, hidden[0], atol=1e-5)


def test_vit_is_loaded_without_its_pooling_layer(tmp_path):
    _save("vit", tmp_path / "vit")
    ex = FeatureExtractor(str(tmp_path / "vit"), input_height=28, device="cpu", dtype="float32")
    assert ex.model.pooler is None


def test_unsupported_families_fail_with_the_supported_list(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    CLIPTextModel(CLIPTextConfig(**TINY, vocab_size=50, max_position_embeddings=16)).save_pretrained(tmp_path / "txt")
    expected = "'clip_text_model' checkpoint, not DINOv2 or another supported backbone.*ijepa"
    with pytest.raises(ModelError, match=expected):
        FeatureExtractor(str(tmp_path / "txt"))
    assert backbone_spec("bert") is None
    assert set(supported_model_types()) >= {"dinov2", "dinov2_with_registers", "vit", "ijepa"}
