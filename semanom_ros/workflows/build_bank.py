"""The streaming bank build that ``semanom-bank build`` and ``bank_builder_node`` share.

Frames come one at a time from rosbag2 bags or image folders (:mod:`semanom_ros.workflows.sources`,
which applies the time range, stride and minimum interval and counts undecodable messages); a
reader thread decodes the next frames while the model embeds the current batch; each batch is
embedded once, near duplicates (CLS similarity to the last kept frame) are dropped, and the
patch grids go into the bank. Nothing but the bank's own vectors grows with the length of the
recording. At the end the bank is (optionally) reduced to a coreset, calibrated, and saved
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semanom_ros.core.bank import NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.coreset import coreset_bank
from semanom_ros.core.errors import ConfigError, ImageError
from semanom_ros.core.features import validate_rgb
from semanom_ros.core.instances import InstanceBankBuilder
from semanom_ros.core.bank.builder import PatchBankBuilder
from semanom_ros.core.ignore import load_ignore_mask
from semanom_ros.core.selection import NearDuplicateFilter
from semanom_ros.io.frame_types import Frame

from .bank_ops import (
    calibrate_bank,
    calibrate_coreset_bank,
    calibrate_progress,
    calibration_brief,
    calibration_summary,
    check_output,
    directory_size,
    format_bytes,
    format_span,
    progress_bar,
    progress_enabled,
    remove_stale_temp_dirs,
)
from .errors import BuildError
from .settings import BuildOptions, absolute_paths
from .sources import FramePrefetcher, SourcePlan, SourceSummary, plan_sources

__all__ = ["BuildSummary", "CountingLogger", "IO_SKIP_REASONS", "OWN_SKIP_REASONS", "build_bank", "finish_build"]

_log = logging.getLogger("semanom_ros.bank")

IO_SKIP_REASONS = ("time_range", "stride", "min_interval", "decode_error", "deserialize_error")
# Skip reasons of this module (after decoding).
# "unreadable": messages after the point where a damaged file stopped being readable.
OWN_SKIP_REASONS = ("near_duplicate", "unusable_frame", "max_frames", "unreadable")


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
            out["calibration"] = calibration_brief(self.calibration)
        return out

    def format_text(self) -> str:
        lines = [
            f"{'appended to' if self.appended else 'built'} {self.output}  "
            f"({self.mode} bank, {self.model} at input height {self.input_height})"
        ]
        for s in self.sources:
            what = f"{s.path}" + (f"  {s.topic}" if s.topic else "")
            if s.error:
                lines.append(f"  source   {what}: SKIPPED ({s.error})")
                continue
            if s.kind == "bag":
                span = format_span(s.first_stamp_ns, s.last_stamp_ns)
            else:  # folder stamps are file index / fps, not clock times
                span = (
                    f", {((s.last_stamp_ns or 0) - (s.first_stamp_ns or 0)) / 1e9:.2f} s"
                    if s.first_stamp_ns is not None else ""
                )
            extra = f", reading stopped early {s.read_errors}x (damaged)" if s.read_errors else ""
            unit = "msgs" if s.kind == "bag" else "files"
            masked = f", {s.masked} with an ignore mask" if s.masked else ""
            lines.append(
                f"  source   {what}: {s.messages} {unit}, {s.decoded} decoded, {s.used} used{masked}{extra}{span}"
            )
        skipped = {k: v for k, v in self.skipped.items() if v}
        skip_text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()) or "none"
        lines += [
            f"  frames   {self.messages} messages, {self.decoded} decoded, {self.frames_used} used; "
            f"skipped: {skip_text}",
            f"  vectors  {self.vectors_added} added"
            + (f" ({self.patches_ignored} patches left out by ignore masks)" if self.patches_ignored else "")
            + f"; bank now {self.vectors_total} vectors in {self.frames_total} frames",
        ]
        if self.coreset:
            c = self.coreset
            lines.append(
                f"  coreset  {c['from_vectors']} -> {c['to_vectors']} vectors ({100 * c['kept_fraction']:.1f} %, "
                f"{c['shrink_factor']:.2f}x smaller; greedy k-center, seed {c['seed']}, {c['seconds']:.1f} s)"
            )
        if self.calibration:
            lines.append(f"  calib    {calibration_summary(self.calibration)}")
            if self.calibration.get("warning"):
                lines.append(f"  WARNING  {self.calibration['warning']}")
        elif self.calibration_error:
            lines.append(f"  calib    FAILED: {self.calibration_error}")
        else:
            lines.append("  calib    not calibrated (run 'semanom-bank calibrate')")
        lines.append(f"  on disk  {format_bytes(self.size_bytes)}")
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
    warnings = CountingLogger(logger)
    output = Path(output).expanduser().absolute()
    if config.mode == "combined":
        raise BuildError(
            "mode combined uses two banks; build a patch bank and an instance bank (--mode instance) separately"
        )
    if config.mode == "instance" and options.dedup_similarity is not None:
        raise BuildError("dedup_similarity applies to patch banks; drop it for --mode instance")
    check_output(output, options.append)

    ignore = load_ignore_mask(config.ignore_mask)  # an unreadable mask fails now, not after the model loads
    plans = plan_sources(sources, options, warnings)

    existing = None
    if options.append:
        existing = NominalBank.load(output)
        wanted = "instance" if config.mode == "instance" else "patch"
        if existing.kind != wanted:
            raise BuildError(
                f"--append: the bank at {output} is a {existing.kind!r} bank, this build makes a {wanted!r} bank"
            )
        if existing.extra.get("coreset"):
            warnings.warning(
                f"appending to a coreset bank ({output}): its old frames keep only their coreset vectors; "
                "for an unbiased threshold rebuild from the bags and subsample at the end"
            )
        known = {(s.name, s.topic) for s in existing.sources}
        for plan in plans:
            if (plan.summary.path, plan.summary.topic) in known:
                warnings.warning(
                    f"{plan.summary.path} ({plan.summary.topic or 'folder'}) is already in the bank; "
                    "its frames are added again"
                )

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
    show = progress_enabled(options.progress)
    t_stream = time.perf_counter()
    embed_s, stopped_at_max = _stream_into_bank(builder, plans, options, config, summary, warnings, show, ignore)
    summary.seconds["load_model"] = load_s
    summary.seconds["read_and_embed"] = time.perf_counter() - t_stream
    summary.seconds["embed"] = embed_s
    summary.skipped = _account_skips(plans, stopped_at_max)
    if options.masks is not None:
        masked = sum(p.summary.masked for p in plans)
        bank.extra.setdefault("masks", [])
        bank.extra["masks"] = list(bank.extra["masks"]) + [
            {"path": str(Path(options.masks).expanduser().resolve()), "frames_masked": masked}
        ]
        for plan in plans:
            if plan.frames is not None and plan.summary.decoded and not plan.summary.masked:
                warnings.warning(
                    f"--masks {options.masks}: no <image stem>.png there matches an image of {plan.summary.path}; "
                    "its frames went into the bank whole"
                )

    if summary.frames_used == 0:
        raise BuildError(
            f"no frame was usable ({sum(summary.skipped.values())} skipped: "
            + ", ".join(f"{k} {v}" for k, v in summary.skipped.items() if v)
            + "); nothing was written"
            + (f", the bank at {output} is unchanged" if options.append or output.exists() else "")
        )
    finish_build(bank, output, config, options, summary, warnings, show)
    summary.seconds["total"] = time.perf_counter() - t_start
    summary.warnings = warnings.count
    return summary


def finish_build(
    bank: NominalBank,
    output: Path,
    config: PipelineConfig,
    options: BuildOptions,
    summary: BuildSummary,
    warnings: Any,
    show: bool,
) -> NominalBank:
    """The end of every build: optional coreset, calibration, the build record, the atomic save.

    Shared by :func:`build_bank` and the fleet build (its merged shards); fills ``summary``'s
    coreset, calibration, totals, size and times, and returns the bank that was saved.
    """
    full_bank = bank
    if options.coreset_requested:
        t0 = time.perf_counter()
        with progress_bar(show, total=None, desc="coreset", unit="vec") as bar:
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
                calibrate_coreset_bank(bank, full_bank, config, calibrate_progress(show))
            else:
                calibrate_bank(bank, config, calibrate_progress(show))
            summary.calibration = bank.calibration
            if bank.calibration and bank.calibration.get("warning"):
                warnings.warning(bank.calibration["warning"])
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
    return bank


def _account_skips(plans: Sequence[SourcePlan], stopped_at_max: bool) -> dict[str, int]:
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


class CountingLogger:
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
        return InstanceBankBuilder(config, bank=existing, extractor=extractor)
    return PatchBankBuilder(config, extractor=extractor, bank=existing)


def _where(frame: Frame) -> str:
    if frame.topic:
        return f"Bag {frame.source!r}: topic {frame.topic!r} message #{frame.index} at {frame.stamp_ns} ns"
    return f"Image folder {frame.source!r}: {frame.name}"


def _stream_into_bank(
    builder: Any,
    plans: Sequence[SourcePlan],
    options: BuildOptions,
    config: PipelineConfig,
    summary: BuildSummary,
    log: CountingLogger,
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
    bar = progress_bar(show, total=total or None, desc="embedding", unit="msg", smoothing=0.05)
    reader = FramePrefetcher(plans, depth=2 * batch_size, logger=log)
    done_reading = 0
    stopped_at_max = False

    def read_so_far() -> int:
        return sum(p.stats.yielded + sum(getattr(p.stats, r) for r in IO_SKIP_REASONS) for p in plans)

    try:
        batch: list[tuple[SourcePlan, Frame]] = []
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
                    _count_used(plan, frame, len(builder.bank) - before, feat.num_patches, summary)
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


def _count_used(plan: SourcePlan, frame: Frame, vectors: int, grid_cells: int, summary: BuildSummary) -> None:
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
