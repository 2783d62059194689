"""The streaming bank build that ``semanom-bank`` and ``bank_builder_node`` share (no ROS imports).

Frames come one at a time from rosbag2 bags or image folders (:mod:`semanom_ros.io.frames`,
which applies the time range, stride and minimum interval and counts undecodable messages);
a reader thread decodes the next frames while the model embeds the current batch; each batch
is embedded once, near duplicates (CLS similarity to the last kept frame) are dropped, and
the patch grids go into the bank. Nothing but the bank's own vectors grows with the length of
the recording. At the end the bank is (optionally) reduced to a coreset, calibrated, and saved
atomically (:meth:`NominalBank.save`): an interrupted build never touches the previous bank.

Data faults never stop a build halfway: a bag that cannot be opened, lacks the topic, is
truncated, or holds undecodable messages is skipped (in part or whole), counted, and warned
about with the bag, topic and timestamp. Only user errors found before any work (a path that
does not exist, no usable source at all, a bank of another model) raise :class:`BuildError`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from semanom_ros.core.bank import MANIFEST, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import ConfigError, ImageError, SemanomError
from semanom_ros.core.features import validate_rgb
from semanom_ros.core.selection import NearDuplicateFilter, check_dedup_similarity, resolve_time_range
from semanom_ros.io.bags import iter_bag_frames, list_image_topics, ros2_typestore
from semanom_ros.io.folders import iter_folder_frames
from semanom_ros.io.frame_types import BAG_SUFFIXES, IMAGE_EXTENSIONS, IMAGE_MSGTYPES, Frame, SkipStats

__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildSummary",
    "SourceSummary",
    "bank_config",
    "build_bank",
    "calibrate_bank",
    "coreset_existing_bank",
    "describe_bank",
    "merge_banks",
    "read_settings_file",
    "remove_stale_temp_dirs",
    "resolve_settings",
]

_log = logging.getLogger("semanom_ros.bank")

IO_SKIP_REASONS = ("time_range", "stride", "min_interval", "decode_error", "deserialize_error")
# Skip reasons of this module (after decoding).
# "unreadable": messages after the point where a damaged file stopped being readable.
OWN_SKIP_REASONS = ("near_duplicate", "unusable_frame", "max_frames", "unreadable")
# Keys of a bank_builder_node parameter file that only the node uses (the CLI ignores them).
NODE_ONLY_KEYS = frozenset({"output_bank", "sources", "input_type", "reliability", "start_recording"})


class BuildError(SemanomError):
    """A build cannot start or produced nothing (the message says what to fix)."""


# ----------------------------------------------------------------------------------- settings
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
        if self.coreset_fraction is not None and self.coreset_size is not None:
            raise ConfigError("coreset: give either a fraction (--coreset-fraction) or a size (--coreset-size), not both")
        if self.coreset_fraction is not None or self.coreset_size is not None:
            from semanom_ros.core.coreset import coreset_target_size

            coreset_target_size(1, self.coreset_fraction, self.coreset_size)  # argument checks only
        return self

    @property
    def coreset_requested(self) -> bool:
        return self.coreset_fraction is not None or self.coreset_size is not None


_PIPELINE_KEYS = frozenset(f.name for f in dataclasses.fields(PipelineConfig))
_BUILD_KEYS = frozenset(f.name for f in dataclasses.fields(BuildOptions))
# ROS parameters cannot be None: the node's parameter file uses these values for "unset".
_BUILD_UNSET = {"topic": "", "start_s": "negative", "end_s": "negative", "max_frames": 0,
                "coreset_fraction": 0, "coreset_size": 0, "dedup_similarity": 0}
_PIPELINE_UNSET = {"model": "", "input_height": 0, "ignore_mask": "", "threshold": "negative", "max_input_width": 0,
                   "instance_bank": "", "instance_threshold": "negative"}


def _unset_to_none(values: dict[str, Any], unset: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key, sentinel in unset.items():
        if key not in out or out[key] is None:
            continue
        value = out[key]
        if sentinel == "negative":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                out[key] = None
        elif isinstance(sentinel, str):
            if isinstance(value, str) and value.strip() == sentinel:
                out[key] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == sentinel:
            out[key] = None
    return out


def read_settings_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(PipelineConfig values, BuildOptions values) from a YAML file.

    Accepts a flat mapping or a ROS parameter file (``node: {ros__parameters: {...}}``, e.g.
    ``config/bank_builder.yaml``); keys only the node uses are ignored, unknown keys are an error.
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
    unknown = sorted(set(data) - _PIPELINE_KEYS - _BUILD_KEYS - NODE_ONLY_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {unknown}; pipeline settings: {sorted(_PIPELINE_KEYS)}; "
            f"build settings: {sorted(_BUILD_KEYS)}"
        )
    # "Unset" values (None, or the node's sentinels) leave the setting at its default.
    pipeline = _unset_to_none({k: v for k, v in data.items() if k in _PIPELINE_KEYS}, _PIPELINE_UNSET)
    build = _unset_to_none({k: v for k, v in data.items() if k in _BUILD_KEYS}, _BUILD_UNSET)
    return {k: v for k, v in pipeline.items() if v is not None}, {k: v for k, v in build.items() if v is not None}


def bank_config(manifest_or_bank: Mapping[str, Any] | NominalBank, **overrides: Any) -> PipelineConfig:
    """The PipelineConfig a bank was built with (from its manifest), with ``overrides`` (None = keep)."""
    if isinstance(manifest_or_bank, NominalBank):
        recorded = dict(manifest_or_bank.config or {})
        model = manifest_or_bank.signature.to_dict()
    else:
        recorded = dict(manifest_or_bank.get("config") or {})
        model = manifest_or_bank.get("model") or {}
    values = {k: v for k, v in recorded.items() if k in _PIPELINE_KEYS}
    # The signature is the authority on what the vectors are.
    if model.get("model"):
        values["model"] = model["model"]
    if model.get("input_height"):
        values["input_height"] = int(model["input_height"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PipelineConfig.from_dict(values)
    except TypeError as exc:
        raise ConfigError(f"bank configuration: {exc}") from None


def resolve_settings(
    output: str | Path | None,
    *,
    append: bool = False,
    settings_file: str | Path | None = None,
    pipeline_overrides: Mapping[str, Any] | None = None,
    build_overrides: Mapping[str, Any] | None = None,
) -> tuple[PipelineConfig, BuildOptions]:
    """Settings of a build: the existing bank's (when appending) < the YAML file < explicit values.

    ``None`` in the override mappings means "not given". Local model folders and the ignore mask
    become absolute paths, so the manifest stays valid from any working directory.
    """
    pipeline: dict[str, Any] = {}
    build: dict[str, Any] = {}
    if append and output is not None and (Path(output).expanduser() / MANIFEST).is_file():
        pipeline.update(bank_config(NominalBank.read_manifest(output)).to_dict())
    if settings_file is not None:
        p, b = read_settings_file(settings_file)
        pipeline.update(p)
        build.update(b)
    pipeline.update({k: v for k, v in (pipeline_overrides or {}).items() if v is not None})
    build.update({k: v for k, v in (build_overrides or {}).items() if v is not None})
    build["append"] = bool(append or build.get("append", False))
    try:
        config = PipelineConfig.from_dict(pipeline)
        options = BuildOptions(**build).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return absolute_paths(config), options


def absolute_paths(config: PipelineConfig) -> PipelineConfig:
    changes: dict[str, Any] = {}
    model = Path(config.model).expanduser()
    if model.exists():
        changes["model"] = str(model.resolve())
    if config.ignore_mask:
        changes["ignore_mask"] = str(Path(config.ignore_mask).expanduser().resolve())
    return config.replace(**changes) if changes else config


# ----------------------------------------------------------------------------------- sources
@dataclass
class SourceSummary:
    """One bag topic or image folder in a build."""

    path: str
    kind: str  # bag | folder
    topic: str | None = None
    msgtype: str | None = None
    messages: int = 0  # messages on the topic (image files in the folder)
    decoded: int = 0  # frames the reader produced (after time range, stride, interval)
    used: int = 0  # frames added to the bank
    skipped: dict[str, int] = field(default_factory=dict)
    read_errors: int = 0  # times reading stopped early (damaged file)
    error: str | None = None  # why the whole source was skipped
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Plan:
    summary: SourceSummary
    stats: SkipStats
    frames: Iterator[Frame] | None = None


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in BAG_SUFFIXES
    return (path / "metadata.yaml").is_file() or any(
        p.suffix.lower() in BAG_SUFFIXES for p in path.iterdir() if p.is_file()
    )


def _auto_topic(topics: Sequence[tuple[str, str, int]]) -> tuple[str, str, int] | None:
    """The topic io.frames picks: most messages; on a tie a raw Image beats its /compressed twin."""
    per_topic: dict[str, int] = {}
    types: dict[str, str] = {}
    for topic, msgtype, count in topics:
        per_topic[topic] = per_topic.get(topic, 0) + count
        types.setdefault(topic, msgtype)
    if not per_topic or max(per_topic.values()) == 0:
        return None
    raw = {t for t, m, _ in topics if m == IMAGE_MSGTYPES[0]}
    best = sorted(per_topic, key=lambda n: (-per_topic[n], n not in raw, n))[0]
    return best, types[best], per_topic[best]


def _bag_start_ns(path: Path) -> int | None:
    """Receive time of the bag's first message (any topic), or None when the bag cannot be indexed."""
    from rosbags.highlevel import AnyReader

    attempts = [[path]]
    if path.is_dir():
        attempts.append(sorted(p for p in path.iterdir() if p.suffix.lower() in BAG_SUFFIXES))
    for paths in attempts:
        if not paths:
            continue
        try:
            with AnyReader(paths, default_typestore=ros2_typestore()) as reader:
                return int(reader.start_time)
        except Exception:  # noqa: BLE001 - rosbags raises many types; all mean "cannot index"
            continue
    return None


