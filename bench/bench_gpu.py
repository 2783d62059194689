#!/usr/bin/env python3
"""Real-time on a GPU: the product's pipeline, a bare all-on-device reference, and exact torch search.

Needs nothing outside the repository: every model is random-init from its real configuration (same
compute as the released weights), saved with save_pretrained and loaded through the project's own
code (PipelineConfig -> FeatureExtractor / Monitor). DINOv2 S/B/L (patch 14, 518 position
embeddings), OWLv2-base/16 at 960 and SAM 2.1 hiera-tiny for instance mode. Frames are generated
960x540 scenes. Rows (one markdown table, one JSON file):

- monitor: ``Monitor.process`` (uint8 frame in, AnomalyResult out; exact faiss flat search on the
  host) per stage and end to end, at input heights 224 and 448, per backbone;
- bare: uint8 frame -> torch resize + normalise on the device -> DINOv2 forward -> TorchExactIndex
  on the device -> upsampled score map and mask back on the host, timed the same way;
- search: TorchExactIndex alone at 1e5 / 1e6 / 1e7 vectors (sizes that do not fit the memory
  budget are skipped with the reason), faiss flat on the CPU at the smallest size for reference;
- instance: instance mode through Monitor (OWLv2 -> SAM 2 -> mask averaging -> search) per stage;
- agreement: max |score map difference| and mask agreement against a CPU float32 Monitor, same flags.

Each timing is the median of ``--iters`` calls after ``--warmup`` calls, synchronised with the GPU.

    python bench/bench_gpu.py [--device cuda] [--json bench/results/gpu.json]
    python bench/bench_gpu.py --device cpu --small        # tiny models and sizes: a smoke run
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from _common import REPO, machine, markdown_table

from semanom_ros.core import FeatureExtractor, Monitor, NominalBank, PatchBankBuilder, PipelineConfig
from semanom_ros.core.backbones import split_tokens
from semanom_ros.core.search.torch_exact import TorchExactIndex, device_fit, resolve_search_dtype

FRAME_SIZE = (540, 960)  # (H, W)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (hidden size, layers, heads): the released DINOv2 ViT-S/B/L with 14 px patches; --small: tiny ones.
BACKBONES = {"dinov2-s": (384, 12, 6), "dinov2-b": (768, 12, 12), "dinov2-l": (1024, 24, 16)}
SMALL_BACKBONES = {"dinov2-s": (32, 2, 2), "dinov2-b": (48, 2, 2), "dinov2-l": (64, 3, 4)}
FULL = dict(heights=(224, 448), iters=20, warmup=3, bank_frames=50, search_sizes="1e5,1e6,1e7", agree=3)
SMALL = dict(heights=(28, 56), iters=2, warmup=1, bank_frames=4, search_sizes="1e3,1e4,1e5", agree=1)
BOXES = 10  # OWLv2 proposals per frame in instance mode (score threshold 0: always this many)


# -- inputs -------------------------------------------------------------------------------------
def scene(seed: int, anomaly: bool = False) -> np.ndarray:
    """A smooth 960x540 'road scene' that drifts with ``seed``; ``anomaly`` adds a bright block."""
    import cv2

    rng = np.random.default_rng(seed // 8)  # frames 8 apart share a layout, so neighbours look alike
    small = rng.integers(0, 255, (9, 16, 3), dtype=np.uint8)
    frame = cv2.resize(small, (FRAME_SIZE[1], FRAME_SIZE[0]), interpolation=cv2.INTER_CUBIC)
    frame = np.roll(frame, 7 * (seed % 8), axis=1)
    frame[360:, :] = (frame[360:, :] // 3 + 60).astype(np.uint8)  # a darker, flatter road band
    if anomaly:
        frame[300:420, 420:560] = (250, 40, 200)
    return np.ascontiguousarray(frame)


def save_models(folder: Path, small: bool, device: torch.device, names: list[str]) -> dict[str, Path]:
    """Random-init checkpoints written with save_pretrained (initialised on ``device``: fast for L)."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per saved shard is noise in a benchmark's output
    paths = {}
    table = SMALL_BACKBONES if small else BACKBONES
    for i, name in enumerate(names):
        hidden, layers, heads = table[name]
        cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           patch_size=14, image_size=56 if small else 518)
        torch.manual_seed(i)
        with torch.device(device):
            model = Dinov2Model(cfg).eval()
        model.save_pretrained(folder / name)
        paths[name] = folder / name
        del model
    return paths


