"""Scene-level modes next to patch mode on the highway data with the real DINOv2-S/14 weights.

Fits the global models (CLS / mean-patch embeddings: kNN, k-NNN, k-Means, HDBSCAN) on the 150
nominal frames, builds the patch bank from every 2nd nominal frame at input height 224 (the
Monitor's patch mode and its majority-vote decision), scores the 71 labelled test frames and
prints image AUROC, balanced accuracy at the calibrated threshold and the per-frame scoring time
(after the backbone forward, which every mode shares and which is printed separately).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scene_modes.py [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_dir, pin_threads, shared_dir  # noqa: E402

from semanom_ros.core import FeatureExtractor, Monitor, PatchBankBuilder, PipelineConfig  # noqa: E402
from semanom_ros.core.features import Features  # noqa: E402
from semanom_ros.workflows.scene_evaluation import evaluate_scene_modes, format_modes_table  # noqa: E402


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"cannot read {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input-height", type=int, default=224)
    ap.add_argument("--alpha", type=float, default=0.9, help="scene thresholds: alpha-quantile of leave-one-out scores")
    ap.add_argument("--repeats", type=int, default=3, help="timed scoring repeats per frame")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cache", type=Path, help="features .npz: written on the first run, reused after")
    ap.add_argument("--knnn-window", type=int, default=12,
                    help="extra k-NNN rows with temporal neighbours (this many frames) left out of the normalisers")
    args = ap.parse_args()
    pin_threads(args.threads)
    data = shared_dir() / "data" / "highway"
    nominal_paths = sorted((data / "nominal").glob("*.jpg"))
    rows = list(csv.DictReader((data / "test" / "labels.csv").open()))
    test_paths = [data / "test" / "images" / f"{r['frame']}.jpg" for r in rows]
    labels = [int(r["anomalous"]) for r in rows]
    print(f"{len(nominal_paths)} nominal frames, {len(test_paths)} test frames ({sum(labels)} anomalous)")

    cfg = PipelineConfig(model=str(model_dir()), input_height=args.input_height, device="cpu",
                         num_threads=args.threads, batch_size=4)
    extractor = FeatureExtractor(cfg.model, cfg.input_height, "cpu", "float32")

    if args.cache and args.cache.is_file():
        cached = np.load(args.cache)
        feat_ms = float(cached["feat_ms"])

        def rebuild(prefix: str) -> list[Features]:
            return [Features(p, c, tuple(s), tuple(i)) for p, c, s, i in zip(
                cached[f"{prefix}_patches"], cached[f"{prefix}_cls"], cached[f"{prefix}_image"],
                cached[f"{prefix}_input"])]

        nominal, test = rebuild("nominal"), rebuild("test")
    else:
        t0 = time.perf_counter()
        nominal = [extractor.extract(read_rgb(p)) for p in nominal_paths]
        test = [extractor.extract(read_rgb(p)) for p in test_paths]
        feat_ms = (time.perf_counter() - t0) / (len(nominal) + len(test)) * 1e3
        if args.cache:
            np.savez(args.cache, feat_ms=feat_ms, **{
                f"{name}_{key}": np.stack([getattr(f, attr) for f in feats])
                for name, feats in (("nominal", nominal), ("test", test))
                for key, attr in (("patches", "patches"), ("cls", "cls"), ("image", "image_size"),
                                  ("input", "input_size"))
            })
    print(f"backbone forward (shared by every mode): {feat_ms:.0f} ms/frame at input height {cfg.input_height}")

    # Patch bank from every 2nd nominal frame; the features are reused instead of re-extracted.
    builder = PatchBankBuilder(cfg, extractor=extractor)
    for i in range(0, len(nominal), 2):
        builder.bank.add_patch_grid(nominal[i].patches, source="highway/nominal", index=i)
    t3 = time.perf_counter()
    builder.calibrate()
    monitor = Monitor(cfg, builder.bank, extractor=extractor)
    print(f"patch bank: {len(builder.bank)} vectors from {builder.bank.num_frames} frames, "
          f"calibrated in {time.perf_counter() - t3:.1f} s, threshold {monitor.threshold:.4f}")

    modes = ("patch", "patch_majority", "cls_knn", "cls_knnn", "cls_kmeans", "cls_hdbscan", "mean_knn", "mean_knnn")
    t4 = time.perf_counter()
    report = evaluate_scene_modes(test, labels, nominal, modes=modes, patch_monitor=monitor,
                                  alpha=args.alpha, repeats=args.repeats)
    if args.knnn_window:
        windowed = evaluate_scene_modes(test, labels, nominal, modes=("cls_knnn", "mean_knnn"), alpha=args.alpha,
                                        repeats=args.repeats, knnn_exclude_window=args.knnn_window)
        report.update({f"{m}_w{args.knnn_window}": r for m, r in windowed.items()})
    print(f"(fitting, calibration and scoring took {time.perf_counter() - t4:.1f} s)\n")
    print(format_modes_table(report))
    patch_ms = report["patch"]["ms_per_frame"]
    print("\nspeed-up of scoring vs patch mode: " + ", ".join(
        f"{m} {patch_ms / r['ms_per_frame']:.0f}x" for m, r in report.items() if m.startswith(("cls", "mean"))))
    extras = {m: {k: v for k, v in r.items() if k in ("k", "clusters", "threshold")} for m, r in report.items()}
    print("details:", json.dumps(extras))
    if args.json:
        args.json.write_text(json.dumps({"features_ms_per_frame": feat_ms, "modes": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
