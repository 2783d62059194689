"""Road-anomaly benchmark: K-fold cross-image evaluation on a labelled anomaly set (semanom-eval --road-anomaly).

Layout (Fishyscapes Lost & Found, SMIYC RoadObstacle21 and others): ``images/<name>.png|jpg|webp`` and
``labels_masks/<name>.png`` with 0 = in-distribution, 1 = anomaly, 255 = void (ignored).

Protocol: images in natural name order, fold = index mod K. For each fold the bank is the patches
(full frame and crop views) of the other folds' images that are entirely in-distribution (no
anomaly or void pixel), each image its own source; the threshold is calibrated as
``semanom-bank build`` does with several sources (each bank image scored against the bank without
itself, alpha-quantile of the patch scores); then each image of the fold is scored and thresholded
like a live frame (score map, components, min area).

Every image's patches are searched once against every other image's bank patches (top-k per image
pair); a fold's k nearest neighbours are the best k of its allowed images' lists, which is exactly
the k-NN over that fold's bank. So K folds cost one search per image instead of K banks' worth.
The report's ``engine_check`` scores images of fold 0 through a :class:`Monitor` on that fold's
bank and gives the largest score difference to the protocol's maps (float16 rounding, ~1e-3).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
import torch

from semanom_ros.core.bank.store import NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.features import FeatureExtractor, Features, patch_mask_from_pixels
from semanom_ros.core.maps import fuse_view_scores, threshold_components, upsample_scores
from semanom_ros.core.monitor import Monitor
from semanom_ros.core.scoring import (
    calibration_from_scores,
    clip_normalized,
    grid_from_scores,
    subtract_frame_median,
    threshold_for_alpha,
    view_offsets,
)
from semanom_ros.core.threads import configure_threads
from semanom_ros.io.folders import read_image_file
from semanom_ros.io.frame_types import natural_key

from .eval_data import EvalDataError
from .eval_metrics import pixel_metrics
from .report_files import write_json, write_text_atomic
from .road_metrics import VOID_LABEL, ComponentMetrics, frame_outcome

__all__ = ["RoadImage", "RoadBenchmarkOptions", "read_road_anomaly_set", "read_label_mask", "run_road_benchmark"]

ROAD_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class RoadImage:
    """One labelled frame of a road-anomaly set."""

    name: str
    image: Path
    labels: Path


def read_road_anomaly_set(root: str | Path, max_images: int | None = None) -> list[RoadImage]:
    """The images of ``root``/images with their ``root``/labels_masks/<name>.png, in natural name order."""
    root = Path(root)
    images, labels = root / "images", root / "labels_masks"
    for folder in (images, labels):
        if not folder.is_dir():
            raise EvalDataError(
                f"--road-anomaly {root}: no folder {folder.name}/ (expected images/ and labels_masks/ with "
                "0 = in-distribution, 1 = anomaly, 255 = void)"
            )
    files = sorted(
        (p for p in images.iterdir() if p.suffix.lower() in ROAD_IMAGE_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    out = []
    for path in files:
        label = labels / f"{path.stem}.png"
        if not label.is_file():
            raise EvalDataError(f"--road-anomaly {root}: image {path.name} has no label mask {label}")
        out.append(RoadImage(path.stem, path, label))
    if len(out) < 2:
        raise EvalDataError(f"--road-anomaly {root}: {len(out)} labelled image(s); the protocol needs at least 2")
    return out[:max_images] if max_images else out


def read_label_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 labels 0 / 1 / 255 of a frame of ``shape``; EvalDataError naming the file otherwise."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise EvalDataError(f"label mask {path}: not a readable image")
    if labels.ndim == 3:
        labels = labels[..., 0]
    if labels.shape != shape:
        raise EvalDataError(
            f"label mask {path}: {labels.shape[1]}x{labels.shape[0]}, its image is {shape[1]}x{shape[0]}"
        )
    values = np.unique(labels)
    unknown = sorted(set(values.tolist()) - {0, 1, VOID_LABEL})
    if unknown:
        raise EvalDataError(
            f"label mask {path}: values {unknown[:5]} besides 0 (in-distribution), 1 (anomaly), 255 (void)"
        )
    return labels.astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    rgb, reason = read_image_file(path)
    if rgb is None:
        raise EvalDataError(f"image {path}: {reason}")
    return rgb


@dataclass
class RoadBenchmarkOptions:
    """How the benchmark samples and counts (the pipeline itself is a PipelineConfig)."""

    folds: int = 5
    bank_fraction: float = 1.0  # random share of each image's bank patches (cost), seeded per image
    pixel_stride: int = 4  # pixel metrics on every n-th pixel in x and y
    void_fraction: float = 0.5  # a component at least this much in the void is not a false component
    engine_check_images: int = 2
    max_images: int | None = None
    keep_maps: bool = False  # keep every score map in the result (tests)
    progress: bool = True
    cache_dir: str | Path | None = None  # embeddings and search tables, reused by runs that differ only downstream
    alphas: tuple[float, ...] = (0.99, 0.995, 0.999, 0.9995)  # operating-point sweep
    min_areas: tuple[int, ...] = (100, 250, 500, 1000)

    def validate(self) -> "RoadBenchmarkOptions":
        if not 2 <= int(self.folds) <= 100:
            raise EvalDataError(f"--folds {self.folds}: must be from 2 to 100")
        if not 0.0 < float(self.bank_fraction) <= 1.0:
            raise EvalDataError(f"--bank-fraction {self.bank_fraction}: must be in (0, 1]")
        if int(self.pixel_stride) < 1:
            raise EvalDataError(f"--pixel-stride {self.pixel_stride}: must be >= 1")
        return self


@dataclass
class _ImageData:
    name: str
    image_size: tuple[int, int]
    boxes: list[tuple[int, int, int, int]]  # full frame first, then the crop views
    grids: list[tuple[int, int]]
    queries: list[torch.Tensor]  # per view (P_v, D) patches
    bank_rows: list[np.ndarray]  # per view: rows of its queries that go into a bank
    banks: list[torch.Tensor]  # per view (B_v, D): those rows, float16-rounded like a saved bank
    forward_ms: float
    # Per view (P_v, n_images, k): best similarities in each other image's bank patches of the same view.
    tables: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Progress:
    enabled: bool
    wrap: Callable[..., Iterable[Any]] = field(init=False)

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.wrap = lambda items, desc: tqdm(items, desc=desc, unit="img")
        else:
            self.wrap = lambda items, desc: items


class _Cache:
    """Embeddings and search tables on disk, keyed by what they depend on (model, size, layer, views, ...)."""

    def __init__(self, options: RoadBenchmarkOptions, extractor: FeatureExtractor, config: PipelineConfig) -> None:
        self.root = Path(options.cache_dir) if options.cache_dir else None
        features_key = json.dumps([extractor.fingerprint, extractor.input_height, extractor.width_cap,
                                   config.feature_layer, [[float(v) for v in box] for box in config.crop_views]])
        self.features_key = hashlib.blake2b(features_key.encode(), digest_size=8).hexdigest()
        self.table_key = hashlib.blake2b(
            json.dumps(["per-view", self.features_key, options.bank_fraction, config.k]).encode(), digest_size=8
        ).hexdigest()

    def path(self, kind: str, name: str) -> Path | None:
        if self.root is None:
            return None
        key = self.features_key if kind == "features" else self.table_key
        folder = self.root / f"{kind}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.npz"

    @staticmethod
    def save(path: Path | None, **arrays: Any) -> None:
        if path is not None:
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)


def _extract_parts(extractor: FeatureExtractor, rgb: np.ndarray, cache_file: Path | None
                   ) -> tuple[list[tuple[tuple[int, int, int, int], np.ndarray]], float]:
    if cache_file is not None and cache_file.is_file():
        z = np.load(cache_file)
        boxes = [tuple(int(v) for v in b) for b in z["boxes"]]
        return [(box, z[f"view{i}"]) for i, box in enumerate(boxes)], float(z["forward_ms"])
    t0 = time.perf_counter()
    feats = extractor.extract(rgb)
    forward_ms = (time.perf_counter() - t0) * 1e3
    height, width = rgb.shape[:2]
    parts = [((0, height, 0, width), feats.patches)] + [(v.box, v.patches) for v in feats.views]
    _Cache.save(cache_file, boxes=np.asarray([b for b, _ in parts]), forward_ms=forward_ms,
                **{f"view{i}": np.asarray(p, np.float32) for i, (_, p) in enumerate(parts)})
    return parts, forward_ms


def _embed(extractor: FeatureExtractor, item: RoadImage, index: int, options: RoadBenchmarkOptions,
           cache: _Cache) -> tuple[_ImageData, np.ndarray]:
    rgb = read_rgb(item.image)
    labels = read_label_mask(item.labels, rgb.shape[:2])
    parts, forward_ms = _extract_parts(extractor, rgb, cache.path("features", item.name))
    height, width = rgb.shape[:2]
    not_nominal = labels != 0
    queries, bank_rows, banks, boxes, grids = [], [], [], [], []
    rng = np.random.default_rng(index)
    for (top, bottom, left, right), patches in parts:
        h, w, d = patches.shape
        # As a bank build with a per-frame ignore mask (label != 0) and ignore_patch_fraction 0.
        excluded = patch_mask_from_pixels(not_nominal[top:bottom, left:right], (h, w), 0.0).reshape(-1)
        rows = np.flatnonzero(~excluded)
        if options.bank_fraction < 1.0:
            rows = rows[rng.random(len(rows)) < options.bank_fraction]
        q = torch.from_numpy(np.asarray(patches, np.float32).reshape(h * w, d))
        queries.append(q)
        bank_rows.append(rows)
        banks.append(q[torch.from_numpy(rows)].to(torch.float16).to(torch.float32))
        boxes.append((top, bottom, left, right))
        grids.append((h, w))
    return _ImageData(item.name, (height, width), boxes, grids, queries, bank_rows, banks, forward_ms), labels


def _pair_tables(data: list[_ImageData], k: int, progress: _Progress, cache: _Cache) -> None:
    """Each image's best ``k`` similarities in every other image's bank patches, view by view (-inf: none)."""
    names = json.dumps([d.name for d in data])
    for i in progress.wrap(range(len(data)), "search"):
        cache_file = cache.path("table", data[i].name)
        if cache_file is not None and cache_file.is_file():
            z = np.load(cache_file)
            if str(z["names"]) == names:  # the same image set (--max-images changes it)
                data[i].tables = [z[f"view{v}"] for v in range(len(data[i].queries))]
                continue
        tables = []
        for v, query in enumerate(data[i].queries):
            table = np.full((len(query), len(data), k), -np.inf, np.float32)
            for j, other in enumerate(data):
                if j == i or len(other.banks[v]) == 0:
                    continue
                sims = query @ other.banks[v].T
                kk = min(k, sims.shape[1])
                table[:, j, :kk] = torch.topk(sims, kk, dim=1).values.numpy()
            tables.append(table)
        data[i].tables = tables
        _Cache.save(cache_file, names=np.asarray(names), **{f"view{v}": t for v, t in enumerate(tables)})


def _knn_scores(table: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """1 - mean of the k best similarities among the allowed images' lists (2.0 where none)."""
    sims = table[:, allowed, :].reshape(len(table), -1)
    if sims.shape[1] == 0:
        return np.full(len(table), 2.0, np.float32)
    kk = min(k, sims.shape[1])
    top = -np.partition(-sims, kk - 1, axis=1)[:, :kk]
    scores = 1.0 - top.mean(axis=1)
    return np.where(np.isfinite(scores), scores, 2.0).astype(np.float32)