def save_instance_models(folder: Path, small: bool, device: torch.device) -> tuple[Path, Path]:
    """OWLv2-base/16 at 960 and SAM 2.1 hiera-tiny (Sam2Config defaults), or tiny versions of both."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Sam2Config, Sam2Model

    torch.manual_seed(0)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if small:
        owl_cfg = Owlv2Config(text_config=tiny, vision_config=dict(tiny, image_size=96, patch_size=16),
                              projection_dim=32)
        s = 256  # the smallest side the default Hiera windows tile
        backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, image_size=[s, s],
                        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                        num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 4, 4],
                        global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4])
        sam_cfg = Sam2Config(
            vision_config=dict(model_type="sam2_vision_model", backbone_config=backbone,
                               backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=32,
                               backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2]),
            prompt_encoder_config=dict(hidden_size=32, image_size=s, patch_size=16, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                     iou_head_hidden_dim=32),
        )
    else:
        owl_cfg, sam_cfg = Owlv2Config(vision_config={"image_size": 960, "patch_size": 16}), Sam2Config()
    with torch.device(device):
        owl, sam = Owlv2ForObjectDetection(owl_cfg).eval(), Sam2Model(sam_cfg).eval()
    with torch.no_grad():  # random box heads saturate (degenerate boxes); small ones give patch-sized boxes
        owl.box_head.dense2.weight.mul_(0.01)
        owl.box_head.dense2.bias.zero_()
    owl.save_pretrained(folder / "owlv2")
    sam.save_pretrained(folder / "sam2")
    return folder / "owlv2", folder / "sam2"


# -- timing -------------------------------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[Any], Any], inputs: list, args, device: torch.device) -> tuple[list, list]:
    """Wall ms of ``args.iters`` calls (cycling over ``inputs``) after ``args.warmup`` calls."""
    for i in range(args.warmup):
        fn(inputs[i % len(inputs)])
    sync(device)
    times, outs = [], []
    for i in range(args.iters):
        t0 = time.perf_counter()
        outs.append(fn(inputs[i % len(inputs)]))
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, outs


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def row(section: str, model: str, input_: str, bank: int, times: list[float], stages: dict[str, list[float]],
        device: torch.device, note: str = "") -> dict[str, Any]:
    """One table row: median ms per stage and in all; fps for rows that process whole frames."""
    total = statistics.median(times)
    out = {"section": section, "model": model, "input": input_, "bank_vectors": int(bank)}
    out.update({f"{name}_ms": statistics.median(v) for name, v in stages.items() if v})
    fps = None if section == "search" else 1e3 / total
    out.update(total_ms=total, fps=fps, peak_gpu_mib=peak_mib(device), note=note)
    return out


def stage_times(results: list) -> dict[str, list[float]]:
    stages: dict[str, list[float]] = {}
    for result in results:
        for name, ms in result.timings_ms.items():
            stages.setdefault(name, []).append(ms)
    return stages


# -- the bare reference pipeline ----------------------------------------------------------------
class BarePipeline:
    """uint8 frame -> device resize + normalise -> backbone -> torch exact search -> map + mask on host."""

    def __init__(self, extractor: FeatureExtractor, index: TorchExactIndex, threshold: float) -> None:
        self.device, self.model, self.extractor = extractor.device, extractor.model, extractor
        self.input_size = extractor.input_size(*FRAME_SIZE)
        self.grid = extractor.grid_size(*FRAME_SIZE)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self.index, self.threshold = index, threshold

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, marks: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        def mark(name: str) -> None:  # per-stage times only when asked: each costs a synchronisation
            if marks is not None:
                sync(self.device)
                marks.append((name, time.perf_counter()))

        mark("start")
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        x = ((x - self.mean) / self.std).to(self.model.dtype)
        spec = self.extractor.backbone_spec
        hidden = self.model(pixel_values=x, **spec.forward_kwargs).last_hidden_state
        _, patches = split_tokens(F.normalize(hidden.float(), dim=-1), spec, self.extractor.num_prefix_tokens)
        mark("features")
        sims, _ = self.index.search_tensors(patches[0], 1)
        mark("search")
        grid = (1.0 - sims[:, 0]).view(1, 1, *self.grid)
        score_map = F.interpolate(grid, size=FRAME_SIZE, mode="bilinear", align_corners=False)[0, 0]
        out = score_map.cpu().numpy(), (score_map > self.threshold).cpu().numpy()
        mark("maps")
        return out


def bare_stage_times(bare: BarePipeline, frames: list, iters: int) -> dict[str, list[float]]:
    stages: dict[str, list[float]] = {}
    for i in range(iters):
        marks: list = []
        bare(frames[i % len(frames)], marks)
        for (_, t0), (name, t1) in zip(marks, marks[1:]):
            stages.setdefault(name, []).append((t1 - t0) * 1e3)
    return stages


# -- sections -----------------------------------------------------------------------------------
def pipeline_rows(name: str, folder: Path, height: int, args, device: torch.device, report: dict) -> Monitor:
    """Monitor and bare rows for one backbone and input height (and agreement rows for the first backbone).

    Returns the Monitor, whose extractor instance mode may reuse.
    """
    config = PipelineConfig(model=str(folder), input_height=height, device=args.device, dtype=args.dtype,
                            index_type="flat", threshold=0.5, min_component_area_px=0)
    extractor = FeatureExtractor(config.model, height, config.device, config.dtype)
    nominal = [types.SimpleNamespace(rgb=scene(i), source="bench", index=i, stamp_ns=0)
               for i in range(args.bank_frames)]
    bank = PatchBankBuilder(config, extractor).add_all(nominal)
    tests = [scene(1000 + 3 * i, anomaly=i % 2 == 1) for i in range(4)]
    grid = "x".join(str(v) for v in extractor.grid_size(*FRAME_SIZE))
    label = f"{FRAME_SIZE[1]}x{FRAME_SIZE[0]} -> h {height} ({grid} patches)"

    reset_peak(device)
    monitor = Monitor(config, bank, extractor)
    times, results = time_calls(monitor.process, tests, args, device)
    note = f"faiss flat on the host, {dtype_name(extractor.dtype)} backbone"
    report["rows"].append(row("monitor", name, label, len(bank), times, stage_times(results), device, note))

    reset_peak(device)
    index = TorchExactIndex(bank.vectors, device=device, dtype=args.dtype)
    bare = BarePipeline(extractor, index, monitor.threshold)
    times, _ = time_calls(bare, tests, args, device)
    note = f"all on {device}, search {dtype_name(index.dtype)}"
    stages = bare_stage_times(bare, tests, args.iters)
    report["rows"].append(row("bare", name, label, len(bank), times, stages, device, note))

    if name == args.backbones[0]:
        agreement_rows(config, bank, monitor, bare, tests[: args.agree], label, device, report)
        report["queries_per_frame"][height] = len(bank.frame_vectors(0))  # for the search rows
    return monitor


def agreement_rows(config, bank, monitor, bare, frames, label, device, report) -> None:
    """Score maps of this device's Monitor and bare pipeline vs a CPU float32 Monitor, same flags."""
    cpu_config = config.replace(device="cpu", dtype="float32")
    cpu = Monitor(cpu_config, bank, FeatureExtractor(config.model, config.input_height, "cpu", "float32"))
    reference = [cpu.process(f) for f in frames]
    threshold = float(np.quantile(reference[0].score_map, 0.9))  # a mask that is neither empty nor full
    cpu.set_threshold(threshold)
    reference = [cpu.process(f) for f in frames]
    candidates: list[tuple[str, Any]] = []
    if device.type != "cpu":
        candidates.append((f"monitor {device} {dtype_name(monitor.extractor.dtype)}", monitor))
    candidates.append((f"bare {device} {dtype_name(bare.index.dtype)} (torch resize on the device)", bare))
    for what, runner in candidates:
        if isinstance(runner, Monitor):
            runner.set_threshold(threshold)
            outs = [(r.score_map, r.mask) for r in map(runner.process, frames)]
        else:
            runner.threshold = threshold
            outs = [runner(f) for f in frames]
        diff = max(float(np.abs(m - r.score_map).max()) for (m, _), r in zip(outs, reference))
        agree = statistics.mean(float((k == r.mask).mean()) for (_, k), r in zip(outs, reference))
        report["rows"].append({
            "section": "agreement", "model": monitor.config.model.rsplit("/", 1)[-1], "input": label,
            "bank_vectors": len(bank), "max_abs_diff": diff, "mask_agreement": agree,
            "note": f"{what} vs monitor cpu float32, {len(frames)} frame(s): max |diff| {diff:.2e}, "
                    f"masks agree on {100 * agree:.3f} % of pixels",
        })
    cpu.extractor.release()  # not cpu.release(): that would drop the index of the bank both monitors share


