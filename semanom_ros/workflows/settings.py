"""Settings: YAML files, command-line flags and ROS parameter values -> PipelineConfig and BuildOptions.

One rule for every front end: a setting left *unset* takes the bank's value (or the default when
there is no bank); a value that is set wins. "Unset" is ``None``, or, because ROS parameters
cannot be None, the field's marker in :data:`UNSET_MARKERS` ("" / 0 / a negative number), which a
YAML file may use too. :func:`config_from_bank` applies the rule to a bank's recorded settings;
:func:`resolve_build_settings` layers the settings of a bank build.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from semanom_ros.core.bank import MANIFEST, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.coreset import coreset_target_size
from semanom_ros.core.errors import ConfigError
from semanom_ros.core.selection import check_dedup_similarity

__all__ = [
    "BUILD_KEYS",
    "BuildOptions",
    "NEGATIVE",
    "NODE_ONLY_KEYS",
    "PIPELINE_KEYS",
    "UNSET_MARKERS",
    "absolute_paths",
    "config_from_bank",
    "config_from_yaml",
    "is_unset",
    "read_parameter_file",
    "read_settings_file",
    "resolve_build_settings",
    "set_values",
]

NEGATIVE = "negative"  # marker: any number < 0 means unset
# ROS parameters cannot be None: the value that stands for "unset" of each optional setting.
UNSET_MARKERS: Mapping[str, Any] = MappingProxyType({
    # PipelineConfig
    "model": "", "input_height": 0, "max_input_width": 0, "ignore_mask": "", "threshold": NEGATIVE,
    "instance_bank": "", "instance_threshold": NEGATIVE, "score_normalization": "",
    # BuildOptions
    "topic": "", "start_s": NEGATIVE, "end_s": NEGATIVE, "max_frames": 0, "coreset_fraction": 0,
    "coreset_size": 0, "dedup_similarity": 0,
})


def is_unset(name: str, value: Any) -> bool:
    """True for None and for the marker of ``name`` in :data:`UNSET_MARKERS`."""
    if value is None:
        return True
    if name not in UNSET_MARKERS:
        return False
    marker = UNSET_MARKERS[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if marker == NEGATIVE:
        return number and value < 0
    if isinstance(marker, str):
        return isinstance(value, str) and value.strip() == marker
    return number and value == marker


def set_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the unset ones (see :func:`is_unset`)."""
    return {k: v for k, v in values.items() if not is_unset(k, v)}


@dataclass
class BuildOptions:
    """How frames are chosen and what happens after embedding (the pipeline itself is a PipelineConfig)."""

    topic: str | None = None  # None = auto-detect (the image topic with the most messages)
    start_s: float | None = None  # seconds from the bag's start (< 1e9) or absolute Unix time
    end_s: float | None = None
    stride: int = 1  # keep every n-th message
    min_interval_s: float = 0.0  # drop a message sooner than this after the previous kept one
    dedup_similarity: float | None = None  # CLS cosine similarity >= this to the last kept frame: skip
    max_frames: int | None = None  # at most this many frames go into the bank in this build
    fps: float = 10.0  # image folders: stamp of file i = i / fps
    # Image folders: a folder of per-frame ignore masks, <image stem>.png, non-zero = pixels left out of the bank.
    masks: str | None = None
    # Image folders hold unrelated stills, not a video: each image is its own source (calibration never
    # treats a neighbouring file as a near duplicate).
    stills: bool = False
    append: bool = False  # add to the bank at the output path (same model and input size)
    coreset_fraction: float | None = None  # greedy k-center coreset to this fraction of the vectors ...
    coreset_size: int | None = None  # ... or to this many vectors
    coreset_seed: int = 0
    calibrate: bool = True
    progress: bool | None = None  # progress bars; None = when stderr is a terminal

    def validate(self) -> "BuildOptions":
        if self.topic is not None and (not isinstance(self.topic, str) or not self.topic.strip()):
            raise ConfigError(f"topic: {self.topic!r} must be a topic name such as /camera/image_raw")
        for name in ("start_s", "end_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{name}: {value!r} must be a number of seconds")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"stride: {self.stride!r} must be an integer >= 1 (keep every n-th message)")
        if isinstance(self.min_interval_s, bool) or not isinstance(self.min_interval_s, (int, float)) or not (
            float(self.min_interval_s) >= 0
        ):
            raise ConfigError(f"min_interval: {self.min_interval_s!r} must be a number of seconds >= 0")
        self.dedup_similarity = check_dedup_similarity(self.dedup_similarity)
        if self.max_frames is not None and (
            isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 1
        ):
            raise ConfigError(f"max_frames: {self.max_frames!r} must be an integer >= 1 (or unset for no limit)")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not float(self.fps) > 0:
            raise ConfigError(f"fps: {self.fps!r} must be > 0 (frames per second of an image folder)")
        if self.masks is not None and (not isinstance(self.masks, str) or not Path(self.masks).expanduser().is_dir()):
            raise ConfigError(f"masks: {self.masks!r} is not a folder (of <image stem>.png ignore masks)")
        if not isinstance(self.stills, bool):
            raise ConfigError(f"stills: {self.stills!r} must be true or false")
        if self.coreset_fraction is not None and self.coreset_size is not None:
            raise ConfigError(
                "coreset: give either a fraction (--coreset-fraction) or a size (--coreset-size), not both"
            )
        if self.coreset_fraction is not None or self.coreset_size is not None:
            coreset_target_size(1, self.coreset_fraction, self.coreset_size)  # argument checks only
        return self

    @property
    def coreset_requested(self) -> bool:
        return self.coreset_fraction is not None or self.coreset_size is not None


