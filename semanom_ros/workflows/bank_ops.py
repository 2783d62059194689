"""Bank maintenance shared by ``semanom-bank`` and ``bank_builder_node``.

Calibrate, merge, coreset, check, upgrade and describe banks, and write them safely (output
checks, stale temporary directories of killed saves, a token to tell whether a bank changed).
Every write is :meth:`NominalBank.save`'s atomic swap.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from semanom_ros.core.bank import INDEX_FILE, MANIFEST, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.coreset import calibrate_coreset, coreset_bank
from semanom_ros.core.errors import SemanomError
from semanom_ros.core.scoring import calibrate_bank as calibrate_with_config
from semanom_ros.core.scoring import calibrate_on_drive, drive_scores

from .errors import BuildError
from .settings import BuildOptions, config_from_bank

_log = logging.getLogger("semanom_ros.bank")

__all__ = [
    "bank_state",
    "bank_unchanged_since",
    "calibrate_bank",
    "calibrate_coreset_bank",
    "calibrate_on",
    "calibrate_progress",
    "calibration_brief",
    "calibration_summary",
    "check_bank",
    "check_output",
    "coreset_existing_bank",
    "describe_bank",
    "directory_size",
    "format_bytes",
    "format_span",
    "format_stamp",
    "merge_banks",
    "progress_bar",
    "progress_enabled",
    "recalibrate",
    "remove_stale_temp_dirs",
    "save_in_place_or_to",
    "upgrade_bank",
]


def calibration_brief(cal: dict[str, Any]) -> dict[str, Any]:
    keys = ("threshold", "alpha", "level", "k", "holdout", "window", "sources", "drive", "frames_scored",
            "patches_scored", "queries", "unit", "warning")
    return {k: cal[k] for k in keys if k in cal}


def calibration_summary(cal: dict[str, Any]) -> str:
    """One line: threshold, alpha, level, k, what was held out, frames scored."""
    holdout = cal.get("holdout", "window")
    if holdout == "source":
        held = f"each frame's source held out, {cal.get('sources')} sources"
    elif holdout == "drive":
        drive = cal.get("drive") if isinstance(cal.get("drive"), dict) else {}
        held = f"on drive {drive.get('path')}"
    else:
        held = f"window {cal.get('window')}"
    threshold = cal.get("threshold")
    return (
        f"threshold {_num(threshold, '.5f')} at alpha {cal.get('alpha')} ({cal.get('level')} level, k {cal.get('k')}, "
        f"{held}, {cal.get('frames_scored')} frames scored)"
    )


def format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_stamp(ns: int | None) -> str:
    if not ns:
        return "-"
    try:
        t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)
    except (OverflowError, ValueError, OSError):  # not a time this machine can show
        return f"{ns} ns"
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d} UTC"


def format_span(first: int | None, last: int | None) -> str:
    if not first:
        return ""
    return f", {format_stamp(first)} + {((last or first) - first) / 1e9:.2f} s"


def directory_size(path: str | Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0


def progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty()


def progress_bar(enabled: bool, **kw: Any):
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


def check_output(output: Path, append: bool) -> None:
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
    cal = calibrate_with_config(bank, config, progress)
    # The manifest's configuration says how the bank was calibrated (tools read it back).
    for name in ("alpha", "k", "calibration_window", "calibration_holdout", "calibration_level",
                 "calibration_max_frames", "score_smoothing_sigma", "score_normalization"):
        bank.config[name] = getattr(config, name)
    return cal


def calibrate_coreset_bank(
    coreset: NominalBank, full: NominalBank, config: PipelineConfig, progress: Any = None
) -> None:
    """Calibrate a coreset against the frames of the ``full`` bank it was taken from (an unbiased threshold)."""
    calibrate_coreset(coreset, full, config, progress)
    for name in ("alpha", "k", "calibration_window", "calibration_holdout", "calibration_level"):
        coreset.config[name] = getattr(config, name)


def calibrate_progress(enabled: bool) -> Callable[[Iterable[Any]], Iterable[Any]] | None:
    if not enabled:
        return None
    return lambda ids: progress_bar(True, iterable=ids, desc="calibrating", unit="frame")


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


def recalibrate(
    path: str | Path, output: str | Path | None = None, *, progress: bool | None = None, **overrides: Any
) -> tuple[NominalBank, dict[str, Any]]:
    """Recompute the threshold of the bank at ``path`` (settings: the bank's, then ``overrides``)."""
    bank = NominalBank.load(path)
    config = config_from_bank(bank, overrides)
    cal = calibrate_bank(bank, config, calibrate_progress(progress_enabled(progress)))
    if bank.extra.get("coreset"):
        cal["queries"] = (
            "the coreset's own vectors (biased high; calibrate before subsampling for an unbiased threshold)"
        )
    save_in_place_or_to(bank, path, output)
    return bank, cal


def save_in_place_or_to(bank: NominalBank, path: str | Path, output: str | Path | None) -> None:
    """Save ``bank`` (loaded from ``path``) atomically back to ``path``, or to a new bank at ``output``."""
    target = Path(output if output is not None else path).expanduser().absolute()
    if output is not None:
        check_output(target, append=False)
    remove_stale_temp_dirs(target)
    bank.save(target)


def calibrate_on(
    path: str | Path,
    drive: str | Path,
    output: str | Path | None = None,
    *,
    options: BuildOptions | None = None,
    logger: Any = None,
    extractor: Any = None,
    **overrides: Any,
) -> tuple[NominalBank, dict[str, Any]]:
    """Threshold of the patch bank at ``path`` from a separate nominal ``drive`` (bag or image folder).

    Every frame of the drive (selected by ``options``: topic, stride, time range, max_frames, masks)
    is scored against the whole bank as the monitor scores it; the threshold is the alpha-quantile
    of those scores at the bank's calibration level (settings: the bank's, then ``overrides``). The
    drive's path and frame count go into the calibration. Saved atomically.
    """
    from semanom_ros.core.bank.signature import check_signature
    from semanom_ros.core.features import FeatureExtractor  # torch: only the commands that embed load it
    from semanom_ros.core.ignore import IgnoreMask

    from .sources import FramePrefetcher, plan_sources

    bank = NominalBank.load(path)
    if bank.kind != "patch":
        raise BuildError(f"calibrate --on: {path} is a {bank.kind!r} bank; only patch banks can be calibrated on a "
                         "drive (recalibrate it leave-one-out without --on)")
    if bank.num_views() > 1:
        raise BuildError(f"calibrate --on: {path} has crop views, which are calibrated per view; calibrating them "
                         "on a drive is not supported yet (recalibrate leave-one-out without --on)")
    config = config_from_bank(bank, overrides)
    options = (options or BuildOptions(progress=False)).validate()
    log = logger if logger is not None else _log
    extractor = extractor or FeatureExtractor.from_config(config)
    check_signature(bank.signature, extractor.signature(), where=f"calibration drive model ({config.model})")
    plans = plan_sources([drive], options, log)
    ignore = IgnoreMask.from_config(config)
    used = 0

    def grids() -> Iterator[tuple[Any, Any]]:
        reader = FramePrefetcher(plans, depth=2 * config.batch_size, logger=log)
        batch: list[Any] = []
        try:
            for _, frame in reader:
                if options.max_frames is not None and used + len(batch) >= options.max_frames:
                    break
                batch.append(frame)
                if len(batch) >= config.batch_size:
                    yield from embed(batch)
                    batch = []
            yield from embed(batch)
        finally:
            reader.close()

    def embed(batch: list[Any]) -> Iterator[tuple[Any, Any]]:
        nonlocal used
        if not batch:
            return
        for frame, feat in zip(batch, extractor.extract_batch([f.rgb for f in batch])):
            pixels = ignore.with_frame(feat.image_size, frame.ignore, "frame ignore mask")
            used += 1
            yield feat.patches, None if pixels is None else ignore.patch_mask(pixels, feat.grid_shape)

    image_scores, patch_scores = drive_scores(
        bank, grids(), config.k, config.score_smoothing_sigma, config.score_normalization
    )
    plan = plans[0].summary
    drive_info = {"path": plan.path, "frames": used, "kind": plan.kind}
    if plan.topic:
        drive_info["topic"] = plan.topic
    cal = calibrate_on_drive(bank, image_scores, patch_scores, config, drive_info)
    for name in ("alpha", "k", "calibration_level", "score_smoothing_sigma", "score_normalization"):
        bank.config[name] = getattr(config, name)
    save_in_place_or_to(bank, path, output)
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
        config = config_from_bank(merged, overrides)
        cal = calibrate_bank(merged, config, calibrate_progress(progress_enabled(progress)))
    target = Path(output).expanduser().absolute()
    if target.exists() and not (target / MANIFEST).is_file():
        check_output(target, append=False)
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
    full = NominalBank.load(path)
    show = progress_enabled(progress)
    with progress_bar(show, total=None, desc="coreset", unit="vec") as bar:
        result = coreset_bank(full, fraction=fraction, count=count, seed=seed, progress=bar.update)
    if calibrate:
        calibrate_coreset_bank(result.bank, full, config_from_bank(full, overrides), calibrate_progress(show))
    target = Path(output).expanduser().absolute()
    if target.exists() and not (target / MANIFEST).is_file():
        check_output(target, append=False)
    remove_stale_temp_dirs(target)
    result.bank.save(target)
    return result.bank, result


def check_bank(path: str | Path, *, verify: bool = False) -> NominalBank:
    """Load the bank at ``path`` with every check a monitor's load runs; BankError on any failure.

    A damaged index file, which a monitor rebuilds, is a failure here too. ``verify`` re-hashes
    every file whatever the bank's size. ``bank.checks`` lists what was checked, ``bank.warnings``
    what is not damage (a legacy format).
    """
    return NominalBank.load(path, verify=True if verify else None, strict=True)


def upgrade_bank(path: str | Path, output: str | Path | None = None) -> tuple[NominalBank, int]:
    """Re-save the bank at ``path`` in the current format, in place or at ``output``.

    Every file is verified first. Vectors, calibration and the saved index are kept as they are.
    Returns the bank and the format version it had.
    """
    manifest = NominalBank.read_manifest(path)
    bank = NominalBank.load(path, verify=True)
    if INDEX_FILE in (manifest.get("files") or {}) and bank.search_index.saved_file is None:
        bank.search_index.ensure()  # the saved index file was damaged or missing: save a fresh one
    save_in_place_or_to(bank, path, output)
    return bank, manifest["format_version"]


def _num(value: Any, spec: str) -> str:
    """A number formatted with ``spec``; anything else as it is (a description never fails)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "-" if value is None else str(value)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def describe_bank(path: str | Path, manifest: dict[str, Any] | None = None) -> str:
    """Human-readable manifest: model, sizes, sources with time ranges, threshold and alpha.

    ``manifest``: the bank's checked manifest when already read (else it is read from ``path``).
    """
    path = Path(path).expanduser()
    m = manifest if manifest is not None else NominalBank.read_manifest(path)
    model = m["model"]
    files = m.get("files") or {}
    size = sum(int(f["bytes"]) for f in files.values()) + (path / MANIFEST).stat().st_size
    lines = [
        f"bank         {path.absolute()}  ({m.get('kind', 'patch')} bank, format {m.get('format_version')})",
        f"model        {model.get('model')}  (weights {model.get('fingerprint')}, dim {model.get('dim')}, "
        f"patch {model.get('patch_size')})",
        f"input        height {model.get('input_height')} px",
        f"size         {m.get('num_vectors')} vectors ({m.get('embedding_dtype', 'float16')}), "
        f"{m.get('num_frames')} frames, {format_bytes(size)} on disk",
    ]
    sources = m.get("sources") or []
    lines.append(f"sources      {len(sources)}")
    for s in sources:
        first, last = s.get("first_stamp_ns"), s.get("last_stamp_ns")
        if s.get("topic") or (first or 0) >= 10**18:  # clock times (bags, live topics)
            span = format_span(first, last).lstrip(", ")
        else:  # image folders: stamps are file index / fps
            span = f"{((last or 0) - (first or 0)) / 1e9:.2f} s" if first else ""
        lines.append(
            f"  {s.get('name')}" + (f"  {s.get('topic')}" if s.get("topic") else "")
            + f"  {s.get('frames')} frames" + (f"  {span}" if span else "")
        )
    lines += _describe_calibration(m.get("calibration"))
    extra = _obj(m.get("extra"))
    if extra.get("coreset"):
        c = _obj(extra["coreset"])
        if "to_vectors" in c:
            fraction = c.get("kept_fraction")
            lines.append(
                f"coreset      {c.get('to_vectors')} of {c.get('from_vectors')} vectors "
                f"({_num(100 * fraction if isinstance(fraction, (int, float)) else fraction, '.1f')} %, "
                f"greedy k-center, seed {c.get('seed')})"
            )
        else:
            lines.append("coreset      merged from coreset banks")
    if extra.get("ignore_mask"):
        im = _obj(extra["ignore_mask"])
        fraction = im.get("ignored_fraction", 0)
        lines.append(
            f"ignore mask  {im.get('path')} "
            f"({_num(100 * fraction if isinstance(fraction, (int, float)) else fraction, '.1f')} % of pixels)"
        )
    index = m.get("index")
    if index:
        recall = index.get("recall_at_1")
        lines.append(f"index        {index.get('type')}" + (f" (recall@1 {recall:.3f})" if recall else ""))
    builds = extra.get("builds") if isinstance(extra.get("builds"), list) else []
    if builds:
        lines.append(f"builds       {len(builds)}: " + ", ".join(
            f"{_obj(b).get('time_utc')} +{_obj(b).get('frames_used')} frames" for b in builds[-5:]
        ) + (" ..." if len(builds) > 5 else ""))
    cfg = m.get("config") or {}
    lines.append(
        f"created      {format_stamp(m.get('created_unix_ns'))}, saved {format_stamp(m.get('saved_unix_ns'))}"
        + (f"; pipeline k {cfg.get('k')}, min area {cfg.get('min_component_area_px')} px" if cfg else "")
    )
    return "\n".join(lines)


def _describe_calibration(cal: dict[str, Any] | None) -> list[str]:
    if not cal:
        return ["calibration  none (run 'semanom-bank calibrate')"]
    lines = [f"calibration  {calibration_summary(cal)}"]
    key = "patch_scores" if cal.get("level", "patch") == "patch" else "image_scores"
    scores = _obj(cal.get(key))
    q = _obj(scores.get("quantiles"))
    if q:
        lines.append(
            f"             {key.replace('_', ' ')}: median {_num(q.get('0.5'), '.4f')}, "
            f"p99 {_num(q.get('0.99'), '.4f')}, max {_num(scores.get('max'), '.4f')}"
        )
    if cal.get("queries"):
        lines.append(f"             queries: {cal['queries']}")
    if cal.get("warning"):
        lines.append(f"             WARNING: {cal['warning']}")
    return lines