class _Quiet:
    def warning(self, text: str) -> None:
        pass


_QUIET = _Quiet()


def _plan_sources(
    sources: Sequence[str | Path], options: BuildOptions, logger: Any
) -> list[_Plan]:
    plans: list[_Plan] = []
    for given in sources:
        path = Path(given).expanduser()
        if not path.exists():
            raise BuildError(f"source {str(given)!r} does not exist; pass rosbag2 bags (directory, .mcap or .db3) or image folders")
        name = str(path.resolve())
        stats = SkipStats()
        if _is_bag(path):
            summary = SourceSummary(path=name, kind="bag")
            plan = _Plan(summary, stats)
            plans.append(plan)
            try:
                # Quiet: iter_bag_frames below opens the bag again and warns about damage once.
                topics = list_image_topics(path, logger=_QUIET)
                if options.topic is not None:
                    found = [t for t in topics if t[0] == options.topic]
                    chosen = (options.topic, found[0][1], sum(t[2] for t in found)) if found else None
                else:
                    chosen = _auto_topic(topics)
                    bases = {t.removesuffix("/compressed") for t, _, c in topics if c}
                    if chosen is not None and len(bases) > 1:
                        logger.warning(
                            f"Bag {name!r} has several image topics ({', '.join(f'{t} [{c} msgs]' for t, _, c in topics)}); "
                            f"using {chosen[0]!r} (most messages); pass --topic to choose another"
                        )
                start_ns = end_ns = None
                if options.start_s is not None or options.end_s is not None:
                    needs_start = any(v is not None and v < 1e9 for v in (options.start_s, options.end_s))
                    start_ns, end_ns = resolve_time_range(
                        options.start_s, options.end_s, _bag_start_ns(path) if needs_start else None, f"bag {name!r}"
                    )
                # Opens the bag and checks the topic (its error lists the topics there are).
                plan.frames = iter_bag_frames(
                    name,  # absolute: the manifest's sources must mean the same from any directory
                    topic=chosen[0] if chosen else options.topic,
                    start_ns=start_ns,
                    end_ns=end_ns,
                    stride=options.stride,
                    min_interval_s=options.min_interval_s,
                    stats=stats,
                    logger=logger,
                )
                if chosen is not None:
                    summary.topic, summary.msgtype, summary.messages = chosen
            except (ValueError, ConfigError, OSError) as exc:
                summary.error = str(exc)
        else:
            summary = SourceSummary(path=name, kind="folder")
            plan = _Plan(summary, stats)
            plans.append(plan)
            if options.start_s is not None or options.end_s is not None:
                raise BuildError(
                    f"--start/--end select bag receive times; {str(given)!r} is an image folder "
                    "(use --stride or --max-frames, or build it separately)"
                )
            try:
                plan.frames = iter_folder_frames(
                    name, stride=options.stride, min_interval_s=options.min_interval_s, stats=stats,
                    logger=logger, fps=options.fps,
                )
                exts = {e.lower() for e in IMAGE_EXTENSIONS}
                summary.messages = sum(
                    1 for p in path.iterdir() if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
                )
            except (ValueError, OSError) as exc:
                summary.error = str(exc)
    usable = [p for p in plans if p.frames is not None]
    if not usable:
        reasons = "; ".join(p.summary.error or "?" for p in plans)
        raise BuildError(reasons if len(plans) == 1 else f"no usable source: {reasons}")
    for plan in plans:
        if plan.summary.error:
            logger.warning(f"skipping {plan.summary.path}: {plan.summary.error}")
    return plans


