#!/usr/bin/env python3
"""Coreset size vs detection quality on the highway test set (real DINOv2-S/14).

The full bank is built with the bank builder from the real highway mcap bag (150 nominal frames,
``--height``), calibrated (alpha 0.999, window 12); each coreset keeps a fraction of its vectors by
greedy k-center (``semanom_ros.core.coreset``; one greedy run serves every fraction, since the first
m picks are the m-centre coreset) and is calibrated against the full frames. Every one of the 71
labelled test frames is scored by ``Monitor.score_features`` (features extracted once): image AUROC
(score = highest patch score) and the image decision at the calibrated threshold (components
above the area filter).

    python bench/bench_coreset_auroc.py --fractions 0.5,0.25,0.1 --threads 1
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, machine, markdown_table, model_dir, pin_threads, read_rgb, save_json, shared_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.5,0.25,0.1", help="comma-separated kept fractions")
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    pin_threads(args.threads)
    from sklearn.metrics import roc_auc_score

    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.core.coreset import calibrate_coreset, greedy_k_center_order, subsample_bank
    from semanom_ros.core.features import FeatureExtractor
    from semanom_ros.core.monitor import Monitor
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.settings import BuildOptions

    data = shared_dir() / "data" / "highway"
    fractions = sorted({float(f) for f in args.fractions.split(",")}, reverse=True)
    config = PipelineConfig(model=str(model_dir()), input_height=args.height, device="cpu")
    extractor = FeatureExtractor(config.model, args.height, "cpu", "float32")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = build_bank([str(data / "bag_mcap")], Path(tmp) / "full", config, BuildOptions(progress=False),
                             extractor=extractor)
        print(f"full bank: {summary.frames_used} frames, {summary.vectors_total} vectors, built and calibrated in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        from semanom_ros.core.bank import NominalBank

        full = NominalBank.load(Path(tmp) / "full", mmap=False)

    rows = list(csv.DictReader((data / "test" / "labels.csv").open()))
    labels = np.array([int(r["anomalous"]) for r in rows])
    t0 = time.perf_counter()
    feats = []
    for i in range(0, len(rows), 8):
        feats += extractor.extract_batch(
            [read_rgb(data / "test" / "images" / f"{r['frame']}.jpg") for r in rows[i : i + 8]]
        )
    print(f"{len(feats)} test frames embedded in {time.perf_counter() - t0:.0f} s", flush=True)

    def evaluate(bank) -> dict:
        monitor = Monitor(config, bank, extractor=extractor)
        t = time.perf_counter()
        results = [monitor.score_features(f) for f in feats]
        search_ms = (time.perf_counter() - t) / len(feats) * 1e3
        scores = np.array([r.score for r in results])
        flagged = np.array([r.is_anomalous for r in results])
        return {
            "vectors": len(bank),
            "auroc": float(roc_auc_score(labels, scores)),
            "threshold": monitor.threshold,
            "tpr": float(flagged[labels == 1].mean()),
            "fpr": float(flagged[labels == 0].mean()),
            "ms_per_frame": search_ms,
        }

    base = evaluate(full)
    base.update(fraction=1.0, shrink=1.0, coreset_s=0.0)
    out_rows = [base]
    below_one = [f for f in fractions if f < 1.0]
    if not below_one:
        raise SystemExit("give at least one fraction below 1")
    target = max(1, round(max(below_one) * len(full)))
    t0 = time.perf_counter()
    order = greedy_k_center_order(full.vectors, target, seed=args.seed)
    greedy_s = time.perf_counter() - t0
    print(f"greedy k-center: {target} picks in {greedy_s:.0f} s ({greedy_s / target * 1e3:.1f} ms per pick)",
          flush=True)
    for fraction in fractions:
        if fraction >= 1.0:
            continue
        m = max(1, round(fraction * len(full)))
        small = subsample_bank(full, np.sort(order[:m]))
        calibrate_coreset(small, full, config)
        row = evaluate(small)
        row.update(fraction=fraction, shrink=len(full) / m, coreset_s=greedy_s * m / target)
        out_rows.append(row)
        print(f"  fraction {fraction}: AUROC {row['auroc']:.4f} (full {base['auroc']:.4f})", flush=True)
    for r in out_rows:
        r["delta_auroc"] = r["auroc"] - base["auroc"]
    print()
    print(markdown_table(out_rows, [
        ("fraction", "kept"), ("vectors", "vectors"), ("shrink", "x smaller"), ("coreset_s", "greedy s"),
        ("auroc", "image AUROC"), ("delta_auroc", "change"), ("threshold", "threshold"), ("tpr", "TPR"),
        ("fpr", "FPR"), ("ms_per_frame", "search ms/frame"),
    ]))
    path = save_json(args.out, "coreset_auroc.json", {
        "machine": machine(), "threads": args.threads, "input_height": args.height, "seed": args.seed,
        "test_frames": len(rows), "anomalous": int(labels.sum()), "rows": out_rows,
    })
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
