"""The GPU benchmark, bench/bench_gpu.py --device cpu --small, at tiny sizes.

The benchmark's code runs end to end and writes the rows it promises, with finite numbers (the
full run needs a GPU and is not a test).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ("dinov2-s", "dinov2-b", "dinov2-l")
HEIGHTS = (28, 56)  # --small input heights


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_small_cpu_run_writes_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(REPO))
    # 1e6 vectors (+ the 64 MiB CPU workspace) exceed a 100 MiB budget: that size must be skipped.
    cmd = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu", "--small", "--json", str(out),
           "--search-sizes", "1e3,1e4,1e6", "--search-budget-mib", "100"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert "| row | model | input |" in proc.stdout  # the markdown table

    for section in ("monitor", "bare"):
        found = [r for r in rows if r["section"] == section]
        assert sorted((r["model"], r["input"].split("h ")[1].split()[0]) for r in found) == sorted(
            (b, str(h)) for b in BACKBONES for h in HEIGHTS
        )
        for r in found:
            for key in ("features_ms", "search_ms", "maps_ms", "total_ms", "fps"):
                assert finite(r[key]) and r[key] > 0, (section, key, r)
            assert r["bank_vectors"] > 0 and r["peak_gpu_mib"] is None  # no GPU memory on a CPU run

    agreement = [r for r in rows if r["section"] == "agreement"]
    assert len(agreement) == len(HEIGHTS)
    for r in agreement:
        assert finite(r["max_abs_diff"]) and 0 <= r["max_abs_diff"] < 0.1
        assert 0.9 <= r["mask_agreement"] <= 1.0

    search = [r for r in rows if r["section"] == "search"]
    torch_rows = sorted((r["bank_vectors"], r["input"]) for r in search if r["note"].startswith("torch exact"))
    queries = {r["input"] for r in search}
    assert len(queries) == len(HEIGHTS)  # one frame's patches at each input height
    assert torch_rows == sorted((n, q) for n in (1000, 10000) for q in queries)
    assert sum(r["note"].startswith("faiss flat") and r["bank_vectors"] == 1000 for r in search) == len(HEIGHTS)
    assert all(finite(r["search_ms"]) and r["search_ms"] > 0 for r in search)
    skipped = [s for s in report["skipped"] if s.startswith("search at 1e+06")]
    assert len(skipped) == len(HEIGHTS) and all("does not fit" in s for s in skipped)

    (instance,) = [r for r in rows if r["section"] == "instance"]
    for key in ("features_ms", "detector_ms", "segmenter_ms", "embed_ms", "search_ms", "maps_ms", "total_ms"):
        assert finite(instance[key]), key