def _view_grids(item: _ImageData, allowed: np.ndarray, config: PipelineConfig, offsets: list[float]
                ) -> list[np.ndarray]:
    """Per-view score grids as :class:`PatchScorer` makes them (its search, normalisation and view offsets)."""
    return [
        grid_from_scores(_knn_scores(table, allowed, config.k), grid, None, config.score_smoothing_sigma,
                         config.score_normalization) + np.float32(offset)
        for table, grid, offset in zip(item.tables, item.grids, offsets)
    ]


def _score_map(item: _ImageData, grids: list[np.ndarray]) -> np.ndarray:
    score_map = upsample_scores(grids[0], item.image_size)
    return fuse_view_scores(score_map, list(zip(item.boxes[1:], grids[1:])))


def _fold_calibration(data: list[_ImageData], allowed: np.ndarray, config: PipelineConfig) -> dict[str, Any]:
    """The calibration ``semanom-bank build`` gives the fold's bank: per view, source holdout."""
    views = []
    for v in range(len(data[0].queries)):
        image_scores, patch_scores = [], []
        for b in allowed:
            item = data[b]
            if len(item.bank_rows[v]) == 0:
                continue
            others = allowed[allowed != b]
            scores = _knn_scores(item.tables[v][item.bank_rows[v]], others, config.k)
            if config.score_normalization == "median":  # as leave_one_out_scores normalises a bank frame
                scores = clip_normalized(subtract_frame_median(scores, scores < 2.0), "median")
            patch_scores.append(scores[scores < 2.0])
            image_scores.append(float(scores.max()))
        views.append(calibration_from_scores(
            np.asarray(image_scores, np.float32), np.concatenate(patch_scores), alpha=config.alpha,
            level=config.calibration_level, k=config.k, smoothing_sigma=config.score_smoothing_sigma,
            method="road benchmark fold", normalization=config.score_normalization,
        ))
    return dict(views[0], views=views[1:]) if len(views) > 1 else views[0]


