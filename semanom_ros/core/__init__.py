"""The detection engine. Nothing below this package imports ROS."""
from .bank import ModelSignature, NominalBank, check_signature
from .bank.builder import BankBuilder, PatchBankBuilder
from .config import PipelineConfig
from .errors import BankError, BankMismatchError, ConfigError, ImageError, ModelError, SemanomError
from .features import FeatureExtractor, Features, validate_rgb
from .ignore import IgnoreMask, load_ignore_mask
from .instances import (
    BoxProposer,
    Instance,
    InstanceBankBuilder,
    InstancePipeline,
    Sam2Segmenter,
    build_instance_bank,
    draw_instances,
    mask_average_embeddings,
    merge_overlapping_boxes,
)
from .maps import Component
from .monitor import Monitor
from .result import AnomalyResult, FrameLike
from .scorers import CombinedScorer, InstanceScorer, PatchScorer, SceneModeScorer, SceneScorer, Scorer
from .scorers.scene import build_scene_bank
from .scoring import calibrate_bank
from .search import IndexSpec, SearchIndex
from .threads import configure_threads

__all__ = [
    "AnomalyResult",
    "BankBuilder",
    "BankError",
    "BankMismatchError",
    "BoxProposer",
    "CombinedScorer",
    "Component",
    "ConfigError",
    "FeatureExtractor",
    "Features",
    "FrameLike",
    "IgnoreMask",
    "ImageError",
    "IndexSpec",
    "Instance",
    "InstanceBankBuilder",
    "InstancePipeline",
    "InstanceScorer",
    "ModelError",
    "ModelSignature",
    "Monitor",
    "NominalBank",
    "PatchBankBuilder",
    "PatchScorer",
    "PipelineConfig",
    "Sam2Segmenter",
    "SceneModeScorer",
    "SceneScorer",
    "Scorer",
    "SearchIndex",
    "SemanomError",
    "build_instance_bank",
    "build_scene_bank",
    "calibrate_bank",
    "check_signature",
    "configure_threads",
    "draw_instances",
    "load_ignore_mask",
    "mask_average_embeddings",
    "merge_overlapping_boxes",
    "validate_rgb",
]
