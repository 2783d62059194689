"""The monitor node's ROS parameters: one table of specs, descriptors built from it, PipelineConfig filled from it.

Every parameter is either ``runtime`` (validated and applied live by the set-parameters callback)
or ``configure`` (read at the configure transition; changing it while the node is configured is
rejected with a reason, because it needs the model or the bank to be reloaded: cleanup, set it,
configure again). ROS parameters cannot be None, so optional PipelineConfig fields use a
sentinel (``""``, ``0`` or a negative number) documented in each description.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from semanom_ros.core.config import PipelineConfig

__all__ = [
    "RUNTIME",
    "CONFIGURE",
    "ParamSpec",
    "MONITOR_PARAMS",
    "SPECS_BY_NAME",
    "descriptor_for",
    "declare_all",
    "check_choice",
    "config_values",
]

RUNTIME = "runtime"
CONFIGURE = "configure"
_NOT_OPTIONAL = object()
_DEFAULTS = PipelineConfig()


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: default, documentation, range and when a change takes effect."""

    name: str
    default: Any
    description: str
    when: str = CONFIGURE
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    config_field: bool = True  # a PipelineConfig field of the same name
    none_if: Any = _NOT_OPTIONAL  # ROS value that stands for None in PipelineConfig ("" / 0 / "negative")

    def to_config(self, value: Any) -> Any:
        """The PipelineConfig value for a ROS parameter value (sentinels -> None)."""
        if isinstance(self.default, list):  # string arrays (declared unset when empty: ROS cannot type [])
            return [str(v) for v in (value or [])]
        if self.none_if is _NOT_OPTIONAL:
            return value
        if self.none_if == "negative":
            return None if float(value) < 0 else float(value)
        return None if value == self.none_if else value


def _pipeline(name: str, description: str, **kw: Any) -> ParamSpec:
    """A PipelineConfig field with the dataclass default (so the defaults are written once)."""
    default = kw.pop("default", getattr(_DEFAULTS, name))
    return ParamSpec(name, default, description, **kw)


