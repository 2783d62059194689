"""Fleet-scale bank builds on a Ray cluster: one shard bank per source, resumable, then the usual merge.

``semanom-bank build ... --ray [ADDRESS]`` runs :func:`fleet_build`. Ray Data spreads the sources
(one read task per bag or image folder) over a pool of embedding actors (``num_gpus`` per actor
where the cluster has GPUs, fractions allowed); each actor keeps its model loaded and builds one
shard per source with the single-process :func:`~semanom_ros.workflows.build_bank.build_bank`
(the same readers, selection, near-duplicate filter and atomic save; a reader thread decodes on
the actor's CPU while the model embeds), uncalibrated, into the shard folder. Decoding stays
beside the model on purpose: a decoded 1080p frame is 6 MB against ~0.2 MB of JPEG, so shipping
decoded frames between workers would cost more than it saves.

Each finished shard gets ``<shard>.done.json``: the key of the arguments it was built with (the
source's files, the pipeline config, the frame selection) and the digest of its manifest. A
re-run with the same arguments keeps every shard whose done file matches and whose bank loads
with its checksums verified, and builds the rest. A source that fails (unreadable, corrupt, no
usable frame) is reported and left out, never fatal; it is tried again on the next run.

The driver then merges the shards in the order the sources were given (the order of the
single-process build, so frames, vectors and calibration come out the same; a ``max_frames``
limit keeps the first frames in that order) and finishes like every build: optional coreset,
source-aware calibration, the atomic save (:func:`~semanom_ros.workflows.build_bank.finish_build`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semanom_ros.core.bank import MANIFEST, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import SemanomError
from semanom_ros.io.bags import is_bag_path

from .bank_ops import check_output, directory_size, progress_bar, progress_enabled
from .build_bank import BuildSummary, CountingLogger, build_bank, finish_build
from .errors import BuildError
from .settings import BuildOptions, absolute_paths
from .sources import SourceSummary

__all__ = [
    "FleetOptions", "FleetSummary", "build_shard", "complete_shard", "fleet_build", "shard_key", "shard_name",
]

_log = logging.getLogger("semanom_ros.fleet")

# Build options that change what goes into a shard (the rest act after the merge).
SHARD_OPTION_KEYS = (
    "topic", "start_s", "end_s", "stride", "min_interval_s", "dedup_similarity", "max_frames", "fps", "masks", "stills",
)
# Pipeline settings that act only after the merge (search, scoring, calibration) or only on speed:
# changing them keeps the shards.
POST_MERGE_CONFIG_KEYS = (
    "batch_size", "num_threads", "index_type", "index_auto_threshold", "index_nlist", "nprobe", "use_gpu_index",
    "search_backend", "search_dtype", "search_memory_fraction", "k", "score_smoothing_sigma", "score_normalization",
    "alpha", "calibration_level", "calibration_window", "calibration_holdout", "calibration_max_frames", "threshold",
    "min_component_area_px", "overlay_alpha", "instance_bank", "instance_threshold",
)
DONE_SUFFIX = ".done.json"


@dataclass
class FleetOptions:
    """Where and how wide a fleet build runs (the pipeline and frame selection are the build's own)."""

    # None: ray.init()'s own rule (RAY_ADDRESS, else a new local cluster); "auto": the cluster running on
    # this machine; "host:6379" or "ray://host:10001": a remote cluster.
    address: str | None = None
    workers: int | None = None  # embedding actors (default: one per GPU, else one per 2 CPUs)
    gpus_per_worker: float | None = None  # default 1 where the cluster has GPUs, else 0; fractions share a GPU
    cpus_per_worker: float = 1.0
    shard_dir: str | None = None  # default: <output>.shards beside the bank (shared storage on a cluster)
    local_cpus: int | None = None  # CPUs of a new local cluster (None: all of this machine)

    def validate(self) -> "FleetOptions":
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) < 1):
            raise BuildError(f"--ray-workers {self.workers!r}: give an integer >= 1")
        if self.gpus_per_worker is not None and not 0 <= float(self.gpus_per_worker) <= 8:
            raise BuildError(f"--ray-gpus-per-worker {self.gpus_per_worker!r}: give a number in [0, 8], e.g. 0.5")
        if not float(self.cpus_per_worker) > 0:
            raise BuildError(f"--ray-cpus-per-worker {self.cpus_per_worker!r}: give a number > 0")
        return self