def _operating_point(calibration: dict[str, Any], config: PipelineConfig, alpha: float) -> tuple[float, list[float]]:
    """(threshold, view offsets) at ``alpha``, as the Monitor derives them from a bank's calibration."""
    at = config.replace(alpha=alpha)
    threshold = calibration["threshold"] if alpha == config.alpha else threshold_for_alpha(
        calibration, alpha, config.calibration_level)
    return float(threshold), view_offsets(calibration, at)


def run_road_benchmark(
    config: PipelineConfig,
    root: str | Path,
    output: str | Path | None,
    options: RoadBenchmarkOptions | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the K-fold protocol on the set in ``root``; writes report.json and report.md to ``output``."""
    options = (options or RoadBenchmarkOptions()).validate()
    config = config.replace(threshold=None).validate()
    if config.mode != "patch":
        raise EvalDataError(f"--road-anomaly scores patches; mode {config.mode!r} is not supported")
    configure_threads(config.num_threads)
    started = time.perf_counter()
    items = read_road_anomaly_set(root, options.max_images)
    progress = _Progress(options.progress)
    extractor = FeatureExtractor.from_config(config)
    data, label_maps = [], []
    cache = _Cache(options, extractor, config)
    for index, item in enumerate(progress.wrap(items, "embed")):
        image_data, labels = _embed(extractor, item, index, options, cache)
        data.append(image_data)
        label_maps.append(labels)
    _pair_tables(data, config.k, progress, cache)
    n, folds = len(data), int(options.folds)
    fold_of = np.arange(n) % folds
    thresholds: list[float] = []
    pix_scores, pix_labels, outcomes, maps = [], [], [], {}
    components = ComponentMetrics()
    score_ms = []
    sweep = {(a, m): [0, 0] for a in options.alphas for m in options.min_areas}  # (hits, frames w/ false comp.)
    calibrations = []
    for fold in range(folds):
        allowed = np.flatnonzero(fold_of != fold)
        calibration = _fold_calibration(data, allowed, config)
        calibrations.append(calibration)
        threshold, offsets = _operating_point(calibration, config, config.alpha)
        sweep_points = {a: _operating_point(calibration, config, a) for a in options.alphas}
        thresholds.append(threshold)
        for i in np.flatnonzero(fold_of == fold):
            t0 = time.perf_counter()
            item, labels = data[i], label_maps[i]
            score_map = _score_map(item, _view_grids(item, allowed, config, offsets))
            mask, component_labels, _ = threshold_components(score_map, threshold, config.min_component_area_px)
            score_ms.append((time.perf_counter() - t0) * 1e3)
            stride = options.pixel_stride
            sub_labels, sub_scores = labels[::stride, ::stride], score_map[::stride, ::stride]
            valid = sub_labels != VOID_LABEL
            pix_scores.append(sub_scores[valid])
            pix_labels.append(sub_labels[valid] == 1)
            components.add(mask, labels)
            outcomes.append((item.name, fold, threshold, float(score_map.max()),
                             frame_outcome(component_labels, labels, options.void_fraction)))
            if options.keep_maps:
                maps[item.name] = score_map
            for (alpha, min_area), counts in sweep.items():
                swept_threshold, swept_offsets = sweep_points[alpha]
                swept_map = score_map if swept_offsets == offsets else _score_map(
                    item, _view_grids(item, allowed, config, swept_offsets))
                swept = frame_outcome(threshold_components(swept_map, swept_threshold, min_area)[1], labels,
                                      options.void_fraction)
                counts[0] += swept.hit and swept.has_anomaly
                counts[1] += swept.false_components > 0
    report = _report(config, options, root, data, thresholds, pix_scores, pix_labels, components, outcomes)
    report["sweep"] = [
        {"alpha": a, "min_area_px": m, "frames_hit": hits, "frames_with_false_component": false}
        for (a, m), (hits, false) in sweep.items()
    ]
    report["engine_check"] = _engine_check(config, extractor, items, data, fold_of, calibrations[0], options)
    report["timings"] = {
        "forward_ms_median": float(np.median([d.forward_ms for d in data])),
        "protocol_map_ms_median": float(np.median(score_ms)),
        "engine_score_ms_median": report["engine_check"].get("score_ms_median"),
        "total_s": round(time.perf_counter() - started, 1),
    }
    if options.keep_maps:
        report["score_maps"] = maps
    if output is not None:
        _write(report, Path(output))
    extractor.release()
    return report


def _report(config: PipelineConfig, options: RoadBenchmarkOptions, root: Any, data: list[_ImageData],
            thresholds: list[float], pix_scores: list[np.ndarray], pix_labels: list[np.ndarray],
            components: ComponentMetrics, outcomes: list[tuple[str, int, float, float, Any]]) -> dict[str, Any]:
    pixels = pixel_metrics(np.concatenate(pix_labels).astype(np.int8), np.concatenate(pix_scores))
    anomalous = [o for *_, o in outcomes if o.has_anomaly]
    frames = {
        "n_frames": len(outcomes),
        "anomalous_frames": len(anomalous),
        "frames_hit": sum(o.hit for o in anomalous),
        "frames_with_false_component": sum(o.false_components > 0 for *_, o in outcomes),
        "frames_with_void_component": sum(o.void_components > 0 for *_, o in outcomes),
    }
    frames["hit_rate"] = frames["frames_hit"] / max(frames["anomalous_frames"], 1)
    frames["false_component_rate"] = frames["frames_with_false_component"] / max(frames["n_frames"], 1)
    return {
        "protocol": {
            "data": str(root),
            "folds": int(options.folds),
            "fold_rule": "image index (natural name order) mod folds",
            "bank": "patches entirely label 0 of the other folds' images, each image its own source",
            "bank_fraction": options.bank_fraction,
            "calibration": "each bank image against the others (source holdout), alpha-quantile of patch scores",
            "pixel_stride": options.pixel_stride,
            "void_fraction": options.void_fraction,
        },
        "config": config.to_dict(),
        "bank_vectors_per_image_mean": float(np.mean([sum(len(b) for b in d.banks) for d in data])),
        "thresholds": thresholds,
        "pixel": {k: pixels.get(k) for k in ("auroc", "ap", "fpr_at_95_tpr", "n_pixels", "n_anomalous_pixels")},
        "components": components.result(),
        "frames": frames,
        "per_image": [
            {"name": name, "fold": fold, "threshold": thr, "max_score": peak, "anomalous": o.has_anomaly,
             "hit": o.hit, "false_components": o.false_components, "void_components": o.void_components}
            for name, fold, thr, peak, o in outcomes
        ],
    }


def _engine_check(config: PipelineConfig, extractor: FeatureExtractor, items: list[RoadImage],
                  data: list[_ImageData], fold_of: np.ndarray, calibration: dict[str, Any],
                  options: RoadBenchmarkOptions) -> dict[str, Any]:
    """Score a few fold-0 images through a Monitor on fold 0's bank: the protocol's maps must agree."""
    test = np.flatnonzero(fold_of == 0)[: options.engine_check_images]
    if len(test) == 0:
        return {}
    bank = NominalBank(extractor.signature(), kind="patch", config=config.to_dict())
    allowed = np.flatnonzero(fold_of != 0)
    for b in allowed:
        item = data[b]
        rows = [np.where(v == 0, (r // w).astype(np.int64), -v) for v, (r, (_, w)) in
                enumerate(zip(item.bank_rows, item.grids))]
        cols = [np.where(v == 0, (r % w).astype(np.int64), -1) for v, (r, (_, w)) in
                enumerate(zip(item.bank_rows, item.grids))]
        bank.add_frame(torch.cat(item.banks).numpy(), source=item.name, index=int(b), rows=np.concatenate(rows),
                       cols=np.concatenate(cols), grid=item.grids[0])
    bank.calibration = calibration
    # Exact search, as the protocol's: an approximate index (auto above 50,000 vectors) would differ by its recall.
    threshold, offsets = _operating_point(calibration, config, config.alpha)
    monitor = Monitor(config.replace(threshold=threshold, index_type="flat"), bank, extractor=extractor)
    diffs, ms = [], []
    for i in test:
        features: Features = extractor.extract(read_rgb(items[i].image))
        t0 = time.perf_counter()
        result = monitor.score_features(features)
        ms.append((time.perf_counter() - t0) * 1e3)
        expected = _score_map(data[i], _view_grids(data[i], allowed, config, offsets))
        diffs.append(float(np.abs(result.score_map - expected).max()))
    return {"images": len(test), "max_abs_score_diff": max(diffs), "score_ms_median": float(np.median(ms))}


def _write(report: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    serialisable = {k: v for k, v in report.items() if k != "score_maps"}
    write_json(serialisable, output / "report.json")
    write_text_atomic(output / "report.md", road_summary_markdown(serialisable))


def road_summary_markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown table (one row, the benchmark's columns)."""
    px, comp, fr, tm = report["pixel"], report["components"], report["frames"], report["timings"]
    cfg = report["config"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    views = cfg.get("crop_views") or []
    row = (
        f"| {cfg['input_height']} layer {cfg.get('feature_layer', 0)} k{cfg['k']} views {len(views)} "
        f"alpha {cfg['alpha']} | {f(px['ap'])} | {f(px['auroc'])} | {f(px['fpr_at_95_tpr'])} | {f(comp['siou'])} | "
        f"{f(comp['ppv'])} | {f(comp['mean_f1'])} | {fr['frames_hit']}/{fr['anomalous_frames']} | "
        f"{fr['frames_with_false_component']}/{fr['n_frames']} | "
        f"{tm['forward_ms_median'] + (tm['engine_score_ms_median'] or 0):.0f} |"
    )
    return "\n".join([
        f"# Road-anomaly benchmark: {report['protocol']['data']}",
        "",
        f"{report['protocol']['folds']}-fold cross-image protocol (see docs/evaluation.md); thresholds per fold: "
        + ", ".join(f"{t:.4f}" for t in report["thresholds"]),
        "",
        "| config | AP | AUROC | FPR95 | sIoU | PPV | mean F1 | frames hit | frames w/ false comp. | ms/frame |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row,
        "",
        f"Engine check: {report['engine_check']}",
        "",
        "Operating points (frames hit / frames with a false component):",
        "",
        "| alpha | min area px | frames hit | frames w/ false comp. |",
        "|---|---|---|---|",
        *(f"| {r['alpha']} | {r['min_area_px']} | {r['frames_hit']}/{fr['anomalous_frames']} | "
          f"{r['frames_with_false_component']}/{fr['n_frames']} |" for r in report.get("sweep", [])),
        "",
    ])