class _Prefetcher:
    """Reads and decodes frames in a thread, a bounded queue ahead of the model.

    JPEG decoding and bag reading release the GIL, so they overlap the forward pass; the
    queue bound keeps at most ``depth`` decoded frames in memory.
    """

    _DONE = object()

    def __init__(self, plans: Sequence[_Plan], depth: int, logger: Any) -> None:
        self._plans = [p for p in plans if p.frames is not None]
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._logger = logger
        self._thread = threading.Thread(target=self._run, name="semanom-bank-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for plan in self._plans:
                frames = plan.frames
                assert frames is not None
                try:
                    for frame in frames:
                        if not self._put((plan, frame)):
                            return
                except Exception as exc:  # noqa: BLE001 - a reader failure io.frames did not expect: skip the rest
                    plan.stats.read_error += 1
                    self._logger.warning(
                        f"{plan.summary.kind} {plan.summary.path!r}"
                        + (f" topic {plan.summary.topic!r}" if plan.summary.topic else "")
                        + f": reading stopped ({type(exc).__name__}: {exc}); continuing with the next source"
                    )
                finally:
                    close = getattr(frames, "close", None)
                    if close is not None:
                        close()
                if self._stop.is_set():
                    return
        finally:
            self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[_Plan, Frame]]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10.0)