@dataclass
class FleetSummary(BuildSummary):
    """A build summary plus what the cluster did: shards built, kept from a previous run, failed."""

    shard_dir: str = ""
    workers: int = 0
    gpus_per_worker: float = 0.0
    shards_built: list[str] = field(default_factory=list)
    shards_kept: list[str] = field(default_factory=list)  # complete from an earlier run: not rebuilt
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}

    def format_text(self) -> str:
        lines = [super().format_text()]
        lines.append(
            f"  fleet    {self.workers} worker(s) x {self.gpus_per_worker:g} GPU; shards in {self.shard_dir}: "
            f"{len(self.shards_built)} built, {len(self.shards_kept)} skipped (complete from an earlier run), "
            f"{len(self.failed)} failed"
        )
        for item in self.failed:
            lines.append(f"  FAILED   {item['path']}: {item['error']} (left out; re-run to retry it)")
        return "\n".join(lines)


def shard_name(source: str) -> str:
    """The shard folder name of a source (its absolute path): stable across runs and argument order."""
    digest = hashlib.blake2b(source.encode(), digest_size=6).hexdigest()
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).name)[:48]
    return f"{stem}-{digest}"


def _files_of(path: Path) -> list[list[Any]]:
    """(relative name, size, mtime) of a source's files: a changed bag or folder changes the shard key."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def shard_key(source: str, config: PipelineConfig, options: BuildOptions) -> str:
    """What a shard was built from: the source's files, the pipeline config and the frame selection."""
    record = {
        "source": source,
        "files": _files_of(Path(source)),
        "config": {k: v for k, v in config.to_dict().items() if k not in POST_MERGE_CONFIG_KEYS},
        "options": {k: getattr(options, k) for k in SHARD_OPTION_KEYS},
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _manifest_digest(bank_dir: Path) -> str:
    return hashlib.blake2b((bank_dir / MANIFEST).read_bytes(), digest_size=16).hexdigest()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def complete_shard(shard: Path, key: str) -> dict[str, Any] | None:
    """The done record of a shard that is complete for ``key`` (checksums verified), else None."""
    done = shard.with_name(shard.name + DONE_SUFFIX)
    try:
        record = json.loads(done.read_text())
        if record.get("key") != key or record.get("manifest_digest") != _manifest_digest(shard):
            return None
        NominalBank.load(shard, verify=True, strict=True)
    except (OSError, ValueError, SemanomError):
        return None
    return record


class _ShardWorker:
    """A Ray Data actor: keeps one model loaded and builds the shard of each source it is given."""

    def __init__(self, config: dict[str, Any], options: dict[str, Any]) -> None:
        from semanom_ros.core.features import FeatureExtractor

        self.config = PipelineConfig(**config)
        self.options = BuildOptions(**options)
        # Instance banks load their detector and segmenter per build; patch banks share the extractor.
        self.extractor = FeatureExtractor.from_config(self.config) if self.config.mode == "patch" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"index": [], "record": []}
        for index, source, shard, key in zip(batch["index"], batch["source"], batch["shard"], batch["key"]):
            out["index"].append(int(index))
            record = build_shard(str(source), Path(str(shard)), str(key), self.config, self.options, self.extractor)
            out["record"].append(json.dumps(record, default=str))
        return out


def build_shard(
    source: str, shard: Path, key: str, config: PipelineConfig, options: BuildOptions, extractor: Any = None
) -> dict[str, Any]:
    """Build one source's shard bank and its done record; never raises for a bad source.

    Returns the record (``ok`` False with ``error`` when the source failed: nothing is marked done).
    """
    t0 = time.perf_counter()
    shard.with_name(shard.name + DONE_SUFFIX).unlink(missing_ok=True)  # a rebuilt shard is not done until saved
    try:
        summary = build_bank([source], shard, config, options, logger=_log, extractor=extractor)
    except Exception as exc:  # noqa: BLE001 - a bag that fails is reported and left out, never fatal
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    record = {
        "ok": True,
        "key": key,
        "source_path": source,
        "manifest_digest": _manifest_digest(shard),
        "source": summary.sources[0].to_dict(),
        "embedded": summary.embedded,
        "warnings": summary.warnings,
        "seconds": time.perf_counter() - t0,
        "embed_seconds": summary.seconds.get("embed", 0.0),
    }
    _write_json_atomic(shard.with_name(shard.name + DONE_SUFFIX), record)
    return record


