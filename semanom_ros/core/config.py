"""The one configuration object that describes a detection pipeline.

Nodes fill it from ROS parameters, tools from flags or YAML; a bank's manifest records the
parts that must match at scoring time (model, input size), so a bank is never scored with
features from another model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

DEFAULT_MODEL = "facebook/dinov2-small"


@dataclass
class PipelineConfig:
    """Everything that decides what a frame's anomaly result is.

    Fields that must match the bank (``model``, ``input_height``) are checked against the
    bank's manifest when a :class:`~semanom_ros.core.monitor.Monitor` is built.
    """

    # Backbone: a transformers hub id or a local folder saved with save_pretrained.
    model: str = DEFAULT_MODEL
    # Height in pixels the frame is resized to before the backbone; the width keeps the aspect
    # ratio and both are rounded to multiples of the patch size.
    input_height: int = 224
    # Optional cap on the resized width (very wide panoramas would otherwise explode).
    max_input_width: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16
    batch_size: int = 8  # frames per forward pass in offline tools
    num_threads: int = 0  # torch/faiss CPU threads; 0 = leave the libraries' defaults

    # Scoring: patch score = 1 - mean cosine similarity of its k nearest bank vectors.
    k: int = 1
    # Smoothing of the patch score grid (Gaussian sigma in patches; 0 = none).
    score_smoothing_sigma: float = 0.0

    # Calibration: threshold = alpha-quantile of leave-one-out image scores of nominal frames.
    alpha: float = 0.999
    # "patch": quantile over all nominal patch scores (pixels; the area filter decides the image);
    # "image": quantile over each nominal frame's highest patch score.
    calibration_level: str = "patch"
    # Frames on each side of a nominal frame (same source, message ordinal) left out of its
    # leave-one-out search: consecutive video frames are near duplicates.
    calibration_window: int = 12
    # At most this many bank frames are scored during calibration (evenly spaced).
    calibration_max_frames: int = 300
    # Use this threshold instead of the bank's calibrated one (None = the bank's).
    threshold: float | None = None

    # Maps: connected components of the thresholded score map smaller than this are dropped.
    min_component_area_px: int = 500
    # Optional image (non-zero = ignore) of pixels left out of both bank and scoring.
    ignore_mask: str | None = None
    # A patch is ignored when more than this fraction of its pixels is ignored.
    ignore_patch_fraction: float = 0.5

    overlay_alpha: float = 0.5

    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "PipelineConfig":
        """Raise :class:`ConfigError` naming the first bad field and its allowed range."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model: must be a hub id such as 'facebook/dinov2-small' or a local folder")
        _check_int(self, "input_height", 14, 4096)
        if self.max_input_width is not None:
            _check_int(self, "max_input_width", 14, 16384)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype: {self.dtype!r} is not one of auto, float32, float16, bfloat16")
        _check_int(self, "batch_size", 1, 1024)
        _check_int(self, "num_threads", 0, 1024)
        _check_int(self, "k", 1, 1024)
        _check_float(self, "score_smoothing_sigma", 0.0, 100.0)
        if not (0.0 < float(self.alpha) < 1.0):
            raise ConfigError(f"alpha: {self.alpha} is outside (0, 1); e.g. 0.999 marks the top 0.1 % of nominal patch scores")
        if self.calibration_level not in ("patch", "image"):
            raise ConfigError(f"calibration_level: {self.calibration_level!r} is not one of patch, image")
        _check_int(self, "calibration_window", 0, 100000)
        _check_int(self, "calibration_max_frames", 1, 10**7)
        if self.threshold is not None:
            _check_float(self, "threshold", 0.0, 2.0)
        _check_int(self, "min_component_area_px", 0, 10**9)
        _check_float(self, "ignore_patch_fraction", 0.0, 1.0)
        _check_float(self, "overlay_alpha", 0.0, 1.0)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Build from a mapping; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**dict(values)).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        # Accept both a flat mapping and ROS parameter files (node: ros__parameters: {...}).
        if len(data) == 1:
            (only,) = data.values()
            if isinstance(only, dict) and "ros__parameters" in only:
                data = only["ros__parameters"]
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes).validate()


def _check_int(cfg: PipelineConfig, name: str, lo: int, hi: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name}: {value!r} must be an integer in [{lo}, {hi}]")


def _check_float(cfg: PipelineConfig, name: str, lo: float, hi: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"{name}: {value!r} must be a number in [{lo}, {hi}]")
