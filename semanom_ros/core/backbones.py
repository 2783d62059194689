"""Vision backbones the feature extractor can run, chosen by the checkpoint's ``config.model_type``.

Each ``transformers`` family lays out its last hidden state differently; a :class:`BackboneSpec`
says how to build the model, what to pass to its forward and how many tokens precede the patch
tokens. Families:

=========================  =====================================  ======================  ===========
model_type                 example checkpoint                     tokens before patches   global token
=========================  =====================================  ======================  ===========
``dinov2``                 facebook/dinov2-small                  CLS                     CLS
``dinov2_with_registers``  facebook/dinov2-with-registers-small   CLS + registers         CLS
``vit``                    google/vit-huge-patch14-224-in21k      CLS                     CLS
``ijepa``                  facebook/ijepa_vith14_1k               none                    mean of patches
=========================  =====================================  ======================  ===========

ViT and I-JEPA use fixed position embeddings for their training size; the extractor feeds
frames at their own aspect ratio, so they run with ``interpolate_pos_encoding=True`` (DINOv2
always interpolates). ViT is built without its pooling layer (unused, and randomly initialised
for in21k checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class BackboneSpec:
    model_type: str
    model_class: str  # transformers class name
    has_cls: bool  # False: the global embedding is the mean of the patch tokens
    register_tokens_attr: str | None = None  # config attribute counting extra prefix tokens
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def num_prefix_tokens(self, config: Any) -> int:
        """Tokens before the first patch token in the last hidden state."""
        extra = int(getattr(config, self.register_tokens_attr, 0) or 0) if self.register_tokens_attr else 0
        return int(self.has_cls) + extra


BACKBONES: dict[str, BackboneSpec] = {
    "dinov2": BackboneSpec("dinov2", "Dinov2Model", has_cls=True),
    "dinov2_with_registers": BackboneSpec(
        "dinov2_with_registers", "Dinov2WithRegistersModel", has_cls=True, register_tokens_attr="num_register_tokens"
    ),
    "vit": BackboneSpec(
        "vit", "ViTModel", has_cls=True,
        init_kwargs={"add_pooling_layer": False}, forward_kwargs={"interpolate_pos_encoding": True},
    ),
    "ijepa": BackboneSpec(
        "ijepa", "IJepaModel", has_cls=False,
        init_kwargs={"add_pooling_layer": False}, forward_kwargs={"interpolate_pos_encoding": True},
    ),
}


def supported_model_types() -> tuple[str, ...]:
    return tuple(BACKBONES)


def backbone_spec(model_type: str) -> BackboneSpec | None:
    """The spec of a ``config.model_type``, or None when the family is not supported."""
    return BACKBONES.get(model_type)


def load_backbone_model(source: str, spec: BackboneSpec) -> torch.nn.Module:
    """``from_pretrained`` through the family's own class (so ViT can drop its pooling layer)."""
    import transformers

    cls = getattr(transformers, spec.model_class)
    return cls.from_pretrained(source, **spec.init_kwargs)


def split_tokens(hidden: torch.Tensor, spec: BackboneSpec, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) L2-normalised last hidden state -> (global (B, D), patches (B, N, D)), both unit rows.

    Without a CLS token the global embedding is the re-normalised mean of the patch tokens.
    """
    patches = hidden[:, num_prefix_tokens:]
    if spec.has_cls:
        return hidden[:, 0], patches
    return torch.nn.functional.normalize(patches.mean(dim=1), dim=-1), patches


__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "backbone_spec",
    "load_backbone_model",
    "split_tokens",
    "supported_model_types",
]
