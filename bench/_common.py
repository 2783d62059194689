"""Helpers shared by the benchmark scripts: paths, thread pinning, timing, real embeddings, tables."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def shared_dir() -> Path:
    return Path(os.environ.get("SEMANOM_SHARED", REPO.parent / "shared"))


def model_dir() -> Path:
    path = shared_dir() / "models" / "dinov2-small"
    if not (path / "model.safetensors").is_file():
        sys.exit(f"real DINOv2-S weights not found under {path}; set SEMANOM_SHARED to the shared folder")
    return path


def pin_threads(threads: int) -> int:
    """One thread count for torch, faiss and NumPy's BLAS (they run one after another)."""
    from threadpoolctl import threadpool_limits

    from semanom_ros.core.threads import configure_threads

    n = configure_threads(threads)
    threadpool_limits(n)  # NumPy's OpenBLAS has its own pool, untouched by OMP settings
    return n


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time in ms over ``repeats`` calls after ``warmup`` calls; returns (ms, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def machine() -> dict[str, Any]:
    import faiss
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1min_at_start": load,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def real_embeddings(cache: Path, input_height: int = 224, test_frames: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """DINOv2-S patch embeddings of the 150 nominal frames (N, 384) fp16 and of a few test frames.

    Cached under ``cache`` (the first run extracts them: about a minute on 2 cores).
    """
    cache.mkdir(parents=True, exist_ok=True)
    bank_file = cache / f"nominal_{input_height}.npy"
    query_file = cache / f"test_{input_height}.npy"
    if bank_file.is_file() and query_file.is_file():
        queries = np.load(query_file)
        return np.load(bank_file, mmap_mode="r"), [q for q in queries[:test_frames]]
    from semanom_ros.core.features import FeatureExtractor

    data = shared_dir() / "data" / "highway"
    extractor = FeatureExtractor(str(model_dir()), input_height, "cpu", "float32")
    nominal = sorted((data / "nominal").glob("*.jpg"))
    tests = sorted((data / "test" / "images").glob("*.jpg"))[:: max(1, 71 // 8)][:8]
    bank = []
    for i in range(0, len(nominal), 8):
        feats = extractor.extract_batch([read_rgb(p) for p in nominal[i : i + 8]])
        bank += [f.patches.reshape(-1, extractor.dim) for f in feats]
    queries = [f.patches.reshape(-1, extractor.dim) for f in extractor.extract_batch([read_rgb(p) for p in tests])]
    np.save(bank_file, np.concatenate(bank).astype(np.float16))
    np.save(query_file, np.stack(queries).astype(np.float32))
    return np.load(bank_file, mmap_mode="r"), queries[:test_frames]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows of dicts -> markdown table with (key, header) columns; None prints as '-'."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
