"""What must match between a bank and the pipeline that scores with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BankMismatchError


@dataclass
class ModelSignature:
    """What must match between a bank and the pipeline that scores with it."""

    model: str
    fingerprint: str
    input_height: int
    dim: int
    patch_size: int = 14
    # Backbone output the vectors come from (PipelineConfig.feature_layer; 0 = the last hidden state).
    feature_layer: int = 0

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(
            model=self.model,
            fingerprint=self.fingerprint,
            input_height=self.input_height,
            dim=self.dim,
            patch_size=self.patch_size,
        )
        if self.feature_layer:  # left out at the default, so banks from before the option read the same
            values["feature_layer"] = self.feature_layer
        return values


def check_signature(bank: ModelSignature, pipeline: ModelSignature, where: str = "bank") -> None:
    """Raise BankMismatchError naming exactly what differs between a bank and a pipeline."""
    problems = []
    if bank.fingerprint != pipeline.fingerprint:
        problems.append(
            f"model: the {where} was built with {bank.model!r} (weights {bank.fingerprint}), "
            f"the pipeline uses {pipeline.model!r} (weights {pipeline.fingerprint})"
        )
    if bank.input_height != pipeline.input_height:
        problems.append(
            f"input size: the {where} was built at input_height {bank.input_height}, "
            f"the pipeline uses {pipeline.input_height}"
        )
    if bank.feature_layer != pipeline.feature_layer:
        problems.append(
            f"feature layer: the {where} holds {_layer_name(bank.feature_layer)} vectors, "
            f"the pipeline uses {_layer_name(pipeline.feature_layer)} (feature_layer {pipeline.feature_layer})"
        )
    if bank.dim != pipeline.dim:
        problems.append(f"dimension: the {where} holds {bank.dim}-d vectors, the model gives {pipeline.dim}-d")
    if problems:
        raise BankMismatchError(
            "; ".join(problems) + ". Rebuild the bank with this model and input size, or set the pipeline to match."
        )


def _layer_name(layer: int) -> str:
    return "last-layer" if layer == 0 else f"block-{layer}"


__all__ = ["ModelSignature", "check_signature"]