def _connect(fleet: FleetOptions) -> bool:
    """Start or join the cluster; returns whether this call started Ray (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if fleet.address in (None, "local"):
        kwargs.update(include_dashboard=False, num_cpus=fleet.local_cpus)
        if fleet.address == "local":
            kwargs["address"] = "local"
    else:
        kwargs["address"] = fleet.address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise BuildError(
            f"--ray {fleet.address}: no Ray cluster there ({exc}); start one with 'ray start --head' "
            "or drop the address to run a local cluster"
        ) from None
    return True


def fleet_build(
    sources: Sequence[str | Path],
    output: str | Path,
    config: PipelineConfig,
    options: BuildOptions | None = None,
    fleet: FleetOptions | None = None,
    *,
    logger: Any = None,
) -> FleetSummary:
    """Build the bank at ``output`` from ``sources`` on a Ray cluster (see the module docstring).

    Gives the bank the single-process :func:`build_bank` gives for the same arguments. Raises
    :class:`BuildError` before any work for a path that does not exist, ``--append``, or an output
    that is not a bank; sources that fail are reported in the summary and left out.
    """
    import ray

    t_start = time.perf_counter()
    options = (options or BuildOptions()).validate()
    fleet = (fleet or FleetOptions()).validate()
    config = absolute_paths(config.validate())
    warnings = CountingLogger(logger if logger is not None else _log)
    output = Path(output).expanduser().absolute()
    if options.append:
        raise BuildError(
            "--ray builds a new bank; --append is not supported (build the new bags with --ray into another "
            "bank, then 'semanom-bank merge')"
        )
    if config.mode == "combined":
        raise BuildError("mode combined uses two banks; build a patch bank and an instance bank separately")
    check_output(output, append=False)
    paths = []
    for given in sources:
        path = Path(given).expanduser()
        if not path.exists():
            raise BuildError(
                f"source {str(given)!r} does not exist; pass rosbag2 bags (directory, .mcap or .db3) or image folders"
            )
        paths.append(str(path.resolve()))
    shard_dir = Path(fleet.shard_dir).expanduser().absolute() if fleet.shard_dir else output.with_name(
        output.name + ".shards"
    )
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_options = dataclasses.replace(
        options, calibrate=False, coreset_fraction=None, coreset_size=None, append=False, progress=False
    )
    keys = [shard_key(p, config, shard_options) for p in paths]
    shards = [shard_dir / shard_name(p) for p in paths]
    records: dict[int, dict[str, Any]] = {}
    for i, (shard, key) in enumerate(zip(shards, keys)):
        found = complete_shard(shard, key)
        if found is not None:
            records[i] = found
            warnings.info(f"shard {shard.name} ({paths[i]}): complete from an earlier run, skipped")
    todo = [i for i in range(len(paths)) if i not in records]

    started = _connect(fleet)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0.0))
        per_gpu = float(fleet.gpus_per_worker) if fleet.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if fleet.workers is not None:
            workers = int(fleet.workers)
        elif per_gpu > 0:
            workers = max(1, int(gpus / per_gpu))
        else:
            workers = max(1, int(resources.get("CPU", 1.0) // 2))
        workers = max(1, min(workers, len(todo) or 1))
        summary = FleetSummary(
            output=str(output), mode="instance" if config.mode == "instance" else "patch", model=config.model,
            input_height=config.input_height, shard_dir=str(shard_dir), workers=workers, gpus_per_worker=per_gpu,
            shards_kept=[shards[i].name for i in records],
        )
        t_stream = time.perf_counter()
        if todo:
            _run_shards(paths, shards, keys, todo, records, summary, config, shard_options, workers, per_gpu, fleet,
                        warnings, progress_enabled(options.progress))
        summary.seconds["read_and_embed"] = time.perf_counter() - t_stream
    finally:
        if started:
            ray.shutdown()

    bank = _merge_shards(paths, shards, records, summary, config, options)
    finish_build(bank, output, config, options, summary, warnings, progress_enabled(options.progress))
    summary.size_bytes = directory_size(output)
    summary.seconds["total"] = time.perf_counter() - t_start
    summary.warnings = warnings.count
    return summary


def _run_shards(
    paths: list[str], shards: list[Path], keys: list[str], todo: list[int], records: dict[int, dict[str, Any]],
    summary: FleetSummary, config: PipelineConfig, shard_options: BuildOptions, workers: int, per_gpu: float,
    fleet: FleetOptions, warnings: CountingLogger, show: bool,
) -> None:
    """Build the shards of ``todo`` on the cluster; fills ``records`` and the summary's built / failed lists."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours below counts bags and frames across the cluster
    # Ray Data's per-run INFO lines would break up that bar; its full logs stay in the session folder.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    items = [{"index": i, "source": paths[i], "shard": str(shards[i]), "key": keys[i]} for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one read task per source
    ds = ds.map_batches(
        _ShardWorker,
        fn_constructor_args=(config.to_dict(), dataclasses.asdict(shard_options)),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=per_gpu,
        num_cpus=float(fleet.cpus_per_worker),
    )
    t0 = time.perf_counter()
    frames = 0
    with progress_bar(show, total=len(todo), desc="shards", unit="bag") as bar:
        for row in ds.iter_rows():
            i = int(row["index"])
            record = json.loads(row["record"])
            if record["ok"]:
                records[i] = record
                summary.shards_built.append(shards[i].name)
                frames += int(record["embedded"])
                summary.embedded += int(record["embedded"])
                summary.seconds["embed"] = summary.seconds.get("embed", 0.0) + record["embed_seconds"]
                warnings.info(
                    f"shard {shards[i].name} ({paths[i]}): {record['source']['used']} frames in "
                    f"{record['seconds']:.1f} s"
                )
            else:
                summary.failed.append({"path": paths[i], "error": record["error"]})
                warnings.warning(f"{paths[i]}: FAILED, left out of the bank ({record['error']})")
            bar.update(1)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(frames=frames, fps=f"{frames / elapsed:.1f}" if elapsed > 0 else "-",
                            failed=len(summary.failed), refresh=True)


