"""The detection engine. Nothing below this package imports ROS."""
from .bank import ModelSignature, NominalBank, check_signature
from .config import PipelineConfig
from .errors import BankError, BankMismatchError, ConfigError, ImageError, ModelError, SemanomError
from .features import FeatureExtractor, Features, validate_rgb
from .maps import Component
from .monitor import AnomalyResult, Monitor, PatchBankBuilder

__all__ = [
    "AnomalyResult",
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