# ----------------------------------------------------------------------------------- summary
@dataclass
class BuildSummary:
    """What a build did (``to_dict`` for JSON, ``format_text`` for people)."""

    output: str
    mode: str = "patch"
    appended: bool = False
    model: str = ""
    input_height: int = 0
    sources: list[SourceSummary] = field(default_factory=list)
    frames_used: int = 0
    vectors_added: int = 0
    patches_ignored: int = 0
    frames_total: int = 0
    vectors_total: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    coreset: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    calibration_error: str | None = None
    size_bytes: int = 0
    removed_temp_dirs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    embedded: int = 0  # frames through the model (near duplicates included)
    warnings: int = 0

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.sources)

    @property
    def decoded(self) -> int:
        return sum(s.decoded for s in self.sources)

    @property
    def embed_fps(self) -> float:
        """Frames per second of the model alone."""
        t = self.seconds.get("embed", 0.0)
        return self.embedded / t if t > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        """Frames per second of the whole stream (reading, decoding, embedding, adding)."""
        t = self.seconds.get("read_and_embed", 0.0)
        return self.embedded / t if t > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            messages=self.messages, decoded=self.decoded, embed_fps=round(self.embed_fps, 3),
            frames_per_s=round(self.frames_per_s, 3),
        )
        if self.calibration is not None:
            out["calibration"] = _calibration_brief(self.calibration)
        return out

    def format_text(self) -> str:
        lines = [f"{'appended to' if self.appended else 'built'} {self.output}  ({self.mode} bank, {self.model} at input height {self.input_height})"]
        for s in self.sources:
            what = f"{s.path}" + (f"  {s.topic}" if s.topic else "")
            if s.error:
                lines.append(f"  source   {what}: SKIPPED ({s.error})")
                continue
            if s.kind == "bag":
                span = _span(s.first_stamp_ns, s.last_stamp_ns)
            else:  # folder stamps are file index / fps, not clock times
                span = f", {((s.last_stamp_ns or 0) - (s.first_stamp_ns or 0)) / 1e9:.2f} s" if s.first_stamp_ns is not None else ""
            extra = f", reading stopped early {s.read_errors}x (damaged)" if s.read_errors else ""
            unit = "msgs" if s.kind == "bag" else "files"
            lines.append(f"  source   {what}: {s.messages} {unit}, {s.decoded} decoded, {s.used} used{extra}{span}")
        skipped = {k: v for k, v in self.skipped.items() if v}
        skip_text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()) or "none"
        lines += [
            f"  frames   {self.messages} messages, {self.decoded} decoded, {self.frames_used} used; skipped: {skip_text}",
            f"  vectors  {self.vectors_added} added"
            + (f" ({self.patches_ignored} patches left out by the ignore mask)" if self.patches_ignored else "")
            + f"; bank now {self.vectors_total} vectors in {self.frames_total} frames",
        ]
        if self.coreset:
            c = self.coreset
            lines.append(
                f"  coreset  {c['from_vectors']} -> {c['to_vectors']} vectors ({100 * c['kept_fraction']:.1f} %, "
                f"{c['shrink_factor']:.2f}x smaller; greedy k-center, seed {c['seed']}, {c['seconds']:.1f} s)"
            )
        if self.calibration:
            cal = self.calibration
            lines.append(
                f"  calib    threshold {cal['threshold']:.4f} at alpha {cal['alpha']} ({cal['level']} level, k {cal['k']}, "
                f"window {cal['window']}, {cal['frames_scored']} frames scored)"
            )
        elif self.calibration_error:
            lines.append(f"  calib    FAILED: {self.calibration_error}")
        else:
            lines.append("  calib    not calibrated (run 'semanom-bank calibrate')")
        lines.append(f"  on disk  {_fmt_bytes(self.size_bytes)}")
        s = self.seconds
        parts = [f"{s.get('total', 0):.1f} s total", f"model load {s.get('load_model', 0):.1f} s"]
        if self.embedded:
            parts.append(
                f"reading + embedding {s.get('read_and_embed', 0):.1f} s ({self.frames_per_s:.1f} frames/s over "
                f"{self.embedded} frames; model alone {s.get('embed', 0):.1f} s)"
            )
        for key in ("coreset", "calibrate", "save"):
            if s.get(key):
                parts.append(f"{key} {s[key]:.1f} s")
        lines.append("  time     " + ", ".join(parts))
        if self.warnings:
            lines.append(f"  warnings {self.warnings} (see above)")
        return "\n".join(lines)


def _calibration_brief(cal: dict[str, Any]) -> dict[str, Any]:
    keys = ("threshold", "alpha", "level", "k", "window", "frames_scored", "patches_scored", "queries", "unit")
    return {k: cal[k] for k in keys if k in cal}


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt_stamp(ns: int | None) -> str:
    if not ns:
        return "-"
    t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d} UTC"


def _span(first: int | None, last: int | None) -> str:
    if not first:
        return ""
    return f", {_fmt_stamp(first)} + {((last or first) - first) / 1e9:.2f} s"


def directory_size(path: str | Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0


# ----------------------------------------------------------------------------------- helpers
def _progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty()


def _tqdm(enabled: bool, **kw: Any):
    from tqdm import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kw)


