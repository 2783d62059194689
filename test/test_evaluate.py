"""The semanom-eval tool end to end.

Tiny random-init DINOv2 on synthetic folders and bags; one integration test with the real
DINOv2-S/14 on ../shared/data/highway/test.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from conftest import textured_frame
from semanom_ros.core import PatchBankBuilder, PipelineConfig
from semanom_ros.core.scoring import threshold_for_alpha
from semanom_ros.io.bagwrite import write_image_bag
from semanom_ros.tools.evaluate import main
from semanom_ros.workflows.settings import config_from_bank

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("roc.png", "pr.png", "f1_vs_threshold.png", "min_area_sweep.png", "examples.png")
OBJECTS = ("cat", "cup")
H, W = 84, 140
BOX = (slice(20, 56), slice(40, 84))  # the pasted object: 36 x 44 px


def _anomalous(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = textured_frame(seed, H, W).copy()
    yy, xx = np.mgrid[BOX]
    rgb[BOX] = np.where(((yy // 6 + xx // 6) % 2 == 0)[..., None], (255, 0, 255), (0, 255, 0)).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[BOX] = 255
    return rgb, mask


def write_folder(root: Path, n_nominal: int = 4, n_per_object: int = 2) -> Path:
    """DATA/images/NNNN.png, DATA/masks/NNNN.png (255 = anomalous), DATA/labels.csv (frame,anomalous,object)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    names = [("", 0)] * n_nominal + [(o, 1) for o in OBJECTS for _ in range(n_per_object)]
    for i, (obj, label) in enumerate(names):
        if label:
            rgb, mask = _anomalous(200 + i)
        else:
            rgb, mask = textured_frame(200 + i, H, W), np.zeros((H, W), np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)
        rows.append((f"{i:04d}", label, obj))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "anomalous", "object"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def tiny_bank(tiny_model, tmp_path_factory) -> Path:
    cfg = PipelineConfig(model=tiny_model, input_height=56, calibration_window=1, min_component_area_px=20)
    builder = PatchBankBuilder(cfg)
    builder.add_all(
        SimpleNamespace(rgb=textured_frame(s, H, W), source="synthetic", index=s, stamp_ns=s * 100_000_000)
        for s in range(8)
    )
    builder.calibrate()
    return builder.bank.save(tmp_path_factory.mktemp("eval_banks") / "tiny")


@pytest.fixture(scope="module")
def folder_report(tiny_bank, tmp_path_factory):
    data = write_folder(tmp_path_factory.mktemp("eval_data") / "test")
    out = tmp_path_factory.mktemp("eval_out") / "report"
    rc = main(["--bank", str(tiny_bank), "--data", str(data), "-o", str(out), "--no-progress", "--examples", "2"])
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def run_eval(args: list[str], capsys) -> tuple[int, dict | None, str]:
    rc = main([*args, "--no-progress", "--no-plots", "--examples", "0"])
    err = capsys.readouterr().err
    out = Path(args[args.index("-o") + 1])
    report = json.loads((out / "report.json").read_text()) if rc == 0 else None
    return rc, report, err


# --------------------------------------------------------------------------- the report


def test_report_json_has_the_documented_keys(folder_report):
    _, r = folder_report
    assert r["schema"] == "semanom_ros.eval_report" and r["schema_version"] == 1
    assert set(r) == {"schema", "schema_version", "meta", "image", "pixel", "sweeps", "modes", "examples", "frames",
                      "files", "warnings"}
    meta = r["meta"]
    assert {"bank", "model", "config", "overrides", "data", "n_frames", "operating_point", "timings"} <= set(meta)
    assert meta["n_frames"] == 8 and meta["data"]["mode"] == "folder" and meta["data"]["group_column"] == "object"
    assert meta["timings"]["median_ms_per_frame"] > 0 and set(meta["timings"]["median_ms_by_stage"]) >= {"features"}
    assert meta["config"]["input_height"] == 56 and meta["config"]["min_component_area_px"] == 20
    overall = r["image"]["overall"]
    for key in ("n_frames", "n_anomalous", "n_nominal", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "fpr",
                "specificity", "balanced_accuracy", "auroc", "auprc", "best_f1", "threshold", "min_area_px",
                "undefined"):
        assert key in overall
    assert set(r["image"]["by_group"]) == {"nominal", *OBJECTS}
    for key in ("n_frames", "pixel_stride", "n_pixels", "auroc", "ap", "fpr_at_95_tpr", "iou", "mean_iou"):
        assert key in r["pixel"]["overall"]
    assert r["pixel"]["overall"]["n_frames"] == 8 and r["pixel"]["overall"]["pixel_stride"] == 4
    assert len(r["sweeps"]["threshold"]) > 5 and len(r["sweeps"]["min_area"]) > 5 and len(r["sweeps"]["alpha"]) > 5
    assert set(r["modes"]) == {"patch"} and r["modes"]["patch"]["image_auroc"] == overall["auroc"]
    assert set(r["examples"]) == {"best_hits", "worst_misses", "false_alarms"}
    assert set(r["files"]) == {"json", "markdown", "roc", "pr", "f1_vs_threshold", "min_area_sweep", "examples"}


