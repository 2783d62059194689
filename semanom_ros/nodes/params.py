"""The nodes' ROS parameters.

One table of specs per node, descriptors built from it, PipelineConfig values read from it.

Every monitor parameter is either ``runtime`` (validated and applied live by the set-parameters
callback) or ``configure`` (read at the configure transition; changing it while the node is
configured is rejected with a reason, because it needs the model or the bank to be reloaded:
cleanup, set it, configure again). ROS parameters cannot be None, so optional settings use the
"unset" markers of :data:`semanom_ros.workflows.settings.UNSET_MARKERS` (``""``, ``0`` or a
negative number), documented in each description; unset values take the bank's setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from semanom_ros.core.config import DEFAULT_MODEL, PipelineConfig
from semanom_ros.workflows.settings import BUILD_KEYS, is_unset

from .output_params import OUTPUT_PARAM_FIELDS

__all__ = [
    "RUNTIME",
    "CONFIGURE",
    "BUILDER_BUILD_OPTIONS",
    "BUILDER_PARAMS",
    "BUILDER_SPECS_BY_NAME",
    "ParamSpec",
    "MONITOR_PARAMS",
    "SPECS_BY_NAME",
    "allowed_values",
    "descriptor_for",
    "declare_all",
    "check_choice",
    "config_values",
]

RUNTIME = "runtime"
CONFIGURE = "configure"
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

    def to_config(self, value: Any) -> Any:
        """The PipelineConfig value for a ROS parameter value (None when it is the "unset" marker)."""
        if isinstance(self.default, list):  # string arrays (declared unset when empty: ROS cannot type [])
            return [str(v) for v in (value or [])]
        return None if is_unset(self.name, value) else value


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
    ParamSpec("reliability", "best_effort", "Input subscription reliability (QoS sensor data, depth "
              "input_queue_depth); 'reliable' only matches reliable publishers, 'best_effort' matches both.",
              choices=("best_effort", "reliable"), config_field=False),
    ParamSpec("input_queue_depth", 10, "Depth of the input subscription's reader history. The callback takes "
              "each message from it at once and the node keeps only the newest frame for the worker (the others "
              "are counted as dropped), so a deeper history does not queue frames for the engine; it absorbs "
              "moments when the callback runs late beside the worker (with depth 1, 17-59 % of 30 Hz frames "
              "were replaced there before the node could count them). Applied at activate.",
              int_range=(1, 1000), config_field=False),
    ParamSpec("publish_overlay", True, "Publish ~/overlay (rendering costs a few ms per frame).",
              when=RUNTIME, config_field=False),
    ParamSpec("publish_score_map", True, "Publish ~/score_map (32FC1, 4 bytes per pixel).",
              when=RUNTIME, config_field=False),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status in seconds.",
              float_range=(0.1, 60.0), config_field=False),
    ParamSpec("drop_warn_fraction", 0.95, "Diagnostics turn WARN when more than this fraction of the frames "
              "received in the last period were dropped (some dropping is normal: only the newest frame "
              "is processed).", when=RUNTIME, float_range=(0.0, 1.0), config_field=False),
    ParamSpec("max_input_pixels", 50_000_000, "Largest frame (width x height) decoded; larger messages are "
              "refused from their header (Image fields, PNG/JPEG header) before anything is decoded.",
              when=RUNTIME, int_range=(1, 2**31 - 1), config_field=False),
    ParamSpec("max_output_pixels", 1920 * 1080, "Frames larger than this (default 1920x1080) are shrunk to it "
              "before scoring, so the maps, ~/score_map and ~/overlay stay bounded (then smaller than the "
              "input; the scores' own resolution is the patch grid; min_component_area_px keeps meaning input "
              "pixels); 0 = never shrink.",
              when=RUNTIME, int_range=(0, 2**31 - 1), config_field=False),
    ParamSpec("stall_timeout_s", 10.0, "Watchdog: /diagnostics turns ERROR while one frame has been processing "
              "longer than this (raise it for instance mode on a CPU, where a frame takes ~15 s).",
              when=RUNTIME, float_range=(0.1, 86400.0), config_field=False),
    ParamSpec("min_rate_fraction", 0.05, "Watchdog: /diagnostics turns WARN while the processed rate is below "
              "this fraction of the input rate (over the last 5 s); 0 = off.", when=RUNTIME,
              float_range=(0.0, 1.0), config_field=False),
    ParamSpec("warmup_frames", 2, "Synthetic 1280x720 frames run through the pipeline at configure, so "
              "the first camera frames are neither slow nor allocating; 0 = no warm-up.",
              int_range=(0, 100), config_field=False),
    ParamSpec("autostart", False, "Configure and activate right after start-up (the launch file sets it; "
              "with false, drive the node with 'ros2 lifecycle set').", config_field=False),
    # -- outputs, alarm and clips (semanom_ros.nodes.publishers) ------------------------------------------
    *(ParamSpec(config_field=False, **fields) for fields in OUTPUT_PARAM_FIELDS),
    # -- backbone (must match the bank) -------------------------------------------------------------------
    _pipeline("model", "DINOv2 hub id or local folder; '' = the model recorded in the bank's manifest.",
              default=""),
    _pipeline("input_height", "Backbone input height in pixels (multiple of the patch size); 0 = the "
              "bank's.", default=0, int_range=(0, 4096)),
    _pipeline("max_input_width", "Cap on the resized (backbone input) width in pixels; 0 = the bank's, or "
              "when it has none 4 x the 16:9 width at input_height (1582 px at 224). Frames whose aspect ratio "
              "does not fit within a factor 2 are refused as bad messages.", default=0, int_range=(0, 16384)),
    _pipeline("device", "auto (CUDA when available), cpu, cuda or cuda:N."),
    _pipeline("dtype", "auto (fp16 on CUDA, fp32 on CPU), float32, float16 or bfloat16.",
              choices=("auto", "float32", "float16", "bfloat16")),
    _pipeline("num_threads", "torch and faiss CPU threads (one count for both); 0 = OMP_NUM_THREADS if set, "
              "else all usable cores.", int_range=(0, 1024)),
    _pipeline("index_type", "Similarity index: auto, flat, flat_fp16, ivf, ivfpq or hnsw.",
              choices=("auto", "flat", "flat_fp16", "ivf", "ivfpq", "hnsw")),
    _pipeline("index_auto_threshold", "auto index: exact search below this many bank vectors; above, IVF and "
              "HNSW are built, tuned and timed, and the fastest reaching recall@1 0.97 is kept.",
              int_range=(0, 2**31 - 1)),
    _pipeline("index_nlist", "IVF lists; 0 = about 4 sqrt(N).", int_range=(0, 1 << 20)),
    _pipeline("nprobe", "IVF lists (HNSW: efSearch) searched per query; 0 = the depth the bank tuned at build.",
              int_range=(0, 1 << 16)),
    _pipeline("use_gpu_index", "Put the index on the GPU when faiss has GPU support and the device is CUDA."),
    _pipeline("search_backend", "auto (exact torch search with the bank on the GPU when the pipeline runs on CUDA "
              "and the bank fits search_memory_fraction of the free GPU memory, else faiss on the host), torch "
              "or faiss.", choices=("auto", "torch", "faiss")),
    _pipeline("search_dtype", "Storage of the bank for the torch search: auto (fp16 on CUDA, fp32 on CPU), "
              "float16, bfloat16 or float32.", choices=("auto", "float32", "float16", "bfloat16")),
    _pipeline("search_memory_fraction", "Share of the GPU's free memory the torch search may hold (bank + "
              "workspace); a larger bank falls back to faiss on the host.", float_range=(0.01, 1.0)),
    # -- scoring and decision --------------------------------------------------------------------------------
    _pipeline("k", "Nearest bank vectors averaged per patch (must match the bank's calibration).",
              int_range=(1, 1024)),
    _pipeline("score_smoothing_sigma", "Gaussian smoothing of the patch score grid in patches (must match "
              "the bank's calibration).", float_range=(0.0, 100.0)),
    _pipeline("score_normalization", "Per-frame normalisation of patch scores: none, or median (score minus "
              "the median of the frame's non-ignored patch scores, clipped at 0); '' = the bank's calibration "
              "(a different value is refused unless the bank is recalibrated with it).", default="",
              choices=("", "none", "median")),
    _pipeline("alpha", "Threshold = alpha-quantile of the bank's leave-one-out nominal scores; used while "
              "threshold is negative. In (0, 1).", when=RUNTIME, float_range=(0.0, 1.0)),
    _pipeline("calibration_level", "patch (quantile over nominal patch scores) or image (over each nominal "
              "frame's highest score).", choices=("patch", "image")),
    _pipeline("threshold", "Anomaly threshold on patch scores (1 - cosine similarity), in [0, 2]; negative "
              "(-1) = the bank's calibrated threshold at alpha.", default=-1.0, when=RUNTIME,
              float_range=(-1.0, 2.0)),
    _pipeline("min_component_area_px", "Above-threshold regions smaller than this many pixels are ignored.",
              when=RUNTIME, int_range=(0, 10**9)),
    _pipeline("ignore_mask", "Image file (non-zero = ignore), e.g. the ego vehicle's hood; '' = the bank's "
              "(the mask it was built with; none when it has none).", default=""),
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
    _pipeline("instance_bank", "combined mode: the instance bank directory; '' = the bank's setting "
              "(none for a patch bank).", default=""),
    _pipeline("instance_threshold", "combined mode: instance threshold; negative = the instance bank's.",
              default=-1.0, float_range=(-1.0, 2.0)),
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


def _p(name: str, default: Any, description: str, **kw: Any) -> ParamSpec:
    return ParamSpec(name, default, description, **kw)


# bank_builder_node: "" / 0 / negative mean "unset" where a description says so (UNSET_MARKERS).
BUILDER_PARAMS: tuple[ParamSpec, ...] = (
    _p("output_bank", "", "Bank directory to write (atomically). Required.", config_field=False),
    _p("append", False, "Add to the existing bank at output_bank (same model and input size, else an error).",
       config_field=False),
    # -- offline build (sources set) ---------------------------------------------------------------------
    _p("topic", "", "Offline: image topic in the bags; '' = the Image/CompressedImage topic with the most messages.",
       config_field=False),
    _p("start_s", -1.0, "Offline: first receive time, seconds from the bag's start (or a Unix time >= 1e9); "
       "negative = from the start.", config_field=False),
    _p("end_s", -1.0, "Offline: end of the time range (exclusive), same units; negative = to the end.",
       config_field=False),
    _p("fps", 10.0, "Offline, image folders: frame rate for time stamps.", float_range=(0.001, 10000.0),
       config_field=False),
    _p("coreset_fraction", 0.0, "Greedy k-center coreset keeping this fraction (0, 1] of the vectors; 0 = off.",
       float_range=(0.0, 1.0), config_field=False),
    _p("coreset_size", 0, "Greedy k-center coreset of this many vectors; 0 = off.", int_range=(0, 2**31 - 1),
       config_field=False),
    _p("coreset_seed", 0, "Seed of the coreset's first centre and random projection.", config_field=False),
    # -- frame selection (both modes) ----------------------------------------------------------------------
    _p("stride", 1, "Keep every n-th frame.", int_range=(1, 1_000_000), config_field=False),
    _p("min_interval_s", 0.0, "Drop a frame stamped sooner than this after the previous kept one (seconds).",
       float_range=(0.0, 3600.0), config_field=False),
    _p("dedup_similarity", 0.0, "Skip a frame whose CLS cosine similarity to the last kept frame is >= this "
       "(e.g. 0.98); 0 = off.", float_range=(0.0, 1.0), config_field=False),
    _p("max_frames", 0, "At most this many frames go into the bank (per build / recording); 0 = no limit.",
       int_range=(0, 2**31 - 1), config_field=False),
    _p("calibrate", True, "Calibrate the threshold when saving (leave-one-out).", config_field=False),
    # -- live recording ----------------------------------------------------------------------------------
    _p("input_type", "auto", "Live: auto (CompressedImage when the resolved 'image' topic ends in /compressed), "
       "raw (sensor_msgs/Image) or compressed (CompressedImage on '<image>/compressed').",
       choices=("auto", "raw", "compressed"), config_field=False),
    _p("reliability", "best_effort", "Live: input subscription reliability (sensor-data QoS, depth 1).",
       choices=("best_effort", "reliable"), config_field=False),
    _p("start_recording", True, "Live: record from start-up (false: wait for ~/recording true).", config_field=False),
    # -- pipeline (PipelineConfig fields) -------------------------------------------------------------------
    _p("model", "", f"DINOv2 hub id or local folder; '' = the bank's when appending, else {DEFAULT_MODEL}."),
    _p("input_height", 0, "Backbone input height in pixels; 0 = the bank's when appending, else 224.",
       int_range=(0, 4096)),
    _p("device", _DEFAULTS.device, "auto (CUDA when available), cpu, cuda or cuda:N."),
    _p("dtype", _DEFAULTS.dtype, "auto, float32, float16 or bfloat16.",
       choices=("auto", "float32", "float16", "bfloat16")),
    _p("batch_size", _DEFAULTS.batch_size, "Offline: frames per forward pass.", int_range=(1, 1024)),
    _p("num_threads", _DEFAULTS.num_threads, "torch/faiss CPU threads; 0 = the libraries' defaults.",
       int_range=(0, 1024)),
    _p("mode", "patch", "Offline: patch bank or instance bank (OWLv2 + SAM 2); live recording makes patch banks.",
       choices=("patch", "instance")),
    _p("alpha", _DEFAULTS.alpha, "Threshold = alpha-quantile of leave-one-out nominal scores, in (0, 1).",
       float_range=(0.0, 1.0)),
    _p("calibration_window", _DEFAULTS.calibration_window, "Frames on each side of a nominal frame left out of its "
       "leave-one-out search.", int_range=(0, 100000)),
    _p("k", _DEFAULTS.k, "Nearest bank vectors averaged per patch.", int_range=(1, 1024)),
    _p("calibration_level", _DEFAULTS.calibration_level, "patch or image.", choices=("patch", "image")),
    _p("calibration_max_frames", _DEFAULTS.calibration_max_frames, "At most this many bank frames are scored.",
       int_range=(1, 10**7)),
    _p("score_smoothing_sigma", _DEFAULTS.score_smoothing_sigma, "Gaussian smoothing of patch scores (patches).",
       float_range=(0.0, 100.0)),
    _p("score_normalization", _DEFAULTS.score_normalization, "Per-frame normalisation of patch scores: none or "
       "median (minus the frame's median patch score, clipped at 0).", choices=("none", "median")),
    _p("ignore_mask", "", "Image file whose non-zero pixels (e.g. the ego bonnet) are left out; '' = none."),
    _p("ignore_patch_fraction", _DEFAULTS.ignore_patch_fraction, "A patch is left out when more than this fraction "
       "of it is masked.", float_range=(0.0, 1.0)),
)
BUILDER_SPECS_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in BUILDER_PARAMS}
# bank_builder_node parameters that are BuildOptions fields (the others are node-only or PipelineConfig fields).
BUILDER_BUILD_OPTIONS: tuple[str, ...] = tuple(s.name for s in BUILDER_PARAMS if s.name in BUILD_KEYS)

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """The ParameterDescriptor of a spec: type, description, range and the change rule."""
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


def allowed_values(spec: ParamSpec) -> str:
    """What a parameter accepts, in words: 'a number in [0.0, 1.0]', 'one of auto, raw', ..."""
    if spec.choices:
        return "one of " + ", ".join(spec.choices)
    if spec.float_range is not None:
        return f"a number in [{spec.float_range[0]}, {spec.float_range[1]}]"
    if spec.int_range is not None:
        return f"an integer in [{spec.int_range[0]}, {spec.int_range[1]}]"
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list of strings"}
    return kinds[type(spec.default)]


def declare_all(node: Any, specs: Iterable[ParamSpec] = MONITOR_PARAMS) -> dict[str, str]:
    """Declare every spec on ``node`` (values from --ros-args / parameter files override the defaults).

    A start-up value the descriptor refuses (out of range, wrong type) does not raise: the parameter
    is declared with its default and the returned mapping holds ``{name: one-line reason}`` naming
    the parameter, the given value and what is allowed; the node decides what to do with it.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    rejected: dict[str, str] = {}
    for spec in specs:
        # An empty list has no ROS type of its own (rclpy infers a byte array): declare it typed and unset.
        value = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
        descriptor = descriptor_for(spec)
        try:
            node.declare_parameter(spec.name, value, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            node.declare_parameter(spec.name, value, descriptor, ignore_override=True)
            rejected[spec.name] = _startup_rejection(node, spec, exc)
    return rejected


def _startup_rejection(node: Any, spec: ParamSpec, exc: Exception) -> str:
    # rclpy has no public accessor for the start-up overrides; the exception text is the fallback.
    override = getattr(node, "_parameter_overrides", {}).get(spec.name)
    given = repr(override.value) if override is not None else f"(rclpy: {exc})"
    return (f"parameter {spec.name}: start-up value {given} is not allowed; expected {allowed_values(spec)} "
            f"(default {spec.default!r})")


def check_choice(name: str, value: Any) -> str | None:
    """A reason string when ``value`` is not one of the parameter's choices, else None."""
    spec = SPECS_BY_NAME.get(name)
    if spec is not None and spec.choices and value not in spec.choices:
        return f"{name}: {value!r} is not one of {', '.join(spec.choices)}"
    return None


def config_values(get: Any, specs: Iterable[ParamSpec] = MONITOR_PARAMS) -> dict[str, Any]:
    """The PipelineConfig keyword values from parameter values; ``get(name)`` returns a parameter's value."""
    return {spec.name: spec.to_config(get(spec.name)) for spec in specs if spec.config_field}