def remove_stale_temp_dirs(output: str | Path) -> int:
    """Delete temporary directories that a killed save of ``output`` left behind; returns how many.

    :meth:`NominalBank.save` writes ``.<name>.tmp-<pid>-<ns>`` beside the bank; one whose process
    is gone is garbage (the bank itself was never touched).
    """
    output = Path(output).expanduser().absolute()
    removed = 0
    if not output.parent.is_dir():
        return 0
    for cand in output.parent.glob(f".{output.name}.tmp-*"):
        try:
            pid = int(cand.name[len(f".{output.name}.tmp-"):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(cand, ignore_errors=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_output(output: Path, append: bool) -> None:
    if append:
        if not (output / MANIFEST).is_file():
            raise BuildError(f"--append: there is no bank at {output} to append to (drop --append to create one)")
        return
    if output.exists():
        if output.is_file():
            raise BuildError(f"output {output} is a file; give a directory path for the bank")
        is_bank = (output / MANIFEST).is_file()
        if not is_bank and any(output.iterdir()):
            # The save swaps the directory in: never replace something that is not a bank.
            raise BuildError(f"output {output} is a non-empty directory that is not a bank; choose another path")
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise BuildError(f"output {output}: no permission to write in {parent}")


def calibrate_bank(bank: NominalBank, config: PipelineConfig, progress: Any = None) -> dict[str, Any]:
    """Leave-one-out calibration with the settings of ``config`` (patch or instance bank)."""
    if bank.kind == "instance":
        from semanom_ros.core.instances import calibrate_instance_bank

        cal = calibrate_instance_bank(bank, config, progress)
    else:
        from semanom_ros.core.scoring import calibrate

        c = config
        cal = calibrate(
            bank, c.alpha, c.k, c.calibration_window, c.calibration_max_frames, c.score_smoothing_sigma,
            c.calibration_level, progress,
        )
    # The manifest's configuration says how the bank was calibrated (tools read it back).
    for name in ("alpha", "k", "calibration_window", "calibration_level", "calibration_max_frames", "score_smoothing_sigma"):
        bank.config[name] = getattr(config, name)
    return cal


def _calibrate_progress(enabled: bool) -> Callable[[Iterable[Any]], Iterable[Any]] | None:
    if not enabled:
        return None
    return lambda ids: _tqdm(True, iterable=ids, desc="calibrating", unit="frame")


def _state_token(output: Path) -> Any:
    try:
        manifest = NominalBank.read_manifest(output)
    except SemanomError:
        return None
    return manifest.get("saved_unix_ns"), manifest.get("num_vectors")


def bank_unchanged_since(output: str | Path, token: Any) -> bool:
    """True when the bank at ``output`` is the one ``token`` (from :func:`bank_state`) described."""
    return _state_token(Path(output).expanduser().absolute()) == token


def bank_state(output: str | Path) -> Any:
    """An opaque token of the bank now at ``output`` (None when there is none)."""
    return _state_token(Path(output).expanduser().absolute())


# ----------------------------------------------------------------------------------- build
def build_bank(
    sources: Sequence[str | Path],
    output: str | Path,
    config: PipelineConfig,
    options: BuildOptions | None = None,
    *,
    logger: Any = None,
    extractor: Any = None,
) -> BuildSummary:
    """Build (or with ``options.append`` extend) the bank at ``output`` from nominal bags / folders.

    Raises :class:`BuildError` / :class:`ConfigError` / :class:`BankMismatchError` before any
    embedding when the request cannot work; data faults are skipped, counted and warned about.
    A bank is written only at the end, atomically (KeyboardInterrupt before that leaves the old
    one as it was).
    """
    t_start = time.perf_counter()
    options = (options or BuildOptions()).validate()
    config = absolute_paths(config.validate())
    logger = logger if logger is not None else _log
    warnings = _CountingLogger(logger)
    output = Path(output).expanduser().absolute()
    if config.mode == "combined":
        raise BuildError("mode combined uses two banks; build a patch bank and an instance bank (--mode instance) separately")
    if config.mode == "instance" and options.dedup_similarity is not None:
        raise BuildError("dedup_similarity applies to patch banks; drop it for --mode instance")
    _check_output(output, options.append)

    from semanom_ros.core.monitor import load_ignore_mask

    ignore = load_ignore_mask(config.ignore_mask)  # an unreadable mask fails now, not after the model loads
    plans = _plan_sources(sources, options, warnings)

    existing = None
    if options.append:
        existing = NominalBank.load(output)
        wanted = "instance" if config.mode == "instance" else "patch"
        if existing.kind != wanted:
            raise BuildError(f"--append: the bank at {output} is a {existing.kind!r} bank, this build makes a {wanted!r} bank")
        if existing.extra.get("coreset"):
            warnings.warning(
                f"appending to a coreset bank ({output}): its old frames keep only their coreset vectors; "
                "for an unbiased threshold rebuild from the bags and subsample at the end"
            )
        known = {(s.name, s.topic) for s in existing.sources}
        for plan in plans:
            if (plan.summary.path, plan.summary.topic) in known:
                warnings.warning(f"{plan.summary.path} ({plan.summary.topic or 'folder'}) is already in the bank; its frames are added again")

    t0 = time.perf_counter()
    builder = _make_builder(config, existing, extractor)
    bank: NominalBank = builder.bank
    load_s = time.perf_counter() - t0
    if ignore is not None:
        import hashlib

        bank.extra["ignore_mask"] = {
            "path": config.ignore_mask,
            "shape": list(ignore.shape),
            "ignored_fraction": round(float(ignore.mean()), 6),
            "blake2b": hashlib.blake2b(Path(config.ignore_mask).read_bytes(), digest_size=16).hexdigest(),
        }
    summary = BuildSummary(
        output=str(output), mode=bank.kind, appended=options.append, model=config.model,
        input_height=bank.signature.input_height, sources=[p.summary for p in plans],
    )
    show = _progress_enabled(options.progress)
    t_stream = time.perf_counter()
    embed_s, stopped_at_max = _stream_into_bank(builder, plans, options, config, summary, warnings, show, ignore)
    summary.seconds["load_model"] = load_s
    summary.seconds["read_and_embed"] = time.perf_counter() - t_stream
    summary.seconds["embed"] = embed_s
    summary.skipped = _account_skips(plans, stopped_at_max)

    if summary.frames_used == 0:
        raise BuildError(
            f"no frame was usable ({sum(summary.skipped.values())} skipped: "
            + ", ".join(f"{k} {v}" for k, v in summary.skipped.items() if v)
            + "); nothing was written"
            + (f", the bank at {output} is unchanged" if options.append or output.exists() else "")
        )
    full_bank = bank
    if options.coreset_requested:
        from semanom_ros.core.coreset import coreset_bank

        t0 = time.perf_counter()
        with _tqdm(show, total=None, desc="coreset", unit="vec") as bar:
            result = coreset_bank(
                full_bank, fraction=options.coreset_fraction, count=options.coreset_size, seed=options.coreset_seed,
                progress=bar.update,
            )
        bank = result.bank
        summary.coreset = bank.extra["coreset"]
        summary.seconds["coreset"] = time.perf_counter() - t0

    bank.calibration = None  # an appended bank's old calibration no longer describes it
    if options.calibrate:
        t0 = time.perf_counter()
        try:
            if bank is not full_bank:
                from semanom_ros.core.coreset import calibrate_coreset

                calibrate_coreset(bank, full_bank, config, _calibrate_progress(show))
                for name in ("alpha", "k", "calibration_window", "calibration_level"):
                    bank.config[name] = getattr(config, name)
            else:
                calibrate_bank(bank, config, _calibrate_progress(show))
            summary.calibration = bank.calibration
        except (ConfigError, ValueError, IndexError) as exc:
            summary.calibration_error = (
                f"{exc}; the bank was saved uncalibrated: run 'semanom-bank calibrate {output}' "
                "(e.g. with a smaller --window)"
            )
            warnings.warning(f"calibration failed: {summary.calibration_error}")
        summary.seconds["calibrate"] = time.perf_counter() - t0

    bank.extra.setdefault("builds", [])
    bank.extra["builds"] = list(bank.extra["builds"]) + [_build_record(summary, options)]
    summary.frames_total, summary.vectors_total = bank.num_frames, len(bank)
    t0 = time.perf_counter()
    summary.removed_temp_dirs = remove_stale_temp_dirs(output)
    bank.save(output)
    summary.seconds["save"] = time.perf_counter() - t0
    summary.size_bytes = directory_size(output)
    summary.seconds["total"] = time.perf_counter() - t_start
    summary.warnings = warnings.count
    return summary


def _account_skips(plans: Sequence[_Plan], stopped_at_max: bool) -> dict[str, int]:
    """Per-source and total skip counts: io's reasons, ours, and messages never read."""
    totals = {r: 0 for r in IO_SKIP_REASONS + OWN_SKIP_REASONS}
    for plan in plans:
        s, st = plan.summary, plan.stats
        s.decoded = st.yielded
        s.read_errors = st.read_error
        for r in IO_SKIP_REASONS:
            s.skipped[r] = getattr(st, r)
        if plan.frames is not None:
            own = sum(s.skipped.get(r, 0) for r in OWN_SKIP_REASONS)
            decoded_dropped = max(0, st.yielded - s.used - own)  # decoded ahead, then the build stopped
            never_read = max(0, s.messages - st.yielded - sum(getattr(st, r) for r in IO_SKIP_REASONS))
            if stopped_at_max:
                s.skipped["max_frames"] = s.skipped.get("max_frames", 0) + decoded_dropped + never_read
            elif never_read:
                s.skipped["unreadable"] = s.skipped.get("unreadable", 0) + never_read
        s.skipped = {k: v for k, v in s.skipped.items() if v}
        for r, v in s.skipped.items():
            totals[r] = totals.get(r, 0) + v
    return totals


class _CountingLogger:
    """Forwards to a logging.Logger or rclpy logger and counts the warnings."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self.count = 0

    def warning(self, text: str) -> None:
        self.count += 1
        self._logger.warning(text)

    def info(self, text: str) -> None:
        self._logger.info(text)


def _make_builder(config: PipelineConfig, existing: NominalBank | None, extractor: Any) -> Any:
    if config.mode == "instance":
        from semanom_ros.core.instances import InstanceBankBuilder

        return InstanceBankBuilder(config, bank=existing, extractor=extractor)
    from semanom_ros.core.monitor import PatchBankBuilder

    return PatchBankBuilder(config, extractor=extractor, bank=existing)


def _where(frame: Frame) -> str:
    if frame.topic:
        return f"Bag {frame.source!r}: topic {frame.topic!r} message #{frame.index} at {frame.stamp_ns} ns"
    return f"Image folder {frame.source!r}: {frame.name}"


def _stream_into_bank(
    builder: Any,
    plans: Sequence[_Plan],
    options: BuildOptions,
    config: PipelineConfig,
    summary: BuildSummary,
    log: _CountingLogger,
    show: bool,
    ignore: np.ndarray | None,
) -> tuple[float, bool]:
    """Read, embed and add; returns (seconds spent in the model, whether max_frames stopped it)."""
    instance_mode = config.mode == "instance"
    extractor = builder.pipeline.extractor if instance_mode else builder.extractor
    dedup = NearDuplicateFilter(options.dedup_similarity)
    batch_size = config.batch_size
    total = sum(p.summary.messages for p in plans if p.frames is not None)
    embed_s = 0.0
    checked_mask_shape = False
    bar = _tqdm(show, total=total or None, desc="embedding", unit="msg", smoothing=0.05)
    reader = _Prefetcher(plans, depth=2 * batch_size, logger=log)
    done_reading = 0
    stopped_at_max = False

    def read_so_far() -> int:
        return sum(p.stats.yielded + sum(getattr(p.stats, r) for r in IO_SKIP_REASONS) for p in plans)

    try:
        batch: list[tuple[_Plan, Frame]] = []
        stream = iter(reader)
        exhausted = False
        while not exhausted:
            batch.clear()
            for plan, frame in stream:
                try:
                    validate_rgb(frame.rgb, min_side=extractor.patch_size)
                except ImageError as exc:
                    plan.summary.skipped["unusable_frame"] = plan.summary.skipped.get("unusable_frame", 0) + 1
                    log.warning(f"{_where(frame)} skipped: {exc}")
                    continue
                if ignore is not None and not checked_mask_shape:
                    checked_mask_shape = True
                    mh, mw = ignore.shape
                    fh, fw = frame.rgb.shape[:2]
                    if abs(mw / mh - fw / fh) > 0.02 * (fw / fh):
                        log.warning(
                            f"ignore mask {config.ignore_mask} is {mw}x{mh}, frames are {fw}x{fh}: a different aspect "
                            "ratio; it is stretched to each frame (check it is the mask for this camera)"
                        )
                batch.append((plan, frame))
                if len(batch) >= batch_size:
                    break
            else:
                exhausted = True
            if not batch:
                break
            if instance_mode and options.max_frames is not None:
                # No near-duplicate filter here, so the frames over the limit need no embedding.
                room = options.max_frames - summary.frames_used
                for plan, _ in batch[room:]:
                    plan.summary.skipped["max_frames"] = plan.summary.skipped.get("max_frames", 0) + 1
                del batch[room:]
            t0 = time.perf_counter()
            if instance_mode:
                before = builder.bank.num_frames
                for _, frame in batch:
                    builder.add(frame)
                builder.flush()
                embed_s += time.perf_counter() - t0
                summary.embedded += len(batch)
                added = builder.bank.frames[before:]
                for (plan, frame), fr in zip(batch, added):
                    _count_used(plan, frame, int(fr["vec_count"]), 0, summary)
            else:
                feats = extractor.extract_batch([f.rgb for _, f in batch])
                embed_s += time.perf_counter() - t0
                summary.embedded += len(batch)
                for (plan, frame), feat in zip(batch, feats):
                    if options.max_frames is not None and summary.frames_used >= options.max_frames:
                        plan.summary.skipped["max_frames"] = plan.summary.skipped.get("max_frames", 0) + 1
                        continue
                    if not dedup.keep(frame.source, feat.cls):
                        plan.summary.skipped["near_duplicate"] = plan.summary.skipped.get("near_duplicate", 0) + 1
                        continue
                    before = len(builder.bank)  # a counter; bank.frames would concatenate the table per frame
                    builder.add_features(frame, feat)
                    grid_h, grid_w = feat.grid_shape
                    _count_used(plan, frame, len(builder.bank) - before, grid_h * grid_w, summary)
            now = read_so_far()
            bar.update(max(0, now - done_reading))
            done_reading = max(done_reading, now)
            bar.set_postfix(used=summary.frames_used, skipped=now - summary.frames_used, refresh=False)
            if options.max_frames is not None and summary.frames_used >= options.max_frames:
                stopped_at_max = True
                break
    finally:
        reader.close()
        bar.close()
    return embed_s, stopped_at_max


def _count_used(plan: _Plan, frame: Frame, vectors: int, grid_cells: int, summary: BuildSummary) -> None:
    """``grid_cells``: patches of the frame's grid (0 for instance banks), ``vectors``: those kept."""
    s = plan.summary
    s.used += 1
    summary.frames_used += 1
    summary.vectors_added += vectors
    if grid_cells:
        summary.patches_ignored += max(0, grid_cells - vectors)
    stamp = int(frame.stamp_ns or 0)
    if stamp:
        s.first_stamp_ns = stamp if s.first_stamp_ns is None else min(s.first_stamp_ns, stamp)
        s.last_stamp_ns = stamp if s.last_stamp_ns is None else max(s.last_stamp_ns, stamp)


def _build_record(summary: BuildSummary, options: BuildOptions) -> dict[str, Any]:
    """What the manifest remembers of one build (sources, selection, counts)."""
    opts = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("progress",) and v is not None}
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "appended": summary.appended,
        "options": opts,
        "sources": [
            {k: v for k, v in s.to_dict().items() if v not in (None, {}, 0) or k in ("used", "messages")}
            for s in summary.sources
        ],
        "frames_used": summary.frames_used,
        "vectors_added": summary.vectors_added,
        "skipped": {k: v for k, v in summary.skipped.items() if v},
        "coreset": summary.coreset,
    }


# ----------------------------------------------------------------------------------- other commands
def recalibrate(
    path: str | Path, output: str | Path | None = None, *, progress: bool | None = None, **overrides: Any
) -> tuple[NominalBank, dict[str, Any]]:
    """Recompute the threshold of the bank at ``path`` (settings: the bank's, then ``overrides``)."""
    bank = NominalBank.load(path)
    config = bank_config(bank, **overrides)
    cal = calibrate_bank(bank, config, _calibrate_progress(_progress_enabled(progress)))
    if bank.extra.get("coreset"):
        cal["queries"] = "the coreset's own vectors (biased high; calibrate before subsampling for an unbiased threshold)"
    target = Path(output if output is not None else path).expanduser().absolute()
    if output is not None:
        _check_output(target, append=False)
    remove_stale_temp_dirs(target)
    bank.save(target)
    return bank, cal


def merge_banks(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    calibrate: bool = True,
    progress: bool | None = None,
    **overrides: Any,
) -> tuple[NominalBank, dict[str, Any] | None]:
    """Join banks of one model (BankMismatchError otherwise) into ``output``; recalibrates by default."""
    if len(paths) < 2:
        raise BuildError("merge needs at least two banks")
    banks = [NominalBank.load(p) for p in paths]
    merged = NominalBank(banks[0].signature, kind=banks[0].kind, config=banks[0].config)
    merged.extra = {k: v for k, v in banks[0].extra.items() if k not in ("builds", "coreset")}
    builds: list[Any] = []
    for path, bank in zip(paths, banks):
        try:
            merged.merge(bank)
        except SemanomError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        if bank.kind == "instance":
            theirs, ours = bank.extra.get("instance"), banks[0].extra.get("instance")
            if theirs != ours:
                raise BuildError(f"{path}: instance bank built with another detector/segmenter setup than {paths[0]}")
        builds += list(bank.extra.get("builds", []))
    merged.extra["builds"] = builds
    merged.extra["merged_from"] = [str(Path(p).expanduser().absolute()) for p in paths]
    if any(b.extra.get("coreset") for b in banks):
        merged.extra["coreset"] = {"merged": [b.extra.get("coreset") for b in banks]}
    cal = None
    if calibrate:
        config = bank_config(merged, **overrides)
        cal = calibrate_bank(merged, config, _calibrate_progress(_progress_enabled(progress)))
    target = Path(output).expanduser().absolute()
    if target.exists() and not (target / MANIFEST).is_file():
        _check_output(target, append=False)
    remove_stale_temp_dirs(target)
    merged.save(target)
    return merged, cal


def coreset_existing_bank(
    path: str | Path,
    output: str | Path,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    calibrate: bool = True,
    progress: bool | None = None,
    **overrides: Any,
) -> tuple[NominalBank, Any]:
    """Greedy k-center coreset of the bank at ``path`` saved to ``output``; calibrated against the full frames."""
    from semanom_ros.core.coreset import calibrate_coreset, coreset_bank

    full = NominalBank.load(path)
    show = _progress_enabled(progress)
    with _tqdm(show, total=None, desc="coreset", unit="vec") as bar:
        result = coreset_bank(full, fraction=fraction, count=count, seed=seed, progress=bar.update)
    if calibrate:
        config = bank_config(full, **overrides)
        calibrate_coreset(result.bank, full, config, _calibrate_progress(show))
        for name in ("alpha", "k", "calibration_window", "calibration_level"):
            result.bank.config[name] = getattr(config, name)
    target = Path(output).expanduser().absolute()
    if target.exists() and not (target / MANIFEST).is_file():
        _check_output(target, append=False)
    remove_stale_temp_dirs(target)
    result.bank.save(target)
    return result.bank, result


def describe_bank(path: str | Path) -> str:
    """Human-readable manifest: model, sizes, sources with time ranges, threshold and alpha."""
    path = Path(path).expanduser()
    m = NominalBank.read_manifest(path)
    if m.get("format") != "semanom_ros.bank":
        raise BuildError(f"{path / MANIFEST} is not a semanom_ros bank manifest")
    model = m.get("model", {})
    files = m.get("files", {})
    size = sum(int(f.get("bytes", 0)) for f in files.values()) + (path / MANIFEST).stat().st_size
    lines = [
        f"bank         {path.absolute()}  ({m.get('kind', 'patch')} bank, format {m.get('format_version')})",
        f"model        {model.get('model')}  (weights {model.get('fingerprint')}, dim {model.get('dim')}, "
        f"patch {model.get('patch_size')})",
        f"input        height {model.get('input_height')} px",
        f"size         {m.get('num_vectors')} vectors ({m.get('embedding_dtype', 'float16')}), {m.get('num_frames')} frames, "
        f"{_fmt_bytes(size)} on disk",
    ]
    sources = m.get("sources", [])
    lines.append(f"sources      {len(sources)}")
    for s in sources:
        first, last = s.get("first_stamp_ns"), s.get("last_stamp_ns")
        if s.get("topic") or (first or 0) >= 10**18:  # clock times (bags, live topics)
            span = _span(first, last).lstrip(", ")
        else:  # image folders: stamps are file index / fps
            span = f"{((last or 0) - (first or 0)) / 1e9:.2f} s" if first else ""
        lines.append(
            f"  {s.get('name')}" + (f"  {s.get('topic')}" if s.get("topic") else "")
            + f"  {s.get('frames')} frames" + (f"  {span}" if span else "")
        )
    cal = m.get("calibration")
    if cal:
        lines.append(
            f"calibration  threshold {cal.get('threshold', float('nan')):.5f} at alpha {cal.get('alpha')} "
            f"({cal.get('level')} level, k {cal.get('k')}, window {cal.get('window')}, "
            f"{cal.get('frames_scored')} frames scored)"
        )
        key = "patch_scores" if cal.get("level", "patch") == "patch" else "image_scores"
        q = (cal.get(key) or {}).get("quantiles", {})
        if q:
            lines.append(
                f"             {key.replace('_', ' ')}: median {q.get('0.5', float('nan')):.4f}, "
                f"p99 {q.get('0.99', float('nan')):.4f}, max {(cal.get(key) or {}).get('max', float('nan')):.4f}"
            )
        if cal.get("queries"):
            lines.append(f"             queries: {cal['queries']}")
    else:
        lines.append("calibration  none (run 'semanom-bank calibrate')")
    extra = m.get("extra") or {}
    if extra.get("coreset"):
        c = extra["coreset"]
        if "to_vectors" in c:
            lines.append(
                f"coreset      {c['to_vectors']} of {c['from_vectors']} vectors ({100 * c['kept_fraction']:.1f} %, "
                f"greedy k-center, seed {c.get('seed')})"
            )
        else:
            lines.append("coreset      merged from coreset banks")
    if extra.get("ignore_mask"):
        im = extra["ignore_mask"]
        lines.append(f"ignore mask  {im.get('path')} ({100 * im.get('ignored_fraction', 0):.1f} % of pixels)")
    index = m.get("index")
    if index:
        lines.append(f"index        {index.get('type')}" + (f" (recall@1 {index['recall_at_1']:.3f})" if index.get("recall_at_1") else ""))
    builds = extra.get("builds") or []
    if builds:
        lines.append(f"builds       {len(builds)}: " + ", ".join(
            f"{b.get('time_utc')} +{b.get('frames_used')} frames" for b in builds[-5:]
        ) + (" ..." if len(builds) > 5 else ""))
    cfg = m.get("config") or {}
    lines.append(
        f"created      {_fmt_stamp(m.get('created_unix_ns'))}, saved {_fmt_stamp(m.get('saved_unix_ns'))}"
        + (f"; pipeline k {cfg.get('k')}, min area {cfg.get('min_component_area_px')} px" if cfg else "")
    )
    return "\n".join(lines)