def test_report_figures_equal_sklearn_on_the_reported_frames(folder_report):
    _, r = folder_report
    frames = r["frames"]
    y = np.array([f["label"] for f in frames])
    s = np.array([f["score"] for f in frames])
    p = np.array([f["is_anomalous"] for f in frames])
    overall = r["image"]["overall"]
    assert (y.sum(), (y == 0).sum()) == (4, 4)
    assert overall["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert overall["auprc"] == pytest.approx(average_precision_score(y, s))
    assert overall["tp"] == int((p & (y == 1)).sum()) and overall["fp"] == int((p & (y == 0)).sum())
    if p.any():
        assert overall["f1"] == pytest.approx(f1_score(y, p))
    # Groups holding one class: AUROC is null with a reason, and each object is also scored against the nominal frames.
    cat = r["image"]["by_group"]["cat"]
    assert cat["n_frames"] == 2 and cat["auroc"] is None and "only anomalous" in cat["undefined"]["auroc"]
    idx = [i for i, f in enumerate(frames) if f["group"] in ("cat", "nominal")]
    assert cat["vs_nominal"]["auroc"] == pytest.approx(roc_auc_score(y[idx], s[idx]))
    assert r["pixel"]["by_group"]["nominal"]["auroc"] is None
    # The sweeps re-derive maps from the kept patch grids: at the operating point they reproduce the monitor.
    op = r["meta"]["operating_point"]
    row = next(x for x in r["sweeps"]["threshold"] if x["threshold"] == pytest.approx(op["threshold"], abs=1e-6))
    assert (row["tp"], row["fp"]) == (overall["tp"], overall["fp"])
    row = next(x for x in r["sweeps"]["min_area"] if x["min_area_px"] == op["min_area_px"])
    assert (row["tp"], row["fp"]) == (overall["tp"], overall["fp"])
    alpha = next(x for x in r["sweeps"]["alpha"] if x["alpha"] == op["alpha"])
    assert alpha["threshold"] == pytest.approx(op["threshold"])
    # Lower thresholds never flag fewer frames.
    flagged = [x["tp"] + x["fp"] for x in r["sweeps"]["threshold"]]
    assert flagged == sorted(flagged, reverse=True)


def test_plots_are_real_pngs_and_markdown_has_tables(folder_report):
    out, r = folder_report
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image.std() > 5, f"{name} is blank"
    md = (out / "report.md").read_text()
    assert "## Image level" in md and "## Pixel level" in md and "### Minimum component area" in md
    assert "| **overall** |" in md and "![roc](roc.png)" in md


# --------------------------------------------------------------------------- faults


def test_missing_masks_warn_naming_files_and_pixel_metrics_use_the_rest(tiny_bank, tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    (data / "masks" / "0001.png").unlink()
    (data / "masks" / "0005.png").unlink()
    rc, r, err = run_eval(["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o")], capsys)
    assert rc == 0
    warning = next(w for w in r["warnings"] if "have no mask" in w)
    assert "0001.png" in warning and "0005.png" in warning and "2 of 8" in warning and "0001.png" in err
    assert r["pixel"]["overall"]["n_frames"] == 6 and r["meta"]["data"]["n_frames_without_mask"] == 2
    assert r["image"]["overall"]["n_frames"] == 8
    assert any("pixel metrics cover 6 of 8" in w for w in r["warnings"])


def test_mask_of_another_size_is_an_error_naming_the_file_unless_resizing_is_asked(tiny_bank, tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    cv2.imwrite(str(data / "masks" / "0006.png"), np.full((H // 2, W // 2), 255, np.uint8))
    rc, _, err = run_eval(["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o1")], capsys)
    assert rc == 2 and "0006.png" in err and "70x42" in err and "--resize-masks" in err
    rc, r, _ = run_eval(
        ["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o2"), "--resize-masks"], capsys
    )
    assert rc == 0 and any("0006.png" in w and "resized" in w for w in r["warnings"])


def test_labels_from_masks_when_a_row_is_missing_and_unlabelled_frames_left_out(tiny_bank, tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    rows = (data / "labels.csv").read_text().splitlines()
    # Drop the rows of 0000 (nominal) and 0004 (cat): their masks give the labels.
    (data / "labels.csv").write_text("\n".join(r for r in rows if not r.startswith(("0000", "0004"))) + "\n")
    rgb = textured_frame(999, H, W)
    cv2.imwrite(str(data / "images" / "0099.png"), rgb)  # no row, no mask
    rc, r, _ = run_eval(["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o")], capsys)
    assert rc == 0
    frames = {f["name"]: f for f in r["frames"]}
    assert "0099.png" not in frames and any("0099.png" in w and "left out" in w for w in r["warnings"])
    assert (frames["0000.png"]["label"], frames["0000.png"]["group"]) == (0, "nominal")
    assert (frames["0004.png"]["label"], frames["0004.png"]["group"]) == (1, "unnamed")


def test_bad_labels_and_missing_data_fail_clearly(tiny_bank, tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    (data / "labels.csv").write_text("frame,state\n0000,ok\n")
    rc, _, err = run_eval(["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "labels.csv" in err and "no label column" in err and "state" in err
    (data / "labels.csv").write_text("frame,anomalous\n0000,maybe\n")
    rc, _, err = run_eval(["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "labels.csv:2" in err and "'maybe'" in err
    rc, _, err = run_eval(["--bank", str(tiny_bank), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no data" in err


# --------------------------------------------------------------------------- bags


def test_bag_mode_labels_ranges_and_warns_about_ranges_outside_and_empty_scenarios(tiny_bank, tmp_path, capsys):
    frames = [textured_frame(300 + i, H, W) for i in range(6)] + [_anomalous(310 + i)[0] for i in range(4)]
    bag = write_image_bag(tmp_path / "bag", frames, "/cam/image", compressed=True, fmt="png", fps=10.0)
    labels = tmp_path / "ranges.csv"
    labels.write_text(
        "start_s,end_s,scenario\n"
        "0.55,0.95,cone\n"  # frames 6..9 (0.6 .. 0.9 s)
        "5.0,6.0,ghost\n"  # after the bag's last frame
        "0.12,0.18,gap\n"  # between two frames: an empty scenario
    )
    rc, r, err = run_eval(
        ["--bank", str(tiny_bank), "--bag", str(bag), "--labels", str(labels), "-o", str(tmp_path / "o")], capsys
    )
    assert rc == 0
    assert [f["label"] for f in r["frames"]] == [0] * 6 + [1] * 4
    assert r["image"]["by_group"]["cone"]["n_frames"] == 4 and r["image"]["by_group"]["nominal"]["n_frames"] == 6
    outside = next(w for w in r["warnings"] if "ghost" in w)
    assert "ranges.csv" in outside and "outside the bag" in outside and "ranges.csv" in err
    assert any("'gap'" in w and "has no frames" in w for w in r["warnings"])
    assert r["image"]["by_group"]["gap"]["n_frames"] == 0 and r["image"]["by_group"]["gap"]["undefined"]["all"]
    assert r["pixel"] is None and r["meta"]["data"]["topic"] == "/cam/image"

    yaml_labels = tmp_path / "ranges.yaml"
    t0 = 1_700_000_000_000_000_000
    yaml_labels.write_text(
        f"ranges:\n  - {{start_ns: {t0 + 600_000_000}, end_ns: {t0 + 900_000_000}, scenario: cone}}\n"
    )
    rc, r, _ = run_eval(
        ["--bank", str(tiny_bank), "--data", str(bag), "--labels", str(yaml_labels), "-o", str(tmp_path / "o2")], capsys
    )
    assert rc == 0 and [f["label"] for f in r["frames"]] == [0] * 6 + [1] * 4


# --------------------------------------------------------------------------- settings


def test_settings_come_from_the_bank_and_flags_override_them(tiny_bank, tiny_model, other_tiny_model, tmp_path, capsys):
    cfg = config_from_bank(tiny_bank)
    assert (cfg.input_height, cfg.min_component_area_px, cfg.model) == (56, 20, tiny_model)
    data = write_folder(tmp_path / "d")
    rc, r, _ = run_eval(
        ["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o1"), "--threshold", "0.5",
         "--min-area", "5"],
        capsys,
    )
    assert rc == 0 and r["meta"]["operating_point"]["threshold"] == 0.5 and r["image"]["overall"]["min_area_px"] == 5
    assert r["meta"]["operating_point"]["threshold_source"] == "threshold setting"
    assert r["meta"]["overrides"] == {"threshold": 0.5, "min_component_area_px": 5}

    # A copy of the weights elsewhere (e.g. a local folder for a manifest naming a hub id) is accepted.
    moved = shutil.copytree(tiny_model, tmp_path / "weights_copy")
    rc, r, _ = run_eval(
        ["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o2"), "--model", str(moved),
         "--alpha", "0.99"],
        capsys,
    )
    manifest = json.loads((tiny_bank / "manifest.json").read_text())
    assert rc == 0 and r["meta"]["operating_point"]["threshold"] == pytest.approx(
        threshold_for_alpha(manifest["calibration"], 0.99)
    )
    # Other weights are refused (the monitor checks the fingerprint).
    rc, _, err = run_eval(
        ["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "o3"), "--model", other_tiny_model], capsys
    )
    assert rc == 2 and "weights" in err


# --------------------------------------------------------------------------- real weights


@pytest.mark.integration
def test_highway_report_with_real_weights(shared, highway_bank, tmp_path):
    """The report on ../shared/data/highway/test reproduces the engine's quality figures."""
    from semanom_ros.workflows.eval_data import FolderDataset, find_folder_layout
    from semanom_ros.workflows.evaluation import run_evaluation
    from semanom_ros.workflows.report import EvalOptions

    _, bank = highway_bank
    layout = find_folder_layout(shared / "data" / "highway" / "test")
    dataset = FolderDataset(layout.images, layout.masks, layout.labels)
    # A short sweep keeps the test fast; the CLI's defaults sweep 25 thresholds and 12 areas.
    options = EvalOptions(
        progress=False, thresholds=[0.1, 0.14, 0.2], alphas=(0.995, 0.999), min_areas=(0, 500, 1500), scene_modes=True
    )
    out = tmp_path / "highway_report"
    r = run_evaluation(config_from_bank(bank), bank, dataset, out, options)
    img, px = r["image"]["overall"], r["pixel"]["overall"]
    print(
        f"\nsemanom-eval highway/test ({img['n_frames']} frames): image AUROC {img['auroc']:.4f}, "
        f"AUPRC {img['auprc']:.4f}, F1 {img['f1']:.4f} (P {img['precision']:.3f} R {img['recall']:.3f}, "
        f"FPR {img['fpr']:.3f}) at threshold {img['threshold']:.4f}; pixel AUROC {px['auroc']:.4f}, AP {px['ap']:.4f}, "
        f"FPR@95TPR {px['fpr_at_95_tpr']:.4f}, IoU {px['iou']:.4f}; "
        f"{r['meta']['timings']['median_ms_per_frame']:.0f} ms/frame median"
    )
    print("mode                  image AUROC   ms/frame")
    for name, m in r["modes"].items():
        print(f"{name:<21} {m['image_auroc']:.4f}   {m['median_ms_per_frame']:.1f}")
    # Scene-level modes appear beside patch mode; a global mean embedding is cheaper and ranks worse here.
    assert {"patch", "patch_majority", "scene/mean_knn", "scene/mean_knnn"} <= set(r["modes"])
    assert 0.5 < r["modes"]["scene/mean_knn"]["image_auroc"] <= r["modes"]["patch"]["image_auroc"]
    assert r["modes"]["scene/mean_knn"]["scoring_ms_per_frame"] < r["modes"]["patch_majority"]["scoring_ms_per_frame"]
    assert img["n_frames"] == 71 and px["n_frames"] == 71
    assert img["auroc"] >= 0.95 and px["auroc"] >= 0.98
    assert set(r["image"]["by_group"]) == {"nominal", "astronaut", "cat", "cells", "coffee_cup", "coins", "rocket"}
    assert r["warnings"] == []
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def test_scene_modes_are_reported_beside_the_patch_mode(tiny_bank, tmp_path, capsys):
    data = write_folder(tmp_path / "test")
    nominal = tmp_path / "nominal"
    nominal.mkdir()
    for s in range(12):
        cv2.imwrite(str(nominal / f"{s:04d}.png"), cv2.cvtColor(textured_frame(s, H, W), cv2.COLOR_RGB2BGR))
    rc, report, _ = run_eval(
        ["--bank", str(tiny_bank), "--data", str(data), "-o", str(tmp_path / "out"), "--modes",
         "--nominal", str(nominal)],
        capsys,
    )
    assert rc == 0
    modes = report["modes"]
    assert {"patch", "patch_majority", "scene/cls_knn", "scene/cls_knnn", "scene/mean_knn",
            "scene/mean_hdbscan"} <= set(modes)
    for entry in modes.values():
        assert "image_auroc" in entry and entry["median_ms_per_frame"] is not None
    assert "## Modes" in (tmp_path / "out" / "report.md").read_text()