def _merge_shards(
    paths: list[str], shards: list[Path], records: dict[int, dict[str, Any]], summary: FleetSummary,
    config: PipelineConfig, options: BuildOptions,
) -> NominalBank:
    """The shards joined in source order (the single-process build's order), ``max_frames`` from the front."""
    failed = {item["path"]: item["error"] for item in summary.failed}
    bank: NominalBank | None = None
    for i, path in enumerate(paths):
        if i not in records:
            kind = "bag" if is_bag_path(Path(path)) else "folder"
            summary.sources.append(SourceSummary(path=path, kind=kind, error=failed.get(path, "failed")))
            continue
        source = SourceSummary(**records[i]["source"])
        summary.sources.append(source)
        shard = NominalBank.load(shards[i])
        if bank is None:
            # This run's config: shards kept from a run with other calibration settings record those.
            bank = NominalBank(shard.signature, kind=shard.kind, config=config.to_dict())
            bank.extra = {k: v for k, v in shard.extra.items() if k not in ("builds", "coreset")}
        room = None if options.max_frames is None else max(0, options.max_frames - summary.frames_used)
        before = (bank.num_frames, len(bank))
        bank.merge(shard, max_frames=room)
        used = bank.num_frames - before[0]
        if used < source.used:  # the build's max_frames reached: as the single-process build stops there
            source.skipped["max_frames"] = source.skipped.get("max_frames", 0) + source.used - used
            source.used = used
        summary.frames_used += used
        summary.vectors_added += len(bank) - before[1]
        for reason, count in source.skipped.items():
            summary.skipped[reason] = summary.skipped.get(reason, 0) + count
    if bank is None or summary.frames_used == 0:
        reasons = "; ".join(f"{item['path']}: {item['error']}" for item in summary.failed) or "no usable frame"
        raise BuildError(f"no source gave a usable frame ({reasons}); nothing was written")
    return bank
