"""semanom-bank (semanom_ros.tools.bank_cli): subcommands, one-line errors, interrupted builds.

Errors come with exit codes; interrupted builds - SIGINT / SIGTERM / SIGKILL while embedding and
while saving - must leave the previous bank exactly as it was.

The kill tests run ``bank_cli.main`` in a subprocess through a small wrapper that slows one phase
down and prints a marker when it is reached (test code only: the package has no test hooks):
``embed`` sleeps after every batch, ``save`` sleeps inside NominalBank.save after the first file of
the new bank has been written to its temporary directory.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_dir, textured_frame
from semanom_ros.core.bank import NominalBank
from semanom_ros.io.bagwrite import write_image_bag
from semanom_ros.tools.bank_cli import main

REPO = Path(__file__).resolve().parents[1]
MCAP = shared_dir() / "data" / "highway" / "bag_mcap"
H = "28"


def _bag(path: Path, n: int, seed: int = 0, **kw) -> Path:
    return write_image_bag(path, [textured_frame(seed + i, 48, 80) for i in range(n)], "/cam", **kw)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(err: str, *parts: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture
def bag(tmp_path) -> Path:
    return _bag(tmp_path / "drive", 8)


# ------------------------------------------------------------------------------ subcommands
def test_build_info_calibrate_merge_coreset(tmp_path, capsys, tiny_model, bag):
    bank = tmp_path / "banks" / "a"
    rc, out, err = _run(capsys, "build", bag, "-o", bank, "--model", tiny_model, "--input-height", H,
                        "--window", "1", "--stride", "2", "--no-progress")
    assert rc == 0, err
    assert "8 msgs, 4 decoded, 4 used" in out and "skipped: stride 4" in out and "threshold" in out

    rc, out, _ = _run(capsys, "info", bank)
    assert rc == 0
    for part in (f"model        {tiny_model}", "height 28 px", "24 vectors (float16), 4 frames",
                 f"{bag}  /cam  4 frames  2023-11-14 22:13:20.000 UTC + 0.60 s", "at alpha 0.999", "window 1"):
        assert part in out, part
    rc, out, _ = _run(capsys, "info", bank, "--json")
    manifest = json.loads(out)
    assert manifest["num_frames"] == 4 and manifest["calibration"]["alpha"] == 0.999

    rc, out, _ = _run(capsys, "calibrate", bank, "--alpha", "0.9", "--window", "0", "--json")
    cal = json.loads(out)["calibration"]
    assert rc == 0 and cal["alpha"] == 0.9 and cal["window"] == 0
    manifest = NominalBank.read_manifest(bank)
    assert manifest["calibration"]["threshold"] == pytest.approx(cal["threshold"])
    assert manifest["config"]["alpha"] == 0.9  # tools reading the bank's settings see the new alpha

    other = tmp_path / "banks" / "b"
    assert _run(capsys, "build", _bag(tmp_path / "drive2", 4, 20), "-o", other, "--model", tiny_model,
                "--input-height", H, "--window", "1")[0] == 0
    rc, out, _ = _run(capsys, "merge", bank, other, "-o", tmp_path / "banks" / "ab", "--json")
    merged = json.loads(out)
    assert rc == 0 and (merged["frames"], merged["vectors"]) == (8, 48) and merged["calibration"]["window"] == 0

    rc, out, _ = _run(capsys, "coreset", tmp_path / "banks" / "ab", "-o", tmp_path / "banks" / "ab_half",
                      "--fraction", "0.5")
    assert rc == 0 and "48 -> 24 vectors (50.0 %, 2.00x smaller)" in out and "threshold" in out
    rc, out, _ = _run(capsys, "info", tmp_path / "banks" / "ab_half")
    assert "coreset      24 of 48 vectors (50.0 %" in out and "queries: full bank frames" in out


def test_append_with_json_summary_and_config_file(tmp_path, capsys, tiny_model, bag):
    bank = tmp_path / "bank"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"model: {tiny_model}\ninput_height: {H}\ncalibration_window: 1\nstride: 2\n")
    assert _run(capsys, "build", bag, "-o", bank, "--config", settings)[0] == 0
    # --append takes the model from the bank; --stride on the command line beats the file.
    rc, out, err = _run(capsys, "build", _bag(tmp_path / "more", 6, 40), "-o", bank, "--append", "--json",
                        "--stride", "3")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["appended"] and summary["frames_used"] == 2 and summary["frames_total"] == 6
    assert summary["model"] == tiny_model and summary["calibration"]["window"] == 1


def test_errors_are_one_line_with_exit_status(tmp_path, capsys, tiny_model, other_tiny_model, bag):
    rc, _, err = _run(capsys, "build", tmp_path / "nope", "-o", tmp_path / "x", "--model", tiny_model)
    assert rc == 1
    _assert_one_line_error(err, "semanom-bank build: error:", "does not exist")

    if MCAP.is_dir():
        rc, _, err = _run(capsys, "build", MCAP, "-o", tmp_path / "x", "--model", tiny_model, "--topic", "/nope")
        assert rc == 1
        _assert_one_line_error(err, "'/nope' not found", "/camera/image_raw [Image, 20 msgs]",
                               "/camera/image_raw/compressed [CompressedImage, 150 msgs]")

    bank = tmp_path / "bank"
    assert _run(capsys, "build", bag, "-o", bank, "--model", tiny_model, "--input-height", H, "--window", "1")[0] == 0
    rc, _, err = _run(capsys, "build", bag, "-o", bank, "--append", "--model", other_tiny_model)
    assert rc == 1
    _assert_one_line_error(err, "model: the existing bank was built with", "Rebuild the bank")

    rc, _, err = _run(capsys, "info", tmp_path / "nobank")
    assert rc == 1
    _assert_one_line_error(err, "semanom-bank info: error:", "does not exist")
    rc, _, err = _run(capsys, "calibrate", bank, "--alpha", "1.5")
    assert rc == 1
    _assert_one_line_error(err, "alpha")
    rc, _, err = _run(capsys, "coreset", bank, "-o", tmp_path / "c", "--fraction", "0")
    assert rc == 1
    _assert_one_line_error(err, "coreset fraction: 0.0 must be in (0, 1]")
    rc, _, err = _run(capsys, "build", bag, "-o", tmp_path / "y", "--model", tiny_model, "--dedup-similarity", "2")
    assert rc == 1
    _assert_one_line_error(err, "dedup_similarity")
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage errors exit 2
        main(["build", str(bag), "-o", str(tmp_path / "z"), "--coreset-fraction", "0.5", "--coreset-size", "3"])
    assert exit_info.value.code == 2
    capsys.readouterr()


# ------------------------------------------------------------------------------ interrupted builds
_WRAPPER = textwrap.dedent(
    """
    import os, signal, sys, time
    # A runner started in the background (``cmd &``) passes SIGINT down as ignored; Ctrl-C must work here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {repo!r})
    phase = os.environ["SEMANOM_TEST_PAUSE_IN"]
    if phase == "embed":
        from semanom_ros.core import features
        original = features.FeatureExtractor.extract_batch
        def slow_extract(self, frames):
            out = original(self, frames)
            print("EMBEDDING", flush=True)
            time.sleep(0.5)
            return out
        features.FeatureExtractor.extract_batch = slow_extract
    else:
        from semanom_ros.core.bank import persist
        original = persist.file_digest
        def slow_digest(path):
            if path.parent.name.startswith("."):  # a file of the new bank, in its temporary directory
                print("SAVING", path, flush=True)
                time.sleep(60)
            return original(path)
        persist.file_digest = slow_digest
    from semanom_ros.tools.bank_cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _start(tmp_path: Path, phase: str, argv: list[str]) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    script = tmp_path / "wrapper.py"
    script.write_text(_WRAPPER.format(repo=str(REPO)))
    env = dict(os.environ, SEMANOM_TEST_PAUSE_IN=phase, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def _wait_for(proc: subprocess.Popen, lines: "queue.Queue[str]", marker: str, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith(marker):
            return line
    proc.kill()
    raise AssertionError(f"{marker} never printed; stderr:\n{proc.stderr.read()}")


def _snapshot(path: Path) -> dict:
    bank = NominalBank.load(path, mmap=False)
    return {
        "manifest": (path / "manifest.json").read_text(),
        "vectors": np.asarray(bank.vectors).copy(),
        "meta": np.asarray(bank.vector_meta).copy(),
        "frames": np.asarray(bank.frames).copy(),
    }


def _assert_same_bank(path: Path, before: dict) -> None:
    after = _snapshot(path)
    assert after["manifest"] == before["manifest"]
    for key in ("vectors", "meta", "frames"):
        np.testing.assert_array_equal(after[key], before[key])


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, tiny_model):
    """An existing bank (from a short bag) and a longer bag the interrupted builds read."""
    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.workflows.build_bank import build_bank
    from semanom_ros.workflows.settings import BuildOptions

    root = tmp_path_factory.mktemp("kill")
    old_bag = _bag(root / "old_drive", 6)
    long_bag = _bag(root / "long_drive", 40, seed=100, compressed=True)
    config = PipelineConfig(model=tiny_model, input_height=int(H), calibration_window=1, batch_size=4)
    template = root / "template_bank"
    build_bank([str(old_bag)], template, config, BuildOptions(progress=False))
    return template, long_bag, tiny_model


def _fresh_old_bank(tmp_path: Path, template: Path) -> tuple[Path, dict]:
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(template, bank)
    return bank, _snapshot(bank)


@pytest.mark.parametrize(
    "phase, sig",
    [("embed", signal.SIGINT), ("embed", signal.SIGKILL), ("save", signal.SIGKILL), ("save", signal.SIGTERM)],
    ids=["sigint-embedding", "sigkill-embedding", "sigkill-saving", "sigterm-saving"],
)
def test_interrupted_build_leaves_the_old_bank(tmp_path, kill_setup, phase, sig):
    template, long_bag, model = kill_setup
    bank, before = _fresh_old_bank(tmp_path, template)
    argv = ["build", str(long_bag), "-o", str(bank), "--model", model, "--input-height", H, "--batch-size", "4",
            "--window", "1", "--no-progress"]
    proc, lines = _start(tmp_path, phase, argv)
    _wait_for(proc, lines, "EMBEDDING" if phase == "embed" else "SAVING")
    if phase == "save":
        temps = list(tmp_path.glob(".bank.tmp-*"))
        assert len(temps) == 1 and (temps[0] / "embeddings.npy").is_file()  # the new bank is half written
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    _assert_same_bank(bank, before)
    assert NominalBank.load(bank).num_frames == 6
    leftovers = list(tmp_path.glob(".bank.tmp-*"))
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        if phase == "save":
            assert len(leftovers) == 1  # a kill -9 cannot clean up; the next save removes it (below)
    else:
        assert rc == 130, err
        assert f"semanom-bank: interrupted; bank at {bank} unchanged" in err
        assert "Traceback" not in err and not leftovers
    if leftovers:
        from semanom_ros.core.config import PipelineConfig
        from semanom_ros.workflows.build_bank import build_bank
        from semanom_ros.workflows.settings import BuildOptions

        config = PipelineConfig(model=model, input_height=int(H), calibration_window=1)
        summary = build_bank([str(long_bag)], bank, config, BuildOptions(progress=False, max_frames=3))
        assert summary.removed_temp_dirs == 1 and not list(tmp_path.glob(".bank.tmp-*"))
        assert NominalBank.load(bank).num_frames == 3


def test_interrupt_without_previous_bank_says_nothing_written(tmp_path, kill_setup):
    _, long_bag, model = kill_setup
    out = tmp_path / "new_bank"
    proc, lines = _start(tmp_path, "embed", ["build", str(long_bag), "-o", str(out), "--model", model,
                                             "--input-height", H, "--batch-size", "4", "--no-progress"])
    _wait_for(proc, lines, "EMBEDDING")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert f"interrupted; no bank written at {out}" in proc.stderr.read()
    assert not out.exists() and not list(tmp_path.glob(".new_bank.tmp-*"))


def test_build_with_an_approximate_index_saves_it_and_the_monitor_reads_it_back(tmp_path, capsys, tiny_model):
    from semanom_ros.core.config import PipelineConfig
    from semanom_ros.core.monitor import Monitor

    bag = _bag(tmp_path / "drive", 12)
    bank = tmp_path / "hnsw"
    rc, _, err = _run(capsys, "build", bag, "-o", bank, "--model", tiny_model, "--input-height", H,
                      "--window", "1", "--index-type", "hnsw", "--no-progress")
    assert rc == 0, err
    manifest = NominalBank.read_manifest(bank)
    assert manifest["config"]["index_type"] == "hnsw" and manifest["index"]["type"] == "hnsw"
    assert manifest["index"]["recall_curve"] and "bank frames" in manifest["index"]["recall_probe"]
    assert (bank / "index.faiss").is_file() and "index.faiss" in manifest["files"]
    monitor = Monitor(PipelineConfig(model=tiny_model, input_height=int(H), device="cpu"), bank)
    assert monitor.bank.index_info["type"] == "hnsw" and monitor.bank.index_info["loaded_from"].endswith("index.faiss")
    monitor = Monitor(PipelineConfig(model=tiny_model, input_height=int(H), device="cpu", nprobe=7), bank)
    assert monitor.bank.index_info["search_depth"] == 7 and "loaded_from" in monitor.bank.index_info
    monitor = Monitor(PipelineConfig(model=tiny_model, input_height=int(H), device="cpu", index_type="flat"), bank)
    assert monitor.bank.index_info["type"] == "flat"  # an explicit type re-indexes