MONITOR_PARAMS: tuple[ParamSpec, ...] = (
    # -- the node itself ---------------------------------------------------------------------------------
    ParamSpec("bank_path", "", "Nominal bank directory (written by 'semanom-bank build'). Required.",
              config_field=False),
    ParamSpec("input_type", "auto", "Input message type on 'image': auto (CompressedImage when the resolved "
              "topic ends in /compressed, else Image), raw (sensor_msgs/Image) or compressed "
              "(sensor_msgs/CompressedImage on '<image>/compressed', image_transport's name).",
              choices=("auto", "raw", "compressed"), config_field=False),
    ParamSpec("reliability", "best_effort", "Input subscription reliability (QoS sensor data, depth 1); "
              "'reliable' only matches reliable publishers, 'best_effort' matches both.",
              choices=("best_effort", "reliable"), config_field=False),
    ParamSpec("publish_overlay", True, "Publish ~/overlay (rendering costs a few ms per frame).",
              when=RUNTIME, config_field=False),
    ParamSpec("publish_score_map", True, "Publish ~/score_map (32FC1, 4 bytes per pixel).",
              when=RUNTIME, config_field=False),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status in seconds.",
              float_range=(0.1, 60.0), config_field=False),
    ParamSpec("drop_warn_fraction", 0.95, "Diagnostics turn WARN when more than this fraction of the frames "
              "received in the last period were dropped (some dropping is normal: only the newest frame "
              "is processed).", when=RUNTIME, float_range=(0.0, 1.0), config_field=False),
    ParamSpec("warmup_frames", 2, "Synthetic 1280x720 frames run through the pipeline at configure, so "
              "the first camera frames are neither slow nor allocating; 0 = no warm-up.",
              int_range=(0, 100), config_field=False),
    ParamSpec("autostart", False, "Configure and activate right after start-up (the launch file sets it; "
              "with false, drive the node with 'ros2 lifecycle set').", config_field=False),
    # -- backbone (must match the bank) -------------------------------------------------------------------
    _pipeline("model", "DINOv2 hub id or local folder; '' = the model recorded in the bank's manifest.",
              default="", none_if=""),
    _pipeline("input_height", "Backbone input height in pixels (multiple of the patch size); 0 = the "
              "bank's.", default=0, int_range=(0, 4096), none_if=0),
    _pipeline("max_input_width", "Cap on the resized width in pixels; 0 = no cap.", default=0,
              int_range=(0, 16384), none_if=0),
    _pipeline("device", "auto (CUDA when available), cpu, cuda or cuda:N."),
    _pipeline("dtype", "auto (fp16 on CUDA, fp32 on CPU), float32, float16 or bfloat16.",
              choices=("auto", "float32", "float16", "bfloat16")),
    _pipeline("num_threads", "torch and faiss CPU threads (one count for both); 0 = OMP_NUM_THREADS if set, else all usable cores.", int_range=(0, 1024)),
    _pipeline("index_type", "Similarity index: auto, flat, flat_fp16, ivf, ivfpq or hnsw.",
              choices=("auto", "flat", "flat_fp16", "ivf", "ivfpq", "hnsw")),
    _pipeline("index_auto_threshold", "auto index: exact search below this many bank vectors, HNSW above.",
              int_range=(0, 2**31 - 1)),
    _pipeline("index_nlist", "IVF lists; 0 = about 4 sqrt(N).", int_range=(0, 1 << 20)),
    _pipeline("nprobe", "IVF lists (HNSW: efSearch) searched per query; 0 = the depth the bank tuned at build.", int_range=(0, 1 << 16)),
    _pipeline("use_gpu_index", "Put the index on the GPU when faiss has GPU support and the device is CUDA."),
    # -- scoring and decision --------------------------------------------------------------------------------
    _pipeline("k", "Nearest bank vectors averaged per patch (must match the bank's calibration).",
              int_range=(1, 1024)),
    _pipeline("score_smoothing_sigma", "Gaussian smoothing of the patch score grid in patches (must match "
              "the bank's calibration).", float_range=(0.0, 100.0)),
    _pipeline("alpha", "Threshold = alpha-quantile of the bank's leave-one-out nominal scores; used while "
              "threshold is negative. In (0, 1).", when=RUNTIME, float_range=(0.0, 1.0)),
    _pipeline("calibration_level", "patch (quantile over nominal patch scores) or image (over each nominal "
              "frame's highest score).", choices=("patch", "image")),
    _pipeline("threshold", "Anomaly threshold on patch scores (1 - cosine similarity), in [0, 2]; negative "
              "(-1) = the bank's calibrated threshold at alpha.", default=-1.0, when=RUNTIME,
              float_range=(-1.0, 2.0), none_if="negative"),
    _pipeline("min_component_area_px", "Above-threshold regions smaller than this many pixels are ignored.",
              when=RUNTIME, int_range=(0, 10**9)),
    _pipeline("ignore_mask", "Image file (non-zero = ignore), e.g. the ego vehicle's hood; '' = none.",
              default="", none_if=""),
    _pipeline("ignore_patch_fraction", "A patch is ignored when more than this fraction of it is masked.",
              float_range=(0.0, 1.0)),
    _pipeline("overlay_alpha", "Opacity of the heat map on ~/overlay.", when=RUNTIME, float_range=(0.0, 1.0)),
    _pipeline("image_decision", "components (anomalous when a region survives the area filter) or majority.",
              choices=("components", "majority")),
    _pipeline("majority_fraction", "majority decision: fraction of patches above threshold.",
              float_range=(0.0, 1.0)),
    # -- instance / combined mode (OWLv2 + SAM 2) --------------------------------------------------------------
    _pipeline("mode", "patch, instance or combined (see the README's instance mode).",
              choices=("patch", "instance", "combined")),
    _pipeline("instance_bank", "combined mode: the instance bank directory; '' = none.", default="", none_if=""),
    _pipeline("instance_threshold", "combined mode: instance threshold; negative = the instance bank's.",
              default=-1.0, float_range=(-1.0, 2.0), none_if="negative"),
    _pipeline("detector_model", "OWLv2 hub id or folder."),
    _pipeline("detector_queries", "Comma-separated OWLv2 text queries; '' = class-agnostic proposals.",
              default=""),
    _pipeline("detector_score_threshold", "OWLv2 box score threshold.", float_range=(0.0, 1.0)),
    _pipeline("detector_top_k", "Boxes kept per frame.", int_range=(1, 1000)),
    _pipeline("detector_nms_iou", "NMS IoU.", float_range=(0.0, 1.0)),
    _pipeline("detector_merge_iou", "Duplicate boxes above this IoU are merged.", float_range=(0.01, 1.0)),
    _pipeline("detector_merge_containment", "A box this much inside another is merged into it.",
              float_range=(0.01, 1.0)),
    _pipeline("detector_input_size", "OWLv2 square input side; 0 = the checkpoint's.", int_range=(0, 4096)),
    _pipeline("segmenter_model", "SAM 2 hub id or folder."),
    _pipeline("segmenter_backend", "transformers or sam2.", choices=("transformers", "sam2")),
    _pipeline("instance_min_mask_area_px", "Instance masks smaller than this are dropped.",
              int_range=(0, 10**9)),
    _pipeline("combined_min_outside_fraction", "combined mode: fraction of a patch region outside every "
              "instance for it to count.", float_range=(0.0, 1.0)),
    # -- language prompts (semanom_ros.core.prompts; patch mode) -----------------------------------------------
    _pipeline("prompt_model", "OWLv2 hub id or folder scoring the text prompts per location."),
    _pipeline("prompt_input_size", "OWLv2 square input side for the prompts; 0 = the checkpoint's.",
              int_range=(0, 4096)),
    _pipeline("nominal_prompts", "Concepts that belong in the scene, e.g. ['road: asphalt road | road', 'car'] "
              "(bare names use the default templates).", when=RUNTIME),
    _pipeline("anomaly_prompts", "Concepts that must never appear, e.g. ['animal', 'debris'].", when=RUNTIME),
    _pipeline("prompt_fusion_weight", "Weight of the prompt map fused into the kNN patch scores, in [0, 1]; "
              "0 = prompts off (the calibrated kNN threshold stays valid: prompt probability 0.5 maps onto it).",
              when=RUNTIME, float_range=(0.0, 1.0)),
)

