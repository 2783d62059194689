"""Seeded fuzz test of bank files.

Every file of a small saved bank (manifest.json, the three arrays, index.faiss) gets random damage:
truncation, byte flips, deletion, emptying, NaN / inf injection, and in manifest.json key removal,
type changes and NaN values, each with and without recomputing the checksums that would catch it
(``reseal``: a damaged but self-consistent bank, e.g. written by a buggy tool). Also the previous
format, which has no manifest checksum. For each case:

- ``NominalBank.load`` either loads a bank whose search gives finite scores, or raises BankError:
  never another exception type, never a hang (a per-case time bound);
- ``semanom-bank info`` exits 1 with one line for a bank that fails to load (or whose index file
  is damaged), 0 for one that loads cleanly;
- ``Monitor`` on a bank path that fails to load raises BankError.

``SEMANOM_FUZZ_CASES`` (default 150) and ``SEMANOM_FUZZ_SEED`` (default 0) scale and vary the run;
a failure names the case and its seed. The index file is damaged only without resealing: a resealed
index.faiss reaches faiss's own reader, whose robustness to crafted files is faiss's business (a
checksum-matching but corrupt index file cannot come from our atomic save).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from semanom_ros.core.bank import NominalBank
from semanom_ros.core.bank import persist
from semanom_ros.core.bank.schema import DIGEST_KEY, manifest_digest
from semanom_ros.core.bank.signature import ModelSignature
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import BankError
from semanom_ros.core.monitor import Monitor
from semanom_ros.core.scoring import calibrate
from semanom_ros.tools.bank_cli import main

DIM = 16
CASES = int(os.environ.get("SEMANOM_FUZZ_CASES", "150"))
SEED = int(os.environ.get("SEMANOM_FUZZ_SEED", "0"))
CASE_SECONDS = 60  # a hang guard, not a timing target: a case normally takes tens of milliseconds
MANIFEST = "manifest.json"
ARRAYS = ("embeddings.npy", "vector_meta.npy", "frames.npy")
INDEX = "index.faiss"
ODD_VALUES: tuple[Any, ...] = ("abc", "", None, [], {}, True, False, 3.5, -7, 0, 2**70, float("nan"), [1, 2],
                               {"a": 1})

# (file, damage, reseal): every file gets every damage that applies to it.
COMBOS = (
    [(name, damage, False) for name in (MANIFEST, *ARRAYS, INDEX) for damage in ("truncate", "flip", "delete", "empty")]
    + [(name, damage, True) for name in ARRAYS for damage in ("truncate", "flip", "nan")]
    + [(name, "nan", False) for name in ARRAYS]
    + [(MANIFEST, damage, reseal) for damage in ("remove_key", "change_type", "nan_value") for reseal in (False, True)]
    + [(MANIFEST, f"legacy_{damage}", False) for damage in ("remove_key", "change_type", "nan_value")]
    + [(name, "legacy_nan", False) for name in ARRAYS]
)


class CaseTimeout(Exception):
    """A case ran past CASE_SECONDS."""


@contextlib.contextmanager
def time_bound(seconds: float, case: str) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"{case} ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A calibrated bank with a saved HNSW index file: every kind of file a bank holds."""
    rng = np.random.default_rng(0)
    bank = NominalBank(ModelSignature("synthetic", "f" * 16, 224, DIM), config={"index_type": "hnsw", "nprobe": 16})
    for i in range(12):
        v = rng.standard_normal((10, DIM))
        bank.add_frame(v / np.linalg.norm(v, axis=1, keepdims=True), source="drive", index=i, stamp_ns=10**18 + i,
                       topic="/cam")
    calibrate(bank, alpha=0.9, window=1)
    bank.search_index.ensure()
    path = bank.save(tmp_path_factory.mktemp("fuzz") / "template")
    assert sorted(p.name for p in path.iterdir()) == sorted((MANIFEST, *ARRAYS, INDEX))
    return path


# ------------------------------------------------------------------------------ damage
def _reseal(path: Path, name: str | None = None) -> None:
    """Record ``name``'s new size and checksum and recompute the manifest's own checksum."""
    manifest = json.loads((path / MANIFEST).read_text())
    if name is not None:
        manifest["files"][name] = {"bytes": (path / name).stat().st_size, "blake2b": persist.file_digest(path / name)}
    if DIGEST_KEY in manifest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _make_legacy(path: Path, rng: np.random.Generator) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.pop(DIGEST_KEY)
    manifest["format_version"] = 1
    if rng.random() < 0.5:
        manifest.pop("files")
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _json_slots(node: Any, trail: str = "") -> list[tuple[Any, Any, str]]:
    """Every (container, key, path) in a parsed JSON tree."""
    slots = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{trail}.{key}" if isinstance(node, dict) else f"{trail}[{key}]"
        slots.append((node, key, here))
        slots += _json_slots(value, here)
    return slots


