"""Writing an evaluation: report.json, report.md, the plots and the grid of example frames.

Plots use matplotlib's Agg backend (no display needed); curves are recomputed with
scikit-learn from the kept per-frame scores and sampled pixels.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .report import EvalRun

__all__ = ["PLOT_FILES", "render_markdown", "write_json", "write_outputs", "write_text_atomic"]

PLOT_FILES = {
    "roc": "roc.png",
    "pr": "pr.png",
    "f1_vs_threshold": "f1_vs_threshold.png",
    "min_area_sweep": "min_area_sweep.png",
    "examples": "examples.png",
}
_DPI = 110


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null (the block's 'undefined' says why)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_text_atomic(path: Path, text: str) -> None:
    # Written next to the target and renamed: a reader never sees half a report.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(report: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(_clean(report), indent=2, default=_json_default, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- markdown


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


_IMAGE_COLS = ["n", "anom.", "nom.", "TP", "FP", "TN", "FN", "precision", "recall", "F1", "FPR", "specificity",
               "bal. acc.", "AUROC", "AUPRC", "best F1 (thr)"]


def _image_row(name: str, b: dict[str, Any]) -> list[Any]:
    if b is None or not b.get("n_frames"):
        return [name, 0] + ["n/a"] * (len(_IMAGE_COLS) - 1)
    best = b.get("best_f1") or {}
    best_txt = "n/a" if best.get("f1") is None else f"{best['f1']:.3f} ({best['threshold']:.3f})"
    return [name, b["n_frames"], b["n_anomalous"], b["n_nominal"], b["tp"], b["fp"], b["tn"], b["fn"],
            b["precision"], b["recall"], b["f1"], b["fpr"], b["specificity"], b["balanced_accuracy"],
            b["auroc"], b["auprc"], best_txt]


def _undefined_notes(name: str, block: dict[str, Any] | None) -> list[str]:
    if not block:
        return []
    return [f"- {name} `{k}`: {v}" for k, v in (block.get("undefined") or {}).items()]


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    op, timings, data = meta["operating_point"], meta["timings"], meta["data"]
    bank = meta["bank"]
    out = ["# semanom-eval report", ""]
    source = data.get("images") if data.get("mode") == "folder" else f"{data.get('bag')} ({data.get('topic')})"
    out += [
        f"- data: {data.get('mode')} `{source}`, {meta['n_frames']} frames"
        + (f", {data.get('n_frames_with_mask')} with masks" if data.get("mode") == "folder" else ""),
        f"- bank: `{bank['path']}` ({bank.get('num_frames')} frames, {bank.get('num_vectors')} vectors)",
        f"- model: `{(meta.get('model') or {}).get('model')}` at input height {meta['config']['input_height']}, "
        f"k={meta['config']['k']}, device {meta['config']['device']}",
        f"- operating point: threshold {op['threshold']:.4f} ({op['threshold_source']}), "
        f"min component area {op['min_area_px']} px",
        f"- time per frame: median {_f(timings['median_ms_per_frame'], 1)} ms, "
        f"p90 {_f(timings['p90_ms_per_frame'], 1)} ms "
        "(" + ", ".join(f"{k} {_f(v, 1)} ms" for k, v in timings["median_ms_by_stage"].items()) + ")",
        f"- created {meta['created_utc']}, semanom_ros {meta['semanom_ros_version']}",
        "",
        "## Image level",
        "",
        "At the operating point (a frame is flagged when a component survives the area filter); AUROC and AUPRC "
        "rank frames by their image score (highest patch score); best F1 is over thresholds on that score.",
        "",
    ]
    img = report["image"]
    rows = [_image_row("**overall**", img["overall"])]
    rows += [_image_row(g, b) for g, b in img["by_group"].items()]
    out.append(_table(["frames"] + _IMAGE_COLS, rows))
    vs = {g: b.get("vs_nominal") for g, b in img["by_group"].items() if b.get("vs_nominal")}
    if vs:
        out += ["", "Each group's frames together with every nominal frame of the other groups:", ""]
        out.append(_table(["group vs nominal"] + _IMAGE_COLS, [_image_row(g, b) for g, b in vs.items()]))
    notes = _undefined_notes("overall", img["overall"])
    for g, b in img["by_group"].items():
        notes += _undefined_notes(g, b)
    if report.get("pixel"):
        px = report["pixel"]
        o = px["overall"]
        out += [
            "",
            "## Pixel level",
            "",
            f"Frames with masks; AUROC, AP and FPR at 95 % TPR over every {o['pixel_stride']}th pixel in each "
            "direction; IoU of the filtered binary map with the mask at full resolution (pooled over frames; mean "
            "IoU averages frames with a non-empty mask).",
            "",
        ]
        cols = ["frames", "n", "pixels", "anomalous px", "AUROC", "AP", "FPR@95TPR", "IoU", "mean IoU"]

        def prow(name: str, b: dict[str, Any]) -> list[Any]:
            return [name, b["n_frames"], b["n_pixels"], b["n_anomalous_pixels"], b["auroc"], b["ap"],
                    b["fpr_at_95_tpr"], b["iou"], b["mean_iou"]]

        out.append(_table(cols, [prow("**overall**", o)] + [prow(g, b) for g, b in px["by_group"].items()]))
        notes += _undefined_notes("pixel overall", o)
    modes = report.get("modes") or {}
    if len(modes) > 1:
        out += ["", "## Modes", "", "Image-level ranking and per-frame time of each scoring mode on the same frames "
                "(ms/frame includes the shared backbone forward).", ""]
        out.append(_table(["mode", "image AUROC", "balanced accuracy", "ms/frame"],
                          [[name, m.get("image_auroc"), m.get("balanced_accuracy", m.get("image_f1")),
                            _f(m.get("median_ms_per_frame"), 1)] for name, m in modes.items()]))
    sweeps = report["sweeps"]
    sweep_cols = ["precision", "recall", "F1", "FPR", "TP", "FP", "pixel IoU (sampled)"]

    def srow(first: list[Any], r: dict[str, Any]) -> list[Any]:
        return first + [r["precision"], r["recall"], r["f1"], r["fpr"], r["tp"], r["fp"], r["pixel_iou_sampled"]]

    out += ["", "## Sweeps", "", f"### Threshold (min area {op['min_area_px']} px)", ""]
    out.append(_table(["threshold"] + sweep_cols, [srow([f"{r['threshold']:.4f}"], r) for r in sweeps["threshold"]]))
    if sweeps["alpha"]:
        out += ["", f"### Alpha (calibrated threshold, min area {op['min_area_px']} px)", ""]
        out.append(_table(["alpha", "threshold"] + sweep_cols,
                          [srow([f"{r['alpha']:g}", f"{r['threshold']:.4f}"], r) for r in sweeps["alpha"]]))
    out += ["", f"### Minimum component area (threshold {op['threshold']:.4f})", ""]
    out.append(_table(["min area px"] + sweep_cols, [srow([str(r["min_area_px"])], r) for r in sweeps["min_area"]]))
    files = report.get("files") or {}
    if files:
        out += ["", "## Plots", ""]
        out += [f"![{key}]({name})" for key, name in files.items() if name.endswith(".png")]
    ex = report.get("examples") or {}
    if any(ex.values()):
        out += ["", "## Examples (examples.png)", ""]
        for cat, items in ex.items():
            names = ", ".join(f"{e['name']} ({e['score']:.3f})" for e in items) or "none"
            out.append(f"- {cat.replace('_', ' ')}: {names}")
    if notes:
        out += ["", "## Undefined figures", ""] + notes
    out += ["", "## Warnings", ""]
    out += [f"- {w}" for w in report["warnings"]] or ["- none"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=_DPI)
    os.replace(tmp, path)


def _curves_data(run: EvalRun) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    y = np.array([r.label for r in run.records], np.int8)
    s = np.array([r.score for r in run.records], np.float64)
    masked = [r for r in run.records if r.has_mask]
    if not masked:
        return y, s, None, None
    py = np.concatenate([r.px_truth for r in masked]).astype(np.int8)
    ps = np.concatenate([r.px_scores for r in masked])
    return y, s, py, ps


def _two_classes(y: np.ndarray | None) -> bool:
    return y is not None and 0 < int(y.sum()) < y.size


def plot_roc(report: dict[str, Any], run: EvalRun, path: Path) -> None:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    y, s, py, ps = _curves_data(run)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    img = report["image"]["overall"]
    if _two_classes(y):
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"image (AUROC {img['auroc']:.3f})", color="tab:blue")
    if _two_classes(py):
        fpr, tpr, _ = roc_curve(py, ps)
        ax.plot(fpr, tpr, label=f"pixel (AUROC {report['pixel']['overall']['auroc']:.3f})", color="tab:orange")
    if img["fpr"] is not None and img["recall"] is not None:
        ax.plot([img["fpr"]], [img["recall"]], "o", color="tab:red",
                label=f"monitor decision (thr {img['threshold']:.3f}, area {img['min_area_px']} px)")
    ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title=f"ROC ({len(y)} frames)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_pr(report: dict[str, Any], run: EvalRun, path: Path) -> None:
    from sklearn.metrics import precision_recall_curve

    plt = _pyplot()
    y, s, py, ps = _curves_data(run)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    img = report["image"]["overall"]
    if _two_classes(y):
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=f"image (AUPRC {img['auprc']:.3f})", color="tab:blue", drawstyle="steps-post")
        ax.axhline(y.mean(), linestyle=":", color="tab:blue", linewidth=1)
        best = img["best_f1"]
        ax.plot([best["recall"]], [best["precision"]], "s", color="tab:green",
                label=f"best F1 {best['f1']:.3f} (score >= {best['threshold']:.3f})")
    if _two_classes(py):
        p, r, _ = precision_recall_curve(py, ps)
        ax.plot(r, p, label=f"pixel (AP {report['pixel']['overall']['ap']:.3f})", color="tab:orange",
                drawstyle="steps-post")
        ax.axhline(py.mean(), linestyle=":", color="tab:orange", linewidth=1)
    if img["precision"] is not None and img["recall"] is not None:
        ax.plot([img["recall"]], [img["precision"]], "o", color="tab:red",
                label=f"monitor decision (thr {img['threshold']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="Precision-recall (dotted: chance)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _metric_lines(ax: Any, x: list[float], rows: list[dict[str, Any]]) -> None:
    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in rows], float)

    for key, label, style in (("f1", "F1", "-"), ("precision", "precision", "--"), ("recall", "recall", "--"),
                              ("fpr", "FPR", ":")):
        ax.plot(x, col(key), style, marker=".", label=label)
    iou = col("pixel_iou_sampled")
    if np.isfinite(iou).any():
        ax.plot(x, iou, "-.", marker=".", label="pixel IoU")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def plot_threshold_sweep(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    sweeps, op = report["sweeps"], report["meta"]["operating_point"]
    panels = 2 if sweeps["alpha"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    rows = sweeps["threshold"]
    _metric_lines(ax, [r["threshold"] for r in rows], rows)
    ax.axvline(op["threshold"], color="tab:red", linewidth=1, label=f"operating {op['threshold']:.3f}")
    ax.set(xlabel="score threshold", ylabel="image-level figure",
           title=f"vs threshold (min area {op['min_area_px']} px)")
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0][1]
        rows = sweeps["alpha"]
        x = [1.0 - r["alpha"] for r in rows]
        _metric_lines(ax, x, rows)
        ax.set_xscale("log")
        if op.get("alpha") is not None:
            ax.axvline(1.0 - op["alpha"], color="tab:red", linewidth=1, label=f"operating alpha {op['alpha']:g}")
        ax.set(xlabel="1 - alpha (calibrated threshold; left = stricter)", title="vs alpha")
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_min_area_sweep(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows, op = report["sweeps"]["min_area"], report["meta"]["operating_point"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = [r["min_area_px"] for r in rows]
    _metric_lines(ax, x, rows)
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(0, max(x) * 1.3 if x and max(x) > 0 else 1)
    ax.axvline(op["min_area_px"], color="tab:red", linewidth=1, label=f"operating {op['min_area_px']} px")
    ax.set(xlabel="minimum component area (px, symlog)", ylabel="image-level figure",
           title=f"vs minimum component area (threshold {op['threshold']:.3f})")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


_CATEGORY_TITLES = {
    "best_hits": "best hits (anomalous, flagged, highest score)",
    "worst_misses": "worst misses (anomalous, not flagged, lowest score)",
    "false_alarms": "false alarms (nominal, flagged, highest score)",
}


def plot_examples(run: EvalRun, path: Path, threshold: float) -> None:
    plt = _pyplot()
    cats = list(_CATEGORY_TITLES)
    n = max(1, max((len(run.examples.get(c, [])) for c in cats), default=1))
    # A category without frames gets a thin row that just says so.
    ratios = [1.0 if run.examples.get(c) else 0.15 for c in cats]
    fig = plt.figure(figsize=(3.6 * n, 2.9 * sum(ratios) + 0.4), layout="constrained")
    fig.suptitle("Overlays: heat map 0..2x threshold, white = filtered mask, red boxes = components", fontsize=10)
    for subfig, cat in zip(fig.subfigures(len(cats), 1, height_ratios=ratios), cats):
        items = run.examples.get(cat, [])
        subfig.suptitle(f"{_CATEGORY_TITLES[cat]}: {len(items) or 'none'}", fontsize=9, x=0.01, ha="left")
        if not items:
            continue
        axes = subfig.subplots(1, n, squeeze=False)[0]
        for j, ax in enumerate(axes):
            ax.axis("off")
            if j >= len(items):
                continue
            e = items[j]
            ax.imshow(e.thumbnail)
            truth = "anomalous" if e.label else "nominal"
            if e.group and e.group not in ("nominal", "anomalous"):
                truth += f" ({e.group})"
            ax.set_title(f"{e.name}: score {e.score:.3f} (thr {threshold:.3f})\nlabel {truth}", fontsize=7)
    _save(fig, path)
    plt.close(fig)


def write_outputs(report: dict[str, Any], run: EvalRun, output: Path, *, plots: bool = True) -> None:
    """report.json, report.md and (``plots``) the PNGs into ``output``; fills ``report['files']``."""
    output.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {"json": "report.json", "markdown": "report.md"}
    if plots:
        plot_roc(report, run, output / PLOT_FILES["roc"])
        plot_pr(report, run, output / PLOT_FILES["pr"])
        plot_threshold_sweep(report, output / PLOT_FILES["f1_vs_threshold"])
        plot_min_area_sweep(report, output / PLOT_FILES["min_area_sweep"])
        plot_examples(run, output / PLOT_FILES["examples"], run.threshold)
        files.update(PLOT_FILES)
    report["files"] = files
    write_json(report, output / "report.json")
    write_text_atomic(output / "report.md", render_markdown(report))