def search_rows(dim: int, queries_per_frame: int, args, device: torch.device, report: dict) -> None:
    """Search rows: TorchExactIndex alone on random unit vectors; faiss flat on the CPU at the smallest size."""
    import faiss

    gen = torch.Generator(device=device).manual_seed(0)
    queries = F.normalize(torch.randn(queries_per_frame, dim, device=device, generator=gen), dim=-1)
    budget = None if args.search_budget_mib is None else int(args.search_budget_mib * 2**20)
    for size in args.search_sizes:
        fit = device_fit(size, dim, device, args.dtype, budget_bytes=budget)
        if not fit.fits:
            report["skipped"].append(f"search at {size:.0e} vectors: {fit.reason}")
            continue
        reset_peak(device)
        storage = resolve_search_dtype(args.dtype, device)
        vectors = torch.empty(size, dim, dtype=storage, device=device)
        for start in range(0, size, 1 << 20):  # generated in pieces: no full float32 copy
            block = torch.randn(min(1 << 20, size - start), dim, device=device, generator=gen)
            vectors[start : start + len(block)] = F.normalize(block, dim=-1).to(storage)
        index = TorchExactIndex(vectors, device=device, dtype=storage)
        # partial, not a lambda: binds this size's index now (the loop deletes the name afterwards).
        times, _ = time_calls(functools.partial(index.search_tensors, k=1), [queries], args, device)
        label = f"{queries_per_frame} queries x {dim}-d, k 1"
        note = f"torch exact, {dtype_name(storage)} on {device}, bank {index.nbytes / 2**30:.2f} GiB"
        report["rows"].append(row("search", "random unit vectors", label, size, times, {"search": times},
                                  device, note))
        if size == args.search_sizes[0]:
            flat = faiss.IndexFlatIP(dim)
            flat.add(vectors.float().cpu().numpy())
            host_queries = queries.cpu().numpy()
            cpu_args = types.SimpleNamespace(iters=max(1, args.iters // 4), warmup=1)
            cpu = torch.device("cpu")
            times, _ = time_calls(lambda q: flat.search(q, 1), [host_queries], cpu_args, cpu)
            note = f"faiss flat float32 on the CPU ({faiss.omp_get_max_threads()} threads)"
            report["rows"].append(row("search", "random unit vectors", label, size, times, {"search": times},
                                      cpu, note))
            del flat
        del index, vectors
        if device.type == "cuda":
            torch.cuda.empty_cache()


def instance_rows(folder: Path, patch_monitor: Monitor, args, device: torch.device, report: dict) -> None:
    """Instance mode through Monitor (OWLv2 -> SAM 2 -> mask averaging -> instance bank search).

    Uses the DINOv2 of ``patch_monitor``.
    """
    config, extractor = patch_monitor.config, patch_monitor.extractor
    try:
        owl, sam = save_instance_models(folder, args.small, device)
        config = config.replace(mode="instance", detector_model=str(owl), segmenter_model=str(sam),
                                detector_score_threshold=0.0, detector_top_k=BOXES,
                                instance_min_mask_area_px=0)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((150 * BOXES, extractor.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        bank = NominalBank.from_vectors(vectors, extractor.signature(), kind="instance",
                                        frame_of_vector=np.arange(len(vectors)) // BOXES)
        reset_peak(device)
        monitor = Monitor(config, bank, extractor)
    except Exception as exc:  # a transformers version without these configs, or a pipeline change
        report["skipped"].append(
            f"instance mode: cannot drive it with random-init models ({type(exc).__name__}: {exc})"
        )
        return
    tests = [scene(2000 + i, anomaly=True) for i in range(2)]
    times, results = time_calls(monitor.process, tests, args, device)
    found = statistics.mean(len(r.instances) for r in results)
    label = (f"OWLv2 {monitor.instance_scorer.pipeline.proposer.input_size}, "
             f"SAM 2 {monitor.instance_scorer.pipeline.segmenter.image_size}, DINOv2 h {config.input_height}")
    out = row("instance", Path(config.model).name, label, len(bank), times, stage_times(results), device)
    stages = [f"{stage} {out[f'{stage}_ms']:.1f} ms" for stage in ("detector", "segmenter", "embed")
              if f"{stage}_ms" in out]
    out["note"] = f"{BOXES} boxes asked, {found:.1f} instances kept; " + ", ".join(stages)
    report["rows"].append(out)
    monitor.instance_scorer.release()


# -- main ---------------------------------------------------------------------------------------
COLUMNS = [("section", "row"), ("model", "model"), ("input", "input"), ("bank_vectors", "bank"),
           ("features_ms", "features ms"), ("search_ms", "search ms"), ("maps_ms", "maps ms"),
           ("total_ms", "total ms"), ("fps", "fps"), ("peak_gpu_mib", "peak GPU MiB"), ("note", "note")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--dtype", default="auto", help="auto (CUDA float16, CPU float32) | float16 | bfloat16")
    ap.add_argument("--small", action="store_true", help="tiny models, banks and sizes (a CPU smoke run)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="subset of " + ",".join(BACKBONES))
    ap.add_argument("--iters", type=int, help="timed calls per row (20; --small 2)")
    ap.add_argument("--warmup", type=int, help="untimed calls first (3; --small 1)")
    ap.add_argument("--bank-frames", type=int, help="nominal frames in the monitor / bare banks")
    ap.add_argument("--search-sizes", help="comma-separated bank sizes for the search rows, e.g. 1e5,1e6,1e7")
    ap.add_argument("--search-budget-mib", type=float, help="search rows' memory budget (default 90%% free)")
    ap.add_argument("--no-instance", action="store_true", help="skip instance mode")
    args = ap.parse_args(argv)
    defaults = SMALL if args.small else FULL
    for key in ("iters", "warmup", "bank_frames", "search_sizes"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.heights, args.agree = defaults["heights"], defaults["agree"]
    args.search_sizes = [int(float(v)) for v in str(args.search_sizes).split(",") if v.strip()]
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = sorted(set(args.backbones) - set(BACKBONES))
    if unknown:
        ap.error(f"--backbones: {unknown} not among {', '.join(BACKBONES)}")
    if args.iters < 1 or args.warmup < 0 or args.bank_frames < 2:
        ap.error("need --iters >= 1, --warmup >= 0 and --bank-frames >= 2")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU (a CPU-only torch?); try --device cpu --small")
    t_start = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "rows": [], "skipped": [], "queries_per_frame": {},
                              "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory(prefix="semanom_bench_gpu_") as tmp:
        folders = save_models(Path(tmp), args.small, device, args.backbones)
        kept = None  # the first backbone's Monitor at the first height: instance mode reuses its DINOv2
        for name in args.backbones:
            for height in args.heights:
                monitor = pipeline_rows(name, folders[name], height, args, device, report)
                if kept is None:
                    kept = monitor
                else:
                    monitor.release()
        for queries in report["queries_per_frame"].values():  # one frame's patches at each height
            search_rows(kept.extractor.dim, queries, args, device, report)
        if args.no_instance:
            report["skipped"].append("instance mode: --no-instance")
        else:
            instance_rows(Path(tmp), kept, args, device, report)
        kept.release()
    report["wall_s"] = time.perf_counter() - t_start
    for line in report["skipped"]:
        print(f"skipped: {line}")
    print(f"\n{report['machine'].get('gpu') or report['machine']['cpu']}, {args.device}, dtype {args.dtype}, "
          f"median of {args.iters} runs after {args.warmup} warm-up, {report['wall_s']:.0f} s in all\n")
    print(markdown_table(report["rows"], COLUMNS))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
