"""Cross-drive false alarms: a bank's monitor on every frame of another, all-nominal drive.

A bank is only as good as the drive it has not seen: frames of another car, camera or day that
the monitor flags are false alarms a deployment would raise. The drive must be in neither the
bank nor its calibration (``semanom-bank calibrate --on`` takes a *separate* nominal drive).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.monitor import Monitor
from semanom_ros.io.frames import iter_frames

from .report_files import write_json, write_text_atomic

__all__ = ["run_cross_drive"]


def run_cross_drive(
    config: PipelineConfig,
    bank: str | Path,
    drive: str | Path,
    output: str | Path | None,
    *,
    topic: str | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every frame of ``drive`` (folder or bag) and count the flagged ones; report.json/.md to ``output``."""
    monitor = Monitor(config, bank)
    kwargs: dict[str, Any] = {"max_frames": max_frames}
    if topic:
        kwargs["topic"] = topic
    frames = iter_frames(drive, **kwargs)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc="score", unit="frame")
    rows, ms = [], []
    for frame in frames:
        t0 = time.perf_counter()
        result = monitor.process(frame.rgb)
        ms.append((time.perf_counter() - t0) * 1e3)
        rows.append({
            "frame": getattr(frame, "name", None) or int(frame.index),
            "flagged": bool(result.is_anomalous),
            "score": float(result.score),
            "components": len(result.components),
        })
    monitor.release()
    if not rows:
        raise ValueError(f"--nominal-drive {drive}: no frames read")
    ratios = np.asarray([r["score"] for r in rows]) / monitor.threshold
    flagged = sum(r["flagged"] for r in rows)
    report = {
        "bank": str(bank),
        "drive": str(drive),
        "threshold": float(monitor.threshold),
        "config": monitor.config.to_dict(),
        "n_frames": len(rows),
        "frames_flagged": flagged,
        "flagged_rate": flagged / len(rows),
        "score_over_threshold": {
            "median": float(np.median(ratios)), "max": float(ratios.max()), "min": float(ratios.min()),
        },
        "ms_per_frame_median": float(np.median(ms)),
        "frames": rows,
    }
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_json(report, out / "report.json")
        write_text_atomic(out / "report.md", "\n".join([
            f"# Cross-drive false alarms: {drive}",
            "",
            f"Bank {bank}, threshold {monitor.threshold:.4f}: **{flagged}/{len(rows)} frames flagged** "
            f"({100 * report['flagged_rate']:.1f} %); image score / threshold median "
            f"{report['score_over_threshold']['median']:.2f}, max {report['score_over_threshold']['max']:.2f}; "
            f"{report['ms_per_frame_median']:.0f} ms/frame (median).",
            "",
        ]))
    return report
