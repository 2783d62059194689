"""The detection engine. Nothing below this package imports ROS."""
from .bank import ModelSignature, NominalBank, check_signature
from .config import PipelineConfig
from .errors import BankError, BankMismatchError, ConfigError, ImageError, ModelError, SemanomError
from .features import FeatureExtractor, Features, validate_rgb
from .maps import Component
from .monitor import AnomalyResult, Monitor, PatchBankBuilder
from .instances import (
    Instance,
    InstanceBankBuilder,
    InstancePipeline,
    build_instance_bank,
    draw_instances,
    mask_average_embeddings,
)
from .detector import BoxProposer, merge_overlapping_boxes
from .segmenter import Sam2Segmenter

__all__ = [
    "AnomalyResult",
    "BoxProposer",
    "Instance",
    "InstanceBankBuilder",
    "InstancePipeline",
    "Sam2Segmenter",
    "build_instance_bank",
    "draw_instances",
    "mask_average_embeddings",
    "merge_overlapping_boxes",
    "BankError",
    "BankMismatchError",
    "Component",
    "ConfigError",
    "FeatureExtractor",
    "Features",
    "ImageError",
    "ModelError",
    "ModelSignature",
    "Monitor",
    "NominalBank",
    "PatchBankBuilder",
    "PipelineConfig",
    "SemanomError",
    "check_signature",
    "validate_rgb",
]