SPECS_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in MONITOR_PARAMS}

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor with type, description, range and the change rule."""
    when = ("changeable at run time" if spec.when == RUNTIME
            else "applied at configure; change it only while the node is unconfigured")
    constraints = [when]
    if spec.choices:
        constraints.insert(0, "one of " + ", ".join(spec.choices))
    desc = ParameterDescriptor(
        name=spec.name,
        type=_TYPES[type(spec.default)],
        description=spec.description,
        additional_constraints="; ".join(constraints),
        read_only=False,
    )
    if spec.float_range is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.float_range[0]),
                                                        to_value=float(spec.float_range[1]), step=0.0)]
    if spec.int_range is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.int_range[0]), to_value=int(spec.int_range[1]),
                                           step=1)]
    return desc


def declare_all(node: Any, specs: Iterable[ParamSpec] = MONITOR_PARAMS) -> None:
    """Declare every spec on ``node`` (values from --ros-args / parameter files override the defaults)."""
    from rclpy.parameter import Parameter

    # An empty list has no ROS type of its own (rclpy infers a byte array): declare it typed and unset.
    node.declare_parameters("", [
        (spec.name, Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default, descriptor_for(spec))
        for spec in specs
    ])


def check_choice(name: str, value: Any) -> str | None:
    """A reason string when ``value`` is not one of the parameter's choices, else None."""
    spec = SPECS_BY_NAME.get(name)
    if spec is not None and spec.choices and value not in spec.choices:
        return f"{name}: {value!r} is not one of {', '.join(spec.choices)}"
    return None


def config_values(get: Any, specs: Iterable[ParamSpec] = MONITOR_PARAMS) -> dict[str, Any]:
    """PipelineConfig keyword values from parameter values; ``get(name)`` returns a parameter's value."""
    return {spec.name: spec.to_config(get(spec.name)) for spec in specs if spec.config_field}


def image_input(resolved_topic: str, input_type: str) -> tuple[str, Any]:
    """(topic, message class) a node subscribes to, from its resolved ``image`` topic and ``input_type``
    (auto: compressed when the topic ends in /compressed)."""
    from sensor_msgs.msg import CompressedImage, Image

    kind = "compressed" if input_type == "auto" and resolved_topic.endswith("/compressed") else input_type
    if kind == "compressed":
        # image_transport publishes CompressedImage on '<base>/compressed'.
        topic = resolved_topic if resolved_topic.endswith("/compressed") else resolved_topic.rstrip("/") + "/compressed"
        return topic, CompressedImage
    return resolved_topic, Image