def _damage_manifest_json(path: Path, damage: str, rng: np.random.Generator) -> str:
    manifest = json.loads((path / MANIFEST).read_text())
    slots = _json_slots(manifest)
    if damage == "nan_value":
        slots = [s for s in slots if isinstance(s[0][s[1]], (int, float)) and not isinstance(s[0][s[1]], bool)]
    elif rng.random() < 0.5:  # half the time a top-level key, so each gets its turn besides the big tables
        slots = [s for s in slots if s[0] is manifest]
    container, key, where = slots[int(rng.integers(len(slots)))]
    if damage == "remove_key":
        del container[key]
        what = f"removed {where}"
    elif damage == "change_type":
        container[key] = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        what = f"{where} = {container[key]!r}"
    else:
        container[key] = [float("nan"), float("inf"), -float("inf")][int(rng.integers(3))]
        what = f"{where} = {container[key]}"
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return what


def _data_offset(file: Path) -> int:
    """Where a .npy file's array data starts (its header's length)."""
    with open(file, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


def damage_bank(path: Path, name: str, damage: str, reseal: bool, rng: np.random.Generator) -> str:
    """Apply one damage to one file of the bank at ``path``; returns what was done."""
    if damage.startswith("legacy_"):
        _make_legacy(path, rng)
        damage = damage[len("legacy_"):]
    file = path / name
    data = bytearray(file.read_bytes())
    if damage in ("remove_key", "change_type", "nan_value"):
        what = _damage_manifest_json(path, damage, rng)
        if reseal:
            _reseal(path)
        return what
    if damage == "delete":
        file.unlink()
        return "deleted"
    if damage == "empty":
        file.write_bytes(b"")
        return "emptied"
    if damage == "truncate":
        size = int(rng.integers(0, len(data)))
        file.write_bytes(bytes(data[:size]))
        what = f"truncated to {size} of {len(data)} bytes"
    elif damage == "flip":
        offsets = rng.integers(0, len(data), int(rng.integers(1, 9)))
        for offset in offsets:
            data[offset] ^= int(rng.integers(1, 256))
        file.write_bytes(bytes(data))
        what = f"bytes flipped at {sorted(int(o) for o in offsets)}"
    else:  # nan: a float16 NaN or inf bit pattern over an aligned element of the data
        start = _data_offset(file)
        offset = start + 2 * int(rng.integers(0, (len(data) - start) // 2))
        pattern = [0x7E00, 0x7C00, 0xFC00][int(rng.integers(3))]
        data[offset:offset + 2] = pattern.to_bytes(2, "little")
        file.write_bytes(bytes(data))
        what = f"0x{pattern:04X} written at byte {offset}"
    if reseal and name != MANIFEST:
        _reseal(path, name)
    return what


# ------------------------------------------------------------------------------ the test
def _info(capsys, path: Path, verify: bool) -> tuple[int, str, str]:
    rc = main(["info", str(path), *(["--verify"] if verify else [])])
    out, err = capsys.readouterr()
    return rc, out, err


def test_damaged_banks_load_with_finite_scores_or_raise_bank_error(template, tmp_path, capsys):
    outcomes: Counter[tuple[str, str]] = Counter()
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for case in range(CASES):
        name, damage, reseal = COMBOS[case % len(COMBOS)]
        rng = np.random.default_rng([SEED, case])
        path = tmp_path / f"case{case}"
        shutil.copytree(template, path)
        what = damage_bank(path, name, damage, reseal, rng)
        kind = f"{damage}{' resealed' if reseal else ''}"
        label = f"case {case} (SEMANOM_FUZZ_SEED={SEED}): {name} {kind}: {what}"
        with time_bound(CASE_SECONDS, label):
            try:
                bank = NominalBank.load(path, mmap=bool(case % 2))
            except BankError as exc:
                error = str(exc)
                assert "\n" not in error, (label, error)
                bank = None
            except Exception as exc:  # noqa: BLE001 - any other type is the failure this test looks for
                pytest.fail(f"{label}: {type(exc).__name__} instead of BankError: {exc}")
            if bank is not None:
                sims, ids = bank.search(queries, k=2)
                assert np.isfinite(1.0 - sims).all() and ids.shape == (20, 2), label
                if bank.calibration:
                    assert math.isfinite(bank.calibration["threshold"]), label
                index_damaged = any("index" in w for w in bank.warnings)
                outcomes[(kind, "loaded (index rebuilt)" if index_damaged else "loaded")] += 1
            else:
                outcomes[(kind, "BankError")] += 1
            rc, out, err = _info(capsys, path, verify=bool(case % 3 == 0))
            lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
            if bank is None or index_damaged:
                assert rc == 1 and out == "" and len(lines) == 1, (label, rc, err)
                assert lines[0].startswith("semanom-bank info: error:") and "Traceback" not in err, (label, err)
            else:
                assert rc == 0 and lines == [] and out.startswith("bank "), (label, rc, err)
            if bank is None:
                with pytest.raises(BankError):
                    Monitor(PipelineConfig(), path)
        shutil.rmtree(path)
    summary = "\n".join(f"  {kind:28} {outcome:24} {n}" for (kind, outcome), n in sorted(outcomes.items()))
    print(f"\n{CASES} damaged banks (seed {SEED}):\n{summary}")
    if CASES >= len(COMBOS):
        # Both outcomes occur: resealed damage that keeps the bank valid loads, the rest is refused.
        assert sum(n for (_, o), n in outcomes.items() if o == "BankError") > CASES // 2
        assert sum(n for (_, o), n in outcomes.items() if o.startswith("loaded")) > 0