PIPELINE_KEYS = frozenset(f.name for f in dataclasses.fields(PipelineConfig))
BUILD_KEYS = frozenset(f.name for f in dataclasses.fields(BuildOptions))
# Keys of a bank_builder_node parameter file that only the node uses (the CLI ignores them).
NODE_ONLY_KEYS = frozenset({"output_bank", "sources", "input_type", "reliability", "start_recording"})


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML file.

    A flat mapping, or a ROS parameter file's ``node: {ros__parameters: {...}}`` (e.g.
    ``config/bank_builder.yaml``).
    """
    import yaml

    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} cannot be read as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    if len(data) == 1:
        (only,) = data.values()
        if isinstance(only, dict) and "ros__parameters" in only:
            data = only["ros__parameters"] or {}
    return dict(data)


def config_from_yaml(path: str | Path) -> PipelineConfig:
    """A PipelineConfig from a YAML file (flat, or a ROS parameter file); unknown keys are an error."""
    try:
        return PipelineConfig.from_dict(read_parameter_file(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_settings_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(PipelineConfig values, BuildOptions values) that a YAML file sets.

    Keys only the bank_builder_node uses are ignored, unknown keys are an error, unset values
    (:func:`is_unset`) are left out.
    """
    data = read_parameter_file(path)
    unknown = sorted(set(data) - PIPELINE_KEYS - BUILD_KEYS - NODE_ONLY_KEYS)
    if unknown:
        raise ConfigError(
            f"{Path(path).expanduser()}: unknown setting(s) {unknown}; pipeline settings: "
            f"{sorted(PIPELINE_KEYS)}; build settings: {sorted(BUILD_KEYS)}"
        )
    values = set_values(data)
    return ({k: v for k, v in values.items() if k in PIPELINE_KEYS},
            {k: v for k, v in values.items() if k in BUILD_KEYS})


def config_from_bank(
    bank: str | Path | Mapping[str, Any] | NominalBank, overrides: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """The PipelineConfig a bank was built with, with the ``overrides`` that are set applied.

    ``bank``: a bank directory, its manifest, or a loaded bank. The bank's model signature is the
    authority on the model and input height; an override of ``alpha`` without one of ``threshold``
    asks for the calibrated threshold at that alpha (so a recorded fixed threshold is dropped).
    """
    where = "the bank"
    if isinstance(bank, NominalBank):
        recorded, model = dict(bank.config or {}), bank.signature.to_dict()
    else:
        if not isinstance(bank, Mapping):
            where = f"bank {bank}"
            bank = NominalBank.read_manifest(bank)
        recorded, model = dict(bank.get("config") or {}), dict(bank.get("model") or {})
    values = {k: v for k, v in recorded.items() if k in PIPELINE_KEYS}
    if model.get("model"):
        values["model"] = model["model"]
    if model.get("input_height"):
        values["input_height"] = int(model["input_height"])
    values["feature_layer"] = int(model.get("feature_layer") or 0)
    try:
        config = PipelineConfig.from_dict(values)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: the manifest's config is not usable: {exc}") from None
    changes = set_values(overrides or {})
    unknown = sorted(set(changes) - PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known settings: {sorted(PIPELINE_KEYS)}")
    if "alpha" in changes:
        changes.setdefault("threshold", None)
    return config.replace(**changes)


def resolve_build_settings(
    output: str | Path | None,
    *,
    append: bool = False,
    settings_file: str | Path | None = None,
    pipeline_overrides: Mapping[str, Any] | None = None,
    build_overrides: Mapping[str, Any] | None = None,
) -> tuple[PipelineConfig, BuildOptions]:
    """Settings of a bank build: defaults < the existing bank's (when appending) < the YAML file < explicit values.

    Unset values (:func:`is_unset`) in any layer leave the one below.

    Local model folders and the ignore mask become absolute paths, so the manifest stays valid
    from any working directory.
    """
    pipeline: dict[str, Any] = {}
    build: dict[str, Any] = {}
    if append and output is not None and (Path(output).expanduser() / MANIFEST).is_file():
        pipeline.update(config_from_bank(output).to_dict())
    if settings_file is not None:
        p, b = read_settings_file(settings_file)
        pipeline.update(p)
        build.update(b)
    pipeline.update(set_values(pipeline_overrides or {}))
    build.update(set_values(build_overrides or {}))
    build["append"] = bool(append or build.get("append", False))
    try:
        config = PipelineConfig.from_dict(pipeline)
        options = BuildOptions(**build).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return absolute_paths(config), options


def absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """``config`` with a local model folder and the ignore mask as absolute paths."""
    changes: dict[str, Any] = {}
    model = Path(config.model).expanduser()
    if model.exists():
        changes["model"] = str(model.resolve())
    if config.ignore_mask:
        changes["ignore_mask"] = str(Path(config.ignore_mask).expanduser().resolve())
    return config.replace(**changes) if changes else config
